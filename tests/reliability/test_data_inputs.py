"""Unusable image folders (empty, other files only, every image unreadable) give one error naming the folder and the
counts: as exceptions main.py prints in one line, also when raised in a DataLoader worker, and end to end."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from ldm.data.image_folder import ImageFolder, UnreadableImagesError, split_indices
from ldm.util import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXTENSIONS = r"\(\.jpg, \.jpeg, \.png, \.webp, \.bmp\)"


def garbage(folder, names):
    """Files named like images that hold random bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).write_bytes(np.random.default_rng(i).bytes(300))
    return folder


def good_image(path):
    Image.fromarray(np.full((8, 8, 3), 128, dtype=np.uint8)).save(path)


def test_empty_folder_and_other_files_only(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=f"no images {EXTENSIONS} found under {empty} \\(the folder is empty\\)"):
        ImageFolder(empty)
    other = tmp_path / "other"
    (other / "sub").mkdir(parents=True)
    (other / "a.txt").write_text("x")
    (other / "sub" / "b.csv").write_text("x")
    with pytest.raises(ConfigError, match=r"found 2 other file\(s\), e.g. a.txt\)"):
        ImageFolder(other)
    hidden = tmp_path / "hidden"
    garbage(hidden, ["._x.jpg"])
    with pytest.raises(ConfigError, match=r"e.g. ._x.jpg; names starting with '.' are skipped"):
        ImageFolder(hidden)


@pytest.mark.filterwarnings("ignore::ldm.data.skipped_images.BadImageWarning")
def test_all_unreadable_counts_the_folder_not_one_split(tmp_path):
    folder = garbage(tmp_path / "bad", ["0.png", "1.png", "2.png"])
    whole = ImageFolder(folder, size=8)
    with pytest.raises(UnreadableImagesError, match=f"^all 3 images under {folder} are unreadable; first: "
                                                    f"{folder}/0.png: UnidentifiedImageError"):
        whole[1]
    for split, k in (("train", 2), ("validation", 1)):
        ds = ImageFolder(folder, size=8, split=split, validation_fraction=0.2)
        assert len(ds) == k
        with pytest.raises(UnreadableImagesError, match=rf"^all 3 images under {folder} \({split} split: {k}\) are "
                                                        "unreadable; first: "):
            ds[0]
    # a ConfigError (main.py prints it as one line), and still the RuntimeError it always was
    assert issubclass(UnreadableImagesError, ConfigError) and issubclass(UnreadableImagesError, RuntimeError)


@pytest.mark.filterwarnings("ignore::ldm.data.skipped_images.BadImageWarning")
def test_unreadable_split_of_a_readable_folder(tmp_path):
    names = [f"{i}.png" for i in range(4)]
    (val,) = split_indices(names, "validation", 0.25)
    for i, name in enumerate(names):
        if i == val:
            garbage(tmp_path, [name])
        else:
            good_image(tmp_path / name)
    ds = ImageFolder(tmp_path, size=8, split="validation", validation_fraction=0.25)
    with pytest.raises(UnreadableImagesError, match=f"^all 1 images of the validation split of {tmp_path} are "
                                                    "unreadable \\(the folder's readable images are all outside"):
        ds[0]
    assert ImageFolder(tmp_path, size=8, split="train", validation_fraction=0.25)[0]["image"].shape == (8, 8, 3)


@pytest.mark.filterwarnings("ignore::ldm.data.skipped_images.BadImageWarning")
def test_one_line_message_survives_a_dataloader_worker(tmp_path):
    folder = garbage(tmp_path / "bad", ["a.jpg", "b.jpg"])
    with pytest.raises(UnreadableImagesError) as info:
        next(iter(DataLoader(ImageFolder(folder, size=8), batch_size=1, num_workers=1)))
    message = str(info.value)
    assert message.startswith(f"all 2 images under {folder} are unreadable; first: ") and "\n" not in message


def run_main(tmp_path, root, *extra):
    """main.py -t on the autoencoder config with `root` as its image folder; returns (process, log folder).
    (val_check_interval=1: the default 250 exceeds the few batches of these folders, a separate check.)"""
    logdir = tmp_path / "logs"
    configs = [os.path.join(ROOT, "configs", name) for name in ("autoencoder_kl_f8.yaml", "overlays/cpu.yaml")]
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--base", *configs, "-t", "-l", str(logdir),
           "--logger", "csv", f"data.params.train.params.root={root}", "lightning.trainer.max_steps=1",
           "lightning.trainer.val_check_interval=1", *extra]  # DataLoader workers as configured: 2
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", PYTHONPATH=ROOT)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300), logdir


@pytest.mark.parametrize("kind", ["empty", "unreadable"])
def test_main_prints_one_error_line_and_leaves_no_run_folder(tmp_path, kind):
    root = tmp_path / kind
    if kind == "empty":
        root.mkdir()
        expected = f"error: no images .* found under {root} \\(the folder is empty\\)"
    else:
        garbage(root, ["0.png", "1.png", "2.png"])
        expected = f"error: all 3 images under {root} \\((train|validation) split: [12]\\) are unreadable; first: "
    proc, logdir = run_main(tmp_path, root)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.match(expected, errors[0]), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not logdir.exists() or not os.listdir(logdir)
