"""Latent cache: writing and reading (folders and shards), flips, KL vs VQ contents, cached text-encoder outputs,
the mismatch errors, the config switch, and the key property: cached and uncached training give the same loss."""
import copy
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "models", "diffusion"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import diffusion_configs as dc
from shard_helpers import tar_bytes

from ldm.data.image_folder import ImageFolder
from ldm.data.latent_cache import (CACHED_COND, CACHED_LATENT, CACHED_LOGVAR, CACHED_MEAN, CachedLatentDataset,
                                   LatentCache, LatentCacheError)
from ldm.data.latent_cache_write import write_cache
from ldm.models.diffusion.first_stage import cache_fields, weights_sha256
from ldm.util import instantiate_from_config

SIZE = 16


def picture(seed, width=SIZE, height=SIZE):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 4), max(1, width // 4), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


@pytest.fixture
def folder(tmp_path):
    """6 square images with a caption each (two share one)."""
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(6):
        picture(i).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(f"picture {min(i, 4)}")
    return root


@pytest.fixture(scope="module")
def kl():
    torch.manual_seed(0)
    return instantiate_from_config(dc.kl_first_stage()).eval()


def fingerprint(first_stage, scale_factor=0.5, scale_by_std=False, cond=None):
    from ldm.data.latent_cache import CacheFingerprint

    return CacheFingerprint(weights_sha256(first_stage), scale_factor, scale_by_std,
                            weights_sha256(cond) if cond is not None else None)


def encoder(first_stage):
    @torch.no_grad()
    def encode(x):
        return cache_fields(first_stage.encode(x))
    return encode


def images(dataset, idx, flip=False):
    x = torch.stack([torch.as_tensor(dataset[i]["image"]) for i in idx]).permute(0, 3, 1, 2)
    return x.flip(-1) if flip else x


def test_write_and_read_kl_mean_and_logvar(folder, kl, tmp_path):
    ds = ImageFolder(str(folder), size=SIZE)
    index = write_cache(ds, str(tmp_path / "c"), encoder(kl), fingerprint(kl), batch_size=4, items_per_shard=4)
    assert index["kind"] == "posterior" and len(index["shards"]) == 2 and len(index["items"]) == 6
    cached = CachedLatentDataset(str(tmp_path / "c"), source=ds)
    with torch.no_grad():
        post = kl.encode(images(ds, range(6)))
    for i in range(6):
        item = cached[i]
        assert "image" not in item and item["caption"] == f"picture {min(i, 4)}"
        torch.testing.assert_close(item[CACHED_MEAN], post.mean[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(item[CACHED_LOGVAR], post.logvar[i], atol=1e-5, rtol=1e-5)


def test_flip_copies_are_the_encodings_of_flipped_images(folder, kl, tmp_path):
    ds = ImageFolder(str(folder), size=SIZE, flip=True)
    index = write_cache(ds, str(tmp_path / "c"), encoder(kl), fingerprint(kl), batch_size=3)
    assert index["flip"] is True
    cached = CachedLatentDataset(str(tmp_path / "c"), source=ds)
    plain = ImageFolder(str(folder), size=SIZE)
    with torch.no_grad():
        straight, flipped = kl.encode(images(plain, [2])).mean[0], kl.encode(images(plain, [2], flip=True)).mean[0]
    seen = set()
    for seed in range(16):
        torch.manual_seed(seed)
        mean = cached[2][CACHED_MEAN]
        if torch.allclose(mean, straight, atol=1e-5):
            seen.add("image")
        elif torch.allclose(mean, flipped, atol=1e-5):
            seen.add("flip")
        else:
            raise AssertionError("a cached latent that is neither the image's nor its flip's")
    assert seen == {"image", "flip"}


def test_vq_caches_the_latent_training_uses(folder, tmp_path):
    torch.manual_seed(0)
    dd = dict(dc.TINY_AE_DD, double_z=False, z_channels=4)
    vq = instantiate_from_config({"target": "ldm.models.autoencoder.VQModelInterface",
                                  "params": {"embed_dim": 4, "n_embed": 16, "ddconfig": dd,
                                             "lossconfig": {"target": "torch.nn.Identity"}}}).eval()
    ds = ImageFolder(str(folder), size=SIZE)
    index = write_cache(ds, str(tmp_path / "c"), encoder(vq), fingerprint(vq))
    assert index["kind"] == "tensor"
    item = CachedLatentDataset(str(tmp_path / "c"), source=ds)[1]
    assert CACHED_MEAN not in item
    with torch.no_grad():
        torch.testing.assert_close(item[CACHED_LATENT], vq.encode(images(ds, [1]))[0], atol=1e-5, rtol=1e-5)


def frozen_bert():
    torch.manual_seed(1)
    from ldm.models.diffusion.first_stage import freeze

    return freeze(instantiate_from_config(dc.bert()))


def test_text_encoder_outputs_are_cached_once_per_caption(folder, kl, tmp_path):
    bert = frozen_bert()
    ds = ImageFolder(str(folder), size=SIZE)
    with torch.no_grad():
        index = write_cache(ds, str(tmp_path / "c"), encoder(kl), fingerprint(kl, cond=bert), cond_key="caption",
                            encode_conditioning=bert.encode)
    rows = [item["cond_rows"][0] for item in index["items"]]
    assert rows[4] == rows[5] and len(set(rows)) == 5  # "picture 4" twice, encoded once
    cached = CachedLatentDataset(str(tmp_path / "c"), source=ds)
    with torch.no_grad():
        want = bert.encode(["picture 3"])[0]
    torch.testing.assert_close(cached[3][CACHED_COND], want, atol=1e-5, rtol=1e-5)


def test_mismatch_errors_name_what_differs(folder, kl, tmp_path):
    ds = ImageFolder(str(folder), size=SIZE)
    out = str(tmp_path / "c")
    write_cache(ds, out, encoder(kl), fingerprint(kl, scale_factor=0.5))
    with pytest.raises(LatentCacheError, match="resolution"):
        CachedLatentDataset(out, source=ImageFolder(str(folder), size=8))
    with pytest.raises(LatentCacheError, match="flip"):
        CachedLatentDataset(out, source=ImageFolder(str(folder), size=SIZE, flip=True))
    picture(9).save(folder / "9.png")
    with pytest.raises(LatentCacheError, match="dataset listing"):
        CachedLatentDataset(out, source=ImageFolder(str(folder), size=SIZE))
    cache = LatentCache(out)
    cache.check_model(fingerprint(kl, scale_factor=0.5))  # the same model: fine
    with pytest.raises(LatentCacheError, match="scale_factor: the cache records 0.5, the model has 0.25"):
        cache.check_model(fingerprint(kl, scale_factor=0.25))
    other = copy.deepcopy(kl)
    with torch.no_grad():
        other.encoder.conv_in.weight.add_(1e-3)
    with pytest.raises(LatentCacheError, match="first-stage checkpoint"):
        cache.check_model(fingerprint(other, scale_factor=0.5))


def test_cached_conditioning_is_compared_only_when_the_model_reads_it():
    from ldm.data.latent_cache import CacheFingerprint

    cache = CacheFingerprint("a" * 64, 0.5, False, "c" * 64)
    assert cache.mismatches(CacheFingerprint("a" * 64, 0.5, False, None)) == []  # a trained conditioner: encodes live
    assert "conditioning encoder" in cache.mismatches(CacheFingerprint("a" * 64, 0.5, False, "d" * 64))[0]


def test_random_crops_are_refused_unless_there_is_nothing_to_draw(folder, kl, tmp_path):
    write_cache(ImageFolder(str(folder), size=SIZE, random_crop=True), str(tmp_path / "square"), encoder(kl),
                fingerprint(kl))  # square images at the training size: the crop has one position
    picture(7, width=24).save(folder / "wide.png")
    with pytest.raises(LatentCacheError, match=r"wide.png \(24x16\) would be randomly cropped"):
        write_cache(ImageFolder(str(folder), size=SIZE, random_crop=True), str(tmp_path / "wide"), encoder(kl),
                    fingerprint(kl))


def test_other_sources_and_existing_folders_are_refused(folder, kl, tmp_path):
    from ldm.data.shapes import ShapesTrain

    with pytest.raises(LatentCacheError, match="only image folders"):
        write_cache(ShapesTrain(size=SIZE, length=4), str(tmp_path / "s"), encoder(kl), fingerprint(kl))
    ds = ImageFolder(str(folder), size=SIZE)
    write_cache(ds, str(tmp_path / "c"), encoder(kl), fingerprint(kl))
    with pytest.raises(LatentCacheError, match="--overwrite"):
        write_cache(ds, str(tmp_path / "c"), encoder(kl), fingerprint(kl))
    write_cache(ds, str(tmp_path / "c"), encoder(kl), fingerprint(kl), overwrite=True)
    with pytest.raises(LatentCacheError, match="has no index.json"):
        CachedLatentDataset(str(folder), source=ds)


def test_shards_are_cached_and_their_listing_checked(kl, tmp_path):
    from ldm.data.shards import ShardDataset, write_manifest

    counts = {}
    for s in range(2):
        members = []
        for k in range(3):
            buf = __import__("io").BytesIO()
            picture(10 * s + k).save(buf, "PNG")
            members += [(f"{s}{k:05d}.png", buf.getvalue()), (f"{s}{k:05d}.txt", f"shard {s} item {k}".encode())]
        (tmp_path / f"{s:06d}.tar").write_bytes(tar_bytes(members))
        counts[f"{s:06d}.tar"] = 3
    write_manifest(str(tmp_path / "manifest.json"), counts)
    ds = ShardDataset(str(tmp_path / "{000000..000001}.tar"), size=SIZE, training=True, random_crop=False)
    index = write_cache(ds, str(tmp_path / "c"), encoder(kl), fingerprint(kl))
    assert [it["caption"] if False else it["captions"] for it in index["items"]][4] == ["shard 1 item 1"]
    cached = CachedLatentDataset(str(tmp_path / "c"), source=ds)
    assert len(cached) == 6 and cached.flip is True and cached[4]["caption"] == "shard 1 item 1"
    with pytest.raises(LatentCacheError, match="dataset listing"):
        CachedLatentDataset(str(tmp_path / "c"), source=ShardDataset(str(tmp_path / "000000.tar"), size=SIZE,
                                                                      random_crop=False))


def test_bucketed_folder_keeps_one_latent_shape_per_batch(tmp_path, kl):
    from ldm.data.datamodule import DataModuleFromConfig

    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(4):
        picture(i, width=16 if i % 2 else 32, height=16).save(root / f"{i}.png")
    buckets = [[16, 16], [16, 32]]
    ds = ImageFolder(str(root), size=SIZE, buckets=buckets)
    write_cache(ds, str(tmp_path / "c"), encoder(kl), fingerprint(kl))
    dm = DataModuleFromConfig(batch_size=2, num_workers=0, train={
        "target": "ldm.data.image_folder.ImageFolder",
        "params": {"root": str(root), "size": SIZE, "buckets": buckets, "latent_cache": str(tmp_path / "c")}})
    dm.setup("fit")
    shapes = sorted(tuple(b[CACHED_MEAN].shape) for b in dm.train_dataloader())
    assert shapes == [(2, 4, 8, 8), (2, 4, 8, 16)]


def tiny_ldm(ucg_rate=0.5):
    params = dict(cond_stage_trainable=False, scale_factor=0.7, ucg_rate=ucg_rate)
    cfg = dc.ldm_config("caption", **params)
    cfg["params"]["cond_stage_config"] = dc.bert()
    torch.manual_seed(0)
    return instantiate_from_config(cfg)


def test_cached_and_uncached_training_give_the_same_first_step_loss(folder, tmp_path):
    """THE key property: same seed, same items -> the same loss (z sampled from the cached posterior with the same
    noise, cached text embeddings, the same guidance-dropout draws)."""
    model = tiny_ldm()
    model.train()
    ds = ImageFolder(str(folder), size=SIZE)
    with torch.no_grad():
        write_cache(ds, str(tmp_path / "c"), encoder(model.first_stage_model),
                    model.latent_cache_fingerprint(), cond_key="caption",
                    encode_conditioning=model.cond_stage_model.encode)
    cached = CachedLatentDataset(str(tmp_path / "c"), source=ds)
    idx = [0, 3, 4, 5]
    plain_batch = default_collate([ds[i] for i in idx])
    cached_batch = default_collate([cached[i] for i in idx])
    assert "image" not in cached_batch and CACHED_COND in cached_batch
    losses = []
    for batch in (plain_batch, cached_batch):
        torch.manual_seed(1234)
        loss, _ = model.shared_step(model.cfg_dropout(batch))
        losses.append(loss.detach())
    assert torch.isfinite(losses[0])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    # and it is not trivially equal: another seed gives another loss
    torch.manual_seed(99)
    other, _ = model.shared_step(model.cfg_dropout(cached_batch))
    assert not torch.allclose(other, losses[0])


def test_guidance_dropout_replaces_cached_embeddings_by_the_encoded_null():
    model = tiny_ldm(ucg_rate=1.0)
    emb = torch.randn(3, 16, 32)
    batch = {CACHED_COND: emb, "caption": ["a", "b", "c"], CACHED_MEAN: torch.zeros(3, 4, 8, 8)}
    out = model.cfg_dropout(batch)
    assert out["caption"] == ["", "", ""]
    with torch.no_grad():
        null = model.cond_stage_model.encode([""])
    torch.testing.assert_close(out[CACHED_COND], null.expand(3, -1, -1))


def test_class_embedder_outputs_are_cached_per_label(tmp_path, kl):
    from ldm.models.diffusion.first_stage import freeze

    root = tmp_path / "classes"
    for k, name in enumerate(["cats", "dogs"]):
        (root / name).mkdir(parents=True)
        for i in range(2):
            picture(10 * k + i).save(root / name / f"{i}.png")
    torch.manual_seed(2)
    embedder = freeze(instantiate_from_config(dc.class_embedder()))
    ds = ImageFolder(str(root), size=SIZE)
    index = write_cache(ds, str(tmp_path / "c"), encoder(kl), fingerprint(kl, cond=embedder),
                        cond_key="class_label", encode_conditioning=embedder.encode)
    assert sorted({tuple(it["cond_rows"]) for it in index["items"]}) == [(0,), (1,)]  # one row per label
    item = CachedLatentDataset(str(tmp_path / "c"), source=ds)[3]
    assert item["class_label"] == 1 and item["human_label"] == "dogs"
    with torch.no_grad():
        torch.testing.assert_close(item[CACHED_COND], embedder.encode(torch.tensor([1]))[0])
    # Class conditioning of a folder whose images also carry several captions: the label's row, whatever caption
    (root / "dogs" / "1.txt").write_text("a dog\nanother dog\na third dog")
    ds = ImageFolder(str(root), size=SIZE)
    write_cache(ds, str(tmp_path / "c2"), encoder(kl), fingerprint(kl, cond=embedder), cond_key="class_label",
                encode_conditioning=embedder.encode)
    cached = CachedLatentDataset(str(tmp_path / "c2"), source=ds)
    dog = next(i for i in range(len(cached)) if cached[i]["file_path_"].endswith(os.path.join("dogs", "1.png")))
    with torch.no_grad():
        for _ in range(12):
            torch.testing.assert_close(cached[dog][CACHED_COND], embedder.encode(torch.tensor([1]))[0])


def test_a_damaged_index_and_a_wrapped_dataset(folder, kl, tmp_path):
    import json

    from ldm.data.datamodule import WrappedDataset
    from ldm.data.latent_cache import find_cache

    ds = ImageFolder(str(folder), size=SIZE)
    out = tmp_path / "c"
    write_cache(ds, str(out), encoder(kl), fingerprint(kl))
    cached = CachedLatentDataset(str(out), source=ds)
    assert find_cache(WrappedDataset(cached)) is cached.cache  # main.py's `wrap: true` still gets checked
    assert find_cache(torch.utils.data.Subset(cached, [0, 1])) is cached.cache and find_cache(ds) is None
    index = json.loads((out / "index.json").read_text())
    del index["shards"]
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(LatentCacheError, match="index.json lacks shards"):
        LatentCache(str(out))


def test_image_logging_works_on_cached_batches(folder, tmp_path):
    model = tiny_ldm(ucg_rate=0.0)
    ds = ImageFolder(str(folder), size=SIZE)
    with torch.no_grad():
        write_cache(ds, str(tmp_path / "c"), encoder(model.first_stage_model), model.latent_cache_fingerprint(),
                    cond_key="caption", encode_conditioning=model.cond_stage_model.encode)
    batch = default_collate([CachedLatentDataset(str(tmp_path / "c"), source=ds)[i] for i in range(2)])
    logs = model.log_images(batch, N=2, sample=False, plot_diffusion_rows=True)
    assert logs["inputs"].shape == (2, 3, SIZE, SIZE) and logs["diffusion_row"].dim() == 4


def test_item_table_gives_back_the_index_items():
    from ldm.data.latent_cache import ItemTable

    items = [{"path": "a/1.png", "shard": 0, "row": 0, "bucket": None, "captions": ["a cat", "ein Kätzchen"],
              "class_label": None, "human_label": None, "cond_rows": [0, 1]},
             {"path": "b/2.png", "shard": 0, "row": 1, "bucket": 2, "captions": None, "class_label": 3,
              "human_label": "dogs", "cond_rows": [4]},
             {"path": "c/3.png", "shard": 1, "row": 2, "bucket": 0, "captions": [], "class_label": 0,
              "human_label": "cats", "cond_rows": []},
             {"path": "d/4.png", "shard": 1, "row": 3, "bucket": None, "captions": [""], "class_label": None,
              "human_label": None}]
    table = ItemTable(items)
    assert len(table) == 4
    for i, item in enumerate(items):
        assert table[i] == {**item, "cond_rows": item.get("cond_rows", [])}
