"""Feature extractors and weights: the random extractor, Inception offline (clear error) and from a local file
(weights_only), the hash-checked download when online (faked), CLIP loading, and the reference feature cache."""
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.eval import features as F
from ldm.eval.reference import folder_reference, reference_features
from ldm.util import ConfigError
from ldm.weights import MissingWeightsError, hub_checkpoint_path, try_download


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def test_random_features_are_a_fixed_function_that_leaves_the_rng_alone():
    images = torch.randint(0, 256, (3, 3, 24, 40), dtype=torch.uint8)
    state = torch.get_rng_state()
    a, b = F.RandomFeatures(), F.build_features("random")
    assert torch.equal(torch.get_rng_state(), state)
    out = a(images)
    assert out["features"].shape == (3, a.num_features) and out["logits"].shape == (3, 10)
    assert torch.equal(out["features"], b(images)["features"])
    assert not any(p.requires_grad for p in a.parameters())
    with pytest.raises(ConfigError, match="unknown feature extractor 'vgg'.*inception, random"):
        F.build_features("vgg")


def test_inception_offline_without_the_file_names_file_place_and_flag(empty_torch_home):
    with pytest.raises(MissingWeightsError) as err:
        F.build_features("inception")
    message = str(err.value)
    assert F.INCEPTION_FILENAME in message and "\n" not in message
    assert str(empty_torch_home / "hub" / "checkpoints" / F.INCEPTION_FILENAME) in message
    assert "HF_HUB_OFFLINE" in message and "--inception-weights" in message and "inception_weights:" in message
    with pytest.raises(MissingWeightsError, match="nowhere.pth.*does not exist"):
        F.InceptionFeatures(weights_path="/nowhere.pth")


def test_inception_from_a_local_file_through_the_safe_reader(tmp_path, empty_torch_home):
    """Random Inception weights saved by us stand in for the real file: the same wiring, read weights_only."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    with mock.patch.object(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None), \
            mock.patch.object(fidelity, "load_state_dict_from_url", lambda *a, **k: {}):
        state = fidelity.FeatureExtractorInceptionV3("x", ["2048"]).state_dict()
    path = tmp_path / F.INCEPTION_FILENAME
    torch.save(state, path)
    extractor = F.build_features("inception", inception_weights=str(path))
    out = extractor(torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8))  # resized to 299 px inside
    assert out["features"].shape == (1, 2048) and out["logits"].shape == (1, 1008)
    assert torch.equal(extractor.net.fc.weight, state["fc.weight"])


def test_download_when_online_is_hash_checked_into_the_hub_cache(empty_torch_home, monkeypatch):
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        with open(dst, "wb") as f:
            f.write(b"weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    path, why = try_download("https://example.org/w-6726825d.pth", "w-6726825d.pth")
    assert path == hub_checkpoint_path("w-6726825d.pth") and os.path.isfile(path) and why == ""
    assert calls == [("https://example.org/w-6726825d.pth", "6726825d")]
    assert try_download("https://example.org/w-6726825d.pth", "w-6726825d.pth")[0] == path and len(calls) == 1
    try_download("https://example.org/x-12345678.pth", "x-12345678.pth", check_hash=False)
    assert calls[-1] == ("https://example.org/x-12345678.pth", None)  # a name that is not a hash: no check

    def no_network(url, dst, hash_prefix=None, progress=True):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    path, why = try_download("https://example.org/v-397923af.pth", "v-397923af.pth")
    assert path is None and "name resolution" in why
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert try_download("https://example.org/v-397923af.pth", "v-397923af.pth") == \
        (None, "downloads are off (HF_HUB_OFFLINE=1)")


def test_clip_from_a_local_folder_and_offline_error(tmp_path):
    import json

    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    from ldm.eval.metrics import clip_score

    chars = sorted(set("abcdefghijklmnopqrstuvwxyz"))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{c: 2 + i for i, c in enumerate(chars)},
             **{c + "</w>": 2 + len(chars) + i for i, c in enumerate(chars)}}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    config = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32),
                        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=16), projection_dim=8)
    folder = tmp_path / "tiny_clip"
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
                  tokenizer=tokenizer).save_pretrained(folder)
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    score = clip_score(images, ["a red circle", "a blue square", "green"], str(folder))
    assert 0 <= score <= 100
    with pytest.raises(MissingWeightsError, match="'openai/no-such-clip'.*HF_HUB_OFFLINE.*--clip"):
        F.load_clip("openai/no-such-clip")


def write_images(folder, n, offset=0):
    folder.mkdir(exist_ok=True)
    for i in range(n):
        Image.new("RGB", (20, 16), (40 * i + offset, 100, 200 - 30 * i)).save(folder / f"{i}.png")


def test_reference_cache_is_reused_and_invalidated_by_a_change(tmp_path, monkeypatch):
    ref, cache = tmp_path / "ref", tmp_path / "cache"
    write_images(ref, 4)
    extractor = F.RandomFeatures()
    first, path, reused = reference_features(folder_reference(str(ref)), extractor, (16, 16), str(cache))
    assert not reused and os.path.isfile(path) and first["features"].shape == (4, extractor.num_features)

    import ldm.eval.features

    def must_not_run(*args, **kwargs):
        raise AssertionError("features were recomputed instead of read from the cache")

    with monkeypatch.context() as m:
        m.setattr(ldm.eval.features, "extract", must_not_run)
        second, path2, reused = reference_features(folder_reference(str(ref)), extractor, (16, 16), str(cache))
    assert reused and path2 == path and torch.equal(second["features"], first["features"])
    _, path3, reused = reference_features(folder_reference(str(ref)), extractor, (8, 8), str(cache))
    assert not reused and path3 != path  # the image size is part of the key

    time.sleep(0.01)
    write_images(ref, 4, offset=5)  # same names, new content (size or mtime changes)
    changed, path4, reused = reference_features(folder_reference(str(ref)), extractor, (16, 16), str(cache))
    assert not reused and path4 not in (path, path3)
    assert not torch.equal(changed["features"], first["features"])


def test_shard_and_streamed_dataset_references(tmp_path):
    import io
    import tarfile

    from ldm.eval.reference import dataset_reference, open_reference

    with tarfile.open(tmp_path / "000000.tar", "w") as tar:
        for i in range(3):
            buffer = io.BytesIO()
            Image.new("RGB", (12, 12), (80 * i, 50, 50)).save(buffer, format="PNG")
            for name, data in ((f"{i:04d}.png", buffer.getvalue()), (f"{i:04d}.txt", b"a caption")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    reference = open_reference(str(tmp_path / "000000.tar"))
    feats, _, _ = reference_features(reference, F.RandomFeatures(), (8, 8), None)
    assert feats["features"].shape[0] == 3 and reference.identity["files"][0][1] > 0  # size is in the key

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            for i in range(5):
                yield {"image": torch.full((8, 8, 3), i / 5.0)}

    streamed = dataset_reference(Stream(), {"data": "stream"}, limit=4)
    assert reference_features(streamed, F.RandomFeatures(), (8, 8), None)[0]["features"].shape[0] == 4
    with pytest.raises(Exception, match="not a folder of images or shard urls"):
        open_reference(str(tmp_path / "nothing.png"))


def test_reference_images_are_cropped_as_the_training_transform_crops_them():
    from ldm.data.transforms import ImageTransform, to_uint8
    from ldm.eval.reference import centre_crop_uint8

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8))
    out = centre_crop_uint8(photo, (16, 24))
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 24)
    training = to_uint8(ImageTransform(None)(photo, out=(16, 24)))  # the float pipeline, back to 8 bits
    assert np.array_equal(out.permute(1, 2, 0).numpy(), training)
    # any PIL mode goes through the training data's RGB conversion: 16-bit grayscale keeps its range, alpha is
    # composited instead of dropped
    deep = Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16))
    assert abs(int(centre_crop_uint8(deep, (8, 8)).float().mean()) - round(40000 / 65535 * 255)) <= 1
    clear = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    assert centre_crop_uint8(clear, (8, 8)).min() == 255  # transparent -> the white background
