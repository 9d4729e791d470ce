"""Task datasets: inpainting and super-resolution keys on top of any image dataset, fixed validation items."""
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from ldm.data.tasks import InpaintingDataset, SuperResolutionDataset
from ldm.util import instantiate_from_config


def test_inpainting_keys_on_the_embedded_photos():
    ds = InpaintingDataset(size=32, split="validation")
    item = ds[1]
    image, mask, masked = item["image"], item["mask"], item["masked_image"]
    assert image.shape == (32, 32, 3) and mask.shape == (32, 32, 1) and masked.shape == (32, 32, 3)
    assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0} and 0 < mask.mean() < 1
    assert np.array_equal(masked, (1 - mask) * image)
    again = ds[1]
    assert np.array_equal(again["mask"], mask) and np.array_equal(again["image"], image)  # validation is fixed


def test_any_dataset_config_and_training_draws_fresh_masks():
    shapes = {"target": "ldm.data.shapes.ShapesTrain", "params": {"size": 16, "length": 8}}
    ds = InpaintingDataset(dataset=shapes, mask_config={"target": "ldm.data.masks.BoxMasks"})
    assert len(ds) == 8 and "caption" in ds[0]  # the inner dataset's keys are kept
    assert not all(np.array_equal(ds[0]["mask"], ds[0]["mask"]) for _ in range(3))
    with pytest.raises(ValueError, match="not both"):
        InpaintingDataset(dataset=shapes, root="/somewhere")


def test_super_resolution_from_an_image_folder(tmp_path):
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png")
    ds = SuperResolutionDataset(root=str(tmp_path), size=32, split="train", validation_fraction=0,
                                degradation={"factor": 4, "noise_prob": 1.0})
    item = ds[0]
    assert item["image"].shape == (32, 32, 3) and item["LR_image"].shape == (8, 8, 3)
    assert item["LR_image"].dtype == np.float32 and -1 <= item["LR_image"].min() and item["LR_image"].max() <= 1


@pytest.mark.parametrize("name", ["ldm_inpainting", "ldm_sr"])
def test_the_task_configs_data_sections(name, repo_root):
    cfg = OmegaConf.load(f"{repo_root}/configs/{name}.yaml")
    cfg.data.params.train.params.size = 32
    cfg.data.params.validation.params.size = 32
    train = instantiate_from_config(cfg.data.params.train)
    val = instantiate_from_config(cfg.data.params.validation)
    key = {"ldm_inpainting": "masked_image", "ldm_sr": "LR_image"}[name]
    assert key in train[0] and key in val[0] and not train.fixed and val.fixed
