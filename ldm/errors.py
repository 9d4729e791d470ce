"""The user-facing error type shared by main.py, the trainer and the inference scripts (no heavy imports)."""


class UsageError(ValueError):
    """The command line or an input is wrong (bad resume path, conflicting flags, an unreadable image): the CLIs print
    `error: <message>` and exit with status 2."""
