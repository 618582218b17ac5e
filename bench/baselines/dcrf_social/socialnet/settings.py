"""Settings of the DCRF social network (a benchmark baseline, not a deployment: the secret
is public, DEBUG is off only so that it runs as a production process would)."""

import os

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "rest_framework",
    "channels",
    "posts",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "socialnet.urls"
ASGI_APPLICATION = "socialnet.asgi.application"
TEMPLATES = []

# PostgreSQL; the benchmark creates the role and the database `dcrf` (PG* variables override).
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("PGDATABASE", "dcrf"),
        "USER": os.environ.get("PGUSER", "dcrf"),
        "PASSWORD": os.environ.get("PGPASSWORD", "dcrf"),
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        # Django's default (a connection per request; Channels' database_sync_to_async closes
        # old ones around every call).
        "CONN_MAX_AGE": int(os.environ.get("CONN_MAX_AGE", "0")),
    }
}

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# channels_redis 4 waits for messages with BZPOPMIN and a 5 s timeout, and expects the Redis
# connection to have no read timeout, as redis-py had before 8. redis-py 8 defaults the socket
# timeout to 5 s as well: a consumer idle for 5 s then gets a TimeoutError, dies, and daphne
# closes its socket with 1011. So no timeout, unless REDIS_SOCKET_TIMEOUT (e.g. 5, to see the
# failure) says otherwise.
_socket_timeout = os.environ.get("REDIS_SOCKET_TIMEOUT", "none")
REDIS_HOST = {
    "address": REDIS_URL,
    "socket_timeout": None if _socket_timeout == "none" else float(_socket_timeout),
}
# LAYER=redis (default): channels_redis.core.RedisChannelLayer; LAYER=pubsub: the
# RedisPubSubChannelLayer.
_LAYER = os.environ.get("LAYER", "redis")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": (
            "channels_redis.pubsub.RedisPubSubChannelLayer"
            if _LAYER == "pubsub"
            else "channels_redis.core.RedisChannelLayer"
        ),
        "CONFIG": {"hosts": [REDIS_HOST]},
    }
}

AUTH_PASSWORD_VALIDATORS = []
# A fast hash, so that bench_sessions creates its users quickly; not for real passwords.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
SESSION_ENGINE = "django.contrib.sessions.backends.db"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "WARNING")},
}
