"""scripts/export.py on run folders made from the real configs + the CPU overlay (saved unresolved, as main.py saves
them): a class-conditional LDM (8 norm groups, min-SNR: the overlay's options) and a KL autoencoder."""
import hashlib
import os

import pytest
import torch
from omegaconf import OmegaConf

from ldm.inference import entry

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_CIN = ["model.params.unet_config.params.model_channels=32", "model.context_dim=32"]
SCALE = 0.8125  # a learnt scale_factor (scale_by_std), which lives only in the checkpoint


def make_run(root, name, configs, overrides):
    """A run folder (configs/*-project.yaml unresolved, checkpoints/last.ckpt) of a randomised model whose EMA
    differs from its weights; returns the folder."""
    from ldm.models.from_run import inference_model_config
    from ldm.util import instantiate_from_config, load_configs

    cfg = load_configs([os.path.join(ROOT, "configs", c) for c in configs], overrides)
    run = root / name
    (run / "configs").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    OmegaConf.save(cfg, run / "configs" / "2026-01-01T00-00-00-project.yaml")
    torch.manual_seed(0)
    stage2 = "first_stage_config" in cfg.model.params
    model = instantiate_from_config(inference_model_config(cfg.model) if stage2 else cfg.model)
    state = model.state_dict()
    g = torch.Generator().manual_seed(1)
    for key, value in state.items():
        if value.is_floating_point() and value.dim() > 0 and (key.split(".")[0] in {
                "model", "model_ema", "first_stage_model", "cond_stage_model", "encoder", "decoder", "loss"}):
            value.add_(0.02 * torch.randn(value.shape, generator=g))
    if stage2:
        state["scale_factor"].fill_(SCALE)
    torch.save({"state_dict": state, "global_step": 7}, run / "checkpoints" / "last.ckpt")
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_runs")
    return {"cin": make_run(root, "cin", ["ldm_cin.yaml", "overlays/cpu.yaml"], TINY_CIN),
            "ae": make_run(root, "ae", ["autoencoder_kl_f8.yaml", "overlays/cpu.yaml"],
                           ["model.params.ddconfig.norm_num_groups=32"])}


@pytest.fixture(scope="module")
def export(load_script):
    return load_script("export").main


def run_ok(main, capsys, *argv):
    assert entry.run(main, list(map(str, argv))) == 0, capsys.readouterr().err
    return capsys.readouterr().err


def fresh_model(yaml_path, state):
    """The model built by this project from an exported YAML, with `state` loaded strictly."""
    from ldm.util import instantiate_from_config

    model = instantiate_from_config(OmegaConf.load(yaml_path).model).eval()
    model.load_state_dict(state, strict=True)
    return model


def cin_outputs(model):
    """EMA-scope UNet output and decoded latents for fixed inputs."""
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([5, 900])
    with torch.no_grad(), model.ema_scope():
        c = model.get_learned_conditioning({"class_label": torch.tensor([3, 120])})
        return model.apply_model(x, t, c), model.decode_first_stage(x)


def test_safetensors_export_of_a_class_run(runs, export, capsys, tmp_path, one_thread):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ldm.models.from_run import load_model_from_run

    out = tmp_path / "cin.safetensors"
    err = run_ok(export, capsys, "-r", runs["cin"], "--format", "safetensors", "--out", out)
    assert "NOT ORIGINAL-COMPATIBLE: model.params.unet_config.params.norm_num_groups=8" in err
    assert "ddconfig.norm_num_groups=8" in err and "min_snr_gamma=5.0 dropped" in err
    text = (tmp_path / "cin.yaml").read_text()
    assert "${" not in text and text.startswith("# WARNING: NOT COMPATIBLE")
    cfg = OmegaConf.create(text)
    assert cfg.model.params.scale_factor == SCALE and cfg.model.params.scale_by_std is False
    assert cfg.ldm_export.original_compatible is False and set(cfg) == {"model", "ldm_export"}
    ckpt = torch.load(runs["cin"] / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["ldm_source_sha256"] == hashlib.sha256(
        (runs["cin"] / "checkpoints" / "last.ckpt").read_bytes()).hexdigest()
    assert meta["ldm_global_step"] == "7" and meta["ldm_ema"] == "true" and meta["ldm_config"] == text
    state = load_file(str(out))
    assert not any(k.startswith("model_ema.") for k in state)
    assert torch.equal(state["model.diffusion_model.out.2.bias"], ckpt["model_ema.diffusion_modelout2bias"])
    original, _ = load_model_from_run(str(runs["cin"]))
    for got, expected in zip(cin_outputs(fresh_model(tmp_path / "cin.yaml", state)), cin_outputs(original)):
        assert torch.equal(got, expected)


def test_compvis_refuses_an_incompatible_model_unless_allowed(runs, export, capsys, tmp_path, one_thread):
    from ldm.models.from_run import load_model_from_run

    out = tmp_path / "cin_compvis"
    assert entry.run(export, ["-r", str(runs["cin"]), "--format", "compvis", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: --format compvis" in err and "norm_num_groups=8" in err and "--allow-incompatible" in err
    assert not out.exists()
    run_ok(export, capsys, "-r", runs["cin"], "--format", "compvis", "--out", out, "--allow-incompatible",
           "--skip-check")
    assert sorted(os.listdir(out)) == ["config.yaml", "model.ckpt"]
    saved = torch.load(out / "model.ckpt", weights_only=True)
    assert set(saved) == {"state_dict", "global_step"} and saved["global_step"] == 7
    assert OmegaConf.load(out / "config.yaml").ldm_export.original_compatible is False
    exported, _ = load_model_from_run(str(out))  # -r <folder with config.yaml + model.ckpt>
    original, _ = load_model_from_run(str(runs["cin"]))
    for got, expected in zip(cin_outputs(exported), cin_outputs(original)):
        assert torch.equal(got, expected)


def test_fp16_and_raw_weights(runs, export, capsys, tmp_path, one_thread):
    from safetensors.torch import load_file

    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    run_ok(export, capsys, "-r", runs["cin"], "--format", "safetensors", "--out", full, "--skip-check")
    run_ok(export, capsys, "-r", runs["cin"], "--format", "safetensors", "--out", half, "--dtype", "fp16",
           "--no-ema", "--skip-check")
    assert 0.45 < half.stat().st_size / full.stat().st_size < 0.55
    state = load_file(str(half))
    assert {v.dtype for v in state.values()} == {torch.float16}
    ckpt = torch.load(runs["cin"] / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    key = "model.diffusion_model.out.2.bias"
    assert torch.equal(state[key], ckpt[key].half()) and load_file(str(half)).keys() == load_file(str(full)).keys()
    assert OmegaConf.load(tmp_path / "half.yaml").model.params.scale_factor == SCALE


def test_autoencoder_run(runs, export, capsys, tmp_path, one_thread):
    """A compatible autoencoder: no warnings, no loss.* weights, its own config (no first_stage_config), the
    compvis folder needs no flag, and the reloaded model decodes exactly as the run's."""
    from safetensors.torch import load_file

    from ldm.models.from_run import load_model_from_run

    err = run_ok(export, capsys, "-r", runs["ae"], "--format", "safetensors", "--out", tmp_path / "ae.safetensors")
    assert "NOT ORIGINAL-COMPATIBLE" not in err
    state = load_file(str(tmp_path / "ae.safetensors"))
    assert state and not any(k.startswith("loss.") for k in state)
    cfg = OmegaConf.load(tmp_path / "ae.yaml")
    assert cfg.model.target == "ldm.models.autoencoder.AutoencoderKL" and "ldm_export" not in cfg
    assert cfg.model.params.lossconfig.target == "torch.nn.Identity" and "scheduler_config" not in cfg.model.params
    run_ok(export, capsys, "-r", runs["ae"], "--format", "compvis", "--out", tmp_path / "ae_cv", "--skip-check")
    original, _ = load_model_from_run(str(runs["ae"]))
    exported, _ = load_model_from_run(str(tmp_path / "ae_cv"))
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        expected = original.decode(z)
        assert torch.equal(fresh_model(tmp_path / "ae.yaml", state).decode(z), expected)
        assert torch.equal(exported.decode(z), expected)


def test_bad_input_is_refused_before_writing(runs, export, assert_refused, tmp_path):
    existing = tmp_path / "there.safetensors"
    existing.write_bytes(b"x")
    assert_refused(export, [
        (["-r", str(runs["cin"]), "--format", "safetensors", "--out", str(tmp_path / "m.ckpt")], r"\*\.safetensors"),
        (["-r", str(runs["cin"]), "--format", "safetensors", "--out", str(existing)], "already exists.*--force"),
        (["-r", str(runs["ae"]), "--format", "compvis", "--out", str(tmp_path / "a"), "--ema"], "no EMA weights"),
        (["-r", str(runs["cin"]), "--format", "compvis", "--out", str(tmp_path / "b"), "--precision", "fp16"],
         "--dtype"),
        (["-r", str(tmp_path / "missing"), "--format", "compvis", "--out", str(tmp_path / "c")], "cannot find"),
        (["--config", str(tmp_path / "none.yaml"), "--format", "compvis", "--out", str(tmp_path / "d")], "--ckpt"),
    ])
    assert existing.read_bytes() == b"x"
    assert sorted(os.listdir(tmp_path)) == ["there.safetensors"]
