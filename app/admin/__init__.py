"""The admin interface at /admin (sqladmin), mounted on the app itself.

`mount` builds it when the app is created; the worker's engine exists only once the lifespan
has started the runtime, so the admin's session maker is bound then (`bind`).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from sqladmin import Admin
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.admin.auth import AdminAuth
from app.admin.views import PostAdmin, ServiceModelView, UserAdmin
from app.config import Settings
from app.runtime import Runtime

BASE_URL = "/admin"


def mount(app: FastAPI, settings: Settings) -> Callable[[Runtime], None]:
    """Mount /admin on app; returns the function that binds it to the started runtime."""

    def runtime() -> Runtime:
        started: Runtime = app.state.runtime
        return started

    # Reads only (sqladmin's lists and forms); bound to the worker's engine in `bind`.
    sessions = async_sessionmaker(class_=AsyncSession, expire_on_commit=False)
    auth = AdminAuth(settings, runtime, BASE_URL)
    admin = Admin(
        app,
        session_maker=sessions,
        base_url=BASE_URL,
        title="livepost admin",
        authentication_backend=auth,
    )
    auth.templates = admin.templates
    for view in (UserAdmin, PostAdmin):
        admin.add_view(view)
    for instance in admin.views:
        if isinstance(instance, ServiceModelView):
            instance.runtime = runtime

    def bind(started: Runtime) -> None:
        sessions.configure(bind=started.engine)

    return bind
