"""Atomic file writes (temporary name in the same folder, fsync, then rename): the one copy of that logic.

Also the one place that knows the temporary names (`.<name>.<random>.tmp`, cleaned by `remove_stale_temp_files`) and
turns a failed write (disk full, permission denied, read-only file system) into one `SaveError` naming the file.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable
from typing import IO

TEMP_SUFFIX = ".tmp"
# mkstemp's random part: `tempfile._RandomNameSequence` draws 8 of [a-z0-9_]; accept 6+ so older names match too
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<random>[a-z0-9_]{6,})" + re.escape(TEMP_SUFFIX) + "$")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_DENIED = {errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EROFS: "read-only file system"}
_LOW_SPACE = 1 << 20  # after a torch.save RuntimeError, less than this free on the folder means the disk filled up
_umask_lock = threading.Lock()


class SaveError(OSError):
    """A file could not be written (disk full, permission denied, read-only file system); the message names the file
    and says what to do. An OSError, so existing `except OSError` handlers still catch it; the original error is
    kept as `__cause__`."""


def temp_prefix(path: str) -> str:
    """Prefix of the temporary files `atomic_write` makes for `path` (`TEMP_NAME` matches the full names)."""
    return "." + os.path.basename(path) + "."


def is_temp_name(name: str) -> bool:
    """Whether a file name (no folder) is one of our temporary names, `.<name>.<random>.tmp`."""
    return TEMP_NAME.match(name) is not None


def human_size(n: float) -> str:
    """Bytes as a short decimal size: '512 B', '20.0 MB', '3.4 GB'."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _current_umask() -> int:
    """The process umask, read without leaving it changed."""
    try:  # Linux >= 4.7 shows it here: no change at all, so safe next to threads creating files
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    # Elsewhere the only way is to set it and put it back. Another thread creating a file in between would get
    # umask 0 for it; the lock only serialises our own readers, it cannot protect foreign code.
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def staging_dir(target: str) -> str:
    """A new hidden folder next to `target` to build it in before renaming it to `target`; it gets the mode
    `os.makedirs` would give (mkdtemp's 0700 would otherwise stay on the renamed folder)."""
    import tempfile

    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    path = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=parent)
    os.chmod(path, 0o777 & ~_current_umask())
    return path


def _target_mode(path: str) -> int:
    """Permission bits for the new file: those of the file it replaces, else what `open(path, "w")` would give."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_current_umask()


def _free_bytes(folder: str) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _no_space_error(path: str, folder: str, free: int | None, needed: int | None, precheck: bool) -> SaveError:
    need = f", about {human_size(needed)} needed" if needed else ""
    have = f"{human_size(free)} free on {folder}" if free is not None else f"no free space on {folder}"
    reason = "" if precheck else "no space left on device, "
    err = SaveError(f"cannot write {path}: {reason}{have}{need} (free space or point the log dir elsewhere)")
    err.errno = errno.ENOSPC
    return err


def check_free_space(path: str, needed: int) -> None:
    """Raise SaveError, before anything is written, when the folder of `path` clearly has less than `needed` bytes
    free. `needed` should be a lower bound (e.g. the tensor bytes of a checkpoint): the old file is only replaced
    after the new one is complete, so its space does not count."""
    folder = os.path.dirname(os.path.abspath(path))
    free = _free_bytes(folder)
    if free is not None and needed > free:
        raise _no_space_error(path, folder, free, needed, precheck=True)


def _errno_in_chain(err: BaseException) -> int | None:
    """The first errno we know how to explain, following __cause__ / __context__ (torch.save wraps OSErrors into
    RuntimeErrors)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and (current.errno in _NO_SPACE or current.errno in _DENIED):
            return current.errno
        current = current.__cause__ or current.__context__
    return None


def _explain(err: BaseException, path: str, folder: str, needed: int | None) -> SaveError | None:
    """A SaveError for a failed write, or None when the failure is not about space or permissions."""
    if not isinstance(err, Exception) or isinstance(err, SaveError):
        return None
    code = _errno_in_chain(err)
    if code in _NO_SPACE:
        return _no_space_error(path, folder, _free_bytes(folder), needed, precheck=False)
    if code in _DENIED:
        denied = SaveError(f"cannot write {path}: {_DENIED[code]}")
        denied.errno = code
        return denied
    if isinstance(err, RuntimeError):  # torch.save's C++ writer may lose the errno; the disk itself still tells
        free = _free_bytes(folder)
        if free is not None and free < _LOW_SPACE:
            return _no_space_error(path, folder, free, needed, precheck=False)
    return None


def atomic_write(path: str, write: Callable[[IO[bytes]], None], expected_bytes: int | None = None) -> str:
    """Call `write(f)` on a hidden temporary file next to `path`, fsync, then rename it to `path`; returns `path`.

    A killed process leaves at most a `.name.*.tmp` file behind (see `remove_stale_temp_files`), never a torn
    `path`; on an exception the temporary file is removed and an existing `path` is left as it was. The new file
    gets the mode of the file it replaces, else the one `open(path, "w")` would give. With `expected_bytes` (a lower
    bound of the size) a folder without that much free space fails before writing. Disk full, permission denied
    and read-only file systems raise `SaveError` naming `path`.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        if expected_bytes:
            check_free_space(path, expected_bytes)
        mode = _target_mode(path)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=folder)
        with os.fdopen(fd, "wb") as f:
            try:
                os.fchmod(f.fileno(), mode)  # mkstemp made it 0600
            except OSError:  # some file systems (FAT, some network mounts) refuse chmod: keep mkstemp's mode
                pass
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        explained = _explain(err, path, folder, expected_bytes)  # before removing tmp: a full disk is still full
        if tmp is not None and os.path.lexists(tmp):
            os.remove(tmp)
        if explained is None:
            raise
        raise explained from err
    return path


def remove_stale_temp_files(folder: str) -> list[str]:
    """Delete the temporary files that killed `atomic_write` calls left directly in `folder`; returns their paths.

    Only regular files named `.<name>.<random>.tmp` go; other files, folders, symlinks and subfolders are left.
    A missing folder is fine. Call it when no other process can be writing into `folder` (e.g. at training start,
    on rank zero), since an in-progress write's temporary file looks the same.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if is_temp_name(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.remove(entry.path)
            except FileNotFoundError:  # someone else cleaned it meanwhile
                continue
            removed.append(entry.path)
    return sorted(removed)
