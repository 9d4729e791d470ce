"""scripts/convert_checkpoint.py and load_checkpoint against hostile and odd checkpoints."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from ldm.checkpoint import CheckpointError, UnsafeCheckpointError, load_checkpoint, load_checkpoint_trusted

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "convert_checkpoint.py")


def load_script():
    spec = importlib.util.spec_from_file_location("convert_checkpoint", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert = load_script()


class Evil:
    """Unpickling this creates `marker`: stands for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil_ckpt(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "x": Evil(marker)}, str(path))
    return path, marker


def weights():
    torch.manual_seed(0)
    return {"encoder.weight": torch.randn(4, 3), "encoder.bias": torch.randn(4), "scale": torch.tensor(2.0)}


@pytest.fixture
def pickled_ckpt(tmp_path):
    """Benign, but not weights_only-safe: a pathlib.Path among the top-level fields."""
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": weights(), "global_step": 7, "epoch": 2, "data_root": pathlib.Path("/data"),
                "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]}]},
               str(path))
    return path


def test_load_checkpoint_refuses_code_and_names_the_converter(evil_ckpt):
    path, marker = evil_ckpt
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(str(path))
    message = str(info.value)
    assert not marker.exists()
    assert str(path) in message and "\n" not in message and info.value.reason.endswith("io.open")
    stem = str(path)[:-len(".ckpt")]
    assert f"python scripts/convert_checkpoint.py {path} {stem}.safetensors --trust-this-file" in message


def test_corrupt_file_is_not_called_unsafe(tmp_path, pickled_ckpt):
    path = tmp_path / "torn.ckpt"
    path.write_bytes(pickled_ckpt.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_checkpoint(str(path))
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_converter_refuses_code_without_the_flag(evil_ckpt, capsys):
    path, marker = evil_ckpt
    out = path.parent / "out.safetensors"
    assert convert.run([str(path), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path} is not a weights-only checkpoint") and "\n" not in err
    assert "--trust-this-file only if you trust where the file came from" in err
    assert not marker.exists() and not out.exists()


def test_converter_cli_exit_status(evil_ckpt):
    path, marker = evil_ckpt
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, SCRIPT, str(path), str(path.parent / "out.ckpt")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and str(path) in result.stderr and "--trust-this-file" in result.stderr
    assert not marker.exists()


def test_trusted_file_to_safetensors(pickled_ckpt, capsys):
    from safetensors import safe_open

    out = pickled_ckpt.parent / "new.safetensors"
    assert convert.run([str(pickled_ckpt), str(out), "--trust-this-file"]) == 0
    assert f"wrote {out}: 3 tensors" in capsys.readouterr().out
    state = load_checkpoint(str(out))["state_dict"]
    assert state.keys() == weights().keys() and all(torch.equal(state[k], v) for k, v in weights().items())
    with safe_open(str(out), "pt") as f:
        assert f.metadata() == {"format": "pt", "source": "old.ckpt"}


def test_trusted_file_to_weights_only_ckpt(pickled_ckpt, capsys):
    out = pickled_ckpt.parent / "new.ckpt"
    assert convert.run([str(pickled_ckpt), str(out), "--trust-this-file"]) == 0
    assert "data_root" in capsys.readouterr().out  # the dropped field is listed
    saved = load_checkpoint(str(out))
    assert sorted(saved) == ["epoch", "global_step", "optimizer_states", "state_dict"]
    assert saved["global_step"] == 7 and saved["optimizer_states"][0]["param_groups"][0]["lr"] == 1e-4
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in weights().items())
    assert load_checkpoint_trusted(str(pickled_ckpt))["data_root"] == pathlib.Path("/data")

    only = pickled_ckpt.parent / "only.pt"
    assert convert.run([str(pickled_ckpt), str(only), "--trust-this-file", "--state-dict-only"]) == 0
    assert list(load_checkpoint(str(only))) == ["state_dict"]


def test_shared_and_view_tensors_to_safetensors(tmp_path):
    w = torch.randn(4, 4)
    state = {"embed.weight": w, "head.weight": w, "row": w[1], "t": w.t(), "other": torch.arange(3)}
    path = tmp_path / "tied.pt"
    torch.save(state, str(path))  # weights_only-safe: no flag needed
    out = tmp_path / "tied.safetensors"
    assert convert.run([str(path), str(out)]) == 0
    loaded = load_checkpoint(str(out))["state_dict"]
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())


def test_bad_arguments_and_unreadable_input(tmp_path, pickled_ckpt, capsys):
    assert convert.run([str(pickled_ckpt), str(pickled_ckpt), "--trust-this-file"]) == 2  # never overwrite IN
    assert convert.run([str(pickled_ckpt), str(tmp_path / "out.txt")]) == 2
    assert convert.run([str(tmp_path / "missing.ckpt"), str(tmp_path / "out.ckpt")]) == 1
    err = capsys.readouterr().err
    assert "OUT is IN" in err and "must end with .safetensors" in err and "not found" in err
    assert sorted(os.listdir(tmp_path)) == ["old.ckpt"]
