import os

import numpy as np
import pytest
import torch

from ldm.checkpoint import CheckpointError, atomic_save, load_checkpoint, load_state_dict


def compvis_style_checkpoint():
    """What PL 1.x / CompVis checkpoints pickle next to the weights: callback classes as keys, numpy scalars."""
    from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint

    return {
        "epoch": 3,
        "global_step": 1000,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": {"encoder.conv_in.weight": torch.randn(4, 3, 3, 3)},
        "callbacks": {ModelCheckpoint: {"best_model_score": np.float64(0.25), "best_model_path": "x.ckpt"}},
    }


def test_loads_compvis_style_checkpoint_with_weights_only(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save(compvis_style_checkpoint(), path)
    sd = load_state_dict(str(path))
    assert list(sd) == ["encoder.conv_in.weight"]


def test_rejects_arbitrary_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(str(path))


def test_safetensors_and_missing_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(2)}, str(path))
    assert torch.equal(load_state_dict(str(path))["a"], torch.ones(2))
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(str(tmp_path / "nope.ckpt"))


def test_atomic_save_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_save({"v": torch.tensor(1)}, str(path))

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"v": torch.tensor(2)}, str(path))
    monkeypatch.undo()
    assert load_checkpoint(str(path))["v"].item() == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temp file left behind
