"""SIGTERM mid-epoch, then `main.py -r RUN`: bit-identical weights, EMA and optimizer state to an uninterrupted run.

Every run is a subprocess with one thread, so the arithmetic is the same in all three. Stage 1: the KL autoencoder
(GAN, two optimizers, EMA) on the shapes images. Stage 2: txt2img with EMA and conditioning dropout.
"""

import os

import pytest

from diffusion_configs import cpu_stage1_checkpoint
from ldm.checkpoint import load_checkpoint
from reliability_helpers import max_abs_diff
from trainer_helpers import ROOT, only_run_folder, run_main, subprocess_env

HERE = os.path.dirname(os.path.abspath(__file__))
CPU = os.path.join(ROOT, "configs", "overlays", "cpu.yaml")
QUIET = ["lightning.trainer.enable_progress_bar=false", "lightning.trainer.enable_model_summary=false",
         "lightning.trainer.limit_val_batches=1", "lightning.callbacks.image_logger.params.batch_frequency=3",
         "data.params.num_workers=0"]
STAGE1 = [os.path.join(ROOT, "configs", "autoencoder_kl_f8.yaml"), CPU]
STAGE1_TINY = ["model.params.ddconfig.resolution=32", "data.params.batch_size=2", "data.params.train.params.size=32",
               "data.params.validation.params.size=32", "lightning.trainer.val_check_interval=3",
               "model.params.lossconfig.params.disc_start=2", "model.params.ema_decay=0.9"]
STAGE2 = [os.path.join(ROOT, "configs", "ldm_txt2img.yaml"), CPU]
STAGE2_TINY = ["model.params.unet_config.params.model_channels=32", "model.context_dim=32", "model.text_layers=1",
               "data.params.batch_size=2", "lightning.trainer.val_check_interval=3",
               "lightning.callbacks.image_logger.params.log_images_kwargs.ddim_steps=2",
               "lightning.callbacks.shapes_accuracy=null",
               "model.params.cond_stage_config.params.ucg_rate=0.5"]
KILL = "lightning.callbacks.fault.target=reliability_helpers.SignalAtBatch"


def _env():
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([HERE, env["PYTHONPATH"]])
    return env


def _train(logs, base, overrides, *extra):
    proc = run_main(["-b", *base, "-t", "-l", str(logs), "--logger", "csv", *QUIET, *overrides, *extra], env=_env(),
                    timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return only_run_folder(logs), proc


def _compare(tmp_path, base, overrides, total=7, stop=4):
    straight, _ = _train(tmp_path / "straight", base, overrides, f"lightning.trainer.max_steps={total}")
    run, proc = _train(tmp_path / "interrupted", base, overrides, f"lightning.trainer.max_steps={total}", KILL,
                       f"lightning.callbacks.fault.params.batch={stop}")
    assert "SIGTERM: training stopped" in proc.stdout
    assert "python main.py -r" in proc.stdout
    stopped = load_checkpoint(os.path.join(run, "checkpoints", "last.ckpt"))
    assert stopped["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == stop
    # The printed command (no -t) continues training; the kill callback comes back with the saved config, so
    # move it past the end.
    resumed = run_main(["-r", run, f"lightning.callbacks.fault.params.batch={total + 10}"], env=_env(), timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_checkpoint(os.path.join(straight, "checkpoints", "last.ckpt"))
    b = load_checkpoint(os.path.join(run, "checkpoints", "last.ckpt"))
    assert stopped["epoch"] == 0  # killed inside the first epoch: the resume continues a half-read epoch
    assert a["epoch"] == b["epoch"]
    assert b["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == total
    diffs = {"weights": max_abs_diff(a["state_dict"], b["state_dict"]),
             "optimizer": max_abs_diff(a["optimizer_states"], b["optimizer_states"]),
             "lr_schedulers": max_abs_diff(a.get("lr_schedulers"), b.get("lr_schedulers")),
             "global_step": abs(a["global_step"] - b["global_step"])}
    print("max abs diff per state:", diffs)
    return a, diffs


@pytest.mark.slow
def test_stage1_sigterm_mid_epoch_then_resume_is_bit_identical(tmp_path):
    state, diffs = _compare(tmp_path, STAGE1, STAGE1_TINY)
    assert any(k.startswith("model_ema.") for k in state["state_dict"])  # EMA weights are part of the comparison
    assert len(state["optimizer_states"]) == 2  # generator and discriminator
    assert diffs == {"weights": 0.0, "optimizer": 0.0, "lr_schedulers": 0.0, "global_step": 0}


@pytest.mark.slow
def test_stage2_with_ema_and_caption_dropout_sigterm_then_resume_is_bit_identical(tmp_path):
    ae = tmp_path / "ae.ckpt"
    cpu_stage1_checkpoint(ae)
    state, diffs = _compare(tmp_path, STAGE2, [*STAGE2_TINY, f"model.params.first_stage_config.params.ckpt_path={ae}"])
    assert any(k.startswith("model_ema.") for k in state["state_dict"])
    assert diffs == {"weights": 0.0, "optimizer": 0.0, "lr_schedulers": 0.0, "global_step": 0}


@pytest.mark.parametrize("val_every", [None, 6])
def test_resume_at_the_end_of_an_epoch_continues_with_the_next_epochs_order(tmp_path, val_every):
    """Stopped exactly at an epoch's end (4 batches of 4), then resumed: the same weights as one 8-batch run, also
    when validation is due only every 6 batches (Lightning then counts one epoch more on resume)."""
    import yaml

    import main
    from trainer_dummies import tiny_config

    config = tiny_config(max_steps=8, enable_progress_bar=False)
    images = {"target": "trainer_dummies.RandomImages", "params": {"n": 16, "size": 8}}
    config["data"] = {"target": "main.DataModuleFromConfig",
                      "params": {"batch_size": 4, "num_workers": 0, "train": images, "validation": images}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    extra = [f"lightning.trainer.val_check_interval={val_every}"] if val_every else []
    base = ["-b", str(path), "-t", "--logger", "csv", *extra]
    assert main.main([*base, "-l", str(tmp_path / "straight")]) == 0
    assert main.main([*base, "-l", str(tmp_path / "split"), "lightning.trainer.max_steps=4"]) == 0
    run = only_run_folder(tmp_path / "split")
    assert main.main(["-r", run, "lightning.trainer.max_steps=8"]) == 0
    a = load_checkpoint(os.path.join(only_run_folder(tmp_path / "straight"), "checkpoints", "last.ckpt"))
    b = load_checkpoint(os.path.join(run, "checkpoints", "last.ckpt"))
    assert b["global_step"] == 8
    assert max_abs_diff(a["state_dict"], b["state_dict"]) == 0.0
    assert max_abs_diff(a["optimizer_states"], b["optimizer_states"]) == 0.0
