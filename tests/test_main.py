"""main.py end to end: train, resume, wandb offline, errors, exceptions, SIGTERM, 2-process DDP on CPU."""

import csv
import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TRAINER_TESTS = os.path.join(HERE, "trainer")
DIFFUSION_TESTS = os.path.join(HERE, "models", "diffusion")
for path in (TRAINER_TESTS, DIFFUSION_TESTS, os.path.dirname(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import main  # noqa: E402
from diffusion_configs import cpu_stage1_checkpoint  # noqa: E402
from ldm.checkpoint import load_checkpoint  # noqa: E402
from ldm.trainer.shapes_accuracy import read_curve  # noqa: E402
from trainer_helpers import ROOT, only_run_folder, run_main, subprocess_env, write_config  # noqa: E402


def _rows(run, key):
    with open(os.path.join(run, "metrics.csv")) as f:
        return [r for r in csv.DictReader(f) if r.get(key)]


def _global_step(run):
    return load_checkpoint(os.path.join(run, "checkpoints", "last.ckpt"))["global_step"]


# ------------------------------------------------------------------------------------------------ in-process
def test_compvis_targets_are_importable_from_main():
    assert main.ImageLogger.__module__ == "ldm.trainer.image_logger"
    assert main.SetupCallback and main.CUDACallback
    if importlib.util.find_spec("ldm.data.datamodule") is not None:
        from main import DataModuleFromConfig  # noqa: F401


def test_misspelled_key_exits_2_with_a_short_message(tmp_path, capsys):
    cfg = write_config(tmp_path)
    logs = tmp_path / "logs"
    code = main.main(["-b", cfg, "-t", "-l", str(logs), "--logger", "csv", "model.params.chanels=3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.params.chanels" in err and "did you mean 'channels'" in err and "Traceback" not in err
    assert not logs.exists()


def test_missing_data_folder_and_resume_path_exit_nonzero(tmp_path, capsys):
    cfg = write_config(tmp_path)
    logs = tmp_path / "logs"
    code = main.main(["-b", cfg, "-t", "-l", str(logs), "--logger", "csv",
                      f"data.params.require_root={tmp_path / 'nope'}"])
    assert code == 1 and "does not exist" in capsys.readouterr().err and not logs.exists()
    code = main.main(["-r", str(tmp_path / "logs" / "missing"), "-t"])
    assert code == 2 and "cannot find" in capsys.readouterr().err
    assert main.main(["-n", "x", "-r", str(tmp_path)]) == 2 and "cannot be given together" in capsys.readouterr().err


def test_two_optimizer_model_trains_max_steps_batches(tmp_path, capsys):
    cfg = write_config(tmp_path, model="trainer_dummies.TinyGAN", max_steps=3, limit_val_batches=1,
                       enable_progress_bar=False)
    logs = tmp_path / "logs"
    assert main.main(["-b", cfg, "-t", "-l", str(logs), "--logger", "csv"]) == 0
    out = capsys.readouterr().out
    assert "max_steps=3 counts training batches" in out and "Trainer(max_steps=6)" in out
    run = only_run_folder(logs)
    assert _global_step(run) == 6  # 3 batches x 2 optimizer steps
    assert len(_rows(run, "train/loss")) == 3
    assert sorted(os.listdir(os.path.join(run, "images", "train"))) == sorted(
        f"{k}_gs-{s:06}_e-000000_b-{s:06}.png" for k in ("inputs", "reconstructions") for s in (1, 2))


def test_test_stage_and_debug_runs(tmp_path, capsys):
    cfg = write_config(tmp_path, model="trainer_dummies.TinyTestModel", max_steps=2, enable_progress_bar=False)
    logs = tmp_path / "logs"
    dataset = "{target: trainer_dummies.RandomImages, params: {n: 4, size: 8}}"
    assert main.main(["-b", cfg, "-t", "-d", "-l", str(logs), "--logger", "csv", f"data.params.test={dataset}"]) == 0
    out = capsys.readouterr().out
    assert "test/loss" in out and "debug run moved to" in out
    run = only_run_folder(logs / "debug_runs")
    assert os.path.isfile(os.path.join(run, "checkpoints", "last.ckpt"))
    assert sorted(os.listdir(logs)) == ["debug_runs"]


# Tiny overrides for the real stage-1 model (the CPU overlay's width, 32 px crops, 2 images per batch).
AE_TINY = ["model.params.ddconfig.resolution=32", "data.params.batch_size=2", "data.params.num_workers=0",
           "data.params.train.params.size=32", "data.params.validation.params.size=32",
           "lightning.trainer.limit_val_batches=1", "lightning.trainer.enable_progress_bar=false",
           "lightning.trainer.enable_model_summary=false", "lightning.callbacks.image_logger.params.batch_frequency=2"]


@pytest.mark.skipif(not os.path.isfile(os.path.join(ROOT, "configs", "overlays", "cpu.yaml")), reason="no cpu overlay")
def test_autoencoder_kl_trains_and_resumes_through_main(tmp_path, capsys):
    """AutoencoderKL (manual optimization, 2 optimizer steps per batch, monitor val/rec_loss) end to end."""
    logs = tmp_path / "logs"
    base = [os.path.join(ROOT, "configs", "autoencoder_kl_f8.yaml"),
            os.path.join(ROOT, "configs", "overlays", "cpu.yaml")]
    code = main.main(["-b", *base, "-t", "-l", str(logs), "--logger", "csv", *AE_TINY,
                      "lightning.trainer.max_steps=2", "lightning.trainer.val_check_interval=2"])
    assert code == 0
    assert "Trainer(max_steps=4)" in capsys.readouterr().out
    run = only_run_folder(logs)
    assert _global_step(run) == 4
    assert "epoch=000000-batch=000000002.ckpt" in os.listdir(os.path.join(run, "checkpoints"))  # top-k by monitor
    train_images = os.listdir(os.path.join(run, "images", "train"))
    assert {f.split("_gs-")[0] for f in train_images} >= {"inputs", "reconstructions"}
    assert os.listdir(os.path.join(run, "images", "val"))
    assert _rows(run, "val/rec_loss")

    # Resume with gradient accumulation over 2 batches (done inside the model): exactly 2 more batches, one update.
    code = main.main(["-r", run, "-t", "lightning.trainer.max_steps=4", "lightning.trainer.accumulate_grad_batches=2"])
    assert code == 0
    state = load_checkpoint(os.path.join(run, "checkpoints", "last.ckpt"))
    assert state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == 4
    assert state["global_step"] == 6 and len(state["optimizer_states"]) == 2


def test_vq_autoencoder_trains_logs_codebook_health_and_resumes(tmp_path, capsys):
    """VQModel (vq-f8 + the CPU overlay) through main.py: codebook usage in the metrics, then -r continues."""
    logs = tmp_path / "logs"
    base = [os.path.join(ROOT, "configs", "autoencoder_vq_f8.yaml"),
            os.path.join(ROOT, "configs", "overlays", "cpu.yaml")]
    code = main.main(["-b", *base, "-t", "-l", str(logs), "--logger", "csv", *AE_TINY,
                      "model.params.ddconfig.attn_resolutions=[]", "model.params.n_embed=64",
                      "lightning.trainer.max_steps=2", "lightning.trainer.val_check_interval=2",
                      "lightning.trainer.log_every_n_steps=1"])
    assert code == 0
    run = only_run_folder(logs)
    assert _global_step(run) == 4  # generator + discriminator step per batch
    with open(os.path.join(run, "metrics.csv")) as f:
        header = next(csv.reader(f))
    assert any("perplexity" in k for k in header) and any("dead" in k or "usage" in k for k in header), header
    assert main.main(["-r", run, "-t", "lightning.trainer.max_steps=3"]) == 0
    assert _global_step(run) == 6


# ------------------------------------------------------------------------------------------------ subprocess
@pytest.mark.slow
def test_train_then_resume_continues_at_the_saved_step(tmp_path):
    cfg = write_config(tmp_path)
    logs = tmp_path / "logs"
    first = run_main(["-b", cfg, "-t", "-l", str(logs), "--logger", "csv"])
    assert first.returncode == 0, first.stderr[-3000:]
    run = only_run_folder(logs)
    assert os.path.basename(run).endswith("_tiny")
    assert _global_step(run) == 4
    configs = sorted(os.listdir(os.path.join(run, "configs")))
    assert len(configs) == 2 and configs[0].endswith("-lightning.yaml") and configs[1].endswith("-project.yaml")
    assert os.listdir(os.path.join(run, "images", "train")) and os.listdir(os.path.join(run, "images", "val"))
    assert len(_rows(run, "train/loss")) == 4

    second = run_main(["-r", run, "-t", "lightning.trainer.max_steps=8"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from {run}/checkpoints/last.ckpt" in second.stdout
    assert only_run_folder(logs) == run  # same folder, no new one
    assert _global_step(run) == 8
    assert len(_rows(run, "train/loss")) == 8  # 4 more batches appended to the same metrics.csv
    assert len(os.listdir(os.path.join(run, "configs"))) == 4  # the resumed run's merged configs are saved too


@pytest.mark.slow
def test_wandb_offline_without_credentials(tmp_path):
    cfg = write_config(tmp_path, max_steps=2, enable_progress_bar=False)
    logs = tmp_path / "logs"
    env = subprocess_env(WANDB_MODE=None, HOME=str(tmp_path), NETRC=None, WANDB_CONFIG_DIR=str(tmp_path / "wb"))
    proc = run_main(["-b", cfg, "-t", "-l", str(logs)], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run_folder(logs)
    assert f"wandb sync {run}/wandb/offline-run-" in proc.stdout
    assert any(d.startswith("offline-run-") for d in os.listdir(os.path.join(run, "wandb")))
    assert _rows(run, "train/loss")  # the CSV file is written alongside


@pytest.mark.slow
def test_exception_saves_checkpoint_and_shows_the_original_error(tmp_path):
    cfg = write_config(tmp_path, max_steps=10, enable_progress_bar=False)
    logs = tmp_path / "logs"
    proc = run_main(["-b", cfg, "-t", "-l", str(logs), "--logger", "csv", "model.params.fail_at_batch=2"])
    assert proc.returncode == 1
    assert "RuntimeError: planned failure at batch 2" in proc.stderr and "NameError" not in proc.stderr
    assert _global_step(only_run_folder(logs)) == 2


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_and_exits_cleanly(tmp_path):
    cfg = write_config(tmp_path, max_steps=200, n=800, enable_progress_bar=False)
    logs = tmp_path / "logs"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), "-b", cfg, "-t", "-l", str(logs),
                             "--logger", "csv", "model.params.sleep_s=0.05"], cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    started = None
    while time.time() < deadline and proc.poll() is None and started is None:
        time.sleep(0.2)
        if logs.exists():
            for run in os.listdir(logs):
                train = logs / run / "images" / "train"
                if train.is_dir() and any("gs-000002" in f for f in os.listdir(train)):
                    started = run
    assert started, "training did not start"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM: training stopped" in out
    step = _global_step(str(logs / started))
    assert 2 <= step < 200


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_only_rank0_writes(tmp_path):
    cfg = write_config(tmp_path, max_steps=3, enable_progress_bar=False, limit_val_batches=1)
    logs = tmp_path / "logs"
    proc = run_main(["-b", cfg, "-t", "-l", str(logs), "lightning.trainer.devices=2"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 devices: DDP strategy" in proc.stdout
    assert "2 (num_devices)" in proc.stdout
    run = only_run_folder(logs)  # rank 1 used rank 0's folder
    assert len(os.listdir(os.path.join(run, "configs"))) == 2
    assert _global_step(run) == 3
    assert len([d for d in os.listdir(os.path.join(run, "wandb")) if d.startswith("offline-run-")]) == 1
    assert proc.stdout.count("Setting learning rate") == 1  # printed by rank 0 only


# ------------------------------------------------------------------------------------------------ stage 2
SHAPES_ACCURACY_TINY = ["lightning.callbacks.shapes_accuracy.params.every_n_batches=1",
                        "lightning.callbacks.shapes_accuracy.params.n=2",
                        "lightning.callbacks.shapes_accuracy.params.steps=2"]
LDM_TINY = ["model.params.unet_config.params.model_channels=32", "model.context_dim=32", "model.text_layers=1",
            "data.params.batch_size=2", "data.params.num_workers=0", "lightning.trainer.limit_val_batches=1",
            "lightning.trainer.enable_progress_bar=false", "lightning.trainer.enable_model_summary=false",
            "lightning.callbacks.image_logger.params.log_images_kwargs.ddim_steps=2"]


def test_latent_diffusion_trains_from_a_stage1_checkpoint_and_resumes(tmp_path, capsys):
    """configs/ldm_txt2img.yaml + the CPU overlay through main.py: scale_by_std, EMA, images, then -r continues."""
    ae = tmp_path / "ae.ckpt"
    cpu_stage1_checkpoint(ae)
    logs = tmp_path / "logs"
    base = [os.path.join(ROOT, "configs", "ldm_txt2img.yaml"), os.path.join(ROOT, "configs", "overlays", "cpu.yaml")]
    code = main.main(["-b", *base, "-t", "-l", str(logs), "--logger", "csv", *LDM_TINY,
                      f"model.params.first_stage_config.params.ckpt_path={ae}",
                      "lightning.trainer.max_steps=2", "lightning.trainer.val_check_interval=2",
                      *SHAPES_ACCURACY_TINY])
    assert code == 0
    run = only_run_folder(logs)
    curve = read_curve(run)  # the overlay's ShapesAccuracy callback: a point per batch here
    assert [row["batch"] for row in curve] == [1, 2] and all(0 <= row["color"] <= 1 for row in curve)
    assert all(row["position_ci95_low"] <= row["position"] <= row["position_ci95_high"] for row in curve)
    assert _rows(run, "shapes/color")
    state = load_checkpoint(os.path.join(run, "checkpoints", "last.ckpt"))
    assert state["global_step"] == 2
    sd = state["state_dict"]
    scale = float(sd["scale_factor"])
    assert scale != 1.0 and scale > 0  # scale_by_std: 1/std of the first batch's latents, saved
    assert any(k.startswith("model_ema.") for k in sd) and any(k.startswith("first_stage_model.") for k in sd)
    logged = {f.split("_gs-")[0] for f in os.listdir(os.path.join(run, "images", "val"))}
    assert {"inputs", "reconstruction", "conditioning", "samples"} <= logged
    assert _rows(run, "val/loss_simple_ema")

    code = main.main(["-r", run, "-t", "lightning.trainer.max_steps=4"])
    assert code == 0
    state = load_checkpoint(os.path.join(run, "checkpoints", "last.ckpt"))
    assert state["global_step"] == 4
    assert [row["batch"] for row in read_curve(run)] == [1, 2, 3, 4]  # the resumed run extends the curve
    assert float(state["state_dict"]["scale_factor"]) == scale  # not re-estimated on resume
    assert "resuming from" in capsys.readouterr().out


def test_help_answers_before_torch_and_lightning_are_imported():
    """`python main.py --help` parses arguments with the light imports only (7 s -> 0.2 s here)."""
    code = ("import runpy, sys\nsys.argv = ['main.py', '--help']\ntry:\n    runpy.run_path('main.py', run_name='__main__')\n"
            "except SystemExit as exit:\n    assert exit.code in (0, None)\n"
            "print(sorted(m for m in ('torch', 'pytorch_lightning', 'lightning_fabric') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(HERE), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--base" in proc.stdout and proc.stdout.strip().splitlines()[-1] == "[]"
