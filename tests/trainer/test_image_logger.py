"""ImageLogger: CompVis schedule in training batches, PNG grids with CompVis names, eval/no_grad while logging."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.trainer.image_logger import ImageLogger, image_filename, image_grid
from trainer_dummies import TinyGAN, TinyModel
from trainer_helpers import tiny_data, tiny_trainer


def test_schedule_powers_of_two_then_every_n():
    logger = ImageLogger(batch_frequency=8)
    assert [i for i in range(40) if logger.should_log(i)] == [1, 2, 4, 8, 16, 24, 32]
    logger = ImageLogger(batch_frequency=8, increase_log_steps=False, log_first_step=True)
    assert [i for i in range(20) if logger.should_log(i)] == [0, 8, 16]
    assert not any(ImageLogger(batch_frequency=1, disabled=True).should_log(i) for i in range(5))


def test_bad_frequency_is_rejected():
    with pytest.raises(ValueError, match="batch_frequency"):
        ImageLogger(batch_frequency=0)


def test_grid_and_filename():
    x = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4) * 2  # out of range on purpose
    grid = image_grid(x)
    assert grid.dtype == np.uint8 and grid.shape[2] == 3 and grid.min() == 0 and grid.max() == 255
    assert image_grid(torch.zeros(2, 1, 4, 4)).shape == (8, 14, 3)  # grey images become RGB (padding 2)
    assert image_filename("inputs", 100, 1, 4) == "inputs_gs-000100_e-000001_b-000004.png"


def test_logs_during_training_in_eval_mode_without_grad(tmp_path):
    model = TinyModel()
    model.learning_rate = 1e-3
    logger = ImageLogger(batch_frequency=2, max_images=3)
    trainer = tiny_trainer(tmp_path, [logger], max_steps=5)
    trainer.fit(model, tiny_data(n=20))  # 5 batches: logs after batch indices 1, 2, 4; validation once
    train = sorted(os.listdir(tmp_path / "images" / "train"))
    assert train == [f"{k}_gs-{s:06}_e-000000_b-{s:06}.png" for k in ("inputs", "reconstructions") for s in (1, 2, 4)]
    val = sorted(os.listdir(tmp_path / "images" / "val"))
    assert val == ["inputs_gs-000005_e-000000_b-000000.png", "reconstructions_gs-000005_e-000000_b-000000.png"]
    with Image.open(tmp_path / "images" / "train" / train[0]) as im:
        assert im.size == (3 * 8 + 4 * 2, 8 + 2 * 2)  # 3 images of 8 px in one row, 2 px padding
    assert model.log_images_calls and all(not training and not grad for training, grad in model.log_images_calls)
    assert model.training  # restored afterwards


def test_cadence_counts_batches_for_two_optimizer_models(tmp_path):
    model = TinyGAN()
    model.learning_rate = 1e-3
    trainer = tiny_trainer(tmp_path, [ImageLogger(batch_frequency=4, log_val=False)], max_steps=2 * 5)
    trainer.fit(model, tiny_data(n=40))  # global_step reaches 10, but only 5 batches ran
    steps = sorted({int(f.split("_gs-")[1][:6]) for f in os.listdir(tmp_path / "images" / "train")})
    assert steps == [1, 2, 4]


def test_non_image_outputs_are_skipped(tmp_path):
    class Odd(TinyModel):
        def log_images(self, batch, **kwargs):
            return {"caption_ids": torch.zeros(4, 7), "samples": torch.zeros(4, 3, 8, 8)}

    model = Odd()
    model.learning_rate = 1e-3
    trainer = tiny_trainer(tmp_path, [ImageLogger(batch_frequency=1, log_val=False)], max_steps=2)
    with pytest.warns(UserWarning, match="caption_ids"):
        trainer.fit(model, tiny_data())
    assert all(f.startswith("samples_") for f in os.listdir(tmp_path / "images" / "train"))
