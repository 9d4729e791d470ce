"""External launchers (torchrun, srun) start every process themselves: they share one run folder through LDM_LOGDIR."""

import os
import subprocess
import sys

import pytest

from trainer_helpers import ROOT, only_run_folder, subprocess_env, write_config

sys.path.insert(0, ROOT)
import main  # noqa: E402
from ldm.checkpoint import load_checkpoint  # noqa: E402
from ldm.trainer.logdir import LOGDIR_ENV, launched_processes  # noqa: E402


def test_launched_processes_reads_torchrun_and_srun(monkeypatch):
    for key in ("WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(key, raising=False)
    assert launched_processes() == 1
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")
    assert launched_processes() == 8
    monkeypatch.setenv("WORLD_SIZE", "16")
    assert launched_processes() == 16


def test_launcher_without_a_shared_folder_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv(LOGDIR_ENV, raising=False)
    cfg = write_config(tmp_path)
    assert main.main(["-b", cfg, "-t", "-l", str(tmp_path / "logs")]) == 2
    err = capsys.readouterr().err
    assert "2 processes were launched by torchrun/srun: set LDM_LOGDIR=logs/<run name>" in err
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_torchrun_two_processes_share_the_run_folder(tmp_path):
    cfg = write_config(tmp_path, max_steps=3, enable_progress_bar=False, limit_val_batches=1)
    run = tmp_path / "logs" / "my_run"
    env = subprocess_env(**{LOGDIR_ENV: str(run)})
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", "29541", os.path.join(ROOT, "main.py"), "-b", cfg, "-t", "--logger", "csv",
                           "lightning.trainer.devices=2"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert only_run_folder(tmp_path / "logs") == str(run)
    assert load_checkpoint(os.path.join(run, "checkpoints", "last.ckpt"))["global_step"] == 3
