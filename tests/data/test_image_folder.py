"""Tests for ImageFolder: scanning, captions, classes, splits, errors and skipping of unreadable files."""
import json
import os
import warnings

import numpy as np
import pytest

from ldm.data.image_folder import ImageFolder, read_metadata
from ldm.data.skipped_images import BadImageWarning


def by_name(ds):
    return {os.path.basename(ds[i]["file_path_"]): ds[i] for i in range(len(ds))}


def test_scan_keys_shapes_and_order(image_tree):
    ds = ImageFolder(image_tree, size=16)
    assert ds.paths == ["cats/a.png", "cats/b.jpg", "cats/c.png", "dogs/d.webp", "dogs/e.bmp", "dogs/f.png"]
    ex = ds[0]
    assert set(ex) == {"image", "file_path_", "caption", "class_label", "human_label"}
    assert ex["image"].shape == (16, 16, 3) and ex["image"].dtype == np.float32
    assert -1.0 <= ex["image"].min() and ex["image"].max() <= 1.0
    assert os.path.isabs(ex["file_path_"]) and os.path.isfile(ex["file_path_"])
    assert ImageFolder(image_tree, size=16).paths == ds.paths  # deterministic


def test_captions_sidecar_jsonl_csv(image_tree):
    items = by_name(ImageFolder(image_tree, size=8))
    assert items["a.png"]["caption"] == "a sidecar caption"  # sidecar wins over metadata, stripped
    assert items["b.jpg"]["caption"] == "jsonl caption"
    assert items["d.webp"]["caption"] == "csv, with a comma"
    assert items["e.bmp"]["caption"] == "bmp caption"
    assert items["c.png"]["caption"] == "" and items["f.png"]["caption"] == ""


def test_class_labels_from_sorted_subfolders(image_tree):
    ds = ImageFolder(image_tree, size=8)
    assert ds.class_names == ["cats", "dogs"]
    items = by_name(ds)
    assert items["b.jpg"]["class_label"] == 0 and items["b.jpg"]["human_label"] == "cats"
    assert items["e.bmp"]["class_label"] == 1 and items["e.bmp"]["human_label"] == "dogs"
    off = ImageFolder(image_tree, size=8, class_from_subfolders=False)
    assert "class_label" not in off[0] and off.class_names is None


def test_flat_folder_has_no_labels_or_captions(tmp_path, rgb_image):
    for i in range(3):
        rgb_image(seed=i).save(tmp_path / f"{i}.png")
    os.mkdir(tmp_path / "sub")
    rgb_image().save(tmp_path / "sub" / "x.png")
    ds = ImageFolder(tmp_path, size=8)
    assert len(ds) == 4
    assert set(ds[0]) == {"image", "file_path_"}  # an image at the top level -> no class labels


def test_caption_key_and_metadata_errors(tmp_path, rgb_image):
    rgb_image().save(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "prompt": "custom column"}) + "\n")
    assert ImageFolder(tmp_path, size=8, caption_key="prompt")[0]["caption"] == "custom column"
    assert "caption" not in ImageFolder(tmp_path, size=8)[0]  # no text/caption column
    with pytest.raises(ValueError, match="nonexistent"):
        ImageFolder(tmp_path, size=8, caption_key="nonexistent")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png"}\n{broken\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl:2"):
        ImageFolder(tmp_path, size=8)
    os.remove(tmp_path / "metadata.jsonl")
    (tmp_path / "metadata.csv").write_text("name,text\na.png,x\n")
    with pytest.raises(ValueError, match="file_name"):
        read_metadata(str(tmp_path / "metadata.csv"))


def test_missing_and_empty_folders_name_the_path(tmp_path):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        ImageFolder(missing)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match="empty_dir"):
        ImageFolder(empty)
    with pytest.raises(ValueError, match="extensions"):
        ImageFolder(empty, extensions=())
    with pytest.raises(ValueError, match="split"):
        ImageFolder(empty, split="holdout")


def test_unreadable_files_are_skipped_with_warning_and_counted(bad_tree):
    ds = ImageFolder(bad_tree, size=8)
    assert len(ds) == 4 and ds.num_skipped == 0
    with pytest.warns(BadImageWarning) as record:
        ex = ds[1]  # 2.png is random bytes and 3.jpg is truncated: the next readable item is 4.png
    assert os.path.basename(ex["file_path_"]) == "4.png"
    messages = [str(w.message) for w in record]
    assert len(messages) == 2 and "2.png" in messages[0] and "3.jpg" in messages[1]
    assert ds.num_skipped == 2
    with pytest.warns(BadImageWarning, match=r"3\.jpg") as record:
        ImageFolder(bad_tree, size=8)[2]
    assert any("truncated" in str(w.message).lower() for w in record)
    # known bad files are skipped silently and not counted twice
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert os.path.basename(ds[2]["file_path_"]) == "4.png"
        assert os.path.basename(ds[0]["file_path_"]) == "1.png"
    assert ds.num_skipped == 2
    assert sorted(os.path.basename(p) for p in ds.skipped_files()) == ["2.png", "3.jpg"]


def test_all_files_unreadable_raises(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"garbage" * 30)
    ds = ImageFolder(tmp_path, size=8)
    with pytest.warns(BadImageWarning), pytest.raises(RuntimeError, match="all 3 images"):
        ds[0]
    with pytest.raises(RuntimeError, match=str(tmp_path)):
        ds[1]


def test_index_out_of_range(image_tree):
    ds = ImageFolder(image_tree, size=8)
    assert ds[-1]["file_path_"] == ds[len(ds) - 1]["file_path_"]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_validation_split_is_deterministic_and_disjoint(tmp_path, rgb_image):
    for i in range(20):
        rgb_image(8, 8, seed=i % 4).save(tmp_path / f"{i:02d}.png")
    train = ImageFolder(tmp_path, size=8, split="train", validation_fraction=0.25)
    val = ImageFolder(tmp_path, size=8, split="validation", validation_fraction=0.25)
    assert len(val) == 5 and len(train) == 15
    assert not set(train.paths) & set(val.paths)
    assert sorted(train.paths + val.paths) == ImageFolder(tmp_path, size=8).paths
    assert ImageFolder(tmp_path, size=8, split="val", validation_fraction=0.25).paths == val.paths
    other = ImageFolder(tmp_path, size=8, split="validation", validation_fraction=0.25, split_seed=1)
    assert other.paths != val.paths
    with pytest.raises(ValueError, match="validation_fraction"):
        ImageFolder(tmp_path, split="validation")


def test_file_list_and_max_items(image_tree, tmp_path):
    listing = image_tree / "train.txt"
    listing.write_text("# comment\ncats/b.jpg\n\ndogs/e.bmp\n")
    ds = ImageFolder(image_tree, size=8, file_list="train.txt")
    assert ds.paths == ["cats/b.jpg", "dogs/e.bmp"]
    assert [ds[i]["class_label"] for i in range(2)] == [0, 1]
    assert ImageFolder(image_tree, size=8, file_list=["dogs/d.webp"]).paths == ["dogs/d.webp"]
    with pytest.raises(FileNotFoundError, match="cats/zzz.png"):
        ImageFolder(image_tree, file_list=["cats/zzz.png"])
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        ImageFolder(image_tree, file_list=str(tmp_path / "nope.txt"))
    few = ImageFolder(image_tree, size=8, max_items=3)
    assert len(few) == 3 and few.paths == ImageFolder(image_tree, size=8, max_items=3).paths
    assert few.paths == sorted(few.paths)


def test_random_crop_and_flip_options(tmp_path, rgb_image):
    rgb_image(80, 40).save(tmp_path / "wide.png")
    ds = ImageFolder(tmp_path, size=16, random_crop=True, flip=True)
    crops = {ds[0]["image"].tobytes() for _ in range(10)}
    assert len(crops) > 1
    center = ImageFolder(tmp_path, size=16)
    np.testing.assert_array_equal(center[0]["image"], center[0]["image"])
