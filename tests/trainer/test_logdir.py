"""Run folder naming, uniqueness, the DDP hand-over through the environment, debug_runs."""

import os
import re

from ldm.trainer.logdir import (LOGDIR_ENV, NOW_ENV, RunPaths, choose_logdir, export_logdir_to_ranks,
                                logdir_from_rank_zero, move_to_debug_runs, new_logdir, remove_if_unused, restore_env, run_name, timestamp)


def test_timestamp_format():
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}", timestamp())


def test_run_name_compvis_rules():
    now = "2024-01-02T03-04-05"
    assert run_name(now, base=["configs/autoencoder_kl_f8.yaml", "configs/overlays/cpu.yaml"]) == \
        f"{now}_autoencoder_kl_f8"
    assert run_name(now, name="mine", postfix="_v2", base=["configs/x.yaml"]) == f"{now}_mine_v2"
    assert run_name(now) == now


def test_layout(tmp_path):
    paths = RunPaths(str(tmp_path / "run"))
    paths.make()
    for sub in ("checkpoints", "configs", "images/train", "images/val"):
        assert os.path.isdir(os.path.join(paths.logdir, sub))
    assert paths.last_ckpt.endswith(os.path.join("checkpoints", "last.ckpt"))
    assert paths.name == "run"


def test_new_logdir_never_reuses_a_folder(tmp_path):
    first = new_logdir(str(tmp_path), "a")
    os.makedirs(first)
    second = new_logdir(str(tmp_path), "a")
    assert first != second and second.endswith("a-1")


def test_hand_over_and_restore(monkeypatch):
    monkeypatch.delenv(LOGDIR_ENV, raising=False)
    monkeypatch.delenv(NOW_ENV, raising=False)
    assert logdir_from_rank_zero() is None
    previous = export_logdir_to_ranks("/x/run", "2024-01-01T00-00-00")
    assert logdir_from_rank_zero() == ("/x/run", "2024-01-01T00-00-00")
    restore_env(previous)
    assert logdir_from_rank_zero() is None and LOGDIR_ENV not in os.environ


def test_move_to_debug_runs(tmp_path):
    run = tmp_path / "logs" / "r1"
    run.mkdir(parents=True)
    (run / "f.txt").write_text("x")
    moved = move_to_debug_runs(str(run))
    assert moved == str(tmp_path / "logs" / "debug_runs" / "r1")
    assert os.path.isfile(os.path.join(moved, "f.txt")) and not run.exists()


def test_choose_logdir_fresh_resumed_and_handed_over(tmp_path, monkeypatch):
    monkeypatch.delenv(LOGDIR_ENV, raising=False)
    monkeypatch.delenv(NOW_ENV, raising=False)
    logdir, now = choose_logdir(str(tmp_path), base=["configs/a.yaml"])
    assert logdir == os.path.join(str(tmp_path), f"{now}_a") and not os.path.exists(logdir)
    assert choose_logdir(str(tmp_path), resume_logdir="/runs/r")[0] == "/runs/r"
    # a DDP rank > 0 started after rank 0 exported its choice gets the same folder and timestamp
    previous = export_logdir_to_ranks("/runs/rank0", "2024-01-01T00-00-00")
    try:
        assert choose_logdir(str(tmp_path), name="other") == ("/runs/rank0", "2024-01-01T00-00-00")
    finally:
        restore_env(previous)


def test_remove_if_unused(tmp_path):
    paths = RunPaths(str(tmp_path / "run"))
    paths.make()
    assert not remove_if_unused(paths, batches_trained=3) and os.path.isdir(paths.logdir)
    open(paths.last_ckpt, "wb").close()
    assert not remove_if_unused(paths, batches_trained=0) and os.path.isdir(paths.logdir)
    os.remove(paths.last_ckpt)
    assert remove_if_unused(paths, batches_trained=0) and not os.path.exists(paths.logdir)
