"""Mask makers: shape, values, determinism, coverage; apply_mask convention."""
import numpy as np
import pytest
import torch

from ldm.data.masks import BoxMasks, MixedMasks, StrokeMasks, apply_mask


@pytest.mark.parametrize("maker", [BoxMasks(), StrokeMasks(), MixedMasks()], ids=repr)
def test_shape_values_and_determinism(maker):
    a, b = maker((48, 64), 7), maker((48, 64), np.random.default_rng(7))
    assert a.shape == (48, 64, 1) and a.dtype == np.float32
    assert set(np.unique(a)) <= {0.0, 1.0} and a.sum() > 0
    assert np.array_equal(a, b)  # a seed and a generator made from it agree
    assert not all(np.array_equal(a, maker((48, 64), s)) for s in range(1, 4))


def test_box_coverage_follows_the_side_fractions():
    one = BoxMasks(num_boxes=1, side_fraction=(0.25, 0.5))
    coverage = np.array([one(64, s).mean() for s in range(50)])
    assert coverage.min() >= 0.25 ** 2 - 1e-3 and coverage.max() <= 0.5 ** 2 + 1e-3
    exact = BoxMasks(num_boxes=1, side_fraction=0.5)(64, 0)
    assert exact.sum() == 32 * 32  # a 32x32 box inside the image


def test_stroke_coverage_grows_with_width():
    thin = StrokeMasks(num_strokes=2, width_fraction=0.03)
    thick = StrokeMasks(num_strokes=2, width_fraction=0.15)
    cov_thin = np.mean([thin(96, s).mean() for s in range(20)])
    cov_thick = np.mean([thick(96, s).mean() for s in range(20)])
    assert 0.0 < cov_thin < cov_thick < 0.9


def _is_one_rectangle(mask):
    rows, cols = mask[..., 0].any(axis=1), mask[..., 0].any(axis=0)
    return mask.sum() == rows.sum() * cols.sum()


def test_mixed_masks_pick_by_probability():
    makers = {"boxes": {"num_boxes": 1}, "strokes": {"num_strokes": 2}}
    boxes = MixedMasks(makers, probabilities={"boxes": 1.0, "strokes": 0.0})
    strokes = MixedMasks(makers, probabilities={"boxes": 0.0, "strokes": 1.0})
    assert all(_is_one_rectangle(boxes(32, s)) for s in range(10))
    assert not any(_is_one_rectangle(strokes(32, s)) for s in range(10))
    both = [_is_one_rectangle(MixedMasks(makers)(32, s)) for s in range(40)]
    assert 5 < sum(both) < 35
    with pytest.raises(ValueError, match="makers"):
        MixedMasks(makers={"circles": {}})
    with pytest.raises(ValueError, match="probabilities"):
        MixedMasks(probabilities={"boxes": 1.0})


def test_bad_ranges_are_errors():
    with pytest.raises(ValueError, match="side_fraction"):
        BoxMasks(side_fraction=(0.5, 0.2))
    with pytest.raises(ValueError, match="width_fraction"):
        StrokeMasks(width_fraction=1.5)
    with pytest.raises(ValueError, match="size"):
        BoxMasks()(0)


def test_apply_mask_zeroes_the_hole_for_arrays_and_tensors():
    image = np.full((4, 4, 3), 0.5, np.float32)
    mask = np.zeros((4, 4, 1), np.float32)
    mask[:2] = 1
    out = apply_mask(image, mask)
    assert np.all(out[:2] == 0) and np.all(out[2:] == 0.5)
    t = apply_mask(torch.from_numpy(image), torch.from_numpy(mask), fill=-1.0)
    assert torch.all(t[:2] == -1) and torch.all(t[2:] == 0.5)
