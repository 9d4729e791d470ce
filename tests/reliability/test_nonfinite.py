"""A diverging run stops with a one-line error naming the batch and never overwrites a good checkpoint."""

import hashlib
import os

import torch

import main
from diffusion_configs import cpu_stage1_checkpoint
from ldm.checkpoint import load_checkpoint
from ldm.trainer.finite_guard import nonfinite_tensors
from trainer_helpers import ROOT, only_run_folder, write_config

CPU = os.path.join(ROOT, "configs", "overlays", "cpu.yaml")
QUIET = ["lightning.trainer.enable_progress_bar=false", "lightning.trainer.enable_model_summary=false",
         "lightning.trainer.limit_val_batches=1", "lightning.callbacks.image_logger.params.batch_frequency=1000",
         "data.params.num_workers=0"]


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _batches(path):
    return load_checkpoint(path)["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"]


def _all_checkpoints_finite(run):
    folder = os.path.join(run, "checkpoints")
    files = [f for f in os.listdir(folder) if f.endswith(".ckpt")]
    assert files
    for name in files:
        assert not nonfinite_tensors(load_checkpoint(os.path.join(folder, name))["state_dict"]), name
    return files


def test_nan_loss_stops_training_names_the_batch_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    cfg = write_config(tmp_path, max_steps=12, n=64, enable_progress_bar=False)
    logs = tmp_path / "logs"
    code = main.main(["-b", cfg, "-t", "-l", str(logs), "--logger", "csv", "model.params.nan_at_batches=[5]",
                      "lightning.modelcheckpoint.params.every_n_train_steps=2"])
    err = capsys.readouterr().err
    run = only_run_folder(logs)
    last = os.path.join(run, "checkpoints", "last.ckpt")
    assert code == 1
    assert "non-finite loss and gradient norm at training batch 5" in err and "Traceback" not in err
    assert f"last good checkpoint: {last} (after 4 training batches)" in err
    assert _batches(last) == 4
    _all_checkpoints_finite(run)


def test_skip_mode_drops_a_few_bad_batches_then_stops(tmp_path, capsys):
    cfg = write_config(tmp_path, max_steps=10, n=64, enable_progress_bar=False)
    logs = tmp_path / "logs"
    skip = "lightning.callbacks.nonfinite_guard.params.max_skipped_batches=2"
    code = main.main(["-b", cfg, "-t", "-l", str(logs / "a"), "--logger", "csv", skip,
                      "model.params.nan_at_batches=[3]"])
    assert code == 0
    run = only_run_folder(logs / "a")
    _all_checkpoints_finite(run)
    assert _batches(os.path.join(run, "checkpoints", "last.ckpt")) == 10
    code = main.main(["-b", cfg, "-t", "-l", str(logs / "b"), "--logger", "csv", skip,
                      "model.params.nan_at_batches=[2,4,6]"])
    err = capsys.readouterr().err
    assert code == 1 and "non-finite gradient norm at training batch 6" in err


def _huge_lr_from_the_start(tmp_path, base, overrides):
    """base_learning_rate=1e3 from batch 0: the run stops at the first check and writes no NaN checkpoint."""
    logs = tmp_path / "fresh"
    code = main.main(["-b", *base, "-t", "-l", str(logs), "--logger", "csv", *QUIET, *overrides,
                      "model.base_learning_rate=1e3", "lightning.trainer.max_steps=20",
                      "lightning.trainer.val_check_interval=2"])
    assert code == 1
    folder = os.path.join(only_run_folder(logs), "checkpoints")
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        assert not nonfinite_tensors(load_checkpoint(os.path.join(folder, name))["state_dict"]), name


def _diverge_after_resume(tmp_path, base, overrides):
    """2 good batches, then a resumed run whose weights turn NaN at batch 3: last.ckpt and top-k stay good."""
    logs = tmp_path / "logs"
    # The CPU overlay's lr decays to 0 at max_steps: keep it alive for the resumed batches.
    common = [*QUIET, *overrides, "lightning.trainer.val_check_interval=2",
              "model.params.scheduler_config.params.cycle_lengths=[40]"]
    code = main.main(["-b", *base, "-t", "-l", str(logs), "--logger", "csv", *common, "lightning.trainer.max_steps=2"])
    assert code == 0
    run = only_run_folder(logs)
    last = os.path.join(run, "checkpoints", "last.ckpt")
    before = _digest(last)
    files_before = sorted(os.listdir(os.path.join(run, "checkpoints")))
    code = main.main(["-r", run, "lightning.trainer.max_steps=40",
                      "lightning.callbacks.fault.target=reliability_helpers.PoisonWeightsAtBatch",
                      "lightning.callbacks.fault.params.batch=3"])
    assert code == 1
    assert _digest(last) == before  # the good checkpoint is untouched
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == files_before  # no NaN top-k file either
    _all_checkpoints_finite(run)


STAGE1 = [os.path.join(ROOT, "configs", "autoencoder_kl_f8.yaml"), CPU]
STAGE1_TINY = ["model.params.ddconfig.resolution=32", "data.params.batch_size=2", "data.params.train.params.size=32",
               "data.params.validation.params.size=32", "model.params.lossconfig.params.disc_start=1"]
STAGE2 = [os.path.join(ROOT, "configs", "ldm_txt2img.yaml"), CPU]
STAGE2_TINY = ["model.params.unet_config.params.model_channels=32", "model.context_dim=32", "model.text_layers=1",
               "data.params.batch_size=2", "lightning.callbacks.shapes_accuracy=null",
               "lightning.callbacks.image_logger.params.log_images_kwargs.ddim_steps=2"]


def test_stage1_huge_learning_rate_and_divergence_after_resume(tmp_path, capsys):
    _huge_lr_from_the_start(tmp_path, STAGE1, STAGE1_TINY)
    err = capsys.readouterr().err
    assert "error: training stopped: non-finite" in err and "at training batch 1" in err and "Traceback" not in err
    assert "no checkpoint of this run exists" in err
    _diverge_after_resume(tmp_path, STAGE1, STAGE1_TINY)
    err = capsys.readouterr().err
    assert "non-finite" in err and "at training batch 3" in err and "last good checkpoint" in err


def test_stage2_huge_learning_rate_and_divergence_after_resume(tmp_path, capsys):
    ae = tmp_path / "ae.ckpt"
    cpu_stage1_checkpoint(ae)
    tiny = [*STAGE2_TINY, f"model.params.first_stage_config.params.ckpt_path={ae}"]
    _huge_lr_from_the_start(tmp_path, STAGE2, tiny)
    err = capsys.readouterr().err
    assert "error: training stopped: non-finite" in err and "Traceback" not in err
    _diverge_after_resume(tmp_path, STAGE2, tiny)
    err = capsys.readouterr().err
    assert "non-finite" in err and "at training batch 3" in err and "last good checkpoint" in err


def test_nonfinite_tensors_names_the_bad_ones():
    state = {"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")]), "c": torch.tensor([1, 2]),
             "d": torch.tensor(float("nan"))}
    assert nonfinite_tensors(state) == ["b", "d"]
