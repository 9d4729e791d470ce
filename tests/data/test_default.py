import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from ldm.data.default import image_dataset
from ldm.util import instantiate_from_config


def test_no_root_gives_embedded_photos():
    ds = image_dataset(root=None, size=32, split="validation")
    item = ds[0]
    assert item["image"].shape == (32, 32, 3)
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0


def test_folder_root_is_split_without_overlap_via_config_interpolation(tmp_path, repo_root):
    for i in range(40):
        Image.fromarray(np.random.randint(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    cfg = OmegaConf.load(f"{repo_root}/configs/autoencoder_kl_f8.yaml")
    cfg.data.params.train.params.root = str(tmp_path)
    cfg.data.params.train.params.size = 32
    cfg.data.params.validation.params.size = 32
    train = instantiate_from_config(cfg.data.params.train)
    val = instantiate_from_config(cfg.data.params.validation)
    assert len(val) >= 1 and len(train) + len(val) == 40
    assert not set(train.paths) & set(val.paths)
    assert train[0]["image"].shape == (32, 32, 3)


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(ValueError, match="split"):
        image_dataset(split="test")
    with pytest.raises(ValueError, match="only apply to an image folder"):
        image_dataset(root=None, caption_key="text")
    with pytest.raises(FileNotFoundError, match="not found"):
        image_dataset(root=str(tmp_path / "missing"))


def test_shapes_source_for_stage_one():
    ds = image_dataset(root=None, size=32, split="train", source="shapes", length=10)
    assert len(ds) == 10 and ds[0]["image"].shape == (32, 32, 3)
    with pytest.raises(ValueError, match="source"):
        image_dataset(source="faces")
