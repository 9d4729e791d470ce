"""LatentDiffusion: state_dict names, conditioning keys, scale_by_std, training, checkpoints, image logs."""
from types import SimpleNamespace

import pytest
import torch

from ldm.diffusion.schedule import SCHEDULE_BUFFER_NAMES
from ldm.models.diffusion.denoising_diffusion import DiffusionInputs
from ldm.models.diffusion.first_stage import latent_from_posterior
from ldm.util import ConfigError, instantiate_from_config

import diffusion_configs as dc

PREFIXES = ("model.diffusion_model.", "model_ema.", "first_stage_model.", "cond_stage_model.")


def build(cond="class", **params):
    return instantiate_from_config(dc.ldm_config(cond, **params))


def test_state_dict_names_match_the_original():
    model = build()
    keys = set(model.state_dict())
    assert all(k.startswith(PREFIXES) or k in SCHEDULE_BUFFER_NAMES or k == "scale_factor" for k in keys)
    for prefix in PREFIXES:
        assert any(k.startswith(prefix) for k in keys), prefix
    assert "cond_stage_model.embedding.weight" in keys and "first_stage_model.encoder.conv_in.weight" in keys
    assert model.scale_factor.dtype == torch.float32


def test_conditioning_key_defaults_and_frozen_parts():
    concat = build(conditioning_key=None, unet_config=dc.unet_config(in_channels=8, context_dim=None),
                   cond_stage_config="__is_first_stage__", cond_stage_key="image", cond_stage_trainable=False)
    assert concat.model.conditioning_key == "concat" and concat.cond_stage_model is concat.first_stage_model
    loss, _ = concat.shared_step(dc.batch(n=2))  # c_concat: the image's own latent
    assert torch.isfinite(loss)
    uncond = build("none", conditioning_key="crossattn")
    assert uncond.model.conditioning_key is None and uncond.cond_stage_model is None
    model = build()
    model.train()
    assert not model.first_stage_model.training and model.cond_stage_model.training
    assert not any(p.requires_grad for p in model.first_stage_model.parameters())
    model.learning_rate = 1e-3
    trained = {id(p) for p in model.configure_optimizers().param_groups[0]["params"]}
    assert id(model.cond_stage_model.embedding.weight) in trained  # cond_stage_trainable
    assert not any(id(p) in trained for p in model.first_stage_model.parameters())
    with pytest.raises(ConfigError, match="scale_by_std"):
        build(scale_by_std=True, scale_factor=0.18215)


def _first_batch_latent(model, b):
    """Run scale_by_std's first-batch estimate on b; returns the unscaled latent it saw (the same posterior draw)."""
    model.trainer = SimpleNamespace(global_step=0, strategy=SimpleNamespace(world_size=1))
    torch.manual_seed(3)
    model.on_train_batch_start(b, 0)
    torch.manual_seed(3)
    return latent_from_posterior(model.encode_first_stage(model.get_input_image(b)))


def test_scale_by_std_sets_one_over_std_on_the_first_batch(tmp_path):
    model = build(scale_by_std=True)
    b = dc.batch(n=4)
    z = _first_batch_latent(model, b)
    assert torch.allclose(model.scale_factor, 1.0 / z.flatten().std())
    assert float(model.scale_factor) != 1.0
    value = model.scale_factor.clone()
    model.on_train_batch_start(b, 1)  # only once
    assert torch.equal(model.scale_factor, value)
    path = tmp_path / "ldm.ckpt"
    torch.save({"state_dict": model.state_dict()}, path)
    restored = build(scale_by_std=True, ckpt_path=str(path))
    assert torch.equal(restored.scale_factor, value) and restored.restarted_from_ckpt
    restored.trainer = SimpleNamespace(global_step=0, strategy=SimpleNamespace(world_size=1))
    restored.on_train_batch_start(b, 0)  # restored: no re-estimation
    assert torch.equal(restored.scale_factor, value)


def test_lightning_training_reduces_the_loss_and_checkpoint_keeps_scale(tmp_path):
    # Pixel space (IdentityFirstStage, LDM-1) so the fixed batch is fixed data, not fresh posterior samples.
    model = build(first_stage_config={"target": "ldm.models.autoencoder.IdentityFirstStage"}, channels=3,
                  unet_config=dc.unet_config(in_channels=3, out_channels=3), scale_by_std=True, use_ema=False)
    b = dc.batch(n=4, size=8)
    g = torch.Generator().manual_seed(0)
    inputs = model.diffusion_inputs(b)  # fixed data, t and noise before and after (scale_factor is 1 here)
    t = torch.randint(0, model.num_timesteps, (4,), generator=g)
    noise = torch.randn(inputs.x0.shape, generator=g)
    model.eval()
    with torch.no_grad():
        before = float(model.diffusion_loss(inputs, t, noise)[0])
    trainer = dc.fit(model, steps=15, size=8, lr=3e-3)
    expected_scale = 1.0 / inputs.x0.flatten().std()
    assert torch.allclose(model.scale_factor, expected_scale)  # the identity "latents" are the images
    model.eval()
    with torch.no_grad():
        after = float(model.diffusion_loss(DiffusionInputs(inputs.x0 * model.scale_factor, inputs.cond), t, noise)[0])
    assert after < 0.7 * before, (before, after)
    path = tmp_path / "fit.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert torch.equal(state["scale_factor"], model.scale_factor)


def test_init_from_ckpt_ignore_keys_and_missing_scale_factor(tmp_path, caplog):
    src = build()
    with torch.no_grad():
        src.cond_stage_model.embedding.weight.add_(1.0)
    state = {k: v for k, v in src.state_dict().items() if k != "scale_factor"}  # as original checkpoints
    path = tmp_path / "orig.ckpt"
    torch.save({"state_dict": state}, path)
    dst = build(ckpt_path=str(path), ignore_keys=["cond_stage_model."], scale_factor=0.5)
    assert torch.equal(dst.model.diffusion_model.out[2].weight, src.model.diffusion_model.out[2].weight)
    assert not torch.equal(dst.cond_stage_model.embedding.weight, src.cond_stage_model.embedding.weight)
    assert float(dst.scale_factor) == 0.5  # kept from the config
    assert "cond_stage_model.embedding.weight" in caplog.text  # reported as missing


def test_missing_first_stage_checkpoint_is_a_clear_error(tmp_path):
    missing = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError) as err:
        build(first_stage_config=dc.kl_first_stage(ckpt_path=missing))
    assert "model.params.first_stage_config.params.ckpt_path" in str(err.value) and str(missing) in str(err.value)


def test_cfg_dropout_only_in_training_and_log_images_keys():
    model = build("caption", ucg_rate=1.0)  # model-level rate overrides the conditioner's 0
    b = dc.batch(n=4)
    assert model.cfg_dropout(b)["caption"] == [""] * 4
    logs = model.log_images(b, N=3, n_row=2, ddim_steps=3, plot_denoise_rows=True,
                            unconditional_guidance_scale=3.0)
    assert set(logs) == {"inputs", "reconstruction", "conditioning", "diffusion_row", "samples", "denoise_row",
                         "samples_cfg_scale_3.00"}
    for key in ("inputs", "reconstruction", "conditioning", "samples", "samples_cfg_scale_3.00"):
        assert logs[key].shape == (3, 3, 16, 16), key
    assert logs["diffusion_row"].shape[:2] == (1, 3) and logs["denoise_row"].shape[:2] == (1, 3)
    assert all(v.min() >= -1 and v.max() <= 1 for v in logs.values())
    assert logs["conditioning"].min() < 0  # the captions are drawn (dark text on white)


def test_sample_with_guidance_uses_the_null_class():
    model = build()
    c = model.get_learned_conditioning(torch.tensor([1, 2]))
    uc = model.unconditional_conditioning(2)
    assert torch.equal(uc[0], model.cond_stage_model.embedding.weight[model.cond_stage_model.null_label][None])
    z = model.sample(cond=c, batch_size=2, steps=3, unconditional_guidance_scale=2.0, unconditional_conditioning=uc)
    assert z.shape == (2, 4, 8, 8) and torch.isfinite(z).all()
    assert model.denoiser(use_ema=True)(z, torch.tensor([5, 5]), c)[1].shape == z.shape


def test_per_channel_latent_stats_standardise_each_channel_and_are_saved(tmp_path):
    assert "latent_mean" not in build(scale_by_std=True).state_dict()  # the original layout unless asked for
    model = build(scale_by_std=True, latent_stats="per_channel")
    b = dc.batch(n=4)
    z = _first_batch_latent(model, b)
    per_channel = z.transpose(0, 1).flatten(1)
    assert torch.allclose(model.latent_mean, per_channel.mean(1))
    assert torch.allclose(model.latent_std, per_channel.std(1))
    assert float(model.scale_factor) == 1.0
    scaled = model.scale_latent(z).transpose(0, 1).flatten(1)
    assert torch.allclose(scaled.mean(1), torch.zeros(z.shape[1]), atol=1e-5)
    assert torch.allclose(scaled.std(1), torch.ones(z.shape[1]), atol=1e-5)
    assert torch.allclose(model.unscale_latent(model.scale_latent(z)), z, atol=1e-5)
    with torch.no_grad():  # decoding a diffusion latent goes through the inverse
        assert torch.allclose(model.decode_first_stage(model.scale_latent(z)), model.first_stage_model.decode(z),
                              atol=1e-5)
    path = tmp_path / "ldm.ckpt"
    torch.save({"state_dict": model.state_dict()}, path)
    restored = build(scale_by_std=True, latent_stats="per_channel", ckpt_path=str(path))
    assert torch.equal(restored.latent_mean, model.latent_mean) and torch.equal(restored.latent_std, model.latent_std)
    with pytest.raises(ConfigError, match="latent_stats: per_channel .* needs scale_by_std: true"):
        build(latent_stats="per_channel")
    with pytest.raises(ConfigError, match="latent_stats must be one of global, per_channel"):
        build(scale_by_std=True, latent_stats="channel")
