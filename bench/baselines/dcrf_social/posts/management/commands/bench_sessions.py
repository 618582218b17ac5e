"""`manage.py bench_sessions M [--prefix bench] [--out FILE]`: users bench0..bench{M-1}
(password `benchpass`, created when missing) with one new Django session each.

Writes `[{"username", "sessionid"}, ...]` as JSON to FILE (default: stdout). The benchmark sends
`Cookie: sessionid=<id>` on the WebSocket handshake; Channels' AuthMiddlewareStack turns it into
`scope["user"]`.
"""

import json

from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create benchmark users with a session each and write their sessionid cookies"

    def add_arguments(self, parser):
        parser.add_argument("count", type=int)
        parser.add_argument("--prefix", default="bench")
        parser.add_argument("--out", default="-")

    def handle(self, count, prefix, out, **options):
        User = get_user_model()
        rows = []
        for index in range(count):
            username = f"{prefix}{index}"
            user, created = User.objects.get_or_create(username=username)
            if created:
                user.set_password("benchpass")
                user.save()
            # What django.contrib.auth.login stores, without a request.
            session = SessionStore()
            session[SESSION_KEY] = str(user.pk)
            session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
            session[HASH_SESSION_KEY] = user.get_session_auth_hash()
            session.create()
            rows.append({"username": username, "sessionid": session.session_key})
        data = json.dumps(rows)
        if out == "-":
            self.stdout.write(data)
        else:
            with open(out, "w") as file:
                file.write(data)
            self.stderr.write(f"wrote {len(rows)} sessions to {out}")
