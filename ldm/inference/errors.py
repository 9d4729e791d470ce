"""The one error type for bad inference input (paths, flags, images): scripts print it and exit with status 2."""

from ldm.trainer.cli import UsageError  # the same class main.py uses for a wrong command line

__all__ = ["UsageError"]
