"""ldm.interop.compvis: the original-style config, the CompVis state dict (EMA swap, dropped keys), the compatibility
report, dtype casts and the files, on tiny in-memory models (16 px, 8x8x4 latents)."""
import copy
import os
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "diffusion"))

import ae_configs  # noqa: E402
import diffusion_configs as dc  # noqa: E402

from ldm.checkpoint import load_checkpoint  # noqa: E402
from ldm.interop import compvis  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402


def randomized(model, seed=0):
    """Give every float parameter small random values (zero-initialised layers too) so outputs use all weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=g))
    return model


def ldm_checkpoint(config, scale_factor=0.8125, seed=0):
    """(model, checkpoint dict) of a tiny LatentDiffusion whose EMA differs from its weights."""
    torch.manual_seed(seed)
    model = randomized(instantiate_from_config(config).eval(), seed)
    state = model.state_dict()
    for key in state:
        if key.startswith("model_ema.") and state[key].is_floating_point() and state[key].dim() > 0:
            state[key] += 0.3  # EMA != raw weights, so a missing swap shows
    state["scale_factor"].fill_(scale_factor)
    return model, {"state_dict": state, "global_step": 11}


@pytest.fixture(scope="module")
def class_ldm():
    """A class-conditional tiny LDM with the CPU overlay's options: 8 norm groups, min-SNR, ucg_rate."""
    config = dc.ldm_config("class", scale_by_std=True, min_snr_gamma=5.0)
    config["params"]["unet_config"]["params"]["norm_num_groups"] = 8
    config["params"]["first_stage_config"]["params"]["ddconfig"]["norm_num_groups"] = 8
    config["params"]["cond_stage_config"]["params"]["ucg_rate"] = 0.1
    return config, *ldm_checkpoint(config)


def test_ema_swap_names_follow_litema():
    """model.* takes the model_ema shadow of the same parameter (dots removed); model_ema.* is gone; --no-ema keeps
    the raw weights."""
    config = dc.ldm_config("class")
    _, ckpt = ldm_checkpoint(config)
    state = ckpt["state_dict"]
    ema = compvis.export_state_dict(state, "diffusion", use_ema=True)
    raw = compvis.export_state_dict(state, "diffusion", use_ema=False)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert torch.equal(ema[key], state["model_ema.diffusion_modelinput_blocks00weight"])
    assert not torch.equal(ema[key], state[key]) and torch.equal(raw[key], state[key])
    swapped = [k for k in ema if k.startswith("model.") and not torch.equal(ema[k], state[k])]
    assert len(swapped) == sum(1 for k in state if k.startswith("model_ema.")) - 2  # all but decay / num_updates
    assert not any(k.startswith("model_ema.") for k in ema) and not any(k.startswith("model_ema.") for k in raw)
    assert torch.equal(ema["cond_stage_model.embedding.weight"], state["cond_stage_model.embedding.weight"])


def test_stray_ema_buffer_is_an_error():
    _, ckpt = ldm_checkpoint(dc.ldm_config("none"))
    state = dict(ckpt["state_dict"], **{"model_ema.not_a_weight": torch.zeros(2)})
    with pytest.raises(compvis.CheckpointError, match="model_ema.not_a_weight"):
        compvis.export_state_dict(state, "diffusion", use_ema=True)
    with pytest.raises(compvis.CheckpointError, match="--no-ema"):
        compvis.export_state_dict({"model.x": torch.zeros(1)}, "diffusion", use_ema=True)


def test_round_trip_gives_equal_outputs(class_ldm):
    """Fresh model from the exported config + exported weights (strict) = the original model under its EMA."""
    config, model, ckpt = class_ldm
    model.load_state_dict(ckpt["state_dict"])
    export = compvis.prepare_export({"model": config}, ckpt)
    assert export.ema and export.global_step == 11 and export.kind == "diffusion"
    params = export.config["model"]["params"]
    assert params["scale_factor"] == 0.8125 and params["scale_by_std"] is False and params["use_ema"] is False
    fresh = instantiate_from_config(export.config["model"]).eval()
    fresh.load_state_dict(export.state_dict, strict=True)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 70])
    with torch.no_grad(), model.ema_scope():
        c = model.get_learned_conditioning({"class_label": torch.tensor([1, 4])})
        expected, expected_img = model.apply_model(x, t, c), model.decode_first_stage(x)
    with torch.no_grad():
        got = fresh.apply_model(x, t, fresh.get_learned_conditioning({"class_label": torch.tensor([1, 4])}))
        got_img = fresh.decode_first_stage(x)
    assert torch.equal(got, expected) and torch.equal(got_img, expected_img)
    assert float(fresh.scale_factor) == 0.8125


def test_report_and_marked_yaml(class_ldm):
    """8 norm groups are reasons (loud, marked); min-SNR and ucg_rate are dropped with notes; add_null_class
    becomes the original's n_classes + 1; interpolations are resolved."""
    config, _, ckpt = class_ldm
    cfg = OmegaConf.create({"model": copy.deepcopy(config), "sizes": {"dim": 32},
                            "data": {"target": "main.DataModuleFromConfig"}, "lightning": {"trainer": {}}})
    cfg.model.params.unet_config.params.context_dim = "${sizes.dim}"
    export = compvis.prepare_export(cfg, ckpt)
    text = export.yaml()
    assert "${" not in text and "data:" not in text and "lightning:" not in text
    assert not export.report.compatible
    reasons = "\n".join(export.report.reasons)
    assert "unet_config.params.norm_num_groups=8" in reasons and "ddconfig.norm_num_groups=8" in reasons
    assert "silently ignore" in reasons
    notes = "\n".join(export.report.notes)
    assert "min_snr_gamma=5.0 dropped" in notes and "ucg_rate=0.1 dropped" in notes
    assert text.startswith("# WARNING: NOT COMPATIBLE")
    loaded = OmegaConf.create(text)
    assert loaded[compvis.MARK_KEY].original_compatible is False and len(loaded[compvis.MARK_KEY].reasons) == 2
    params = loaded.model.params
    assert params.unet_config.params.context_dim == 32 and "min_snr_gamma" not in params
    assert params.cond_stage_config.params.n_classes == 11 and "add_null_class" not in params.cond_stage_config.params
    assert "ckpt_path" not in params.first_stage_config.params
    assert params.first_stage_config.params.lossconfig.target == "torch.nn.Identity"


@pytest.mark.parametrize("option,value,needle", [
    ("zero_terminal_snr", True, "wrong noise levels"),
    ("parameterization", "v", "accept only eps and x0"),
    ("offset_noise_strength", 0.1, None),
])
def test_diffusion_options(option, value, needle):
    config = dc.ldm_config("none", **{option: value})
    _, report, _ = compvis.original_config({"model": config})
    if needle is None:  # training only: dropped with a note
        assert report.compatible and any(option in n for n in report.notes)
    else:
        assert any(option in r and needle in r for r in report.reasons)


def test_original_options_at_default_are_dropped_silently():
    """Our options left at the original behaviour (32 groups, latent_stats global) vanish without a word."""
    config = dc.ldm_config("none", latent_stats="global")
    config["params"]["unet_config"]["params"]["norm_num_groups"] = 32
    cfg, report, _ = compvis.original_config({"model": config})
    assert report.compatible and not report.notes
    assert "norm_num_groups" not in cfg["model"]["params"]["unet_config"]["params"]
    assert "latent_stats" not in cfg["model"]["params"]


def test_autoencoder_drops_loss_and_swaps_its_ema():
    config = ae_configs.kl_config()
    config["params"]["ema_decay"] = 0.99
    torch.manual_seed(0)
    model = instantiate_from_config(config)
    state = model.state_dict()
    state["model_ema.encoderconv_inweight"] += 1.0
    export = compvis.prepare_export({"model": config}, {"state_dict": state})
    assert not any(k.startswith(("loss.", "model_ema.")) for k in export.state_dict)
    assert any(k.startswith("loss.") for k in state)
    assert torch.equal(export.state_dict["encoder.conv_in.weight"], state["model_ema.encoderconv_inweight"])
    params = export.config["model"]["params"]
    assert params["lossconfig"] == {"target": "torch.nn.Identity"} and "ema_decay" not in params
    assert export.report.compatible and any("ema_decay" in n for n in export.report.notes)
    fresh = instantiate_from_config(export.config["model"])
    fresh.load_state_dict(export.state_dict, strict=True)


def test_cast_floating_only():
    state = {"w": torch.ones(4, 4), "idx": torch.arange(3), "flag": torch.tensor(True)}
    out = compvis.cast_floating(state, torch.float16)
    assert out["w"].dtype == torch.float16 and out["idx"].dtype == torch.int64 and out["flag"].dtype == torch.bool


def test_unknown_model_and_bad_interpolation_are_clear_errors():
    with pytest.raises(compvis.ConfigError, match="cannot export UNetModel"):
        compvis.original_config({"model": dc.unet_config()})
    with pytest.raises(compvis.ConfigError, match="interpolation"):
        compvis.original_config(OmegaConf.create({"model": {"target": "x", "params": {"a": "${nowhere.at_all}"}}}))


def test_files_round_trip(tmp_path):
    """safetensors metadata and the compvis checkpoint (weights_only, global_step) hold what they promise."""
    from safetensors import safe_open

    config = dc.ldm_config("none")
    _, ckpt = ldm_checkpoint(config)
    export = compvis.prepare_export({"model": config}, ckpt, use_ema=False, dtype=torch.float16)
    path, yaml_path = compvis.write_safetensors(str(tmp_path / "m.safetensors"), export, "ab" * 32)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        assert f.get_tensor("model.diffusion_model.out.2.weight").dtype == torch.float16
    assert meta[compvis.META_SHA256] == "ab" * 32 and meta[compvis.META_STEP] == "11"
    assert meta[compvis.META_EMA] == "false" and meta[compvis.META_VERSION] == str(compvis.FORMAT_VERSION)
    assert meta[compvis.META_CONFIG] == Path(yaml_path).read_text() and meta[compvis.META_COMPATIBLE] == "true"
    folder = tmp_path / "cv"
    compvis.write_compvis(str(folder), export)
    saved = torch.load(folder / compvis.COMPVIS_CKPT, weights_only=True)
    assert set(saved) == {"state_dict", "global_step"} and saved["global_step"] == 11
    assert load_checkpoint(str(folder / compvis.COMPVIS_CKPT))["state_dict"].keys() == export.state_dict.keys()
    assert not [f for f in os.listdir(folder) if f.endswith(".tmp")]


def test_diffusers_original_config_route_reproduces_the_model(tmp_path):
    """diffusers' from_single_file(original_config=<exported yaml>) builds the same UNet and VAE (and reads the
    learnt scale_factor) for a model the report calls compatible."""
    diffusers = pytest.importorskip("diffusers")
    config = dc.ldm_config("class", scale_by_std=True)
    model, ckpt = ldm_checkpoint(config)
    export = compvis.prepare_export({"model": config}, ckpt)
    assert export.report.compatible
    path, yaml_path = compvis.write_safetensors(str(tmp_path / "m.safetensors"), export, "0" * 64)
    unet = diffusers.UNet2DConditionModel.from_single_file(path, original_config=yaml_path).eval()
    vae = diffusers.AutoencoderKL.from_single_file(path, original_config=yaml_path).eval()
    assert vae.config.scaling_factor == 0.8125
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([3, 70]), torch.randn(2, 1, 32)
    with torch.no_grad(), model.ema_scope():
        expected = model.model.diffusion_model(x, t, context=context)
        expected_img = model.first_stage_model.decode(x)
    with torch.no_grad():
        got = unet(x, t, encoder_hidden_states=context).sample
        got_img = vae.decode(x).sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_img, expected_img, rtol=1e-4, atol=1e-5)


def test_diffusers_route_is_silently_wrong_where_the_report_says_so(tmp_path, class_ldm):
    """With 8 norm groups diffusers' original_config route loads without complaint but computes something else:
    why such configs are marked."""
    diffusers = pytest.importorskip("diffusers")
    config, model, ckpt = class_ldm
    export = compvis.prepare_export({"model": config}, ckpt)
    assert not export.report.compatible
    path, yaml_path = compvis.write_safetensors(str(tmp_path / "m.safetensors"), export, "0" * 64)
    vae = diffusers.AutoencoderKL.from_single_file(path, original_config=yaml_path).eval()
    assert vae.config.norm_num_groups == 32
    model.load_state_dict(ckpt["state_dict"])
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert (vae.decode(x).sample - model.first_stage_model.decode(x)).abs().max() > 1e-2
