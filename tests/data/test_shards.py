"""Tests for WebDataset shards: scripts/make_shards.py and ldm.data.shards.ShardDataset."""
import importlib.util
import io
import json
import os
import tarfile
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import ldm.data.shards as shards
from ldm.data.shards import ShardDataset, ShardError, expand_urls, plan_range, shard_name, write_manifest
from ldm.data.skipped_images import BadImageWarning, skipped_count
from ldm.util import ConfigError

from shard_helpers import png_bytes, tar_bytes  # noqa: E402  (tests/data/conftest.py puts it on the path)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_script():
    spec = importlib.util.spec_from_file_location("make_shards", os.path.join(ROOT, "scripts", "make_shards.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_shards = load_script()


def write_folder(root, n=9, classes=True, uncaptioned=(4,)):
    """n 16x16 PNGs (in cats/ and dogs/ when `classes`), each with a sidecar of two captions except `uncaptioned`."""
    for i in range(n):
        folder = root / (("cats" if i % 2 else "dogs") if classes else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 20 * i, np.uint8)).save(folder / f"img{i:02d}.png")
        if i not in uncaptioned:
            (folder / f"img{i:02d}.txt").write_text(f"first {i}\n\nsecond {i}\n")
    return root


@pytest.fixture
def packed(tmp_path):
    """9 captioned images (one without a caption) in shards of 2: 5 shards."""
    src = write_folder(tmp_path / "src")
    make_shards.main([str(src), str(tmp_path / "out"), "--shard-size", "2"])
    return tmp_path / "out"


def keys_of(items):
    return [ex["file_path_"].rsplit("#", 1)[1] for ex in items]


def read_as(ds, rank, world, worker, workers, monkeypatch):
    """What (rank, worker) yields in one epoch, simulated in this process."""
    monkeypatch.setattr(shards, "get_worker_info", lambda: SimpleNamespace(id=worker, num_workers=workers))
    ds.rank, ds.world_size = rank, world
    ds.set_epoch(0)
    return keys_of(ds)


def test_make_shards_writes_shards_and_manifest(tmp_path, capsys):
    make_shards.main([str(write_folder(tmp_path / "src")), str(tmp_path / "out"), "--shard-size", "2"])
    packed = tmp_path / "out"
    assert "wrote 9 images in 5 shards" in capsys.readouterr().out
    manifest = json.loads((packed / "manifest.json").read_text())
    assert manifest["total"] == 9 and [s["count"] for s in manifest["shards"]] == [2, 2, 2, 2, 1]
    assert [s["name"] for s in manifest["shards"]] == [f"{k:06d}.tar" for k in range(5)]
    assert manifest["classes"] == ["cats", "dogs"] and manifest["uncaptioned"] == 1 and manifest["captioned"] == 8
    with tarfile.open(packed / "000000.tar") as tar:
        assert tar.getnames() == ["000000.png", "000000.txt", "000000.cls", "000000.json",
                                  "000001.png", "000001.txt", "000001.cls", "000001.json"]
        first = json.loads(tar.extractfile("000000.json").read())["file_name"]
        assert tar.extractfile("000000.png").read() == (tmp_path / "src" / first).read_bytes()  # not re-encoded
        assert tar.extractfile("000000.txt").read().decode() == "first 1\nsecond 1"  # every caption, one per line
        assert tar.extractfile("000000.cls").read() == b"0"  # cats/img01.png
    again = tmp_path / "again"
    make_shards.main([str(tmp_path / "src"), str(again), "--shard-size", "2"])
    assert all((again / n).read_bytes() == (packed / n).read_bytes() for n in os.listdir(packed))  # reproducible


def test_make_shards_skip_missing_captions_and_index(tmp_path, capsys):
    src = write_folder(tmp_path / "src", n=5, classes=False)
    manifest = make_shards.main([str(src), str(tmp_path / "out"), "--shard-size", "3", "--missing-captions", "skip"])
    assert manifest["total"] == 4 and manifest["classes"] is None and manifest["skipped_uncaptioned"] == 1
    assert "1 without caption left out" in capsys.readouterr().out
    os.remove(tmp_path / "out" / "manifest.json")
    indexed = make_shards.main(["--index", str(tmp_path / "out")])
    assert [s["count"] for s in indexed["shards"]] == [3, 1]


def test_make_shards_errors(tmp_path, capsys):
    def error(*argv):
        with pytest.raises(SystemExit) as exit_info:
            make_shards.main([str(a) for a in argv])
        assert exit_info.value.code == 2
        message = capsys.readouterr().err.strip()
        assert "\n" not in message
        return message

    assert "image folder not found" in error(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    assert "no images" in error(tmp_path / "empty", tmp_path / "out")
    write_folder(tmp_path / "src", n=2)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "not empty" in error(tmp_path / "src", tmp_path / "full")


def test_items_look_like_the_folder_dataset(packed):
    ds = ShardDataset(str(packed / "{000000..000004}.tar"), size=8, training=False)
    assert len(ds) == 9 and ds.class_names == ["cats", "dogs"]
    items = list(ds)
    assert sorted(keys_of(items)) == [f"{i:06d}" for i in range(9)]
    ex = items[0]
    assert set(ex) == {"image", "file_path_", "caption", "class_label", "human_label"}
    assert ex["image"].shape == (8, 8, 3) and ex["image"].dtype == np.float32
    assert all(-1.0 <= it["image"].min() and it["image"].max() <= 1.0 for it in items)
    assert ex["file_path_"] == f"{packed / '000000.tar'}#000000"
    assert ex["caption"] == "first 1" and ex["class_label"] == 0 and ex["human_label"] == "cats"  # validation: first
    assert sorted(it["caption"] for it in items).count("") == 1  # the image without a caption
    assert keys_of(ds) == keys_of(items)  # validation reads in shard order every time


def test_training_picks_random_captions_deterministically(packed):
    ds = ShardDataset(str(packed / "{000000..000004}.tar"), size=8, seed=3, shuffle_buffer=4)
    assert ds.training and ds.transform.random_crop and ds.transform.flip
    epochs = [list(ds) for _ in range(4)]
    captions = {c for items in epochs for c in (it["caption"] for it in items) if c}
    assert {f"first {i}" for i in (0, 1)} | {f"second {i}" for i in (0, 1)} <= captions  # both captions occur
    assert len({tuple(keys_of(items)) for items in epochs}) > 1  # a new order per epoch
    ds2 = ShardDataset(str(packed / "{000000..000004}.tar"), size=8, seed=3, shuffle_buffer=4)
    first = list(ds2)
    assert keys_of(first) == keys_of(epochs[0])  # same seed and epoch: same stream and augmentations
    assert all(np.array_equal(a["image"], b["image"]) and a["caption"] == b["caption"]
               for a, b in zip(first, epochs[0]))
    ds2.set_epoch(2)
    assert keys_of(ds2) == keys_of(epochs[2])


def test_caption_from_json_and_class_without_manifest_classes(tmp_path):
    members = [("a.png", png_bytes(10)), ("a.json", json.dumps({"caption": ["one", "two"]}).encode()),
               ("a.cls", b"3"), ("b.png", png_bytes(30)), ("b.json", json.dumps({"alt": "x"}).encode()),
               ("b.txt", b"from txt"), ("b.cls", b"1")]
    (tmp_path / "s.tar").write_bytes(tar_bytes(members))
    write_manifest(str(tmp_path / "manifest.json"), {"s.tar": 2})
    items = list(ShardDataset(str(tmp_path / "s.tar"), size=8, training=False))
    assert [it["caption"] for it in items] == ["one", "from txt"]
    assert [it["class_label"] for it in items] == [3, 1] and "human_label" not in items[0]


@pytest.mark.parametrize("shard_size", [2, 9])  # 5 shards (whole shards per reader) and 1 shard (split shards)
def test_ranks_and_workers_split_the_epoch(tmp_path, monkeypatch, shard_size):
    src = write_folder(tmp_path / "src")
    make_shards.main([str(src), str(tmp_path / "out"), "--shard-size", str(shard_size)])
    ds = ShardDataset(sorted(str(p) for p in (tmp_path / "out").glob("*.tar")), size=8, seed=1, shuffle_buffer=3)
    streams = {(r, w): read_as(ds, r, 2, w, 2, monkeypatch) for r in range(2) for w in range(2)}
    per_rank = [sum(len(streams[r, w]) for w in range(2)) for r in range(2)]
    assert per_rank == [4, 4]  # 9 samples, 2 ranks: 4 each, equal; one left out this epoch
    ds.rank, ds.world_size = 0, 2
    assert len(ds) == 4
    seen = [k for keys in streams.values() for k in keys]
    assert len(seen) == len(set(seen)) == 8  # no sample twice
    assert set(seen) <= {f"{i:06d}" for i in range(9)}
    # over a world of 1 the same readers give everything
    ds.set_epoch(0)
    whole = read_as(ds, 0, 1, 0, 2, monkeypatch) + read_as(ds, 0, 1, 1, 2, monkeypatch)
    assert sorted(whole) == [f"{i:06d}" for i in range(9)]


def test_plan_range_and_shard_names():
    assert plan_range([2, 2, 1], [2, 0, 1], 0, 5) == [(2, 0, 1), (0, 0, 2), (1, 0, 2)]
    assert plan_range([2, 2, 1], [0, 1, 2], 1, 3) == [(0, 1, 1), (1, 0, 1)]
    assert shard_name("pipe:aws s3 cp s3://bucket/data/000007.tar -") == "000007.tar"
    assert shard_name("https://host/x/000001.tar?sig=1") == "000001.tar"
    assert shard_name("file:///data/000002.tar") == "000002.tar"


def test_brace_patterns_expand(tmp_path, monkeypatch):
    assert expand_urls("s/{000000..000002}.tar") == ["s/000000.tar", "s/000001.tar", "s/000002.tar"]
    assert expand_urls(["a/{0..1}.tar", "b.tar"]) == ["a/0.tar", "a/1.tar", "b.tar"]
    monkeypatch.setenv("LDM_ALLOW_PIPE_URLS", "1")
    assert expand_urls("pipe:cat x/{1,2}.tar") == ["pipe:cat x/1.tar", "pipe:cat x/2.tar"]


def test_shell_command_urls_need_the_users_permission(tmp_path, monkeypatch):
    """A config (or a shared run folder) naming `pipe:` urls must not run a command on its own."""
    monkeypatch.delenv("LDM_ALLOW_PIPE_URLS", raising=False)
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError, match="runs a shell command; if you wrote it, allow shell-command urls with "
                                          "LDM_ALLOW_PIPE_URLS=1"):
        ShardDataset(f"pipe:touch {marker}; cat x.tar", size=16, length=1)
    assert not marker.exists()


def test_lightning_passes_the_epoch_to_the_shards(tmp_path):
    from lightning_fabric.utilities.data import _set_sampler_epoch

    from ldm.data.datamodule import DataModuleFromConfig

    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(4):
        (folder / f"{k}.png").write_bytes(png_bytes(10 * k))
        (folder / f"{k}.txt").write_text(f"caption {k}")
    make_shards.main([str(folder), str(tmp_path / "shards"), "--shard-size", "2"])
    shards = {"target": "ldm.data.shards.ShardDataset",
              "params": {"urls": str(tmp_path / "shards" / "{000000..000001}.tar"), "size": 16}}
    data = DataModuleFromConfig(batch_size=2, train=shards, num_workers=0)
    data.setup("fit")
    loader = data.train_dataloader()
    orders = []
    for epoch in (0, 1, 0):
        _set_sampler_epoch(loader, epoch)
        orders.append([item for batch in loader for item in batch["file_path_"]])
    assert orders[0] == orders[2] and sorted(orders[0]) == sorted(orders[1]) and len(orders[0]) == 4


def test_corrupt_and_imageless_samples_are_skipped_and_counted(tmp_path, monkeypatch):
    good = [(f"{k}.png", png_bytes(10 * k)) for k in range(6)]
    members = good[:2] + [("bad.jpg", b"not a jpeg at all"), ("bad.txt", b"caption")] + good[2:4] \
        + [("noimage.txt", b"orphan caption")] + good[4:]
    (tmp_path / "s.tar").write_bytes(tar_bytes(members))
    write_manifest(str(tmp_path / "manifest.json"), {"s.tar": 8})
    ds = ShardDataset(str(tmp_path / "s.tar"), size=8, training=False)
    with pytest.warns(BadImageWarning) as record:
        items = list(ds)
    messages = " ".join(str(w.message) for w in record)
    assert "s.tar#bad" in messages and "s.tar#noimage" in messages and "no image" in messages
    assert len(items) == len(ds) == 8  # the bad ones are replaced by repeats: the length holds
    assert set(keys_of(items)) == {str(k) for k in range(6)}
    assert ds.num_skipped == 2 and skipped_count(ds) == 2
    assert ds.skipped_files() == [f"{tmp_path / 's.tar'} sample 2", f"{tmp_path / 's.tar'} sample 5"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        list(ds)
    assert ds.num_skipped == 2  # distinct samples, not events


def test_dataloader_with_two_workers(tmp_path):
    members = [(f"{k}.png", png_bytes(10 * k)) for k in range(7)] + [("x.jpg", b"garbage")]
    (tmp_path / "s.tar").write_bytes(tar_bytes(members[:4]))
    (tmp_path / "t.tar").write_bytes(tar_bytes(members[4:]))
    write_manifest(str(tmp_path / "manifest.json"), {"s.tar": 4, "t.tar": 4})
    ds = ShardDataset([str(tmp_path / "s.tar"), str(tmp_path / "t.tar")], size=8, shuffle_buffer=2)
    loader = DataLoader(ds, batch_size=2, num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(loader)
    paths = [p for b in batches for p in b["file_path_"]]
    assert len(paths) == 8 and all(b["image"].shape[1:] == (8, 8, 3) for b in batches)
    assert isinstance(batches[0]["image"], torch.Tensor) and isinstance(batches[0]["caption"], list)
    assert {p.rsplit("#", 1)[1] for p in paths} == {str(k) for k in range(7)}
    assert ds.num_skipped == 1  # counted in a worker, read in the main process


def test_missing_manifest_is_an_error_unless_length_is_given(tmp_path, monkeypatch):
    (tmp_path / "s.tar").write_bytes(tar_bytes([(f"{k}.png", png_bytes(k)) for k in range(3)]))
    with pytest.raises(ConfigError, match=r"no manifest.json next to .*s\.tar.*make_shards\.py"):
        ShardDataset(str(tmp_path / "s.tar"))
    with pytest.raises(FileNotFoundError, match="shard manifest not found: .*nope.json"):
        ShardDataset(str(tmp_path / "s.tar"), manifest=str(tmp_path / "nope.json"))
    ds = ShardDataset(str(tmp_path / "s.tar"), size=8, length=5, training=False)
    assert len(ds) == 5 and keys_of(ds) == ["0", "1", "2", "0", "1"]  # cycles to the given length
    assert len(read_as(ds, 1, 2, 0, 1, monkeypatch)) == 5  # every rank yields `length`


def test_shard_errors_name_the_shard(tmp_path):
    (tmp_path / "000000.tar").write_bytes(b"this is not a tar file" * 40)
    with pytest.raises(FileNotFoundError, match=r"shard not found: .*000001\.tar \(1 of 2 missing\)"):
        ShardDataset([str(tmp_path / "000000.tar"), str(tmp_path / "000001.tar")], length=1)
    ds = ShardDataset(str(tmp_path / "000000.tar"), length=1)
    with pytest.raises(ShardError, match=r"cannot read shard .*000000\.tar"):
        list(ds)
    write_manifest(str(tmp_path / "manifest.json"), {"other.tar": 3})
    with pytest.raises(ConfigError, match=r"000000\.tar \(000000\.tar\) is not in the manifest"):
        ShardDataset(str(tmp_path / "000000.tar"))


def test_a_config_trains_on_shards_through_the_datamodule(packed):
    from ldm.data.datamodule import DataModuleFromConfig

    train = {"target": "ldm.data.shards.ShardDataset",
             "params": {"urls": str(packed / "{000000..000004}.tar"), "size": 8, "shuffle_buffer": 4}}
    data = DataModuleFromConfig(batch_size=2, train=train, num_workers=0)
    data.setup("fit")
    loader = data.train_dataloader()
    assert len(loader) == 5  # ceil(9 / 2): Lightning's epoch length
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 8, 8, 3) and len(batch["caption"]) == 2
    assert data.skipped_files() == 0


def test_spawned_workers_keep_the_rank_of_their_process(packed, monkeypatch):
    import pickle

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = ShardDataset(str(packed / "{000000..000004}.tar"), size=8)
    assert len(ds) == 4
    sent = pickle.dumps(ds)  # by the process that starts the worker
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")  # a spawned worker: no process group, no env
    copy = pickle.loads(sent)
    assert (copy.rank, copy.world_size) == (1, 2) and len(copy) == 4 and ds.rank is None


def test_without_manifest_readers_split_whole_shards_and_stop_on_all_bad(tmp_path, monkeypatch):
    for s in range(2):
        (tmp_path / f"{s}.tar").write_bytes(tar_bytes([(f"{s}_{k}.png", png_bytes(k)) for k in range(2)]))
    ds = ShardDataset([str(tmp_path / "0.tar"), str(tmp_path / "1.tar")], size=8, length=4, training=False)
    first, second = (read_as(ds, 0, 1, w, 2, monkeypatch) for w in range(2))
    assert first == ["0_0", "0_1"] and second == ["1_0", "1_1"]  # one whole shard each
    (tmp_path / "bad.tar").write_bytes(tar_bytes([("x.jpg", b"garbage"), ("y.jpg", b"garbage")]))
    bad = ShardDataset(str(tmp_path / "bad.tar"), size=8, length=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        with pytest.raises(ShardError, match=r"no readable .*bad\.tar#[xy]: \.jpg: UnidentifiedImageError: [^<]*$"):
            list(bad)
