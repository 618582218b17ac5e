"""The CLI's one error type: a command that cannot do what was asked."""


class CommandError(Exception):
    """Printed as `livepost: <message>` (exit 1), without a traceback."""
