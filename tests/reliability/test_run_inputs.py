"""main.py with bad values, unwritable places, a full disk and leftovers: one line naming the key or path, nothing
lost; and the resume command it prints does what it says."""

import os
import re

import pytest
import torch

import main
from ldm.checkpoint import load_checkpoint
from ldm.files import TEMP_SUFFIX, temp_prefix
from reliability_helpers import FullDisk
from trainer_helpers import ROOT, only_run_folder, write_config

CPU = os.path.join(ROOT, "configs", "overlays", "cpu.yaml")


def _train(tmp_path, *extra, steps=2, logs="logs"):
    cfg = write_config(tmp_path, max_steps=steps, enable_progress_bar=False)
    return main.main(["-b", cfg, "-t", "-l", str(tmp_path / logs), "--logger", "csv", *extra])


def _step(run):
    return load_checkpoint(os.path.join(run, "checkpoints", "last.ckpt"))["global_step"]


# ------------------------------------------------------------------------------------------------ values
@pytest.mark.parametrize("override, key, expected", [
    ("lightning.trainer.max_steps=abc", "lightning.trainer.max_steps", "expected int, got 'abc'"),
    ("lightning.trainer.val_check_interval=often", "lightning.trainer.val_check_interval", "expected int or float"),
    ("model.base_learning_rate=abc", "model.base_learning_rate", "expected float, got 'abc'"),
    ("data.params.batch_size=four", "data.params.batch_size", "int"),
])
def test_bad_numbers_name_the_key(tmp_path, capsys, override, key, expected):
    assert _train(tmp_path, override) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and key in err and expected in err, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "logs").exists()


def test_model_parameter_of_the_wrong_type_names_the_key(tmp_path, capsys):
    code = main.main(["-b", os.path.join(ROOT, "configs", "autoencoder_kl_f8.yaml"), CPU, "-t",
                      "-l", str(tmp_path / "logs"), "model.params.embed_dim=abc"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.params.embed_dim" in err and "'abc'" in err and "int" in err and "Traceback" not in err


def test_a_folder_given_as_base_config(tmp_path, capsys):
    code = main.main(["--base", os.path.join(ROOT, "configs"), "-t", "-l", str(tmp_path / "logs")])
    err = capsys.readouterr().err
    assert code == 2 and "is a folder; pass YAML files, e.g. " in err and "configs/autoencoder_kl_f" in err


def test_read_only_logdir_fails_before_building_anything(tmp_path, capsys, monkeypatch):
    import ldm.trainer.checks as checks

    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(checks.os, "access", lambda p, mode: False if str(p).startswith(str(ro)) else real(p, mode))
    code = _train(tmp_path, logs="ro/logs")
    err = capsys.readouterr().err
    assert code == 2 and f"cannot write {ro / 'logs'}" in err and "-l <a writable folder>" in err
    assert os.listdir(ro) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_logdir_for_real(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert _train(tmp_path, logs="ro/logs") == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)


def test_validation_interval_longer_than_a_small_folders_epoch(tmp_path, capsys):
    """16 images at batch 4 are 4 batches an epoch; validating every 6 batches becomes every 2 epochs."""
    assert _train(tmp_path, "lightning.trainer.val_check_interval=6", steps=12) == 0
    out = capsys.readouterr().out
    assert ("val_check_interval=6 is longer than an epoch (4 training batches): validating every 2 epoch(s) "
            "(8 batches) instead") in out
    run = only_run_folder(tmp_path / "logs")
    assert _step(run) == 12
    import csv

    with open(os.path.join(run, "metrics.csv")) as f:
        val_steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("val/loss")]
    assert val_steps == [7]  # after batch 8


# ------------------------------------------------------------------------------------------------ resume
def test_printed_resume_command_trains_and_a_finished_run_says_so(tmp_path, capsys):
    assert _train(tmp_path) == 0
    capsys.readouterr()
    run = only_run_folder(tmp_path / "logs")
    # `-r RUN` alone (what SIGTERM prints, what a requeue script runs) trains; more steps on the command line.
    assert main.main(["-r", run, "lightning.trainer.max_steps=4"]) == 0
    assert f"resuming from {run}/checkpoints/last.ckpt" in capsys.readouterr().out
    assert _step(run) == 4
    # Already at max_steps: exit 0 (nothing failed) but say that nothing was trained and how to train longer.
    assert main.main(["-r", run]) == 0
    out = capsys.readouterr().out
    assert "nothing trained: the run already reached lightning.trainer.max_steps=4" in out
    assert f"python main.py -r {run} lightning.trainer.max_steps=<more>" in out


def test_stale_temporary_checkpoints_are_removed_when_training_starts(tmp_path, capsys):
    assert _train(tmp_path) == 0
    run = only_run_folder(tmp_path / "logs")
    ckpts = os.path.join(run, "checkpoints")
    stale = os.path.join(ckpts, temp_prefix(os.path.join(ckpts, "last.ckpt")) + "x1y2z3" + TEMP_SUFFIX)
    with open(stale, "wb") as f:
        f.write(b"half a checkpoint")  # what kill -9 during a save leaves
    keep = os.path.join(ckpts, "notes.txt")
    open(keep, "w").close()
    capsys.readouterr()
    assert main.main(["-r", run, "lightning.trainer.max_steps=3"]) == 0
    assert f"removed {stale}" in capsys.readouterr().out
    assert not os.path.exists(stale) and os.path.exists(keep)


# ------------------------------------------------------------------------------------------------ disk
def test_disk_full_during_training_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):  # the disk fills up after the checkpoint at step 2
        full = isinstance(obj, dict) and obj.get("global_step", 0) >= 4
        return real_save(obj, FullDisk(f, 2000) if full else f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    code = _train(tmp_path, "lightning.modelcheckpoint.params.every_n_train_steps=2", steps=6)
    monkeypatch.undo()
    err = capsys.readouterr().err
    run = only_run_folder(tmp_path / "logs")
    last = os.path.join(run, "checkpoints", "last.ckpt")
    assert code == 1
    # last.ckpt or the top-k file of step 4, whichever Lightning saves first
    assert re.search(rf"cannot write {re.escape(os.path.dirname(last))}/\S+\.ckpt: no space left on device", err), err
    assert "Traceback" not in err
    assert f"the last complete checkpoint is {last}" in err
    assert _step(run) == 2  # intact, loadable
    assert not [f for f in os.listdir(os.path.dirname(last)) if f.endswith(TEMP_SUFFIX)]
