"""Loading a main.py run for inference: `load_inference_model` (also behind `ldm.inference.loading.load_model`)."""

import torch
from omegaconf import OmegaConf

from ldm.models.from_run import load_inference_model, load_model_from_run
from ldm.util import instantiate_from_config, load_configs


def tiny_autoencoder_run(tmp_path, repo_root):
    """(run folder, its config, the saved model) for the CPU-sized KL autoencoder, as main.py leaves a run."""
    cfg = load_configs([f"{repo_root}/configs/autoencoder_kl_f8.yaml", f"{repo_root}/configs/overlays/cpu.yaml"])
    run = tmp_path / "2026-01-01T00-00-00_tiny"
    (run / "configs").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    OmegaConf.save(OmegaConf.masked_copy(cfg, ["model"]), run / "configs" / "2026-01-01T00-00-00-project.yaml")
    model = instantiate_from_config(cfg.model)
    torch.save({"state_dict": model.state_dict()}, run / "checkpoints" / "last.ckpt")
    return run, cfg, model


def test_load_inference_model_drops_losses_and_honours_eval_mode(tmp_path, repo_root):
    run, cfg, reference = tiny_autoencoder_run(tmp_path, repo_root)
    model = load_inference_model(cfg, str(run / "checkpoints" / "last.ckpt"), eval_mode=False)
    assert isinstance(model.loss, torch.nn.Identity) and model.training
    key = "decoder.conv_out.weight"
    assert torch.equal(model.state_dict()[key], reference.state_dict()[key])


def test_load_model_from_run_takes_another_checkpoint(tmp_path, repo_root):
    run, _, reference = tiny_autoencoder_run(tmp_path, repo_root)
    key = "decoder.conv_out.weight"
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    state[key] = state[key] + 1
    other = run / "checkpoints" / "epoch=1.ckpt"
    torch.save({"state_dict": state}, other)
    model, config = load_model_from_run(str(run), checkpoint=str(other))
    assert not model.training and config.model.target.endswith("AutoencoderKL")
    assert torch.equal(model.state_dict()[key], state[key])


def compvis_folder(tmp_path, repo_root):
    """The original layout of a released model: config.yaml + model.ckpt (what `export.py --format compvis` writes)."""
    cfg = load_configs([f"{repo_root}/configs/autoencoder_kl_f8.yaml", f"{repo_root}/configs/overlays/cpu.yaml"])
    folder = tmp_path / "kl-f8"
    folder.mkdir()
    OmegaConf.save(OmegaConf.masked_copy(cfg, ["model"]), folder / "config.yaml")
    model = instantiate_from_config(cfg.model)
    torch.save({"state_dict": model.state_dict(), "global_step": 0}, folder / "model.ckpt")
    return folder, model


def test_load_model_from_original_layout_folder(tmp_path, repo_root):
    from ldm.run_folder import run_logdir

    folder, reference = compvis_folder(tmp_path, repo_root)
    key = "decoder.conv_out.weight"
    for path in (folder, folder / "model.ckpt"):
        model, config = load_model_from_run(str(path))
        assert isinstance(model.loss, torch.nn.Identity) and config.model.target.endswith("AutoencoderKL")
        assert torch.equal(model.state_dict()[key], reference.state_dict()[key])
    assert run_logdir(str(folder / "model.ckpt")) == str(folder)
    from ldm.inference.loading import resolve_source  # what our scripts' -r goes through

    source = resolve_source(resume=str(folder))
    assert source.logdir == str(folder) and source.ckpt == str(folder / "model.ckpt")
    assert run_logdir(str(tmp_path / "run" / "checkpoints" / "last.ckpt")) == str(tmp_path / "run")


def test_original_layout_is_for_inference_only(tmp_path, repo_root):
    import pytest

    from ldm.errors import UsageError
    from ldm.run_folder import resolve_resume

    folder, _ = compvis_folder(tmp_path, repo_root)
    with pytest.raises(UsageError, match="no training state to resume.*--base .*config.yaml"):
        resolve_resume(str(folder))
    info = resolve_resume(str(folder), inference=True)
    assert info.layout == "compvis" and info.ckpt == str(folder / "model.ckpt")
    (folder / "model.ckpt").unlink()
    with pytest.raises(UsageError, match=r"nor config.yaml \+ model.ckpt"):
        resolve_resume(str(folder), inference=True)
