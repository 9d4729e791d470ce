"""Stage-2 data from your folder: caption layouts, several captions, partly captioned folders, class labels, and the
checks main.py runs before training (a text model without captions, a class model without labels)."""

import json
import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from ldm.data.captions import caption_list, choose_caption
from ldm.data.default import image_dataset
from ldm.data.image_folder import ImageFolder
from ldm.trainer.checks import check_data_for_model
from ldm.util import ConfigError, instantiate_from_config, load_configs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def images(folder, names, size=(20, 24)):
    """Write small random PNGs named `names` (relative paths) under `folder`."""
    rng = np.random.default_rng(0)
    for name in names:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return str(folder)


def test_caption_rules():
    assert caption_list("a cat\n\n  a small cat \n") == ["a cat", "a small cat"]
    assert caption_list(["one", "two\nthree"]) == ["one", "two", "three"]
    assert caption_list(None) == [] and choose_caption([], True) == ""
    assert choose_caption(["first", "second"], training=False) == "first"
    random.seed(0)
    assert {choose_caption(["first", "second", "third"], training=True) for _ in range(50)} == {
        "first", "second", "third"}


def test_sidecar_with_several_captions_picks_one_per_training_step(tmp_path):
    images(tmp_path, ["a.png"])
    (tmp_path / "a.txt").write_text("a red square\na square in red\n")
    train = ImageFolder(str(tmp_path), size=16)
    random.seed(1)
    assert {train[0]["caption"] for _ in range(30)} == {"a red square", "a square in red"}
    assert train.caption_choices(0) == ["a red square", "a square in red"]
    validation = ImageFolder(str(tmp_path), size=16, training=False)
    assert {validation[0]["caption"] for _ in range(10)} == {"a red square"}


def test_metadata_jsonl_with_lists_and_csv_with_a_named_column(tmp_path):
    jsonl = tmp_path / "jsonl"
    images(jsonl, ["x.png", "sub/y.png"])
    rows = [{"file_name": "x.png", "text": ["one", "uno"]}, {"file_name": "sub/y.png", "text": "two"}]
    (jsonl / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    folder = ImageFolder(str(jsonl), size=16, class_from_subfolders=False)
    assert [folder.caption_choices(i) for i in range(2)] == [["two"], ["one", "uno"]]  # sorted: sub/y.png first

    csv_folder = tmp_path / "csv"
    images(csv_folder, ["p.png", "q.png"])
    (csv_folder / "metadata.csv").write_text("file_name,prompt,text\np.png,a prompt,ignored\nq.png,another,x\n")
    folder = ImageFolder(str(csv_folder), size=16, caption_key="prompt", training=False)
    assert [folder[i]["caption"] for i in range(2)] == ["a prompt", "another"]


def test_partly_captioned_folder_skip_or_empty(tmp_path):
    images(tmp_path, [f"{i}.png" for i in range(5)])
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text(f"caption {i}")
    kept = ImageFolder(str(tmp_path), size=16)
    assert len(kept) == 5 and kept.num_uncaptioned == 2 and kept[4]["caption"] == ""
    skipped = ImageFolder(str(tmp_path), size=16, missing_captions="skip", training=False)
    assert len(skipped) == 3 and skipped.num_uncaptioned == 2
    assert [skipped[i]["caption"] for i in range(3)] == ["caption 0", "caption 1", "caption 2"]
    empty = ImageFolder(str(tmp_path), size=16, missing_captions="empty")
    assert len(empty) == 5
    with pytest.raises(ValueError, match="missing_captions must be one of"):
        ImageFolder(str(tmp_path), size=16, missing_captions="drop")


def test_class_labels_from_a_metadata_column(tmp_path):
    images(tmp_path, ["a.png", "b.png", "c.png"])
    rows = [{"file_name": "a.png", "species": "dog"}, {"file_name": "b.png", "species": "cat"},
            {"file_name": "c.png", "species": "dog"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    folder = ImageFolder(str(tmp_path), size=16, label_key="species")
    assert folder.class_names == ["cat", "dog"]
    assert [(folder[i]["class_label"], folder[i]["human_label"]) for i in range(3)] == [
        (1, "dog"), (0, "cat"), (1, "dog")]
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "species": 4}\n{"file_name": "b.png"}\n'
                                             '{"file_name": "c.png", "species": 0}\n')
    with pytest.raises(ConfigError, match="1 of 3 images have no 'species'"):
        ImageFolder(str(tmp_path), size=16, label_key="species")


def test_one_config_serves_shapes_and_folders(tmp_path, caplog):
    images(tmp_path, [f"{i}.png" for i in range(4)])
    for i in range(4):
        (tmp_path / f"{i}.txt").write_text("x")
    caplog.set_level("INFO", logger="ldm.data.default")
    folder = image_dataset(root=str(tmp_path), size=16, source="shapes", paraphrase_prob=0.5,
                           missing_captions="skip", validation_fraction=0.25)
    assert isinstance(folder, ImageFolder) and len(folder) == 3 and folder.missing_captions == "skip"
    assert "paraphrase_prob not used with the folder data" in caplog.text
    shapes = image_dataset(size=16, source="shapes", paraphrase_prob=0.5, missing_captions="skip", length=3)
    assert len(shapes) == 3 and "caption" in shapes[0]
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['captions_key'\]"):
        image_dataset(root=str(tmp_path), size=16, captions_key="x")


# ------------------------------------------------------------------------------------------------ model checks
def _text_model():
    return SimpleNamespace(cond_stage_key="caption", cond_stage_model=None)


def _class_model(n_classes=3, add_null_class=True):
    encoder = SimpleNamespace(n_classes=n_classes, null_label=n_classes if add_null_class else n_classes - 1)
    return SimpleNamespace(cond_stage_key="class_label", cond_stage_model=encoder)


def _data(**datasets):
    return SimpleNamespace(datasets=datasets)


def test_text_model_on_a_folder_without_captions(tmp_path):
    images(tmp_path, ["a.png", "b.png"])
    with pytest.raises(ConfigError) as info:
        check_data_for_model(_text_model(), _data(train=ImageFolder(str(tmp_path), size=16)))
    message = str(info.value)
    assert f"data.params.train.params.root={tmp_path}: found 2 images and 0 captions" in message
    assert "sidecar <name>.txt" in message and "metadata.jsonl or metadata.csv" in message


def test_text_model_on_a_partly_captioned_folder(tmp_path):
    images(tmp_path, ["a.png", "b.png", "c.png"])
    (tmp_path / "a.txt").write_text("a caption")
    with pytest.raises(ConfigError, match="2 of 3 images have no caption; set data.params.train.params."
                                          "missing_captions=skip"):
        check_data_for_model(_text_model(), _data(train=ImageFolder(str(tmp_path), size=16)))
    notes = check_data_for_model(_text_model(), _data(
        train=ImageFolder(str(tmp_path), size=16, missing_captions="skip")))
    assert notes == ["data: train: 2 images without a caption skipped"]


def test_class_model_needs_labels_it_can_embed(tmp_path):
    images(tmp_path / "flat", ["a.png"])
    with pytest.raises(ConfigError, match="no class labels for a class-conditional model"):
        check_data_for_model(_class_model(), _data(train=ImageFolder(str(tmp_path / "flat"), size=16)))
    images(tmp_path / "classes", [f"{c}/x.png" for c in "abcd"])
    four = ImageFolder(str(tmp_path / "classes"), size=16)
    with pytest.raises(ConfigError, match="4 classes, but the model embeds 3"):
        check_data_for_model(_class_model(3), _data(train=four))
    assert check_data_for_model(_class_model(4), _data(train=four)) == []


STAGE2 = ["ldm_txt2img.yaml", "ldm_txt2img_f4.yaml", "ldm_cin.yaml", "ldm_uncond.yaml", "ddpm_pixel.yaml",
          "ldm_inpainting.yaml", "ldm_sr.yaml"]


@pytest.mark.parametrize("name", STAGE2)
def test_every_stage2_config_reads_a_folder_given_by_root(tmp_path, name):
    """`data.params.train.params.root=DIR` is all it takes; validation is a held-out part of the same folder."""
    folder = images(tmp_path / "data", [f"{c}/{i}.png" for c in "ab" for i in range(10)], size=(72, 80))
    for c in "ab":
        for i in range(10):
            (tmp_path / "data" / c / f"{i}.txt").write_text(f"a picture of {c}")
    config = load_configs([os.path.join(ROOT, "configs", name), os.path.join(ROOT, "configs", "overlays", "cpu.yaml")],
                          [f"data.params.train.params.root={folder}"])
    train = instantiate_from_config(config.data.params.train)
    validation = instantiate_from_config(config.data.params.validation)
    inner = lambda d: getattr(d, "data", d)  # noqa: E731 - task datasets keep the folder in .data
    assert isinstance(inner(train), ImageFolder) and isinstance(inner(validation), ImageFolder)
    assert len(train) + len(validation) == 20 and len(validation) == 1
    item = train[0]
    size = OmegaConf.select(config, "data.params.train.params.size")
    assert item["image"].shape == (size, size, 3)
    if "txt2img" in name or "pixel" in name:
        assert item["caption"] == f"a picture of {item['human_label']}"
    if name == "ldm_cin.yaml":
        assert item["class_label"] in (0, 1)
