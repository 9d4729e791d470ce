"""AtomicCheckpointIO: a save killed mid-write keeps the old file; weights_only loading policy."""

import os

import pytest
import torch

from ldm.checkpoint import CheckpointError
from ldm.trainer.checkpoint_io import AtomicCheckpointIO


class NotATensor:
    """A pickled object that weights_only=True refuses."""

    def __init__(self, value=1):
        self.value = value


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, str(path))

    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes of a torn checkpoint")
        raise KeyboardInterrupt("killed during the save")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, str(path))
    monkeypatch.setattr(torch, "save", real_save)

    restored = io.load_checkpoint(str(path))
    assert restored["global_step"] == 1 and torch.equal(restored["state_dict"]["w"], torch.ones(3))
    assert os.listdir(path.parent) == ["last.ckpt"]  # no temp file left behind


def test_save_replaces_and_rejects_storage_options(tmp_path):
    io = AtomicCheckpointIO()
    path = str(tmp_path / "a.ckpt")
    io.save_checkpoint({"global_step": 1}, path)
    io.save_checkpoint({"global_step": 2}, path)
    assert io.load_checkpoint(path)["global_step"] == 2
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({}, path, storage_options={"x": 1})


def test_pickles_are_refused_even_in_a_run_folder_unless_the_user_names_the_file(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    named, other = folder / "last.ckpt", folder / "other.ckpt"
    for path in (named, other):
        torch.save({"state_dict": {}, "hyper_parameters": NotATensor(3)}, str(path))
    with pytest.raises(CheckpointError, match="--unsafe-load"):  # its folder alone earns no trust
        AtomicCheckpointIO().load_checkpoint(str(named))
    io = AtomicCheckpointIO(unsafe_files=[str(named)])
    assert io.load_checkpoint(str(named))["hyper_parameters"].value == 3
    with pytest.raises(CheckpointError):
        io.load_checkpoint(str(other))
    with pytest.raises(CheckpointError, match="not found"):
        io.load_checkpoint(str(folder / "missing.ckpt"))
