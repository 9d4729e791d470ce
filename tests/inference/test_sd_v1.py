"""configs/sd_v1_inference.yaml: the SD v1 key layout at full width (meta device), SD-style checkpoints of reduced
width (.ckpt and .safetensors, with model_ema.* and the CLIP text weights) and scripts/txt2img.py on them, offline."""
import importlib.util
import os

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import save_file

from ldm.checkpoint import atomic_save
from ldm.inference.model_info import describe_model
from ldm.modules.attention import CrossAttention
from ldm.modules.encoders.frozen import TextModelHolder
from ldm.modules.encoders.pretrained import CLIP_VOCAB_SIZE
from ldm.util import instantiate_from_config, load_configs

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

from clip_helpers import NOT_CACHED, TINY_WIDTH, save_tiny_clip  # noqa: E402  (tests/ is on the path)

CONFIG = os.path.join(ROOT, "configs", "sd_v1_inference.yaml")
SD_KEYS = os.path.join(HERE, "sd_v1_keys.txt")  # the SD v1 layout, see its header
# Parameters of SD v1's networks (the original's "DiffusionWrapper has 859.52 M params." etc.).
SD_V1_PARAMS = {"model.diffusion_model.": 859_520_964, "first_stage_model.": 83_653_863,
                "cond_stage_model.": 123_060_480}
NETWORKS = tuple(SD_V1_PARAMS)


def sd_v1_layout():
    """{key: shape} of an SD v1 checkpoint (model_ema.* and position_ids aside) from sd_v1_keys.txt."""
    with open(SD_KEYS, encoding="utf-8") as f:
        rows = [line.split() for line in f if line.strip() and not line.startswith("#")]
    return {key: tuple(int(n) for n in shape.split(",")) for key, shape in rows}


def reduced(clip_folder, vocab_size):
    """Config overrides for a reduced-width SD v1: UNet, first stage and text width 32; the tiny CLIP folder."""
    return {"model": {"context_dim": TINY_WIDTH, "first_stage_ddconfig": {"ch": 32}, "params": {
        "unet_config": {"params": {"model_channels": 32}},
        "cond_stage_config": {"params": {"version": str(clip_folder), "expected_vocab_size": vocab_size}}}}}


def test_config_describes_sd_v1():
    info = describe_model(load_configs([CONFIG]))
    assert (info.conditioning, info.cond_key, info.factor, info.size_multiple) == ("text", "txt", 8, 64)
    assert (info.image_size, info.latent_channels, info.num_timesteps, info.use_ema) == ((512, 512), 4, 1000, False)


def test_full_width_layout_is_sd_v1():
    """Every key and shape of an SD v1 checkpoint's three networks, without allocating their 1.07 B parameters."""
    from transformers import CLIPTextConfig, CLIPTextModel

    params = OmegaConf.load(CONFIG).model.params
    vit_l14_text = CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, hidden_size=768, intermediate_size=3072,
                                  num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77)
    with torch.device("meta"):
        parts = {"model.diffusion_model.": instantiate_from_config(params.unet_config),
                 "first_stage_model.": instantiate_from_config(params.first_stage_config),
                 "cond_stage_model.transformer.": TextModelHolder(CLIPTextModel(vit_l14_text))}
    ours = {prefix + k: tuple(v.shape) for prefix, module in parts.items() for k, v in module.state_dict().items()}
    expected = {k: s for k, s in sd_v1_layout().items() if k.startswith(NETWORKS)}
    assert sorted(set(expected) - set(ours)) == [] and sorted(set(ours) - set(expected)) == []
    assert {k: s for k, s in ours.items() if expected[k] != s} == {}
    for prefix, total in SD_V1_PARAMS.items():
        assert sum(torch.Size(s).numel() for k, s in ours.items() if k.startswith(prefix)) == total, prefix
    # Heads leave no trace in the shapes: SD v1 has 8 heads everywhere (num_heads: 8, no num_head_channels).
    heads = {(m.heads, m.dim_head) for m in parts["model.diffusion_model."].modules() if isinstance(m, CrossAttention)}
    assert heads == {(8, 40), (8, 80), (8, 160)}


@pytest.fixture(scope="module")
def sd_files(tmp_path_factory):
    """A random reduced-width SD v1 checkpoint in the original layout, as .ckpt and .safetensors, and its config."""
    root = tmp_path_factory.mktemp("sd_v1")
    vocab_size = save_tiny_clip(root / "clip")
    overrides = root / "reduced.yaml"
    OmegaConf.save(reduced(root / "clip", vocab_size), overrides)
    config = load_configs([CONFIG, str(overrides)])
    model = instantiate_from_config(config.model)
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) * 0.05 if k.startswith(NETWORKS) and v.is_floating_point() else v
             for k, v in model.state_dict().items() if k != "scale_factor"}  # SD files have no scale_factor
    # As in sd-v1-*-full-ema files: EMA copies under flattened names, the old persistent CLIP position_ids.
    ema = {"model_ema." + k[len("model."):].replace(".", ""): torch.zeros_like(v)
           for k, v in state.items() if k.startswith("model.diffusion_model.")}
    ema.update({"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(470000)})
    state.update(ema)
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    atomic_save({"state_dict": state, "global_step": 470000, "epoch": 6}, str(root / "sd.ckpt"))
    save_file(state, str(root / "sd.safetensors"))
    return {"root": root, "config": config, "overrides": str(overrides), "state": state, "n_ema": len(ema)}


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_sd_checkpoint_loads_with_no_missing_or_unexpected_keys(sd_files, suffix):
    model = instantiate_from_config(sd_files["config"].model)
    report = model.init_from_ckpt(str(sd_files["root"] / f"sd{suffix}"))
    assert report.unexpected == [] and report.required_missing == [] and report.missing == ["scale_factor"]
    assert len(report.ignored) == sd_files["n_ema"] and all(k.startswith("model_ema.") for k in report.ignored)
    assert model.scale_factor == pytest.approx(0.18215)  # SD files have no scale_factor: the config's value
    own, state = model.state_dict(), sd_files["state"]
    buffers = {k: tuple(v.shape) for k, v in own.items() if not k.startswith(NETWORKS) and k != "scale_factor"}
    assert buffers == {k: s for k, s in sd_v1_layout().items() if not k.startswith(NETWORKS)}  # the 12 schedule ones
    for key in ("model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
                "first_stage_model.decoder.conv_out.weight",
                "cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc1.weight"):  # CLIP from the file
        torch.testing.assert_close(own[key], state[key], rtol=0, atol=0)


def load_txt2img():
    spec = importlib.util.spec_from_file_location("txt2img_sd_v1", os.path.join(ROOT, "scripts", "txt2img.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sample_args(ckpt, outdir, *configs):
    return ["--config", CONFIG, *configs, "--ckpt", str(ckpt), "--prompt", "a cat", "--steps", "2", "--H", "64",
            "--W", "64", "--n_samples", "1", "--outdir", str(outdir)]


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_txt2img_samples_from_an_sd_checkpoint(sd_files, tmp_path, suffix):
    script = load_txt2img()  # scripts/txt2img.py as the command line runs it: `entry.run(main)` gives the exit status
    code = script.entry.run(script.main, sample_args(sd_files["root"] / f"sd{suffix}", tmp_path, sd_files["overrides"]))
    assert code == 0 and sorted(os.listdir(tmp_path / "samples")) == ["00000.png"]
    with Image.open(tmp_path / "samples" / "00000.png") as image:
        assert image.size == (64, 64)
        pixels = torch.tensor(list(image.convert("L").getdata()), dtype=torch.float)
    assert pixels.std() > 0  # the random decoder draws something, not a constant image


def test_txt2img_offline_uncached_hub_id_is_a_clear_error(sd_files, tmp_path, capsys):
    hub = tmp_path / "hub_id.yaml"
    OmegaConf.save({"model": {"params": {"cond_stage_config": {"params": {"version": NOT_CACHED}}}}}, hub)
    script = load_txt2img()
    code = script.entry.run(script.main, sample_args(sd_files["root"] / "sd.ckpt", tmp_path / "out",
                                                   sd_files["overrides"], str(hub)))
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: FrozenCLIPEmbedder")  # one line
    assert NOT_CACHED in errors[0] and "model.params.cond_stage_config.params.version=" in errors[0]
