"""SR degradation: LR size, value range, determinism, each optional stage."""
import numpy as np
import pytest
from PIL import Image

from ldm.data.degradation import Degradation
from ldm.data.transforms import to_float_array


def photo(size=64, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    arr = 127 + 100 * np.sin(xx[..., None] / 5 + yy[..., None] / 7 + np.arange(3)) + rng.normal(0, 5, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def test_plain_bicubic_downscale():
    hr = photo()
    lr = Degradation(factor=4)(hr, 0)
    assert lr.size == (16, 16) and lr.mode == "RGB"
    assert np.array_equal(np.asarray(lr), np.asarray(hr.resize((16, 16), Image.Resampling.BICUBIC)))


def test_array_interface_range_and_determinism():
    full = Degradation(factor=2, blur_prob=1, noise_prob=1, jpeg_prob=1)
    x = to_float_array(photo(32))
    a, b = full.degrade_array(x, 3), full.degrade_array(x, np.random.default_rng(3))
    assert a.shape == (16, 16, 3) and a.dtype == np.float32
    assert -1.0 <= a.min() and a.max() <= 1.0
    assert np.array_equal(a, b)
    assert not np.array_equal(a, full.degrade_array(x, 4))


@pytest.mark.parametrize("stage,strength", [("blur_sigma", 1.5), ("noise_sigma", 5.0), ("jpeg_quality", 30)])
def test_each_stage_changes_the_result(stage, strength):
    plain = np.asarray(Degradation(factor=2)(photo(), 0), dtype=np.float32)
    prob = stage.split("_")[0] + "_prob"
    out = np.asarray(Degradation(factor=2, **{prob: 1.0, stage: strength})(photo(), 0), dtype=np.float32)
    assert out.shape == plain.shape and np.abs(out - plain).mean() > 0.1


def test_bad_settings_and_sizes():
    with pytest.raises(ValueError, match="multiple of the factor"):
        Degradation(factor=4)(photo(30))
    with pytest.raises(ValueError, match="blur_prob"):
        Degradation(blur_prob=2)
    with pytest.raises(ValueError, match="factor"):
        Degradation(factor=0)
    with pytest.raises(ValueError, match="interpolation"):
        Degradation(interpolation="magic")
