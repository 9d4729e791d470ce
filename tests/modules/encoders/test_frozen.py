"""Frozen transformers text encoders: MiniLM offline, CLIP errors offline, a tiny CLIP for the success path."""
import os

import pytest
import torch

from ldm.modules.encoders.modules import FrozenCLIPEmbedder, FrozenHFTextEncoder, PretrainedNotAvailableError
from ldm.modules.encoders.pretrained import check_vocab, looks_like_path

from clip_helpers import save_tiny_clip  # noqa: E402  (tests/ is on the path)


@pytest.fixture(scope="module")
def minilm():
    return FrozenHFTextEncoder(max_length=77)


def test_minilm_shape_and_frozen(minilm):
    z = minilm(["a small red circle at the left", ""])
    assert z.shape == (2, 77, 384)
    assert not minilm.is_trainable and not any(p.requires_grad for p in minilm.parameters())
    minilm.train()
    assert minilm.training and not minilm.transformer.training  # dropout stays off inside a training model
    torch.testing.assert_close(minilm.encode(["a small red circle at the left"]), z[:1], atol=1e-5, rtol=1e-5)
    assert minilm.null_input(2) == ["", ""]


def test_minilm_padding_is_masked(minilm):
    text = ["a large blue square at the top"]  # 9 tokens with [CLS] and [SEP]
    full = minilm(text)
    minilm.max_length = 16
    try:
        short = minilm(text)
    finally:
        minilm.max_length = 77
    assert short.shape == (1, 16, 384)
    torch.testing.assert_close(short[:, :9], full[:, :9], atol=1e-4, rtol=1e-4)


def test_text_encoder_argument_errors():
    with pytest.raises(PretrainedNotAvailableError, match="'/no/such/model'.*does not exist"):
        FrozenHFTextEncoder("/no/such/model")
    with pytest.raises(ValueError, match="layer must be one of"):
        FrozenHFTextEncoder(layer="penultimate")


def test_clip_offline_error_names_the_model_and_the_fix():
    cache = os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub",
                         "models--openai--clip-vit-large-patch14")
    if os.path.isdir(cache):
        pytest.skip("CLIP ViT-L/14 is in the local cache")
    with pytest.raises(PretrainedNotAvailableError) as err:
        FrozenCLIPEmbedder()
    message = str(err.value)
    assert "openai/clip-vit-large-patch14" in message and "version" in message and "cache" in message
    with pytest.raises(PretrainedNotAvailableError, match="does not exist"):
        FrozenCLIPEmbedder(version="/no/such/clip")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised 2-layer CLIPTextModel and its BPE tokenizer saved to a folder: (folder, vocab size)."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    return str(folder), save_tiny_clip(folder)


def test_tiny_clip_success_path(tiny_clip):
    folder, vocab_size = tiny_clip
    with pytest.raises(PretrainedNotAvailableError, match=f"has {vocab_size} tokens, expected 49408"):
        FrozenCLIPEmbedder(version=folder)  # the default vocabulary check
    clip = FrozenCLIPEmbedder(version=folder, expected_vocab_size=vocab_size)
    z = clip(["a red circle", ""])
    assert z.shape == (2, 77, 32) and not clip.is_trainable
    tokens = clip.tokenize(["a red circle"])["input_ids"]
    assert tokens.shape == (1, 77) and tokens[0, 0] == vocab_size - 2 and tokens[0, -1] == vocab_size - 1
    direct = clip.transformer.text_model(input_ids=tokens).last_hidden_state
    torch.testing.assert_close(clip(["a red circle"]), direct)
    pooled = FrozenCLIPEmbedder(version=folder, expected_vocab_size=vocab_size, layer="pooled")
    assert pooled(["a red circle"]).shape == (1, 1, 32)
    hidden = FrozenCLIPEmbedder(version=folder, expected_vocab_size=vocab_size, layer="hidden", layer_idx=-2)
    assert hidden(["a red circle"]).shape == (1, 77, 32)
    with pytest.raises(ValueError, match="layer_idx"):
        FrozenCLIPEmbedder(version=folder, expected_vocab_size=vocab_size, layer="hidden", layer_idx=9)
    trainable = FrozenCLIPEmbedder(version=folder, expected_vocab_size=vocab_size, freeze=False)
    assert trainable.is_trainable and trainable.train().transformer.training


def test_tiny_clip_sd_v1_key_layout(tiny_clip):
    folder, vocab_size = tiny_clip
    clip = FrozenCLIPEmbedder(version=folder, expected_vocab_size=vocab_size)
    keys = list(clip.state_dict())
    assert all(k.startswith("transformer.text_model.") for k in keys)
    assert "transformer.text_model.embeddings.token_embedding.weight" in keys
    assert "transformer.text_model.encoder.layers.1.self_attn.q_proj.weight" in keys
    assert "transformer.text_model.final_layer_norm.weight" in keys
    # an SD v1 style checkpoint (with the old persistent position_ids) loads strictly under any parent prefix
    parent = torch.nn.Module()
    parent.cond_stage_model = clip
    state = {f"cond_stage_model.{k}": torch.zeros_like(v) for k, v in clip.state_dict().items()}
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    result = parent.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert clip.transformer.text_model.embeddings.token_embedding.weight.abs().sum() == 0


def test_vocab_checks_and_path_rules():
    class Fake:
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

    with pytest.raises(PretrainedNotAvailableError, match="has 2 tokens"):
        check_vocab(Fake(2), "openai/clip-vit-large-patch14")
    with pytest.raises(ValueError, match="out of range"):
        check_vocab(Fake(500), "x", model_vocab=100)
    check_vocab(Fake(500), "x", expected=500, model_vocab=500)
    assert looks_like_path("/abs/dir") and looks_like_path("./rel") and looks_like_path("a/b/c")
    assert not looks_like_path("openai/clip-vit-large-patch14") and not looks_like_path("bert-base-uncased")


def test_caption_cache_gives_the_uncached_features_and_encodes_each_caption_once(minilm):
    cached = FrozenHFTextEncoder(max_length=16, cache_size=3)
    calls = []
    encode = cached._encode
    cached._encode = lambda text: calls.append(list(text)) or encode(text)
    captions = ["a red circle", "", "a red circle", "a blue square at the top"]
    first = cached(captions)
    assert calls == [["a red circle", "", "a blue square at the top"]]  # distinct misses, one call
    torch.testing.assert_close(first, encode(captions), atol=1e-5, rtol=1e-5)
    again = cached(["", "a blue square at the top"])
    assert len(calls) == 1 and torch.equal(again, first[[1, 3]])  # all hits
    cached(["a green triangle"])  # a 4th caption evicts the least recently used ("a red circle")
    assert len(cached.cache) == 3 and cached.cache.hits == 2 and cached.cache.misses == 4
    cached(["a red circle"])
    assert calls[-1] == ["a red circle"]
    cached.load_state_dict(cached.state_dict())  # new weights (or a device move) forget the memo
    assert len(cached.cache) == 0


def test_caption_cache_needs_a_frozen_encoder():
    with pytest.raises(ValueError, match="cache_size needs freeze=True"):
        FrozenHFTextEncoder(max_length=16, cache_size=8, freeze=False)
