"""Shapes dataset: determinism, captions vs attributes, class labels, rendering geometry, splits and collation."""
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ldm.data.shapes import (CAPTION_TEMPLATES, COLORS, NUM_CLASSES, PALETTE, POSITION_CELLS, POSITIONS, SHAPES,
                             SIZE_FRACTIONS, SIZES, ShapesDataset, ShapesTrain, ShapesValidation, attributes_for_class,
                             caption_for, class_label_for, normalize_attributes, parse_caption, place_object,
                             render_shape, shape_coverage)


def test_class_label_layout_and_round_trip():
    assert NUM_CLASSES == 3 * 4 * 2 * 5 == 120
    seen = set()
    for label in range(NUM_CLASSES):
        attrs = attributes_for_class(label)
        assert class_label_for(attrs) == label
        seen.add(tuple(attrs.values()))
    assert len(seen) == NUM_CLASSES
    # documented layout: ((shape * 4 + color) * 2 + size) * 5 + position
    attrs = {"shape": "triangle", "color": "blue", "size": "large", "position": "bottom"}
    assert class_label_for(attrs) == ((2 * 4 + 2) * 2 + 1) * 5 + 3
    assert class_label_for({"shape": 2, "color": 2, "size": 1, "position": 3}) == class_label_for(attrs)
    with pytest.raises(ValueError, match="out of range"):
        attributes_for_class(120)
    with pytest.raises(ValueError, match="unknown color 'purple'"):
        normalize_attributes({**attrs, "color": "purple"})


@pytest.mark.parametrize("template", range(len(CAPTION_TEMPLATES)))
def test_parse_caption_round_trips_every_template_and_combination(template):
    for label in range(NUM_CLASSES):
        attrs = attributes_for_class(label)
        caption = caption_for(attrs, template)
        assert parse_caption(caption) == attrs
        assert parse_caption(caption.upper() + ".") == attrs  # case and a final period do not matter


def test_caption_canonical_form_and_parse_errors():
    attrs = {"shape": "circle", "color": "red", "size": "small", "position": "left"}
    assert caption_for(attrs) == "a small red circle at the left"
    assert parse_caption("red thing, small, circle, left") == attrs  # free-form keyword fallback
    with pytest.raises(ValueError, match="exactly one color"):
        parse_caption("a small red or blue circle at the left")
    with pytest.raises(ValueError, match="exactly one shape"):
        parse_caption("a small red blob at the left")


def test_items_are_deterministic_and_splits_differ():
    a, b = ShapesDataset(length=50, seed=3), ShapesDataset(length=50, seed=3)
    for i in (0, 7, 49):
        x, y = a[i], b[i]
        assert np.array_equal(x["image"], y["image"]) and x["caption"] == y["caption"]
    assert np.array_equal(a[-1]["image"], a[49]["image"])
    other_seed, val = ShapesDataset(length=50, seed=4), ShapesDataset(length=50, seed=3, split="validation")
    assert sum(np.array_equal(a[i]["image"], other_seed[i]["image"]) for i in range(20)) == 0
    assert sum(np.array_equal(a[i]["image"], val[i]["image"]) for i in range(20)) == 0
    assert ShapesTrain(length=5).split == "train" and ShapesValidation().split == "validation"
    assert len(ShapesValidation()) == 1200
    with pytest.raises(IndexError):
        a[50]


def test_item_fields_are_consistent():
    ds = ShapesDataset(size=64, length=200, paraphrase_prob=0.5, seed=1)
    canonical = 0
    for i in range(200):
        item = ds[i]
        img = item["image"]
        assert img.shape == (64, 64, 3) and img.dtype == np.float32
        assert img.min() >= -1.0 and img.max() <= 1.0
        attrs = {k: item[k] for k in ("shape", "color", "size", "position")}
        assert parse_caption(item["caption"]) == attrs
        assert item["class_label"] == class_label_for(attrs) and 0 <= item["class_label"] < NUM_CLASSES
        assert ds.attributes(i) == attrs
        canonical += item["caption"] == caption_for(attrs)
    assert 60 < canonical < 140  # about half the captions are paraphrased
    plain = ShapesDataset(size=64, length=200, paraphrase_prob=0.0, seed=1)
    assert np.array_equal(plain[3]["image"], ds[3]["image"])  # captions never change the image
    assert all(ShapesDataset(length=20)[i]["caption"] == caption_for(ShapesDataset(length=20).attributes(i))
               for i in range(20))  # paraphrase_prob=0: always canonical


def test_balanced_covers_every_class_and_collates():
    ds = ShapesDataset(size=32, length=240, balanced=True)
    assert [ds[i]["class_label"] for i in range(0, 240, 37)] == [i % 120 for i in range(0, 240, 37)]
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == torch.float32
    assert batch["class_label"].dtype == torch.long and batch["class_label"].tolist() == [0, 1, 2, 3]
    assert isinstance(batch["caption"], list) and isinstance(batch["color"], list)


def test_image_content_background_object_color_and_antialiasing():
    attrs = {"shape": "square", "color": "green", "size": "large", "position": "center"}
    img = render_shape(attrs, 64, np.random.default_rng(0))
    assert img.dtype == np.uint8 and img.shape == (64, 64, 3)
    corner = img[0, 0].astype(int)
    assert (corner >= 225).all() and (corner <= 250).all() and (img[0] == img[0, 0]).all()  # light, plain
    assert tuple(img[32, 32]) == PALETTE["green"]  # fully covered pixels are exactly the palette colour
    levels = {tuple(p) for p in img.reshape(-1, 3)}
    assert len(levels) > 2  # anti-aliased edge pixels lie between background and object


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [32, 64, 128])
def test_coverage_area_matches_the_geometry(shape, size):
    fill = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}[shape]
    extent = size / 3 + 0.37  # off-grid on purpose
    cov = shape_coverage(shape, (size / 2 + 0.21, size / 2 - 0.13), extent, size)
    assert cov.min() >= 0 and cov.max() <= 1
    assert abs(cov.sum() - fill * extent ** 2) / (fill * extent ** 2) < 0.01
    ys, xs = np.nonzero(cov > 0)
    assert xs.max() - xs.min() + 1 <= math.ceil(extent) + 1 and ys.max() - ys.min() + 1 <= math.ceil(extent) + 1


def test_placement_stays_in_its_cell_and_inside_the_image():
    rng = np.random.default_rng(0)
    for _ in range(5):
        for label in range(NUM_CLASSES):
            attrs = attributes_for_class(label)
            (cx, cy), extent = place_object(attrs, rng)
            assert (int(cx * 3), int(cy * 3)) == POSITION_CELLS[attrs["position"]]
            assert extent / 2 < cx < 1 - extent / 2 and extent / 2 < cy < 1 - extent / 2
            nominal = SIZE_FRACTIONS[attrs["size"]]
            assert 0.89 * nominal <= extent <= 1.11 * nominal


def test_render_at_any_size_and_palette_constants():
    for size in (16, 32, 96, 128):
        assert render_shape(attributes_for_class(5), size, 0).shape == (size, size, 3)
    assert set(PALETTE) == set(COLORS) and SIZES == ("small", "large")
    assert set(POSITION_CELLS) == set(POSITIONS)


def test_multiple_objects():
    ds = ShapesDataset(length=10, num_objects=3)
    item = ds[0]
    assert len(item["objects"]) == 3 and item["caption"].count(" and ") == 2
    assert len({o["position"] for o in item["objects"]}) == 3
    assert item["class_label"] == class_label_for(item["objects"][0])
    with pytest.raises(ValueError, match="num_objects"):
        ShapesDataset(num_objects=6)


def test_mixed_object_counts_collate_and_keep_single_object_items_deterministic():
    from torch.utils.data import default_collate

    mixed = ShapesDataset(length=64, num_objects=[1, 2])
    counts = [mixed[i]["caption"].count(" and ") + 1 for i in range(len(mixed))]
    assert set(counts) == {1, 2} and mixed.num_objects == 2 and 20 < counts.count(2) < 44
    batch = default_collate([mixed[i] for i in range(8)])  # no ragged `objects` key
    assert len(batch["caption"]) == 8 and "objects" not in batch
    assert ShapesDataset(length=4)[3]["caption"] == ShapesDataset(length=4, num_objects=[1])[3]["caption"]
    with pytest.raises(ValueError, match="list of such counts"):
        ShapesDataset(num_objects=[1, 7])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(split="dev")
    with pytest.raises(ValueError, match="paraphrase_prob"):
        ShapesDataset(paraphrase_prob=2)
