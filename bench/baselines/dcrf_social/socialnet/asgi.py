"""HTTP goes to Django; WebSockets at /ws/ go to LivePostConsumer, with the user taken from
the session cookie (Channels' AuthMiddlewareStack)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "socialnet.settings")
django_asgi_app = get_asgi_application()  # sets Django up before the imports below

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from posts import consumers  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AuthMiddlewareStack(
            URLRouter([re_path(r"^ws/$", consumers.LivePostConsumer.as_asgi())])
        ),
    }
)
