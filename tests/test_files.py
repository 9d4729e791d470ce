import os

import pytest

from ldm.files import atomic_write


def test_atomic_write_renames_and_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "sub" / "out.bin"
    assert atomic_write(str(path), lambda f: f.write(b"abc")) == str(path)
    assert path.read_bytes() == b"abc"

    def broken(f):
        f.write(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(str(path), broken)
    assert path.read_bytes() == b"abc"  # the old file is intact
    assert os.listdir(path.parent) == ["out.bin"]  # no temporary file left


def test_staging_dir_gets_the_mode_makedirs_would_give(tmp_path):
    import stat

    from ldm.files import staging_dir

    old = os.umask(0o022)
    try:
        path = staging_dir(str(tmp_path / "sub" / "export"))
    finally:
        os.umask(old)
    assert os.path.dirname(path) == str(tmp_path / "sub") and os.path.basename(path).startswith(".export.")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755  # not mkdtemp's 0700, which a rename would keep
