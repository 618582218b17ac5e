"""The SQLModel family: tables (User, Post, the change log) and the public shapes a client sees."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    false,
    text,
    true,
)
from sqlmodel import Field, SQLModel
from sqlmodel._compat import SQLModelConfig

# BIGINT on PostgreSQL, INTEGER (the rowid alias, required for AUTOINCREMENT) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")

BODY_MAX_LENGTH = 256
USERNAME_MAX_LENGTH = 150
USERNAME_PATTERN = r"^[\w.@+-]+$"


def utcnow() -> datetime:
    return datetime.now(UTC)


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    username: str = Field(
        sa_column=Column(String(USERNAME_MAX_LENGTH), nullable=False, unique=True)
    )
    password_hash: str = Field(sa_column=Column(String(255), nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    # May sign in at /admin (migration 0003; `livepost user admin NAME` grants it).
    is_admin: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    # False: the user was deactivated; their tokens are refused and their connections closed.
    is_active: bool = Field(
        default=True, sa_column=Column(Boolean, nullable=False, server_default=true())
    )


class Post(SQLModel, table=True):
    __tablename__ = "posts"
    # list reads newest first by pk (the primary key serves that and the `before` cursor);
    # update/delete and per-author reads filter on author_id.
    # AUTOINCREMENT: SQLite must never hand a deleted post's pk to a new one, or a client's
    # version bookkeeping for that pk would drop the new post's events.
    __table_args__ = (
        Index("ix_posts_author_id_id", "author_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    author_id: int = Field(
        sa_column=Column(BigId, ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    )
    body: str = Field(sa_column=Column(String(BODY_MAX_LENGTH), nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False)
    )
    version: int = Field(default=1, sa_column=Column(Integer, nullable=False, default=1))


class PostChange(SQLModel, table=True):
    """The outbox: one row per committed post change, written by database triggers (migration
    0002), so a change made by any path (the service, psql, a script) is recorded with the
    transaction that made it. The id is the change's offset; ids follow commit order."""

    __tablename__ = "post_changes"
    __table_args__ = (
        # The relay looks only at what is still unpublished.
        Index(
            "ix_post_changes_unpublished",
            "id",
            postgresql_where=text("NOT published"),
            sqlite_where=text("NOT published"),
        ),
        # SQLite must never hand out a pruned offset again.
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    post_id: int = Field(sa_column=Column(BigId, nullable=False))
    action: str = Field(sa_column=Column(String(6), nullable=False))  # create, update, delete
    version: int = Field(sa_column=Column(Integer, nullable=False))
    author_id: int = Field(sa_column=Column(BigId, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    old_body: str | None = Field(default=None, sa_column=Column(String(BODY_MAX_LENGTH)))
    new_body: str | None = Field(default=None, sa_column=Column(String(BODY_MAX_LENGTH)))
    # Seconds since the epoch, by the database's clock.
    changed_at: float = Field(sa_column=Column(Float, nullable=False))
    published: bool = Field(default=False, sa_column=Column(Boolean, nullable=False))
    # No fast-path publish is coming (plain SQL, or a CLI command whose in-process broker
    # nobody hears): relay it at once.
    external: bool = Field(default=False, sa_column=Column(Boolean, nullable=False))
    # A relay that claimed the row; another may take it over after this moment.
    relay_after: float | None = Field(default=None, sa_column=Column(Float))


class ChangeTag(SQLModel, table=True):
    """Which hashtags a change touched (old and new), for resuming one hashtag's log."""

    __tablename__ = "change_tags"
    # Pruning by age deletes by change.
    __table_args__ = (Index("ix_change_tags_change_id", "change_id"),)

    tag: str = Field(sa_column=Column(String(255), primary_key=True))
    change_id: int = Field(sa_column=Column(BigId, primary_key=True))


class ChangeHorizon(SQLModel, table=True):
    """Up to which offset the log was pruned: per hashtag, and for all of them (tag '')."""

    __tablename__ = "change_horizons"

    tag: str = Field(sa_column=Column(String(255), primary_key=True))
    pruned_upto: int = Field(sa_column=Column(BigInteger, nullable=False))


# Lengths are documented in the schema but checked by the post service after it strips
# surrounding white space (DRF's trim_whitespace), with the same texts on every path.
_BODY_SCHEMA = {"minLength": 1, "maxLength": BODY_MAX_LENGTH}


class PostBody(SQLModel):
    """A post's writable field, as REST takes it (PUT, POST; PATCH makes it optional)."""

    model_config = SQLModelConfig(
        json_schema_extra={
            "examples": [{"body": "Check out this new framework... #Django #Python"}]
        }
    )

    body: str = Field(schema_extra={"json_schema_extra": _BODY_SCHEMA})


class PostPatch(SQLModel):
    model_config = SQLModelConfig(json_schema_extra={"examples": [{"body": "Edited #python"}]})

    body: str | None = Field(default=None, schema_extra={"json_schema_extra": _BODY_SCHEMA})


class PostPublic(SQLModel):
    """A post as every client sees it, over WebSocket and REST."""

    model_config = SQLModelConfig(
        json_schema_extra={
            "examples": [
                {
                    "pk": 23,
                    "author": 4,
                    "body": "Check out this new framework... #Django #Python",
                    "created_at": "2020-05-31T00:46:33+00:00",
                    "version": 1,
                }
            ]
        }
    )

    pk: int
    author: int
    body: str
    created_at: str
    version: int


class UserCreate(SQLModel):
    model_config = SQLModelConfig(
        json_schema_extra={"examples": [{"username": "alice", "password": "correct horse battery"}]}
    )

    username: str = Field(
        min_length=1, max_length=USERNAME_MAX_LENGTH, schema_extra={"pattern": USERNAME_PATTERN}
    )
    password: str = Field(min_length=8, max_length=1024)


class UserPublic(SQLModel):
    model_config = SQLModelConfig(json_schema_extra={"examples": [{"id": 4, "username": "alice"}]})

    id: int
    username: str


class Token(SQLModel):
    model_config = SQLModelConfig(
        json_schema_extra={"examples": [{"access_token": "eyJhbGciOi...", "token_type": "bearer"}]}
    )

    access_token: str
    token_type: str = "bearer"
