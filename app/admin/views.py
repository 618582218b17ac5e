"""The admin's views of users and posts: lists with search and pagination, edit, delete.

Reads go through sqladmin's own queries. Writes never do: sqladmin would write the tables
through its session, and subscribers would get nothing until the relay noticed the change.
update_model and delete_model (the hooks sqladmin's edit and delete routes call) are
overridden to call the services instead: a post's edit or delete is PostService.admin_update
or admin_delete, the one write path, so subscribers get `update` / `delete` / `create` with
the next version exactly as for the author's own writes; a user's deactivation refuses their
tokens and closes their connections on every worker (Runtime.deactivate_user).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from sqladmin import ModelView
from starlette.requests import Request
from wtforms import TextAreaField

from app.models import Post, User
from app.posts.service import PostNotFound
from app.posts.validation import FieldErrors
from app.runtime import Runtime


class AdminError(ValueError):
    """A refused admin write; sqladmin shows its text above the form."""


def _runtime_unset() -> Runtime:
    raise RuntimeError("the admin views are used before app.admin.mount bound them")


class ServiceModelView(ModelView):
    """A view whose writes go through the runtime's services (set by app.admin.mount)."""

    runtime: Callable[[], Runtime] = staticmethod(_runtime_unset)
    can_create = False  # posts are written by their authors, users register themselves
    can_import = False

    async def insert_model(self, request: Request, data: dict[str, Any]) -> Any:
        raise AdminError("Creating is disabled here.")


def _pk(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise AdminError("Not found") from None


class PostAdmin(ServiceModelView, model=Post):
    name, name_plural, icon = "Post", "Posts", "fa-solid fa-comment"
    column_list: ClassVar[Any] = [Post.id, Post.author_id, Post.body, Post.version, Post.created_at]
    column_searchable_list: ClassVar[Any] = [Post.body]
    column_sortable_list: ClassVar[Any] = [Post.id, Post.author_id, Post.version, Post.created_at]
    column_default_sort: ClassVar[Any] = (Post.id, True)  # newest first, as `list` serves them
    form_columns: ClassVar[Any] = [Post.body]
    form_overrides: ClassVar[Any] = {"body": TextAreaField}

    async def update_model(self, request: Request, pk: str, data: dict[str, Any]) -> Any:
        try:
            post = await self.runtime().posts.admin_update(_pk(pk), data.get("body"))
        except PostNotFound:
            raise AdminError("Not found (deleted meanwhile?)") from None
        except FieldErrors as error:
            raise AdminError(_describe(error.errors)) from None
        await self._emit_audit(request, "update", pk, data)
        # What sqladmin needs of it: the pk, for the redirect after saving.
        return Post(id=post["pk"], author_id=post["author"], body=post["body"])

    async def delete_model(self, request: Request, pk: Any) -> None:
        try:
            await self.runtime().posts.admin_delete(_pk(pk))
        except PostNotFound:
            raise AdminError("Not found (deleted meanwhile?)") from None
        await self._emit_audit(request, "delete", pk, None)


class UserAdmin(ServiceModelView, model=User):
    name, name_plural, icon = "User", "Users", "fa-solid fa-user"
    column_list: ClassVar[Any] = [
        User.id, User.username, User.is_admin, User.is_active, User.created_at,
    ]  # fmt: skip
    column_details_exclude_list: ClassVar[Any] = [User.password_hash]
    column_searchable_list: ClassVar[Any] = [User.username]
    column_sortable_list: ClassVar[Any] = [User.id, User.username, User.created_at]
    column_default_sort: ClassVar[Any] = (User.id, True)
    form_columns: ClassVar[Any] = [User.is_admin, User.is_active]
    can_export = False  # an export would not leave out the password hash on its own

    async def update_model(self, request: Request, pk: str, data: dict[str, Any]) -> Any:
        runtime, user_id = self.runtime(), _pk(pk)
        is_admin, is_active = bool(data.get("is_admin")), bool(data.get("is_active"))
        if not await runtime.accounts.set_flags(user_id, is_admin=is_admin):
            raise AdminError("Not found")
        if is_active:
            await runtime.accounts.set_flags(user_id, is_active=True)
        else:
            await runtime.deactivate_user(user_id)
        await self._emit_audit(request, "update", pk, data)
        return User(id=user_id, username="", password_hash="")

    async def delete_model(self, request: Request, pk: Any) -> None:
        """Deactivate first (no new posts, connections closed everywhere), then delete the
        posts one by one through the write path, so their subscribers see each go (the
        database's cascade would reach them only through the relay), then the account."""
        runtime, user_id = self.runtime(), _pk(pk)
        if not await runtime.deactivate_user(user_id):
            raise AdminError("Not found")
        for post_pk in await runtime.posts.pks_by_author(user_id):
            try:
                await runtime.posts.admin_delete(post_pk)
            except PostNotFound:
                pass  # deleted meanwhile
        await runtime.accounts.delete_user(user_id)
        await self._emit_audit(request, "delete", pk, None)


def _describe(errors: dict[str, list[str]]) -> str:
    return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())
