"""Python logging for the command-line tools: short INFO lines on the console, everything in `<logdir>/log.txt`.

Library code keeps using `logging.getLogger(__name__)`; main.py and the scripts call `setup_logging` once.
Console: INFO as the bare message (main.py: stdout; scripts: stderr, their stdout is for results), WARNING and
above on stderr as `warning: ...`. Under DDP only rank 0 shows INFO; other ranks show warnings prefixed `[rank N]`.
The log file (rank 0, once the run folder exists, `attach_logfile`) also receives the records emitted before it
was opened (buffered) and every Python warning, with time, level and logger name.
Lightning's loggers are made to propagate here instead of printing through their own handler, so each of their
messages appears once.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, TextIO

LOG_FILE = "log.txt"
# Loggers shown at INFO (the root stays at WARNING, so chatty third-party INFO stays hidden).
INFO_LOGGERS = ("ldm", "main", "__main__", "pytorch_lightning", "lightning", "lightning_fabric")
# Loggers to which Lightning attaches its own console handler when the root logger has none at import time.
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Records kept until the run folder exists (messages from building the model, e.g. "Restored from ...").
BUFFER_LIMIT = 10_000


class ConsoleFormatter(logging.Formatter):
    """The bare message; `warning: ` / `error: ` before WARNING and above (unless the record has `bare=True`:
    a line already worded for the user); `[rank N] ` on ranks > 0."""

    def __init__(self, rank: int = 0):
        super().__init__("%(message)s")
        self.prefix = f"[rank {rank}] " if rank else ""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        level = record.levelname.lower()
        bare = getattr(record, "bare", False)
        if record.levelno >= logging.WARNING and not bare and not message.lower().startswith(level):
            message = f"{level}: {message}"
        return self.prefix + message


class ConsoleHandler(logging.Handler):
    """Writes to the current sys.stdout / sys.stderr at emit time (so redirection and pytest capture work)."""

    def __init__(self, level: int, info_to_stdout: bool):
        super().__init__(level)
        self.info_to_stdout = info_to_stdout

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream: TextIO = sys.stdout if self.info_to_stdout and record.levelno < logging.WARNING else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


class BufferHandler(logging.Handler):
    """Keeps up to BUFFER_LIMIT records until `attach_logfile` replays them into the file."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < BUFFER_LIMIT:
            self.records.append(record)


@dataclass
class _State:
    depth: int = 0
    rank: int = 0
    handlers: list[logging.Handler] = field(default_factory=list)
    file_sink: logging.Handler | None = None  # the buffer, then the file handler
    saved_levels: dict[str, int] = field(default_factory=dict)
    saved_lightning: dict[str, tuple[list[logging.Handler], bool]] = field(default_factory=dict)
    saved_showwarning: Any = None
    showwarning: Any = None


_state = _State()


# Where launchers put a process's rank, in the order Lightning reads them (lightning_fabric's rank_zero._get_rank).
RANK_ENV_VARS = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def current_rank() -> int:
    """Global rank of this process as Lightning reads it from the launcher's environment (0 when not distributed);
    read from the environment while Lightning is not imported yet, so `--help` need not import it."""
    rank_zero = sys.modules.get("lightning_fabric.utilities.rank_zero")
    if rank_zero is not None:
        return int(getattr(rank_zero.rank_zero_only, "rank", 0) or 0)
    for key in RANK_ENV_VARS:
        if os.environ.get(key, "").strip().isdigit():
            return int(os.environ[key])
    return 0


def setup_logging(rank: int | None = None, info_to_stdout: bool = True, logfile: bool = True) -> None:
    """Configure console logging and, with `logfile` on rank 0, buffer records for `attach_logfile`; nested calls
    only count depth (the outermost `teardown_logging` undoes it)."""
    _state.depth += 1
    if _state.depth > 1:
        return
    _state.rank = current_rank() if rank is None else int(rank)
    root = logging.getLogger()
    console = ConsoleHandler(logging.INFO if _state.rank == 0 else logging.WARNING, info_to_stdout)
    console.setFormatter(ConsoleFormatter(_state.rank))
    _state.handlers = [console]
    if _state.rank == 0 and logfile:
        _state.file_sink = BufferHandler()
        _state.handlers.append(_state.file_sink)
    for handler in _state.handlers:
        root.addHandler(handler)
    for name in INFO_LOGGERS:
        logger = logging.getLogger(name)
        _state.saved_levels[name] = logger.level
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
    for name in LIGHTNING_LOGGERS:  # their own stderr handler would print every message a second time
        logger = logging.getLogger(name)
        _state.saved_lightning[name] = (list(logger.handlers), logger.propagate)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
    if _state.file_sink is not None:
        _state.saved_showwarning = warnings.showwarning
        _state.showwarning = _make_showwarning(warnings.showwarning)
        warnings.showwarning = _state.showwarning


def _make_showwarning(previous: Any) -> Any:
    """A `warnings.showwarning` that also writes the warning into the log file, then shows it as before."""

    def showwarning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                    line: str | None = None) -> None:
        sink = _state.file_sink
        if sink is not None:
            record = logging.LogRecord("py.warnings", logging.WARNING, filename, lineno,
                                       f"{category.__name__}: {message}", None, None)
            sink.handle(record)
        previous(message, category, filename, lineno, file, line)

    return showwarning


def attach_logfile(logdir: str) -> str | None:
    """Start writing `<logdir>/log.txt` (appending) with the records buffered so far; rank 0 after
    `setup_logging` only (returns None otherwise, and when the file is already open)."""
    sink = _state.file_sink
    if _state.depth == 0 or not isinstance(sink, BufferHandler):
        return None
    path = os.path.join(logdir, LOG_FILE)
    os.makedirs(logdir, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    for record in sink.records:
        handler.handle(record)
    root = logging.getLogger()
    root.removeHandler(sink)
    root.addHandler(handler)
    _state.handlers = [h for h in _state.handlers if h is not sink] + [handler]
    _state.file_sink = handler
    return path


def teardown_logging() -> None:
    """Undo `setup_logging` (outermost call): remove our handlers, close the file, restore Lightning's loggers."""
    if _state.depth == 0:
        return
    _state.depth -= 1
    if _state.depth > 0:
        return
    root = logging.getLogger()
    for handler in _state.handlers:
        root.removeHandler(handler)
        handler.close()
    for name, level in _state.saved_levels.items():
        logging.getLogger(name).setLevel(level)
    for name, (handlers, propagate) in _state.saved_lightning.items():
        logger = logging.getLogger(name)
        logger.handlers = handlers + [h for h in logger.handlers if h not in handlers]  # original order first
        logger.propagate = propagate
    if _state.showwarning is not None and warnings.showwarning is _state.showwarning:
        warnings.showwarning = _state.saved_showwarning
    _state.__init__()  # type: ignore[misc]
