"""Shapes checker: exact on rendered ground truth at several resolutions, robust to noise and blur, accuracy()."""
import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from ldm.data.shapes import ATTRIBUTES, NUM_CLASSES, ShapesDataset, attributes_for_class, caption_for, render_shape
from ldm.eval.shapes import NONE, accuracy, detect, detect_batch, report


def renders(size, seeds, noise=0.0, blur=0.0):
    """All 120 combinations x seeds as float images in [-1, 1], with their attributes."""
    images, targets = [], []
    for seed in seeds:
        for label in range(NUM_CLASSES):
            attrs = attributes_for_class(label)
            img = render_shape(attrs, size, np.random.default_rng([seed, label])).astype(np.float64) / 127.5 - 1
            if blur:
                img = ndimage.gaussian_filter(img, (blur, blur, 0))
            if noise:
                img = img + np.random.default_rng([seed, label, 1]).normal(0.0, noise, img.shape)
            images.append(np.clip(img, -1, 1).astype(np.float32))
            targets.append(attrs)
    return np.stack(images), targets


def test_exact_on_all_combinations_at_64px():
    images, targets = renders(64, seeds=range(3))
    result = accuracy(images, targets)
    assert result == {"shape": 1.0, "color": 1.0, "size": 1.0, "position": 1.0, "all": 1.0, "found": 1.0, "n": 360}


@pytest.mark.parametrize("size", [32, 128])
def test_exact_at_other_resolutions(size):
    images, targets = renders(size, seeds=[7])
    assert accuracy(images, targets)["all"] == 1.0


def test_robust_to_noise_and_blur():
    images, targets = renders(64, seeds=[1], noise=0.05)  # sigma in [-1, 1] units
    assert accuracy(images, targets)["all"] == 1.0
    images, targets = renders(64, seeds=[2], noise=0.05, blur=1.0)
    assert accuracy(images, targets)["all"] == 1.0
    images, targets = renders(32, seeds=[3], noise=0.05, blur=0.7)  # 5-pixel objects: allow a rare miss
    assert accuracy(images, targets)["all"] >= 0.97


def test_robust_to_colour_shift_and_uneven_background():
    rng = np.random.default_rng(0)
    hits = 0
    for label in range(0, NUM_CLASSES, 3):
        attrs = attributes_for_class(label)
        img = render_shape(attrs, 64, rng).astype(np.float64)
        background = img[0, 0].copy()
        weight = np.clip(np.abs(img - background).sum(-1, keepdims=True) / 150.0, 0, 1)
        img = img + weight * rng.uniform(-25, 25, 3) + (1 - weight) * np.linspace(-6, 6, 64)[None, :, None]
        hits += all(detect(np.clip(img, 0, 255).astype(np.uint8))[k] == attrs[k] for k in ATTRIBUTES)
    assert hits == len(range(0, NUM_CLASSES, 3))


def test_input_formats_agree():
    attrs = {"shape": "triangle", "color": "yellow", "size": "small", "position": "top"}
    uint8 = render_shape(attrs, 64, 3)
    unit = uint8.astype(np.float32) / 127.5 - 1
    chw = torch.from_numpy(unit).permute(2, 0, 1)
    for image in (uint8, unit, torch.from_numpy(unit), chw):
        assert {k: detect(image)[k] for k in ATTRIBUTES} == attrs
    nchw, nhwc = torch.stack([chw, chw]), np.stack([unit, unit])
    assert [d["shape"] for d in detect_batch(nchw)] == [d["shape"] for d in detect_batch(nhwc)] == ["triangle"] * 2
    with pytest.raises(ValueError, match="3 colour channels"):
        detect(np.zeros((8, 8, 5), np.uint8))


def test_blank_image_reports_none_and_counts_as_wrong():
    blank = np.full((64, 64, 3), 240, np.uint8)
    found = detect(blank)
    assert not found["found"] and all(found[k] == NONE for k in ATTRIBUTES)
    speck = blank.copy()
    speck[10, 10] = (220, 40, 40)  # one pixel is not an object
    assert not detect(speck)["found"]
    result = accuracy(np.stack([blank, render_shape(attributes_for_class(0), 64, 0)]),
                      [attributes_for_class(0)] * 2)
    assert result["all"] == 0.5 and result["found"] == 0.5 and result["color"] == 0.5


def test_accuracy_aggregation_and_target_forms():
    labels = [0, 41, 77, 119]
    images = np.stack([render_shape(attributes_for_class(c), 64, c) for c in labels])
    wrong = [dict(attributes_for_class(c)) for c in labels]
    wrong[0]["color"] = "blue" if wrong[0]["color"] != "blue" else "red"
    wrong[1]["size"] = "large" if wrong[1]["size"] == "small" else "small"
    wrong[1]["position"] = "left" if wrong[1]["position"] != "left" else "right"
    result = accuracy(images, wrong)
    assert result["color"] == 0.75 and result["size"] == 0.75 and result["position"] == 0.75
    assert result["shape"] == 1.0 and result["all"] == 0.5 and result["n"] == 4
    captions = [caption_for(attributes_for_class(c), t) for t, c in enumerate(labels)]
    assert accuracy(images, captions)["all"] == 1.0
    assert accuracy(torch.from_numpy(images), torch.tensor(labels))["all"] == 1.0
    with pytest.raises(ValueError, match="4 images but 3 targets"):
        accuracy(images, labels[:3])


def test_report_counts_what_each_target_was_read_as():
    labels = [0, 41, 77]
    blank = np.full((64, 64, 3), 230, np.uint8)
    images = np.stack([render_shape(attributes_for_class(c), 64, c) for c in labels] + [blank])
    targets = [dict(attributes_for_class(c)) for c in labels] + [dict(attributes_for_class(0))]
    drawn = attributes_for_class(41)["color"]
    targets[1]["color"] = "blue" if drawn != "blue" else "red"  # ask for another colour than the one drawn
    result = report(images, targets)
    assert result["accuracy"] == accuracy(images, targets)
    colors = result["confusion"]["color"]
    assert colors[targets[1]["color"]].get(drawn) == 1
    assert colors[targets[3]["color"]].get(NONE) == 1  # the blank image: nothing found
    assert sum(sum(row.values()) for row in colors.values()) == 4
    assert [d["found"] for d in result["detections"]] == [True, True, True, False]
    assert result["detections"][2]["shape"] == attributes_for_class(77)["shape"]


def test_accuracy_on_a_collated_dataset_batch():
    batch = next(iter(DataLoader(ShapesDataset(size=64, length=16, paraphrase_prob=1.0, split="validation"),
                                 batch_size=16)))
    assert accuracy(batch["image"], batch)["all"] == 1.0  # attribute lists of the batch
    assert accuracy(batch["image"], batch["caption"])["all"] == 1.0  # paraphrased captions
    assert accuracy(batch["image"], batch["class_label"])["all"] == 1.0
