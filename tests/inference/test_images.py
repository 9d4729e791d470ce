import numpy as np
import pytest
import torch
from PIL import Image

from ldm.errors import UsageError
from ldm.inference.images import (image_grid, image_to_tensor, open_image, read_png_metadata, save_png, to_pil,
                                  to_uint8)


def test_tensor_image_round_trip():
    x = torch.rand(2, 3, 4, 5) * 2 - 1
    arrays = to_uint8(x)
    assert arrays.shape == (2, 4, 5, 3) and arrays.dtype == np.uint8
    back = torch.cat([image_to_tensor(im) for im in to_pil(x)])
    assert back.shape == x.shape and (back - x).abs().max() <= 1 / 127.5 + 1e-6
    assert to_uint8(torch.tensor([-3.0, -1.0, 1.0, 3.0]).view(1, 1, 2, 2)).ravel().tolist() == [0, 0, 255, 255]


def test_grid_layout():
    tiles = to_pil(torch.zeros(5, 3, 8, 6))
    grid = image_grid(tiles, ncols=2)
    assert grid.size == (2 * (6 + 2) + 2, 3 * (8 + 2) + 2)  # 3 rows of 2, 2 px padding around every cell
    assert image_grid(tiles[:1], ncols=4).size == (6 + 4, 8 + 4)


def test_png_metadata_round_trip(tmp_path):
    meta = {"prompt": "a small red circle at the left", "seed": 1234, "scale": 5.0, "eta": None, "steps": 50}
    path = str(tmp_path / "x.png")
    save_png(to_pil(torch.zeros(1, 3, 4, 4))[0], path, meta)
    assert read_png_metadata(path) == meta
    assert Image.open(path).text["prompt"] == meta["prompt"]  # shown by ordinary image viewers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]
    save_png(to_pil(torch.zeros(1, 3, 4, 4))[0], path)
    assert read_png_metadata(path) == {}


def test_open_image_modes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((6, 4), 255, np.uint8)])).save(tmp_path / "opaque.png")
    assert np.array_equal(np.asarray(open_image(str(tmp_path / "rgb.png"))), rgb)
    assert open_image(str(tmp_path / "gray.png")).mode == "RGB"
    assert open_image(str(tmp_path / "gray.png"), channels=1).mode == "L"
    assert np.array_equal(np.asarray(open_image(str(tmp_path / "opaque.png"))), rgb)
    assert image_to_tensor(open_image(str(tmp_path / "rgb.png"))).shape == (1, 3, 6, 4)

    alpha = np.dstack([rgb, np.zeros((6, 4), np.uint8)])
    Image.fromarray(alpha).save(tmp_path / "alpha.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 200).save(tmp_path / "deep.png")
    (tmp_path / "text.png").write_text("not an image")
    cases = {"missing.png": "file not found", "alpha.png": "transparent pixels", "deep.png": "mode I",
             "text.png": "not a readable image"}
    for name, message in cases.items():
        with pytest.raises(UsageError, match=message) as err:
            open_image(str(tmp_path / name), flag="--init-img")
        assert str(err.value).startswith("--init-img")
