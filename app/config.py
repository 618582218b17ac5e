"""Settings from the environment; defaults are the embedded stack (SQLite + in-process broker)."""

from __future__ import annotations

import hmac
import os
import secrets
from functools import cached_property
from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(RuntimeError):
    """Settings that cannot run: raised before the service starts."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    database_url: str = "sqlite+aiosqlite:///./livepost.db"
    redis_url: str | None = None
    jwt_secret: str | None = None
    jwt_secret_file: str = ".livepost-secret"
    token_lifetime_minutes: int = 60 * 24
    host: str = "127.0.0.1"
    port: int = 8000
    channel_prefix: str = "livepost"
    # Per-connection outgoing queue; a client that lets it fill is closed (1013).
    ws_queue_size: int = 2048

    # Limits on what one client may ask for (README: "Limits and security").
    ws_max_frame_bytes: int = 64 * 1024  # larger frames close the connection with 1009
    ws_rate_per_second: float = 50.0  # token bucket refill, requests per connection
    ws_rate_burst: int = 100  # token bucket size
    ws_flood_close_after: int = 100  # consecutive 429 replies before closing with 1008
    ws_max_subscriptions: int = 100  # hashtags per connection (over all its request ids)
    ws_max_connections_per_user: int = 500  # per worker
    ws_max_connections_per_ip: int = 2000  # per worker
    hashtag_max_length: int = 64
    ws_ping_interval: float = 20.0  # `livepost serve`/`cluster` pass these to uvicorn
    ws_ping_timeout: float = 20.0
    # Comma-separated browser origins allowed to open /ws; empty means the server's own
    # host only. Clients that send no Origin (non-browser) are always allowed.
    allowed_origins: str = ""
    login_failures_per_username: int = 10  # failed sign-ins per window, then 429
    login_failures_per_ip: int = 100
    login_window_seconds: int = 15 * 60
    registrations_per_ip: int = 1000  # per registration window
    registration_window_seconds: int = 60 * 60
    # Seconds a stopping worker waits for in-flight writes to commit and publish.
    shutdown_grace_seconds: float = 10.0
    log_format: str = "json"  # json lines, or "text"
    db_pool_size: int = 10
    # Seconds a database call may take (connect, statement, waiting for a pooled connection)
    # before the request fails with 503: a database that stops answering must not hang them.
    db_timeout: float = 5.0
    log_level: str = "info"
    # The change log (README: "Delivery guarantees").
    # How often each worker's relay looks for work; on PostgreSQL, NOTIFY wakes it at once
    # for changes made outside the service.
    relay_interval_seconds: float = 1.0
    # A change still unpublished this long after its commit lost its fast-path publish.
    relay_grace_seconds: float = 2.0
    relay_lease_seconds: float = 10.0  # a relay's claim on a batch, then another may take it
    # How often each worker marks its fast-path publishes in the log and publishes the resume
    # watermark: a resume re-sends about this much more than the client needed.
    watermark_interval_seconds: float = 0.2
    changelog_retention_seconds: float = 24 * 60 * 60
    changelog_max_per_hashtag: int = 1000
    changelog_prune_interval_seconds: float = 60.0
    sse_keepalive_seconds: float = 15.0
    # Tests only: a worker dies between commit and publish of a post whose body holds this.
    fault_kill_before_publish: str = ""
    # Signs the /admin session cookie. Unset: derived from the JWT secret (a different key,
    # so neither signature can stand in for the other).
    admin_secret: str | None = None
    admin_session_seconds: int = 8 * 60 * 60  # an admin signs in again after this long
    admin_cookie_secure: bool = False  # set behind HTTPS: the cookie then travels on it only

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, url: str) -> str:
        """Accept plain URLs (postgresql://, sqlite://) and pick the async driver."""
        for plain, driver in (
            ("postgres://", "postgresql+asyncpg://"),
            ("postgresql://", "postgresql+asyncpg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if url.startswith(plain):
                return driver + url[len(plain) :]
        return url

    @field_validator("redis_url")
    @classmethod
    def _empty_is_unset(cls, url: str | None) -> str | None:
        return url or None

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(
            o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()
        )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def embedded(self) -> bool:
        """The one-command default: a local SQLite file, no servers to configure."""
        return self.is_sqlite

    @cached_property
    def secret(self) -> str:
        """The JWT signing key: configured, or on the embedded default kept in a local file."""
        if self.jwt_secret:
            return self.jwt_secret
        if not self.embedded:
            raise ConfigError(
                "JWT_SECRET is not set. Outside the embedded SQLite default livepost refuses to "
                "start without a signing secret (e.g. JWT_SECRET=$(openssl rand -hex 32))."
            )
        return _load_or_create_secret(Path(self.jwt_secret_file))

    @cached_property
    def admin_session_secret(self) -> str:
        if self.admin_secret:
            return self.admin_secret
        return hmac.new(self.secret.encode(), b"livepost admin session", "sha256").hexdigest()


def _load_or_create_secret(path: Path) -> str:
    """Read the local secret, creating it atomically (O_EXCL) so concurrent starts agree."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text().strip()
        if value:
            return value
        raise ConfigError(f"{path} exists but is empty; delete it or set JWT_SECRET") from None
    value = secrets.token_hex(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value
