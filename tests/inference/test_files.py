from ldm.inference.files import atomic_write, count_done, next_index, numbered_indices, numbered_name


def test_atomic_write_is_the_shared_helper():
    import ldm.files

    assert atomic_write is ldm.files.atomic_write  # one implementation (tests/test_files.py), importable here too


def test_numbered_outputs(tmp_path):
    assert next_index(str(tmp_path / "missing")) == 0 and count_done(str(tmp_path)) == 0
    for i in (0, 1, 3):
        (tmp_path / numbered_name(i)).write_bytes(b"")
    (tmp_path / ".00002.png.abc.tmp").write_bytes(b"")  # an interrupted write does not count
    (tmp_path / "grid-0007.png").write_bytes(b"")
    assert numbered_name(3) == "00003.png" and numbered_name(7, 4, prefix="grid-") == "grid-0007.png"
    assert numbered_indices(str(tmp_path)) == {0, 1, 3}
    assert next_index(str(tmp_path)) == 4 and count_done(str(tmp_path)) == 2
    assert next_index(str(tmp_path), prefix="grid-") == 8
