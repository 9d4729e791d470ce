"""export_diffusers / load_diffusers / ckpt_path=<diffusers folder>: folders diffusers loads offline, same numbers
on both sides, and our models rebuilt from the folders."""
import json
import os

import diffusers
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from ldm.diffusion.samplers import get_sampler
from ldm.diffusion.schedule import SCHEDULE_BUFFER_NAMES
from ldm.interop.diffusers import export_diffusers, load_diffusers
from ldm.interop.diffusers_keys import KeyMapError
from ldm.models.diffusion.restore import restore_weights
from ldm.util import instantiate_from_config

PROMPTS = ["red", "a re"]


def _ema_unet_state(model):
    with model.ema_scope():
        return {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}


def test_stable_diffusion_pipeline_runs_offline(txt2img, txt2img_export):
    model, _ = txt2img
    folder, warnings = txt2img_export
    assert warnings == []
    assert sorted(os.listdir(folder)) == ["model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert pipe.vae.config.scaling_factor == pytest.approx(0.5) and pipe.vae.config.norm_num_groups == 8
    out = pipe(PROMPTS, num_inference_steps=2, height=16, width=16, guidance_scale=3.0, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (2, 16, 16, 3) and (out >= 0).all() and (out <= 1).all()
    # the pipeline's text features are our conditioner's
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
        diff = (embeds - model.get_learned_conditioning(PROMPTS)).abs().max().item()
    print(f"text features: max diff {diff:.2e}")
    assert diff <= 1e-5


def test_ddim_20_steps_match_our_sampler(txt2img, txt2img_export):
    model, _ = txt2img
    folder, _ = txt2img_export
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
    scheduler = diffusers.DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    scheduler.set_timesteps(20)
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        context = model.get_learned_conditioning(PROMPTS)
        ours = get_sampler("ddim")(model.model_fn(use_ema=True), model.sampling_schedule(), x_T, 20, cond=context,
                                   eta=0.0)
        x = x_T.clone()
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t, encoder_hidden_states=context).sample, t, x).prev_sample
    diff = (ours - x).abs().max().item()
    print(f"DDIM 20 steps: max diff {diff:.2e} (sample max {x.abs().max():.2f})")
    assert diff <= 1e-4


def test_export_writes_the_ema_weights_and_scheduler(txt2img, txt2img_export, tmp_path):
    model, config = txt2img
    folder, _ = txt2img_export
    exported = load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
    ema = _ema_unet_state(model)
    assert torch.equal(exported["conv_in.weight"], ema["input_blocks.0.0.weight"])
    assert not torch.equal(exported["conv_in.weight"], model.model.diffusion_model.input_blocks[0][0].weight)
    scheduler = json.load(open(os.path.join(folder, "scheduler", "scheduler_config.json")))
    assert scheduler["beta_schedule"] == "scaled_linear" and scheduler["num_train_timesteps"] == 100
    assert scheduler["set_alpha_to_one"] is False and scheduler["steps_offset"] == 1
    assert not scheduler["clip_sample"] and scheduler["prediction_type"] == "epsilon"
    # use_ema=False keeps the training weights; dtype casts every float tensor
    export_diffusers(model, config, str(tmp_path / "raw"), dtype=torch.float16, use_ema=False)
    raw = load_file(str(tmp_path / "raw" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.float16 for v in raw.values())
    assert torch.equal(raw["conv_in.weight"], model.model.diffusion_model.input_blocks[0][0].weight.half())
    with pytest.raises(FileExistsError, match="not an empty folder"):
        export_diffusers(model, config, folder)


def test_load_diffusers_rebuilds_our_model(txt2img, txt2img_export):
    model, _ = txt2img
    folder, _ = txt2img_export
    config, state = load_diffusers(folder)
    assert config.params.cond_stage_config.target.endswith("FrozenCLIPEmbedder")
    assert config.params.scale_factor == pytest.approx(0.5)
    assert config.params.unet_config.params.norm_num_groups == 8
    rebuilt = instantiate_from_config(config).eval()
    missing, unexpected = rebuilt.load_state_dict(state, strict=False)
    # missing: only the EMA (restarts from the weights) and the schedule buffers (computed from the config)
    assert unexpected == [] and not [k for k in missing if not k.startswith("model_ema.")
                                     and k not in SCHEDULE_BUFFER_NAMES]
    ema = _ema_unet_state(model)
    assert all(torch.equal(rebuilt.model.diffusion_model.state_dict()[k], v) for k, v in ema.items())
    own_ae = model.first_stage_model.state_dict()
    assert all(torch.equal(v, own_ae[k]) for k, v in rebuilt.first_stage_model.state_dict().items()
               if not k.startswith("loss."))
    assert torch.allclose(rebuilt.betas, model.betas)

    # fine-tuning entry point: model.params.ckpt_path=<diffusers folder> converts on the fly
    with_ckpt = OmegaConf.merge(config, {"params": {"ckpt_path": folder}})
    restored = instantiate_from_config(with_ckpt).eval()
    assert torch.equal(restored.model.diffusion_model.input_blocks[0][0].weight, ema["input_blocks.0.0.weight"])
    with torch.no_grad():
        assert torch.equal(restored.get_learned_conditioning(PROMPTS), model.get_learned_conditioning(PROMPTS))


def test_bert_model_exports_parts_with_a_readme(tiny, tmp_path):
    cond = {"target": "ldm.modules.encoders.modules.BERTEmbedder",
            "params": {"n_embed": 24, "n_layer": 1, "max_seq_len": 8}}
    unet = dict(tiny.TEXT_UNET, context_dim=24)
    config = tiny.ldm_config(cond, unet=unet, use_ema=False, cond_stage_trainable=True)
    model = tiny.build(config)
    warnings = export_diffusers(model, {"model": config}, str(tmp_path / "bert"))
    assert any("BERTEmbedder" in w for w in warnings) and any("no EMA" in w for w in warnings)
    assert sorted(os.listdir(tmp_path / "bert")) == ["README.md", "scheduler", "unet", "vae"]
    assert "BERTEmbedder" in (tmp_path / "bert" / "README.md").read_text()
    diffusers.UNet2DConditionModel.from_pretrained(str(tmp_path / "bert"), subfolder="unet")
    with pytest.raises(KeyMapError, match="no text_encoder"):
        load_diffusers(str(tmp_path / "bert"))
    # the original config + ckpt_path=<folder> restores UNet and autoencoder (the BERT stays as configured)
    fresh = instantiate_from_config(config)
    report = restore_weights(fresh, str(tmp_path / "bert"))
    assert all(k.startswith("cond_stage_model.") for k in report.missing)
    assert torch.equal(fresh.model.diffusion_model.out[2].weight, model.model.diffusion_model.out[2].weight)


def test_class_conditional_adm_pixel_and_inpainting_exports(tiny, tmp_path):
    # pixel-space unconditional DDPM with an ADM UNet: a DDPMPipeline that runs
    unet = dict(image_size=8, in_channels=3, out_channels=3, model_channels=16, num_res_blocks=1,
                attention_resolutions=[2], channel_mult=[1, 2], num_head_channels=8, norm_num_groups=8)
    pixel = {"target": "ldm.models.diffusion.ddpm.DDPM",
             "params": {"unet_config": {"target": tiny.UNET, "params": unet},
                        "image_size": 8, "channels": 3, "timesteps": 50, "beta_schedule": "cosine"}}
    model = tiny.build(pixel)
    assert export_diffusers(model, {"model": pixel}, str(tmp_path / "pixel")) == []
    pipe = diffusers.DDPMPipeline.from_pretrained(str(tmp_path / "pixel"), local_files_only=True)
    assert pipe(batch_size=1, num_inference_steps=2, output_type="np").images.shape == (1, 8, 8, 3)
    config, state = load_diffusers(str(tmp_path / "pixel"))
    assert config.target.endswith("DDPM") and config.params.beta_schedule == "cosine"
    rebuilt = instantiate_from_config(config)
    rebuilt.load_state_dict(state, strict=False)
    with model.ema_scope():
        assert torch.equal(rebuilt.model.diffusion_model.out[2].weight, model.model.diffusion_model.out[2].weight)

    # class-conditional (ClassEmbedder cross-attention) and 9-channel inpainting: parts + README, clear import errors
    classes = {"target": "ldm.modules.encoders.modules.ClassEmbedder",
               "params": {"embed_dim": 32, "n_classes": 10, "key": "class_label"}}
    for name, cfg in (("cin", tiny.ldm_config(classes, cond_key="class_label")),
                      ("inpaint", tiny.ldm_config("__is_first_stage__", unet=dict(tiny.TEXT_UNET, in_channels=9,
                                                                                   use_spatial_transformer=False,
                                                                                   context_dim=None),
                                                  conditioning_key="concat", cond_key="masked_image"))):
        warnings = export_diffusers(tiny.build(cfg), {"model": cfg}, str(tmp_path / name))
        assert warnings and os.path.isfile(tmp_path / name / "README.md")
        assert not os.path.exists(tmp_path / name / "model_index.json")
        with pytest.raises(KeyMapError):
            load_diffusers(str(tmp_path / name))


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_autoencoder_export_at_folder_root(tiny, tmp_path, kind):
    config = tiny.first_stage_config(kind)
    ae = tiny.build(config)
    assert export_diffusers(ae, {"model": config}, str(tmp_path / "ae")) == [
        f"{type(ae).__name__} has no EMA weights: exported its training weights"]
    cls = getattr(diffusers, "AutoencoderKL" if kind == "kl" else "VQModel")
    theirs = cls.from_pretrained(str(tmp_path / "ae")).eval()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x).mean if kind == "kl" else ae.encode_to_prequant(x)
        ref = ae.decode(z if kind == "kl" else ae.quantize(z)[0])
        assert (ref - theirs.decode(z).sample).abs().max() <= 1e-5
    # our autoencoder with ckpt_path=<the folder>, and the folder as a whole
    loaded = instantiate_from_config({"target": config["target"],
                                      "params": dict(config["params"], ckpt_path=str(tmp_path / "ae"))})
    own = {k: v for k, v in ae.state_dict().items() if not k.startswith("loss.")}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in own.items())
    back, state = load_diffusers(str(tmp_path / "ae"))
    assert back.target == config["target"] and state.keys() == own.keys()


def test_ckpt_path_accepts_safetensors_files_and_weights_inside_a_folder(txt2img, txt2img_export, tmp_path):
    model, config = txt2img
    folder, _ = txt2img_export
    # a CompVis-named single .safetensors file (e.g. an SD checkpoint converted to safetensors) loads as it is
    path = str(tmp_path / "model.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    fresh = instantiate_from_config(config["model"])
    report = restore_weights(fresh, path)
    assert report.required_missing == [] and report.unexpected == []
    # a diffusers weights file is read with the folder's config.json
    weights = os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors")
    report = restore_weights(instantiate_from_config(config["model"]), weights)
    assert report.loaded == len(model.model.diffusion_model.state_dict())


def test_text_encoder_and_tokenizer_in_separate_folders(txt2img, txt2img_export, tmp_path, monkeypatch):
    """Diffusers folders from elsewhere keep the tokenizer only in tokenizer/: a symlink view joins the two."""
    import shutil

    model, _ = txt2img
    folder = str(tmp_path / "foreign")
    shutil.copytree(txt2img_export[0], folder)
    for name in os.listdir(os.path.join(folder, "text_encoder")):
        if name not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(folder, "text_encoder", name))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config, state = load_diffusers(folder)
    version = config.params.cond_stage_config.params.version
    assert version.startswith(str(tmp_path / "cache")) and sorted(os.listdir(folder + "/text_encoder")) == [
        "config.json", "model.safetensors"]
    rebuilt = instantiate_from_config(config).eval()
    rebuilt.load_state_dict(state, strict=False)
    with torch.no_grad():
        assert torch.equal(rebuilt.get_learned_conditioning(PROMPTS), model.get_learned_conditioning(PROMPTS))


def test_hf_text_encoder_pipeline_uses_the_attention_mask(tiny, tmp_path):
    """FrozenHFTextEncoder (MiniLM BERT, padding masked): the pipeline's features equal ours."""
    cond = {"target": "ldm.modules.encoders.modules.FrozenHFTextEncoder", "params": {"max_length": 12}}
    config = tiny.ldm_config(cond, unet=dict(tiny.TEXT_UNET, context_dim=384), use_ema=False)
    model = tiny.build(config)
    export_diffusers(model, {"model": config}, str(tmp_path / "minilm"))
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(tmp_path / "minilm"), local_files_only=True)
    assert pipe.text_encoder.config.use_attention_mask is True and pipe.tokenizer.model_max_length == 12
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(["a small red circle", "blue"], "cpu", 1, False)
        assert (embeds - model.get_learned_conditioning(["a small red circle", "blue"])).abs().max() <= 1e-5
    config_back, _ = load_diffusers(str(tmp_path / "minilm"))
    assert config_back.params.cond_stage_config.target.endswith("FrozenHFTextEncoder")
    assert config_back.params.cond_stage_config.params.use_attention_mask is True
