"""Conditioning stage: building modes, raw input selection, encoding, and classifier-free-guidance dropout."""
import pytest
import torch
from torch import nn

from ldm.models.diffusion.conditioning import (ConditioningDropout, dropout_rates, encode_conditioning,
                                               instantiate_cond_stage, raw_conditioning)
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.modules.encoders.modules import ClassEmbedder
from ldm.util import ConfigError, instantiate_from_config

import diffusion_configs as dc


def test_cond_stage_modes():
    first = nn.Linear(2, 2)
    assert instantiate_cond_stage("__is_first_stage__", False, first) is first
    assert instantiate_cond_stage("__is_unconditional__", False, first) is None
    frozen = instantiate_cond_stage(dc.class_embedder(), False, first)
    frozen.train()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    trainable = instantiate_cond_stage(dc.class_embedder(), True, first)
    assert all(p.requires_grad for p in trainable.parameters())
    with pytest.raises(ConfigError, match="cond_stage_trainable"):
        instantiate_cond_stage("__is_first_stage__", True, first)


def test_encode_uses_encode_then_mode_or_named_method():
    class Posterior(nn.Module):
        def encode(self, x):
            return DiagonalGaussianDistribution(torch.cat([x, torch.zeros_like(x)], 1))

        def other(self, x):
            return x + 1

    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(encode_conditioning(Posterior(), x), x)  # the posterior's mode
    assert torch.equal(encode_conditioning(Posterior(), x, "other"), x + 1)
    with pytest.raises(ConfigError, match="cond_stage_forward"):
        encode_conditioning(Posterior(), x, "missing")


def test_raw_conditioning_follows_the_original_keys():
    b = dc.batch(n=4)
    x = torch.randn(4, 3, 16, 16)
    dev = torch.device("cpu")
    assert raw_conditioning(b, "caption", "image", x, dev) == b["caption"]
    assert raw_conditioning(b, "caption", "image", x, dev, bs=2) == b["caption"][:2]
    as_batch = raw_conditioning(b, "class_label", "image", x, dev, bs=3)
    assert isinstance(as_batch, dict) and torch.equal(as_batch["class_label"], b["class_label"][:3])
    assert raw_conditioning(b, "image", "image", x, dev) is x
    b["lr"] = torch.rand(4, 8, 8, 3)
    assert raw_conditioning(b, "lr", "image", x, dev).shape == (4, 3, 8, 8)
    with pytest.raises(KeyError, match="cond_stage_key"):
        raw_conditioning(b, "depth", "image", x, dev)


def test_caption_dropout_rate_and_null_value():
    bert = instantiate_from_config(dc.bert(ucg_rate=0.1))
    drop = ConditioningDropout(dropout_rates(bert, "caption"))
    n = 4000
    batch = {"caption": ["a red circle"] * n}
    out = drop(batch, generator=torch.Generator().manual_seed(0))
    dropped = sum(c == "" for c in out["caption"])
    assert abs(dropped / n - 0.1) < 0.02
    assert set(out["caption"]) == {"", "a red circle"}
    assert batch["caption"].count("") == 0  # the input batch is not modified


def test_class_dropout_uses_the_null_class_and_model_rate_overrides():
    emb = ClassEmbedder(embed_dim=8, n_classes=10, key="class_label", ucg_rate=0.5, add_null_class=True)
    drop = ConditioningDropout(dropout_rates(emb, "class_label", ucg_rate=0.2))  # model-level rate wins
    labels = torch.randint(0, 10, (4000,))
    out = drop({"class_label": labels}, generator=torch.Generator().manual_seed(1))["class_label"]
    changed = out != labels
    assert abs(changed.float().mean().item() - 0.2) < 0.02
    assert torch.all(out[changed] == emb.null_label) and out.dtype == labels.dtype


def test_ucg_training_dict_and_conflicts():
    rates = dropout_rates(None, "image", ucg_training={"txt": {"p": 0.5, "val": None}})
    out = ConditioningDropout(rates)({"txt": ["x"] * 1000}, generator=torch.Generator().manual_seed(0))
    assert 400 < out["txt"].count("") < 600
    emb = ClassEmbedder(embed_dim=8, n_classes=10, key="class_label", ucg_rate=0.1)
    with pytest.raises(ConfigError, match="set twice"):
        dropout_rates(emb, "class_label", ucg_training={"class_label": {"p": 0.1}})
    with pytest.raises(ConfigError, match="unconditional"):
        dropout_rates(None, "image", ucg_rate=0.1)
    with pytest.raises(ConfigError, match="no null"):
        dropout_rates(nn.Linear(2, 2), "image", ucg_rate=0.1)
    assert not ConditioningDropout(dropout_rates(emb, "class_label", ucg_rate=0.0))
