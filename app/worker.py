"""How a livepost worker runs under uvicorn: the one definition of its options.

The Dockerfile's CMD (`livepost worker`), `livepost serve`, `livepost cluster` and the tests
all start workers from `uvicorn_options`. When these flags were copied by hand, the
Dockerfile's copy lost `--ws-max-size`: uvicorn's 16 MiB default then let each socket make
the worker buffer 16 MiB before the app's 64 KiB limit was checked.
"""

from __future__ import annotations

import sys
from typing import Any

from app.config import Settings

APP = "app.main:app"
# livepost's WebSocket protocol (app/transport/wsprotocol.py), chosen here and only named:
# uvicorn imports it when a worker starts, so nothing else depends on the uvicorn internals
# it builds on.
WS_PROTOCOL = "app.transport.wsprotocol:LiveSocketProtocol"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options (`uvicorn.run`/`uvicorn.Config` keywords) for a worker with settings."""
    return {
        # uvicorn buffers up to this much of one frame; the app closes with 1009 past its limit.
        "ws_max_size": settings.ws_max_frame_bytes + 1024,
        # Leaner than uvicorn's own, with event frames written straight to the socket.
        "ws": WS_PROTOCOL,
        # permessage-deflate would add a compressor (~48 kB) per socket and CPU per event.
        "ws_per_message_deflate": False,
        "ws_ping_interval": settings.ws_ping_interval,
        "ws_ping_timeout": settings.ws_ping_timeout,
        "access_log": False,  # the app logs requests itself, without query strings (tokens)
        # A client that never reads would otherwise hold uvicorn's shutdown forever.
        "timeout_graceful_shutdown": int(settings.shutdown_grace_seconds) + 5,
        "log_level": settings.log_level,
    }


def run(settings: Settings, *, host: str, port: int, workers: int = 1) -> None:
    """Serve until stopped: one worker, or uvicorn's supervisor over `workers` of them."""
    import uvicorn

    uvicorn.run(APP, host=host, port=port, workers=workers, **uvicorn_options(settings))


def uvicorn_command(settings: Settings, *, host: str, port: int) -> list[str]:
    """The same worker as a `python -m uvicorn` command line.

    `livepost cluster` starts its workers this way rather than through `livepost worker`: the
    benchmark runs earlier checkouts of livepost with the cluster code of this one."""
    flags: list[str] = []
    for name, value in uvicorn_options(settings).items():
        if name == "access_log":
            flags.append("--access-log" if value else "--no-access-log")
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            flags += ["--" + name.replace("_", "-"), text]
    return [
        sys.executable, "-m", "uvicorn", APP, "--host", host, "--port", str(port), *flags,
    ]  # fmt: skip
