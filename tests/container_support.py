"""The worker as the container starts it: the Dockerfile's CMD, run here (Docker cannot be)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


def container_command() -> list[str]:
    """The Dockerfile's CMD (exec form), its program found as the image finds it: on the PATH
    of the virtualenv (the image's /opt/venv/bin; this interpreter's here). The image's
    environment sets HOST and PORT; the caller sets its own."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    [line] = [line for line in text.splitlines() if line.startswith("CMD ")]
    command = json.loads(line.removeprefix("CMD "))
    program = shutil.which(command[0], path=str(Path(sys.executable).parent))
    assert program is not None, f"{command[0]} is not installed beside {sys.executable}"
    return [program, *command[1:]]
