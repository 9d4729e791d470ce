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
