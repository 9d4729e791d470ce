import copy

import pytest
import torch

from ldm.checkpoint import CheckpointError
from ldm.models.autoencoder import AutoencoderKL
from ldm.util import instantiate_from_config, load_configs

from ae_configs import FixedBatch, fit, kl_config


def test_encode_decode_shapes_and_compvis_keys():
    model = instantiate_from_config(kl_config())
    x = torch.randn(2, 3, 32, 32)
    posterior = model.encode(x)
    assert posterior.mean.shape == (2, 4, 16, 16)
    assert model.decode(posterior.sample()).shape == x.shape
    keys = set(model.state_dict())
    for k in ["encoder.conv_in.weight", "decoder.up.1.upsample.conv.weight", "quant_conv.weight",
              "post_quant_conv.bias", "loss.logvar", "loss.discriminator.main.0.weight"]:
        assert k in keys, k


def test_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = instantiate_from_config(kl_config())
    model.learning_rate = 1e-3
    batch = {"image": FixedBatch().images}
    x = model.get_input(batch, "image")
    with torch.no_grad():
        before = (model(x, sample_posterior=False)[0] - x).abs().mean().item()
    fit(model, steps=40)
    with torch.no_grad():
        after = (model(x, sample_posterior=False)[0] - x).abs().mean().item()
    assert after < 0.5 * before, (before, after)


def test_discriminator_frozen_before_disc_start_and_trains_after():
    torch.manual_seed(0)
    model = instantiate_from_config(kl_config(disc_start=3))
    model.learning_rate = 1e-3
    d0 = copy.deepcopy(model.loss.discriminator.state_dict())
    fit(model, steps=3)  # batches 0, 1, 2: disc_factor is 0, so the discriminator's gradients are zero
    for k, v in model.loss.discriminator.state_dict().items():
        if v.is_floating_point() and "running" not in k:
            assert torch.equal(v, d0[k]), k
    model = instantiate_from_config(kl_config(disc_start=0))
    model.learning_rate = 1e-3
    w0 = model.loss.discriminator.main[0].weight.detach().clone()
    fit(model, steps=2)
    assert not torch.equal(model.loss.discriminator.main[0].weight, w0)


def test_discriminator_is_not_run_before_disc_start():
    torch.manual_seed(0)
    model = instantiate_from_config(kl_config(disc_start=2))
    model.learning_rate = 1e-3
    calls = []
    model.loss.discriminator.register_forward_hook(lambda *_: calls.append(1))
    trainer = fit(model, steps=2)  # batches 0 and 1: a zero-weight term, so neither step runs the discriminator
    assert calls == [] and not trainer.optimizers[1].state
    assert trainer.global_step == 4  # still two optimizer steps per batch: max_steps and checkpoints keep counting
    model = instantiate_from_config(kl_config(disc_start=2))
    model.learning_rate = 1e-3
    model.loss.discriminator.register_forward_hook(lambda *_: calls.append(1))
    trainer = fit(model, steps=3)  # batch 2: generator term (1 call) and discriminator step (real + fake)
    assert len(calls) == 3 and trainer.optimizers[1].state


def test_logvar_is_not_trained_by_default_and_learn_logvar_trains_it():
    model = instantiate_from_config(kl_config())
    assert all(p is not model.loss.logvar for p in model.generator_parameters())
    cfg = kl_config()
    cfg["params"]["learn_logvar"] = True
    model = instantiate_from_config(cfg)
    assert any(p is model.loss.logvar for p in model.generator_parameters())


def compvis_tiny_keys():
    """Hand-written CompVis AutoencoderKL key layout for TINY_DD (ch 32, ch_mult [1, 2], 1 res block, no attn)."""
    keys = []
    res = lambda p, cin, cout: [f"{p}.{n}" for n in ["norm1.weight", "norm1.bias", "conv1.weight", "conv1.bias",
                                                      "norm2.weight", "norm2.bias", "conv2.weight", "conv2.bias"]] + (
        [f"{p}.nin_shortcut.weight", f"{p}.nin_shortcut.bias"] if cin != cout else [])
    attn = lambda p: [f"{p}.{n}.{w}" for n in ["norm", "q", "k", "v", "proj_out"] for w in ["weight", "bias"]]
    keys += ["encoder.conv_in.weight", "encoder.conv_in.bias"]
    keys += res("encoder.down.0.block.0", 32, 32) + ["encoder.down.0.downsample.conv.weight",
                                                     "encoder.down.0.downsample.conv.bias"]
    keys += res("encoder.down.1.block.0", 32, 64)
    keys += res("encoder.mid.block_1", 64, 64) + attn("encoder.mid.attn_1") + res("encoder.mid.block_2", 64, 64)
    keys += ["encoder.norm_out.weight", "encoder.norm_out.bias", "encoder.conv_out.weight", "encoder.conv_out.bias"]
    keys += ["decoder.conv_in.weight", "decoder.conv_in.bias"]
    keys += res("decoder.mid.block_1", 64, 64) + attn("decoder.mid.attn_1") + res("decoder.mid.block_2", 64, 64)
    keys += res("decoder.up.1.block.0", 64, 64) + res("decoder.up.1.block.1", 64, 64)
    keys += ["decoder.up.1.upsample.conv.weight", "decoder.up.1.upsample.conv.bias"]
    keys += res("decoder.up.0.block.0", 64, 32) + res("decoder.up.0.block.1", 32, 32)
    keys += ["decoder.norm_out.weight", "decoder.norm_out.bias", "decoder.conv_out.weight", "decoder.conv_out.bias"]
    keys += ["quant_conv.weight", "quant_conv.bias", "post_quant_conv.weight", "post_quant_conv.bias"]
    return keys


def compvis_checkpoint(model, with_loss):
    """A checkpoint with exactly the CompVis key set (+ taming-style loss keys), values from a reference model."""
    sd = model.state_dict()
    state = {k: sd[k].clone() for k in compvis_tiny_keys()}
    if with_loss:
        state["loss.logvar"] = torch.tensor(0.0)
        # taming's own LPIPS layout and a discriminator of another depth: loss weights may not fit, and must not matter.
        state["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1)
        state["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
        state["loss.discriminator.main.2.weight"] = torch.randn(128, 64, 4, 4)
    return state


@pytest.mark.parametrize("layout", ["lightning", "bare", "bare_with_loss", "ldm_prefixed"])
def test_loads_compvis_layout_checkpoints(tmp_path, layout):
    torch.manual_seed(1)
    reference = instantiate_from_config(kl_config())
    assert set(k for k in reference.state_dict() if not k.startswith("loss.")) == set(compvis_tiny_keys())
    state = compvis_checkpoint(reference, with_loss=layout != "bare")
    if layout == "ldm_prefixed":
        state = {f"first_stage_model.{k}": v for k, v in state.items()}
    payload = {"state_dict": state, "global_step": 10} if layout in ("lightning", "ldm_prefixed") else state
    path = tmp_path / "model.ckpt"
    torch.save(payload, path)
    cfg = kl_config()
    cfg["params"]["ckpt_path"] = str(path)
    model = instantiate_from_config(cfg)
    for k in compvis_tiny_keys():
        assert torch.equal(model.state_dict()[k], reference.state_dict()[k]), k


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    state = instantiate_from_config(kl_config()).state_dict()
    state["encoder.conv_in.weight"] = torch.randn(8, 3, 3, 3)
    torch.save(state, tmp_path / "bad.ckpt")
    cfg = kl_config()
    cfg["params"]["ckpt_path"] = str(tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="encoder.conv_in.weight"):
        instantiate_from_config(cfg)


def test_identity_lossconfig_for_inference():
    cfg = kl_config()
    cfg["params"]["lossconfig"] = {"target": "torch.nn.Identity"}
    model = instantiate_from_config(cfg)
    assert model.decode(model.encode(torch.randn(1, 3, 32, 32)).mode()).shape == (1, 3, 32, 32)


def test_log_images_returns_inputs_reconstructions_samples():
    model = instantiate_from_config(kl_config())
    images = model.log_images({"image": torch.rand(2, 32, 32, 3) * 2 - 1})
    assert set(images) == {"inputs", "reconstructions", "samples"}
    assert all(v.shape == (2, 3, 32, 32) for v in images.values())


@pytest.mark.parametrize("f", ["f4", "f8", "f16", "f32"])
def test_paper_configs_build_with_the_cpu_overlay(repo_root, f):
    cfg = load_configs([f"{repo_root}/configs/autoencoder_kl_{f}.yaml", f"{repo_root}/configs/overlays/cpu.yaml"])
    cfg.model.params.ddconfig.ch = 32  # the cpu overlay width; GroupNorm(32) needs >= 32 channels
    model = instantiate_from_config(cfg.model)
    factor = int(f[1:])
    z = model.encode(torch.randn(1, 3, 64, 64)).mode()
    assert z.shape == (1, model.embed_dim, 64 // factor, 64 // factor)
