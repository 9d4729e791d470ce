"""The README's "Your own data" commands, run as written on tiny generated folders (plus size-shrinking overrides),
a class-conditional model on class sub-folders, and two DDP ranks on one folder: disjoint data, then a resume."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for path in (ROOT, os.path.join(ROOT, "tests", "trainer"), os.path.join(ROOT, "tests", "models", "diffusion")):
    if path not in sys.path:
        sys.path.insert(0, path)

import main  # noqa: E402
from diffusion_configs import cpu_stage1_checkpoint  # noqa: E402
from ldm.checkpoint import load_checkpoint  # noqa: E402
from trainer_helpers import only_run_folder, run_main, subprocess_env  # noqa: E402

# Shrink the CPU overlay's model and run to seconds; the data path is what is under test.
TINY = ["model.params.unet_config.params.model_channels=32", "model.context_dim=32", "model.text_layers=1",
        "data.params.batch_size=2", "data.params.num_workers=0", "lightning.trainer.limit_val_batches=1",
        "lightning.trainer.max_steps=2", "lightning.trainer.enable_progress_bar=false",
        "lightning.trainer.enable_model_summary=false", "lightning.callbacks.shapes_accuracy=null",
        "lightning.callbacks.image_logger.params.log_images_kwargs.ddim_steps=2", "--logger", "csv"]


def readme_commands(section="## Your own data"):
    """The commands of the first bash block after `section`, continuation lines joined, comments dropped."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    block = re.search(r"```bash\n(.*?)```", text[text.index(section):], re.S).group(1)
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def write_images(folder, names, size=(72, 80)):
    rng = np.random.default_rng(0)
    for name in names:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def layouts(tmp_path):
    """{placeholder in the README: a tiny folder in that layout}, and a stage-1 checkpoint."""
    sidecar, hf = tmp_path / "my_images", tmp_path / "my_hf_folder"
    names = [f"img{i:02d}.png" for i in range(13)]
    write_images(sidecar, names)
    for i, name in enumerate(names):
        (sidecar / name.replace(".png", ".txt")).write_text(f"picture {i}\nanother caption of picture {i}\n")
    write_images(hf, names)
    (hf / "metadata.jsonl").write_text("\n".join(json.dumps({"file_name": n, "text": [f"picture {i}", "a pic"]})
                                                 for i, n in enumerate(names)))
    ae = tmp_path / "ae.ckpt"
    cpu_stage1_checkpoint(ae)
    return {"my_images": str(sidecar), "my_hf_folder": str(hf),
            STAGE1: str(ae)}


STAGE1 = "logs/<stage-1 run>/checkpoints/last.ckpt"


def _fill(command, places):
    for placeholder, path in places.items():
        command = command.replace(placeholder, path)
    return shlex.split(command)


def test_readme_commands_train_stage2_on_each_layout(tmp_path, layouts, capsys):
    commands = readme_commands()
    trains = [c for c in commands if c.startswith("python main.py")]
    assert len(trains) == 3  # folder + .txt, metadata.jsonl, shards
    layouts = {**layouts, "my_shards": str(tmp_path / "my_shards"), "--shard-size 1000": "--shard-size 5"}
    for command in commands:
        argv = _fill(command, layouts)[2:]
        if command.startswith("python scripts/make_shards.py"):
            import importlib.util

            script = os.path.join(ROOT, "scripts", "make_shards.py")
            spec = importlib.util.spec_from_file_location("make_shards", script)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            module.main(argv)
            assert sorted(os.listdir(tmp_path / "my_shards")) == ["000000.tar", "000001.tar", "000002.tar",
                                                                 "manifest.json"]  # 13 images, 5 per shard
            continue
        logs = tmp_path / f"logs{commands.index(command)}"
        assert main.main([*argv, "-l", str(logs), *TINY]) == 0, command
        out = capsys.readouterr().out
        if "shards=" in command:
            assert "data: train: ShardDataset, 13 examples" in out
        else:
            assert "data: train: ImageFolder, 12 examples" in out  # 13 images, one held out for validation
        run = only_run_folder(logs)
        assert load_checkpoint(os.path.join(run, "checkpoints", "last.ckpt"))["global_step"] == 2


def test_text_model_on_a_folder_without_captions_stops_before_training(tmp_path, layouts, capsys):
    bare = tmp_path / "bare"
    write_images(bare, ["a.png", "b.png", "c.png"])
    command = readme_commands()[0].replace("my_images", str(bare))
    code = main.main([*_fill(command, layouts)[2:], "-l", str(tmp_path / "logs"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "found 2 images and 0 captions" in err and "metadata.jsonl" in err
    assert not (tmp_path / "logs").exists()


def test_class_model_on_class_subfolders(tmp_path, layouts, capsys):
    classes = tmp_path / "classes"
    write_images(classes, [f"{c}/{i}.png" for c in ("cat", "dog", "fox") for i in range(4)])
    code = main.main(["--base", os.path.join(ROOT, "configs", "ldm_cin.yaml"),
                      os.path.join(ROOT, "configs", "overlays", "cpu.yaml"), "-t",
                      f"data.params.train.params.root={classes}", "-l", str(tmp_path / "logs"),
                      f"model.params.first_stage_config.params.ckpt_path={layouts[STAGE1]}",
                      *[t for t in TINY if "context_dim" not in t and "text_layers" not in t]])
    assert code == 0, capsys.readouterr().err
    code = main.main(["--base", os.path.join(ROOT, "configs", "ldm_cin.yaml"),
                      os.path.join(ROOT, "configs", "overlays", "cpu.yaml"), "-t",
                      f"data.params.train.params.root={classes}", "-l", str(tmp_path / "logs2"),
                      f"model.params.first_stage_config.params.ckpt_path={layouts[STAGE1]}",
                      "model.params.cond_stage_config.params.n_classes=2",
                      "model.params.cond_stage_config.params.add_null_class=false"])
    assert code == 2 and "3 classes, but the model embeds 1" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("source", ["folder", "shards"])
def test_two_ddp_ranks_see_disjoint_images_and_the_run_resumes(tmp_path, layouts, source):
    seen = tmp_path / "seen"
    argv = _fill(readme_commands()[0], layouts)[2:]
    if source == "shards":  # the same 13 images in 3 shards: 6 samples per rank and epoch (one left over)
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_shards.py"), layouts["my_images"],
                        str(tmp_path / "shards"), "--shard-size", "5"], check=True, capture_output=True)
        argv = [a for a in argv if not a.startswith("data.params.train.params.root=")]
        argv += [f"data.params.train.params.shards={tmp_path / 'shards'}/{{000000..000002}}.tar",
                 f"data.params.validation.params.shards={tmp_path / 'shards'}/000002.tar"]
    extra = ["lightning.trainer.devices=2", "lightning.trainer.max_steps=3",
             "lightning.callbacks.record.target=trainer_dummies.RecordSeen",
             f"lightning.callbacks.record.params.folder={seen}"]
    logs = tmp_path / "logs"
    proc = run_main([*argv, "-l", str(logs), *TINY, *extra], env=subprocess_env(), timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [(seen / f"seen_rank{r}.txt").read_text().split() for r in (0, 1)]
    assert [len(r) for r in ranks] == [6, 6]  # 3 batches of 2 on each rank
    assert not set(ranks[0]) & set(ranks[1])  # within the first epoch no image is on both ranks
    run = only_run_folder(logs)
    resumed = run_main(["-r", run, "lightning.trainer.max_steps=5"], env=subprocess_env(), timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert load_checkpoint(os.path.join(run, "checkpoints", "last.ckpt"))["global_step"] == 5
    ranks = [(seen / f"seen_rank{r}.txt").read_text().split() for r in (0, 1)]
    assert [len(r) for r in ranks] == [10, 10]
    for step in range(5):  # the two ranks' batches of every step, resumed ones included, share no image
        assert not set(ranks[0][2 * step:2 * step + 2]) & set(ranks[1][2 * step:2 * step + 2])


@pytest.mark.parametrize("source", ["folder", "shards"])
def test_aspect_ratio_buckets_through_main(tmp_path, layouts, capsys, source):
    """Wide and tall images train in 64x128 / 128x64 buckets (multiples of KL-f8 x the 4-level UNet = 64), from a
    folder and from shards; buckets the model cannot divide are refused before training."""
    mixed = tmp_path / "mixed"
    write_images(mixed, [f"wide{i}.png" for i in range(6)], size=(80, 160))
    write_images(mixed, [f"tall{i}.png" for i in range(6)], size=(160, 80))
    for name in os.listdir(mixed):
        (mixed / name.replace(".png", ".txt")).write_text(name[:4] + " picture")
    command = readme_commands()[0].replace("my_images", str(mixed))
    argv = _fill(command, layouts)[2:]
    if source == "shards":
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_shards.py"), str(mixed),
                        str(tmp_path / "shards"), "--shard-size", "4"], check=True, capture_output=True)
        argv = [a for a in argv if not a.startswith("data.params.train.params.root=")]
        argv += [f"data.params.train.params.shards={tmp_path / 'shards'}/{{000000..000002}}.tar",
                 f"data.params.validation.params.shards={tmp_path / 'shards'}/000002.tar"]
    buckets = "[[64,128],[128,64]]"
    argv = [*argv, *TINY, f"data.params.train.params.buckets={buckets}",
            f"data.params.validation.params.buckets={buckets}",
            "lightning.callbacks.record.target=trainer_dummies.RecordSeen",
            f"lightning.callbacks.record.params.folder={tmp_path / 'seen'}"]
    assert main.main([*argv, "-l", str(tmp_path / "logs")]) == 0, capsys.readouterr().err
    seen = (tmp_path / "seen" / "seen_rank0.txt").read_text().split()
    assert len(seen) == 4
    for a, b in (seen[0:2], seen[2:4]):  # one bucket per batch
        assert os.path.basename(a)[:4] == os.path.basename(b)[:4]
    bad = [*argv[:-2], "data.params.train.params.buckets=[[48,80],[80,48]]", "-l", str(tmp_path / "logs2")]
    assert main.main(bad) == 2
    err = capsys.readouterr().err
    assert "data.params.train.params.buckets: bucket sizes [(48, 80), (80, 48)] are not multiples of 64" in err
