"""Fixtures for the data tests: small generated image trees with captions, classes and bad files."""
import io
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # shard_helpers (importlib mode: no conftest imports)


def make_rgb(width=40, height=30, seed=0):
    """A smooth random-ish RGB test image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.uniform(0, 255, size=3)
    arr = (base + 60 * np.sin(xx[..., None] / (3 + seed) + yy[..., None] / 5 + np.arange(3))) % 256
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def jpeg_bytes(img, **kwargs):
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kwargs)
    return buf.getvalue()


@pytest.fixture
def image_tree(tmp_path):
    """root/{cats,dogs}/ with PNG/JPEG/WEBP/BMP files, a sidecar caption, metadata.jsonl and metadata.csv."""
    root = tmp_path / "images"
    cats, dogs = root / "cats", root / "dogs"
    cats.mkdir(parents=True)
    dogs.mkdir()
    make_rgb(seed=1).save(cats / "a.png")
    (cats / "a.txt").write_text("  a sidecar caption\n")
    make_rgb(seed=2).save(cats / "b.jpg")
    make_rgb(seed=3).convert("RGBA").save(cats / "c.png")
    (cats / "metadata.jsonl").write_text(
        json.dumps({"file_name": "b.jpg", "text": "jsonl caption"}) + "\n\n"
        + json.dumps({"file_name": "a.png", "text": "loses to the sidecar"}) + "\n")
    make_rgb(seed=4).save(dogs / "d.webp")
    make_rgb(seed=5).save(dogs / "e.bmp")
    make_rgb(seed=6).convert("P").save(dogs / "f.png")
    (dogs / "metadata.csv").write_text('file_name,text\nd.webp,"csv, with a comma"\ne.bmp,bmp caption\n')
    # ignored: hidden folder, AppleDouble file, other extensions
    (root / ".hidden").mkdir()
    make_rgb().save(root / ".hidden" / "x.png")
    (dogs / "._f.png").write_bytes(b"\x00\x05\x16\x07 not an image")
    (root / "notes.md").write_text("not an image")
    return root


@pytest.fixture
def bad_tree(tmp_path):
    """Flat folder: 1.png good, 2.png random bytes, 3.jpg truncated JPEG, 4.png good."""
    root = tmp_path / "bad"
    root.mkdir()
    make_rgb(seed=1).save(root / "1.png")
    (root / "2.png").write_bytes(np.random.default_rng(0).bytes(600))
    data = jpeg_bytes(make_rgb(64, 64, seed=2))
    (root / "3.jpg").write_bytes(data[: len(data) // 2])
    make_rgb(seed=4).save(root / "4.png")
    return root


@pytest.fixture
def rgb_image():
    """The `make_rgb(width, height, seed)` factory (test modules cannot import conftest under importlib mode)."""
    return make_rgb
