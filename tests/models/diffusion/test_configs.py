"""Original CompVis config model sections instantiate unchanged (tiny sizes), and so do our stage-2 configs."""
import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ldm.util import ConfigError, instantiate_from_config, load_configs

import diffusion_configs as dc

# Key structure of CompVis latent-diffusion's configs/latent-diffusion/txt2img-1p4B-eval.yaml (model section), with
# the widths shrunk (model_channels 320 -> 32, context_dim / n_embed 1280 -> 32, n_layer 32 -> 1, ch 128 -> 32).
TXT2IMG_1P4B = """
base_learning_rate: 5.0e-05
target: ldm.models.diffusion.ddpm.LatentDiffusion
params:
  linear_start: 0.00085
  linear_end: 0.012
  num_timesteps_cond: 1
  log_every_t: 200
  timesteps: 1000
  first_stage_key: image
  cond_stage_key: caption
  image_size: 8
  channels: 4
  cond_stage_trainable: true
  conditioning_key: crossattn
  monitor: val/loss_simple_ema
  scale_factor: 0.18215
  use_ema: False
  unet_config:
    target: ldm.modules.diffusionmodules.openaimodel.UNetModel
    params:
      image_size: 8
      in_channels: 4
      out_channels: 4
      model_channels: 32
      attention_resolutions: [4, 2, 1]
      num_res_blocks: 1
      channel_mult: [1, 2, 2, 2]
      num_heads: 8
      use_spatial_transformer: True
      transformer_depth: 1
      context_dim: 32
      use_checkpoint: True
      legacy: False
  first_stage_config:
    target: ldm.models.autoencoder.AutoencoderKL
    params:
      embed_dim: 4
      monitor: val/rec_loss
      ddconfig:
        double_z: true
        z_channels: 4
        resolution: 256
        in_channels: 3
        out_ch: 3
        ch: 32
        ch_mult: [1, 2]
        num_res_blocks: 1
        attn_resolutions: []
        dropout: 0.0
      lossconfig:
        target: torch.nn.Identity
  cond_stage_config:
    target: ldm.modules.encoders.modules.BERTEmbedder
    params:
      n_embed: 32
      n_layer: 1
"""

# configs/latent-diffusion/cin-ldm-vq-f8.yaml (model section), shrunk; ckpt_path set by the test.
CIN_LDM_VQ_F8 = """
base_learning_rate: 1.0e-06
target: ldm.models.diffusion.ddpm.LatentDiffusion
params:
  linear_start: 0.0015
  linear_end: 0.0195
  num_timesteps_cond: 1
  log_every_t: 200
  timesteps: 1000
  first_stage_key: image
  cond_stage_key: class_label
  image_size: 8
  channels: 4
  cond_stage_trainable: true
  conditioning_key: crossattn
  monitor: val/loss_simple_ema
  unet_config:
    target: ldm.modules.diffusionmodules.openaimodel.UNetModel
    params:
      image_size: 8
      in_channels: 4
      out_channels: 4
      model_channels: 32
      attention_resolutions: [4, 2, 1]
      num_res_blocks: 1
      channel_mult: [1, 2, 4]
      num_head_channels: 32
      use_spatial_transformer: true
      transformer_depth: 1
      context_dim: 32
  first_stage_config:
    target: ldm.models.autoencoder.VQModelInterface
    params:
      embed_dim: 4
      n_embed: 16
      ckpt_path: models/first_stage_models/vq-f8/model.ckpt
      ddconfig:
        double_z: false
        z_channels: 4
        resolution: 256
        in_channels: 3
        out_ch: 3
        ch: 32
        ch_mult: [1, 2]
        num_res_blocks: 1
        attn_resolutions: [8]
        dropout: 0.0
      lossconfig:
        target: torch.nn.Identity
  cond_stage_config:
    target: ldm.modules.encoders.modules.ClassEmbedder
    params:
      embed_dim: 32
      key: class_label
"""

# configs/latent-diffusion/ffhq-ldm-vq-4.yaml / celebahq-ldm-vq-4.yaml (model section): unconditional, no
# conditioning_key, attention blocks without the spatial transformer; shrunk.
FFHQ_LDM_VQ_4 = """
base_learning_rate: 2.0e-06
target: ldm.models.diffusion.ddpm.LatentDiffusion
params:
  linear_start: 0.0015
  linear_end: 0.0195
  num_timesteps_cond: 1
  log_every_t: 200
  timesteps: 1000
  first_stage_key: image
  image_size: 8
  channels: 3
  monitor: val/loss_simple_ema
  unet_config:
    target: ldm.modules.diffusionmodules.openaimodel.UNetModel
    params:
      image_size: 8
      in_channels: 3
      out_channels: 3
      model_channels: 32
      attention_resolutions: [8, 4, 2]
      num_res_blocks: 1
      channel_mult: [1, 2, 3, 4]
      num_head_channels: 32
  first_stage_config:
    target: ldm.models.autoencoder.VQModelInterface
    params:
      embed_dim: 3
      n_embed: 16
      ddconfig:
        double_z: false
        z_channels: 3
        resolution: 256
        in_channels: 3
        out_ch: 3
        ch: 32
        ch_mult: [1, 2]
        num_res_blocks: 1
        attn_resolutions: []
        dropout: 0.0
      lossconfig:
        target: torch.nn.Identity
  cond_stage_config: __is_unconditional__
"""


def model_section(text):
    return OmegaConf.create({"model": OmegaConf.create(text)}).model


def one_loss(model, size=16, n=2):
    model.train()
    loss, logs = model.shared_step(dc.batch(n=n, size=size))
    loss.backward()
    assert torch.isfinite(loss) and "train/loss_simple" in logs
    return logs


def test_txt2img_1p4b_model_section():
    model = instantiate_from_config(model_section(TXT2IMG_1P4B))
    assert model.model.conditioning_key == "crossattn" and not model.use_ema
    assert float(model.scale_factor) == pytest.approx(0.18215)
    assert any(k.startswith("cond_stage_model.transformer.") for k in model.state_dict())
    one_loss(model)
    assert model.cond_stage_model.transformer.token_emb.weight.grad is not None  # cond_stage_trainable


def test_cin_ldm_vq_f8_model_section(tmp_path):
    section = model_section(CIN_LDM_VQ_F8)
    first = copy.deepcopy(OmegaConf.to_container(section.params.first_stage_config))
    del first["params"]["ckpt_path"]
    vq = instantiate_from_config(first)
    path = tmp_path / "vq.ckpt"
    torch.save({"state_dict": vq.state_dict()}, path)
    with pytest.raises(ConfigError, match="vq-f8/model.ckpt"):
        instantiate_from_config(section)  # the original's relative path does not exist here
    section.params.first_stage_config.params.ckpt_path = str(path)
    model = instantiate_from_config(section)
    assert torch.equal(model.first_stage_model.quantize.embedding.weight, vq.quantize.embedding.weight)
    assert model.cond_stage_model.n_classes == 1000 and model.cond_stage_key == "class_label"
    b = dc.batch(n=2)
    z, c = model.get_input(b, "image")
    assert z.shape == (2, 4, 8, 8) and c is b or isinstance(c, dict)  # trainable: the raw batch for class_label
    one_loss(model)


def test_ffhq_ldm_vq_4_model_section():
    model = instantiate_from_config(model_section(FFHQ_LDM_VQ_4))
    assert model.model.conditioning_key is None and model.cond_stage_model is None
    assert not any(k.startswith("cond_stage_model.") for k in model.state_dict())
    one_loss(model)
    assert model.sample(batch_size=1, steps=2).shape == (1, 3, 8, 8)


@pytest.mark.parametrize("name", ["ldm_txt2img", "ldm_cin", "ldm_uncond", "ddpm_pixel"])
def test_our_configs_with_the_cpu_overlay(name, tmp_path, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    ckpt = tmp_path / "ae.ckpt"
    ae = dc.cpu_stage1_checkpoint(ckpt)
    files = [f"configs/{name}.yaml", "configs/overlays/cpu.yaml"]
    shrink = ["model.params.unet_config.params.model_channels=32", "model.context_dim=32"]
    if name == "ddpm_pixel":
        shrink += ["model.params.unet_config.params.channel_mult=[1,2]",
                   "model.params.unet_config.params.attention_resolutions=[2]"]
    else:
        with pytest.raises(ConfigError, match="first_stage_config.params.ckpt_path"):
            instantiate_from_config(load_configs(files).model)  # default path: not there
        shrink.append(f"model.params.first_stage_config.params.ckpt_path={ckpt}")
    cfg = load_configs(files, shrink)
    model = instantiate_from_config(cfg.model)
    assert model.scale_by_std and float(model.scale_factor) == 1.0
    if name != "ddpm_pixel":
        assert torch.equal(model.first_stage_model.encoder.conv_in.weight, ae.encoder.conv_in.weight)
        assert model.sample_shape() == (4, 8, 8)
    expected_key = {"ldm_txt2img": "crossattn", "ldm_cin": "crossattn", "ldm_uncond": None, "ddpm_pixel": "crossattn"}
    assert model.model.conditioning_key == expected_key[name]
    data = instantiate_from_config(cfg.data)
    data.setup("fit")
    batch = next(iter(DataLoader(data.datasets["train"], batch_size=2)))
    model.train()
    loss, _ = model.shared_step(batch)
    assert torch.isfinite(loss)
    assert cfg.lightning.trainer.max_steps <= 2000 and cfg.data.params.batch_size == 16


def test_full_configs_keep_the_paper_settings(repo_root):
    cfg = load_configs([f"{repo_root}/configs/ldm_txt2img.yaml"])
    p = OmegaConf.to_container(cfg.model.params, resolve=True)
    assert (p["linear_start"], p["linear_end"], p["timesteps"], p["image_size"], p["channels"]) == \
        (0.00085, 0.012, 1000, 32, 4)
    assert p["scale_factor"] == 0.18215 and p["conditioning_key"] == "crossattn" and p["cond_stage_trainable"]
    unet = p["unet_config"]["params"]
    assert (unet["model_channels"], unet["channel_mult"], unet["attention_resolutions"], unet["num_heads"],
            unet["context_dim"]) == (320, [1, 2, 4, 4], [4, 2, 1], 8, 1280)
    assert p["cond_stage_config"]["params"] == {"n_embed": 1280, "n_layer": 32, "max_seq_len": 77,
                                                 "ucg_rate": 0.1}  # 77: the original default, explicit
    assert p["first_stage_config"]["params"]["lossconfig"]["target"] == "torch.nn.Identity"
    assert p["scheduler_config"]["params"]["warm_up_steps"] == [10000]
    cin = load_configs([f"{repo_root}/configs/ldm_cin.yaml"]).model.params.cond_stage_config.params
    assert (cin.n_classes, cin.key, cin.add_null_class) == (120, "class_label", True)
