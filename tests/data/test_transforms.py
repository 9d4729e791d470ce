"""Tests for image loading, mode conversion and the resize / crop / flip transform."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.data.transforms import (ImageTransform, load_image, resample_filter, resized_crop, to_float_array, to_rgb,
                                 to_uint8, torch_seeded_rng)


def gradient(width, height):
    yy, xx = np.mgrid[0:height, 0:width]
    arr = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1), (xx + yy) % 256], -1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


@pytest.mark.parametrize("wh", [(80, 50), (50, 80), (64, 64), (20, 10)])
def test_output_shape_dtype_range(wh):
    out = ImageTransform(32, random_crop=True, flip=True)(gradient(*wh))
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert out.flags["C_CONTIGUOUS"]


def test_endpoints_map_to_minus_one_and_one():
    img = Image.fromarray(np.array([[[0, 255, 0]]], np.uint8))
    arr = to_float_array(img)
    np.testing.assert_array_equal(arr[0, 0], [-1.0, 1.0, -1.0])
    np.testing.assert_array_equal(to_uint8(arr), np.asarray(img))
    np.testing.assert_array_equal(to_uint8(torch.from_numpy(arr)), np.asarray(img))


def test_single_resample_matches_resize_then_crop():
    img = gradient(451, 300)
    ours = ImageTransform(64)(img)
    width = round(451 * 64 / 300)
    resized = img.resize((width, 64), Image.Resampling.BICUBIC)
    x = (width - 64) // 2
    ref = to_float_array(resized.crop((x, 0, x + 64, 64)))
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_center_crop_is_deterministic_and_random_crop_varies():
    img = gradient(200, 50)
    center = ImageTransform(50)
    np.testing.assert_array_equal(center(img), center(img))
    rand = ImageTransform(50, random_crop=True)
    crops = {rand(img, rng=np.random.default_rng(s)).tobytes() for s in range(8)}
    assert len(crops) > 1
    # same generator state -> same crop
    np.testing.assert_array_equal(rand(img, rng=np.random.default_rng(3)), rand(img, rng=np.random.default_rng(3)))


def test_flip_mirrors_columns():
    img = gradient(32, 32)
    plain = ImageTransform(32)(img)
    flipper = ImageTransform(32, flip=True)
    outs = [flipper(img, rng=np.random.default_rng(s)) for s in range(10)]
    flipped = [o for o in outs if not np.array_equal(o, plain)]
    assert flipped and len(flipped) < len(outs)
    np.testing.assert_array_equal(flipped[0], plain[:, ::-1])


def test_size_none_keeps_image():
    out = ImageTransform(None)(gradient(30, 20))
    assert out.shape == (20, 30, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="interpolation"):
        resample_filter("cubic-ish")
    with pytest.raises(ValueError, match="size"):
        ImageTransform(0)
    assert resample_filter("AREA") == Image.Resampling.BOX


def test_rgb_conversion_of_modes():
    # palette with a transparent index -> transparent pixels become white
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.info["transparency"] = 0
    rgb = np.asarray(to_rgb(pal))
    assert rgb.shape == (4, 4, 3)
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 255])
    np.testing.assert_array_equal(rgb[1, 1], [255, 255, 255])
    # RGBA half transparent black over white -> mid gray
    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 128))
    assert abs(int(np.asarray(to_rgb(rgba))[0, 0, 0]) - 127) <= 1
    # LA, L, 1, CMYK
    for img in (Image.new("LA", (2, 2), (10, 255)), Image.new("L", (2, 2), 10), Image.new("1", (2, 2), 1),
                Image.new("CMYK", (2, 2), (0, 0, 0, 0))):
        out = to_rgb(img)
        assert out.mode == "RGB" and out.size == (2, 2)
    # 16-bit grayscale -> full range
    arr16 = np.array([[0, 65535], [257 * 100, 65535]], np.uint16)
    out = np.asarray(to_rgb(Image.fromarray(arr16)))
    np.testing.assert_array_equal(out[..., 0], [[0, 255], [100, 255]])
    # 32-bit int with 16-bit values and float in [0, 1]
    out = np.asarray(to_rgb(Image.fromarray(arr16.astype(np.int32))))
    assert out[0, 1, 0] == 255
    out = np.asarray(to_rgb(Image.fromarray(np.array([[0.0, 1.0]], np.float32))))
    np.testing.assert_array_equal(out[0, :, 1], [0, 255])


def test_load_image_decodes_now_and_applies_exif(tmp_path):
    img = gradient(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes())
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (20, 40)
    loaded.load()  # still usable after the file was closed
    np.asarray(loaded)

    gray16 = tmp_path / "g16.png"
    Image.fromarray(np.full((5, 6), 65535, np.uint16)).save(gray16)
    assert np.asarray(load_image(gray16)).min() == 255


def test_jpeg_draft_keeps_shorter_side(tmp_path):
    path = tmp_path / "big.jpg"
    gradient(1024, 768).save(path)
    small = load_image(path, min_side=64)
    assert min(small.size) >= 64 and small.size[0] < 1024
    assert ImageTransform(64)(small).shape == (64, 64, 3)
    assert load_image(path).size == (1024, 768)


def test_load_image_raises_on_bad_files(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all" * 20)
    with pytest.raises(OSError):
        load_image(bad)
    buf = io.BytesIO()
    gradient(64, 64).save(buf, "JPEG")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(OSError, match="(?i)truncated"):
        load_image(trunc)


def test_resized_crop_and_torch_seeded_rng():
    out = resized_crop(gradient(100, 100), (10, 10, 60, 60), 16)
    assert out.size == (16, 16)
    torch.manual_seed(5)
    a = torch_seeded_rng().integers(1 << 30)
    torch.manual_seed(5)
    assert torch_seeded_rng().integers(1 << 30) == a
    assert torch_seeded_rng().integers(1 << 30) != a
