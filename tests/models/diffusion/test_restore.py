"""Checkpoint loading for the diffusion models: ignore_keys, the key report, make_it_fit, shape errors."""
import pytest
import torch
from torch import nn

from ldm.checkpoint import CheckpointError
from ldm.models.diffusion.restore import drop_ignored, fit_tensor, restore_weights


class Net(nn.Module):
    def __init__(self, cin=2):
        super().__init__()
        self.model = nn.Conv2d(cin, 3, 1)
        self.head = nn.Linear(3, 3)


def test_fit_tensor_tiles_and_keeps_outputs_for_repeated_inputs():
    old = torch.randn(3, 2, 1, 1)
    new = fit_tensor(old, torch.Size([5, 4, 1, 1]))
    assert new.shape == (5, 4, 1, 1)
    assert torch.equal(new[3, 0], old[0, 0] / 2) and torch.equal(new[4, 3], old[1, 1] / 2)
    x = torch.randn(2)
    # feeding the same 2 input channels twice reproduces the old output (per kept output channel)
    assert torch.allclose(new[:3, :, 0, 0] @ torch.cat([x, x]), old[:, :, 0, 0] @ x)
    assert torch.equal(fit_tensor(torch.arange(3.0), torch.Size([5])), torch.tensor([0.0, 1, 2, 0, 1]))
    with pytest.raises(CheckpointError, match="first two axes"):
        fit_tensor(old, torch.Size([3, 2, 3, 3]), "w")


def test_restore_reports_and_ignores(tmp_path, caplog):
    src = Net()
    state = {**src.state_dict(), "extra.weight": torch.zeros(1)}
    path = tmp_path / "a.ckpt"
    torch.save({"state_dict": state}, path)
    dst = Net()
    report = restore_weights(dst, str(path), ignore_keys=["head."])
    assert torch.equal(dst.model.weight, src.model.weight) and not torch.equal(dst.head.weight, src.head.weight)
    assert sorted(report.ignored) == ["head.bias", "head.weight"]
    assert sorted(report.missing) == ["head.bias", "head.weight"] and report.unexpected == ["extra.weight"]
    assert "2 missing and 1 unexpected keys" in caplog.text


def test_shape_mismatch_is_an_error_unless_make_it_fit(tmp_path):
    path = tmp_path / "b.ckpt"
    torch.save(Net(cin=2).state_dict(), path)
    with pytest.raises(CheckpointError, match="model.weight"):
        restore_weights(Net(cin=4), str(path))
    report = restore_weights(Net(cin=4), str(path), fit=True)
    assert report.refit == ["model.weight"]


def test_only_model_accepts_full_checkpoint_keys(tmp_path):
    src = Net()
    path = tmp_path / "c.ckpt"
    torch.save({"state_dict": src.state_dict()}, path)
    dst = Net()
    report = restore_weights(dst, str(path), only_model=True)
    assert torch.equal(dst.model.weight, src.model.weight) and report.loaded == 2
    with pytest.raises(CheckpointError, match="shares no weights"):
        torch.save({"other.weight": torch.zeros(1)}, path)
        restore_weights(Net(), str(path))


def test_drop_ignored_prefixes():
    state = {"a.x": 1, "ab.y": 2, "b.z": 3}
    kept, removed = drop_ignored(state, ["a."])
    assert kept == {"ab.y": 2, "b.z": 3} and removed == ["a.x"]
