"""Atomic saves under faults: file modes, disk full, permissions, stale temporary files, a save killed with -9."""

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import pytest
import torch

import ldm.files
from ldm.checkpoint import SaveError as CheckpointSaveError
from ldm.checkpoint import atomic_save, load_checkpoint, tensor_bytes
from ldm.files import SaveError, atomic_write, is_temp_name, remove_stale_temp_files
from reliability_helpers import FullDisk

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mode_of(path):
    return os.stat(path).st_mode & 0o7777


def write_old(path):
    atomic_save({"v": torch.tensor(1)}, str(path))


def assert_old_intact(path):
    assert load_checkpoint(str(path))["v"].item() == 1
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_new_file_gets_the_mode_open_would_give(tmp_path, umask):
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w"):
            pass
        atomic_write(str(tmp_path / "atomic.txt"), lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "atomic.txt") == mode_of(tmp_path / "plain.txt") == 0o666 & ~umask


def test_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    atomic_write(str(path), lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and mode_of(path) == 0o640


def test_temp_name_is_the_one_the_cleaner_knows(tmp_path):
    seen = []
    atomic_write(str(tmp_path / "last.ckpt"), lambda f: seen.extend(os.listdir(tmp_path)))
    assert len(seen) == 1 and seen[0].startswith(".last.ckpt.") and is_temp_name(seen[0])


def test_not_enough_free_space_fails_before_writing(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    write_old(path)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(free=1000))
    big = {"w": torch.zeros(250_000), "tied": None}
    big["tied"] = big["w"]  # one storage, counted once
    assert tensor_bytes(big) == 1_000_000
    with pytest.raises(SaveError) as info:
        atomic_save(big, str(path))
    message = str(info.value)
    assert message == (f"cannot write {path}: 1.0 KB free on {tmp_path}, about 1.0 MB needed "
                       "(free space or point the log dir elsewhere)")
    assert info.value.errno == errno.ENOSPC and CheckpointSaveError is SaveError
    called = []
    with pytest.raises(OSError, match="free space"):  # still an OSError for old handlers
        atomic_write(str(path), called.append, expected_bytes=5000)
    assert not called
    monkeypatch.undo()
    assert_old_intact(path)


def test_disk_full_mid_write(tmp_path):
    path = tmp_path / "last.ckpt"
    write_old(path)

    def fills_the_disk(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SaveError, match=re.escape(f"cannot write {path}: no space left on device, ")) as info:
        atomic_write(str(path), fills_the_disk)
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert_old_intact(path)


def test_torch_save_wrapping_enospc_into_runtime_error(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    write_old(path)
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, FullDisk(f, 2000)))
    with pytest.raises(SaveError, match="no space left on device") as info:
        atomic_save({"w": torch.zeros(10_000)}, str(path))
    assert isinstance(info.value.__cause__, RuntimeError)  # torch's "unexpected pos" error, kept
    monkeypatch.undo()
    assert_old_intact(path)


def test_runtime_error_is_blamed_on_the_disk_only_when_it_is_full(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"

    def broken(f):
        raise RuntimeError("unexpected pos 704 vs 598")

    with pytest.raises(RuntimeError, match="unexpected pos"):  # plenty of space: the original error
        atomic_write(str(path), broken)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(free=0))
    with pytest.raises(SaveError, match="no space left on device, 0 B free"):
        atomic_write(str(path), broken)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("code, text", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system")])
def test_permission_errors(tmp_path, code, text):
    path = tmp_path / "last.ckpt"
    write_old(path)

    def refused(f):
        raise OSError(code, os.strerror(code))

    with pytest.raises(SaveError) as info:
        atomic_write(str(path), refused)
    assert str(info.value) == f"cannot write {path}: {text}" and info.value.errno == code
    assert_old_intact(path)


NOBODY = 65534


def write_as_nobody(path):
    """atomic_write `path` in a forked child, as uid nobody when we are root (root ignores folder permissions);
    returns the child's error message ("" on success)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        message = b""
        try:
            if os.geteuid() == 0:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            atomic_write(path, lambda f: f.write(b"x"))
        except SaveError as err:
            message = str(err).encode()
        except BaseException as err:
            message = f"unexpected {err!r}".encode()
        os.write(write, message)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode()
    os.waitpid(pid, 0)
    return message


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_read_only_folder():
    base = tempfile.mkdtemp()  # in the system temp dir, so that uid nobody can reach it
    try:
        os.chmod(base, 0o755)
        folder = os.path.join(base, "ro")
        os.mkdir(folder, 0o500)
        if os.geteuid() == 0:
            os.chown(folder, NOBODY, NOBODY)
        path = os.path.join(folder, "last.ckpt")
        assert write_as_nobody(path) == f"cannot write {path}: permission denied"
        assert os.listdir(folder) == []
    finally:
        shutil.rmtree(base)


def test_interrupts_are_not_rewrapped(tmp_path):
    def interrupted(f):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(tmp_path / "x"), interrupted)
    assert os.listdir(tmp_path) == []


def test_remove_stale_temp_files(tmp_path):
    keep = ["last.ckpt", "x.tmp", ".hidden", ".last.ckpt.tmp", "a.last.ckpt.abc123.tmp"]
    for name in keep + [".last.ckpt.abc123.tmp", ".epoch=1.ckpt.k2_9zx1a.tmp"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".dir.ckpt.abc123.tmp").mkdir()  # a folder named like one of ours
    (tmp_path / ".link.ckpt.abc123.tmp").symlink_to(tmp_path / "last.ckpt")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".nested.ckpt.abc123.tmp").write_bytes(b"x")  # not recursive
    removed = remove_stale_temp_files(str(tmp_path))
    assert removed == [str(tmp_path / ".epoch=1.ckpt.k2_9zx1a.tmp"), str(tmp_path / ".last.ckpt.abc123.tmp")]
    assert sorted(os.listdir(tmp_path)) == sorted(keep + [".dir.ckpt.abc123.tmp", ".link.ckpt.abc123.tmp", "sub"])
    assert (tmp_path / "sub" / ".nested.ckpt.abc123.tmp").exists()
    assert remove_stale_temp_files(str(tmp_path / "missing")) == []


CHILD = """
import sys, torch
from ldm.checkpoint import atomic_save
big = {"w": torch.randn(5_000_000), "step": 0}
print("ready", flush=True)
while True:
    big["step"] += 1
    atomic_save(big, sys.argv[1])
"""


def test_save_killed_with_sigkill_leaves_old_file_or_nothing_torn(tmp_path):
    target = tmp_path / "last.ckpt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(target)], stdout=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(1.0 + 0.3 * (os.getpid() % 3))  # land somewhere inside a save
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    leftovers = [name for name in os.listdir(tmp_path) if name != "last.ckpt"]
    assert all(is_temp_name(name) for name in leftovers), leftovers
    assert remove_stale_temp_files(str(tmp_path)) == sorted(str(tmp_path / name) for name in leftovers)
    assert os.listdir(tmp_path) in ([], ["last.ckpt"])
    if target.exists():
        saved = load_checkpoint(str(target))
        assert saved["w"].shape == (5_000_000,) and saved["step"] >= 1


def test_checkpoint_module_uses_the_files_module():
    assert ldm.files.SaveError is CheckpointSaveError and issubclass(SaveError, OSError)
