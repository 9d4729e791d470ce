"""Tests for DataModuleFromConfig: building loaders from configs, collation, stages, worker seeding, skip counting."""
import os

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch.utils.data import Dataset

import ldm.data
from ldm.data.datamodule import DataModuleFromConfig, WrappedDataset, default_num_workers
from ldm.util import ConfigError, instantiate_from_config

PHOTOS = "ldm.data.sample_photos.SamplePhotos"
FOLDER = "ldm.data.image_folder.ImageFolder"


def photos_cfg(split, length=4):
    return {"target": PHOTOS, "params": {"size": 16, "length": length, "split": split}}


def test_exported_from_package():
    assert ldm.data.DataModuleFromConfig is DataModuleFromConfig
    assert ldm.data.WrappedDataset is WrappedDataset


def test_builds_loaders_from_config_dict():
    cfg = OmegaConf.create({"target": "ldm.data.datamodule.DataModuleFromConfig", "params": {
        "batch_size": 2, "num_workers": 0, "train": photos_cfg("train"), "validation": photos_cfg("validation")}})
    dm = instantiate_from_config(cfg)
    dm.prepare_data()
    dm.setup()
    assert set(dm.datasets) == {"train", "validation"}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 16, 16, 3) and batch["image"].dtype == torch.float32
    v1 = next(iter(dm.val_dataloader()))["image"]
    v2 = next(iter(dm.val_dataloader()))["image"]
    torch.testing.assert_close(v1, v2)  # validation is fixed and unshuffled
    assert is_overridden("train_dataloader", dm) and is_overridden("val_dataloader", dm)
    assert not is_overridden("test_dataloader", dm) and not is_overridden("predict_dataloader", dm)
    assert dm.skipped_files() == 0 and dm.skipped_files_by_split() == {}  # SamplePhotos has no files to skip


def test_defaults():
    dm = DataModuleFromConfig(batch_size=3, train=photos_cfg("train"))
    assert dm.num_workers == default_num_workers(3) == min(6, os.cpu_count())
    loader = dm.train_dataloader()
    assert loader.pin_memory == torch.cuda.is_available()
    assert loader.persistent_workers == (dm.num_workers > 0)
    assert DataModuleFromConfig(batch_size=1, train=photos_cfg("train"), num_workers=0,
                                persistent_workers=True).train_dataloader().persistent_workers is False
    with pytest.raises(ConfigError, match="batch_size"):
        DataModuleFromConfig(batch_size=0)


def test_missing_stage_config_is_a_clear_error():
    dm = DataModuleFromConfig(batch_size=2, train=photos_cfg("train"), num_workers=0)
    dm.setup("fit")  # validation is optional for fit
    for stage, key in [("test", "test"), ("validate", "validation"), ("predict", "predict")]:
        with pytest.raises(ConfigError, match=f"data.params.{key}"):
            dm.setup(stage)
    with pytest.raises(ConfigError, match="data.params.train"):
        DataModuleFromConfig(batch_size=2, validation=photos_cfg("validation")).setup("fit")
    bad = DataModuleFromConfig(batch_size=2, train={"target": "ldm.data.sample_photos.NoSuchDataset"})
    with pytest.raises(ConfigError, match="data.params.train"):
        bad.setup()
    typo = DataModuleFromConfig(batch_size=2, train={"target": PHOTOS, "params": {"sise": 8}})
    with pytest.raises(ConfigError, match="did you mean 'size'"):
        typo.setup()


def test_image_folder_batch_collation(image_tree):
    folder = {"target": FOLDER, "params": {"root": str(image_tree), "size": 8}}
    dm = DataModuleFromConfig(batch_size=3, train=folder, validation=folder, num_workers=0)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (3, 8, 8, 3)
    assert isinstance(batch["caption"], list) and all(isinstance(c, str) for c in batch["caption"])
    assert batch["caption"][0] == "a sidecar caption"
    assert isinstance(batch["file_path_"], list) and batch["file_path_"][0].endswith("a.png")
    assert batch["class_label"].dtype == torch.long and batch["class_label"].tolist() == [0, 0, 0]
    assert batch["human_label"] == ["cats"] * 3


def test_skip_counter_across_two_workers(bad_tree):
    folder = {"target": FOLDER, "params": {"root": str(bad_tree), "size": 8}}
    dm = DataModuleFromConfig(batch_size=1, train=folder, validation=folder, num_workers=2)
    dm.setup()
    assert dm.skipped_files_by_split() == {"train": 0, "validation": 0} and dm.skipped_files() == 0
    for epoch in range(2):  # persistent workers; the count is of distinct files
        names = [os.path.basename(b["file_path_"][0]) for b in dm.val_dataloader()]
        assert len(names) == 4 and set(names) <= {"1.png", "4.png"}
    assert dm.skipped_files_by_split() == {"train": 0, "validation": 2} and dm.skipped_files() == 2
    assert dm.train_dataloader().num_workers == 2


class _RandomValues(Dataset):
    """Returns the numpy global RNG's next value, to see whether workers share a stream."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return np.random.rand()


def test_worker_init_fn_seeds_numpy_per_worker():
    dm = DataModuleFromConfig(batch_size=2, train={"target": "collections.UserList", "params": {}},
                              num_workers=2, use_worker_init_fn=True)
    dm.datasets["train"] = _RandomValues()
    values = torch.cat(list(dm.train_dataloader())).tolist()
    assert len(set(values)) == 4  # without per-worker seeding, forked workers repeat the same numbers


def test_wrap_plain_sequence():
    dm = DataModuleFromConfig(batch_size=2, num_workers=0, wrap=True, test={
        "target": "collections.UserList", "params": {"initlist": [1, 2, 3]}}, shuffle_test_loader=False)
    dm.setup("test")
    assert isinstance(dm.datasets["test"], WrappedDataset)
    assert [b.tolist() for b in dm.test_dataloader()] == [[1, 2], [3]]


class _TinyModel(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.val_batches = 0

    def training_step(self, batch, batch_idx):
        return self.layer(batch["image"].mean(dim=(1, 2))).mean()

    def validation_step(self, batch, batch_idx):
        self.val_batches += 1

    def test_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer():
    return pl.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def test_lightning_fit_with_and_without_validation():
    model = _TinyModel()
    _trainer().fit(model, datamodule=DataModuleFromConfig(batch_size=2, num_workers=0, train=photos_cfg("train")))
    assert model.val_batches == 0
    model = _TinyModel()
    dm = DataModuleFromConfig(batch_size=2, num_workers=0, train=photos_cfg("train"),
                              validation=photos_cfg("validation", length=2))
    _trainer().fit(model, datamodule=dm)
    assert model.val_batches == 1
    with pytest.raises(ConfigError, match="data.params.test"):
        _trainer().test(model, datamodule=dm)
