"""Trainer arguments from `lightning.*`: lr scaling, batch-counted max_steps, DDP choice, callbacks, checkpoints."""

import pytest
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.strategies import DDPStrategy

from ldm.trainer.build import (CHECKPOINT_TARGET, checkpoint_config, configured_callbacks, count_devices,
                               learning_rate, optimizer_steps_per_batch, trainer_kwargs, translate_max_steps)
from ldm.trainer.callbacks import BatchLimit, CUDACallback
from ldm.trainer.checkpointing import DEFAULT_EVERY_N_BATCHES
from ldm.trainer.image_logger import ImageLogger
from ldm.trainer.logdir import RunPaths
from ldm.util import ConfigError
from trainer_dummies import TinyGAN, TinyModel


def test_learning_rate_scaling_formula():
    lr, message = learning_rate(4.5e-6, batch_size=12, accumulate=2, devices=4)
    assert lr == pytest.approx(2 * 4 * 12 * 4.5e-6)
    assert "2 (accumulate_grad_batches) * 4 (num_devices) * 12 (batch_size)" in message
    lr, message = learning_rate(4.5e-6, batch_size=12, accumulate=2, devices=4, scale=False)
    assert lr == 4.5e-6 and "--scale_lr false" in message


def test_steps_per_batch_and_max_steps():
    assert optimizer_steps_per_batch(TinyModel()) == 1
    assert optimizer_steps_per_batch(TinyGAN()) == 2
    assert translate_max_steps(600, 2) == (1200, True)
    assert translate_max_steps(5, 1, accumulate=2) == (5, False)  # a cap; BatchLimit stops at the exact batch


@pytest.mark.parametrize("accelerator, devices, expected", [
    ("cpu", 2, 2), ("cpu", "2", 2), ("gpu", [0, 1, 3], 3), ("gpu", "0,1", 2), ("cpu", "auto", 1), ("cpu", None, 1),
])
def test_count_devices(accelerator, devices, expected):
    assert count_devices(accelerator, devices) == expected


def test_max_steps_counts_batches_for_two_optimizer_models():
    kwargs, notes, extra = trainer_kwargs({"max_steps": 600, "accelerator": "cpu"}, TinyGAN())
    assert kwargs["max_steps"] == 1200 and extra == []
    assert any("max_steps=600 counts training batches" in n and "Trainer(max_steps=1200)" in n for n in notes)
    kwargs, notes, extra = trainer_kwargs({"max_steps": 600}, TinyModel())
    assert kwargs["max_steps"] == 600 and notes == []


def test_manual_optimization_accumulates_inside_the_model():
    model = TinyGAN()
    kwargs, notes, extra = trainer_kwargs({"max_steps": 5, "accumulate_grad_batches": 2}, model)
    assert model.accumulate_grad_batches == 2 and kwargs["accumulate_grad_batches"] == 1
    assert kwargs["max_steps"] == 10 and isinstance(extra[0], BatchLimit) and extra[0].max_batches == 5


def test_automatic_accumulation_max_steps_is_exact_via_batch_limit():
    kwargs, _, extra = trainer_kwargs({"max_steps": 5, "accumulate_grad_batches": 2}, TinyModel())
    assert kwargs["max_steps"] == 5 and kwargs["accumulate_grad_batches"] == 2
    assert len(extra) == 1 and isinstance(extra[0], BatchLimit) and extra[0].max_batches == 5


def test_unknown_trainer_key_is_a_config_error():
    with pytest.raises(ConfigError, match="max_step .*did you mean 'max_steps'"):
        trainer_kwargs({"max_step": 3}, TinyModel())


def test_ddp_for_several_devices():
    kwargs, notes, _ = trainer_kwargs({"accelerator": "cpu", "devices": 2}, TinyGAN())
    assert isinstance(kwargs["strategy"], DDPStrategy)
    assert kwargs["strategy"]._ddp_kwargs.get("find_unused_parameters") is True  # manual optimization default
    kwargs, _, _ = trainer_kwargs({"accelerator": "cpu", "devices": 2, "find_unused_parameters": False}, TinyGAN())
    assert kwargs["strategy"]._ddp_kwargs.get("find_unused_parameters") is False
    kwargs, _, _ = trainer_kwargs({"accelerator": "cpu", "devices": 1}, TinyModel())
    assert "strategy" not in kwargs


def test_lightning1_accelerator_ddp_and_resume_key():
    kwargs, notes, _ = trainer_kwargs({"accelerator": "ddp", "devices": 1}, TinyModel())
    assert "accelerator" not in kwargs and "strategy" not in kwargs and "Lightning 1" in notes[0]
    with pytest.raises(ConfigError, match="main.py -r"):
        trainer_kwargs({"resume_from_checkpoint": "x.ckpt"}, TinyModel())


def test_lightning1_gpus_key():
    kwargs, notes, _ = trainer_kwargs({"gpus": "0,"}, TinyModel())
    assert kwargs["accelerator"] == "gpu" and kwargs["devices"] == [0] and "gpus" not in kwargs


def test_checkpoint_config_uses_monitor_or_batch_cadence(tmp_path):
    paths = RunPaths(str(tmp_path / "run"))
    cfg = checkpoint_config(None, TinyModel(monitor="val/loss"), paths)
    assert cfg.target == CHECKPOINT_TARGET and cfg.params.monitor == "val/loss" and cfg.params.save_top_k == 3
    assert cfg.params.dirpath == paths.ckptdir and cfg.params.save_last is True
    cfg = checkpoint_config(None, TinyModel(), paths)
    assert "monitor" not in cfg.params and cfg.params.every_n_train_steps == DEFAULT_EVERY_N_BATCHES
    user = OmegaConf.create({"modelcheckpoint": {"target": "pytorch_lightning.callbacks.ModelCheckpoint",
                                                 "params": {"every_n_train_steps": 7, "dirpath": "/elsewhere"}}})
    cfg = checkpoint_config(user, TinyModel(), paths)
    assert cfg.target == CHECKPOINT_TARGET and cfg.params.every_n_train_steps == 7
    assert cfg.params.dirpath == paths.ckptdir


def test_configured_callbacks_defaults_overrides_and_removal():
    built = configured_callbacks(None)
    assert isinstance(built["image_logger"], ImageLogger) and built["image_logger"].batch_freq == 750
    assert isinstance(built["learning_rate_logger"], LearningRateMonitor)
    assert isinstance(built["cuda_callback"], CUDACallback)
    user = OmegaConf.create({"callbacks": {
        "image_logger": {"target": "main.ImageLogger", "params": {"batch_frequency": 10}},
        "cuda_callback": None,
        "setup_callback": {"target": "main.SetupCallback"},
    }})
    built = configured_callbacks(user)
    assert built["image_logger"].batch_freq == 10 and built["image_logger"].max_images == 4
    assert "cuda_callback" not in built and "setup_callback" not in built


def test_misspelled_callback_param_names_the_full_key():
    user = OmegaConf.create({"callbacks": {"image_logger": {"params": {"batch_frequncy": 10}}}})
    with pytest.raises(ConfigError, match=r"lightning\.callbacks\.image_logger\.params\.batch_frequncy.*"
                                          r"did you mean 'batch_frequency'"):
        configured_callbacks(user)
