import importlib.util
import json
import os

import torch
from omegaconf import OmegaConf
from PIL import Image

from ldm.util import instantiate_from_config, load_configs


def load_script(repo_root):
    spec = importlib.util.spec_from_file_location("reconstruct", os.path.join(repo_root, "scripts", "reconstruct.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_run(tmp_path, repo_root, source="photos"):
    """A run folder as main.py leaves it: configs/<now>-project.yaml and checkpoints/last.ckpt."""
    cfg = load_configs([f"{repo_root}/configs/autoencoder_kl_f8.yaml", f"{repo_root}/configs/overlays/cpu.yaml"])
    cfg.data.params.validation.params.size = 32
    cfg.data.params.validation.params.source = source
    run = tmp_path / "2026-01-01T00-00-00_tiny"
    (run / "configs").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    OmegaConf.save(OmegaConf.masked_copy(cfg, ["model", "data"]), run / "configs" / "2026-01-01T00-00-00-project.yaml")
    model = instantiate_from_config(cfg.model)
    torch.save({"state_dict": model.state_dict(), "global_step": 0}, run / "checkpoints" / "last.ckpt")
    return run, model


def test_reconstruct_writes_grid_and_metrics(tmp_path, repo_root, capsys):
    run, model = make_run(tmp_path, repo_root)
    metrics = load_script(repo_root).main(["-r", str(run), "--n", "3"])
    assert metrics["images"] == 3 and metrics["psnr_db"] > 0
    grid = Image.open(run / "reconstructions.png")
    assert grid.size == (3 * 32, 2 * 32)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["grid"].endswith("reconstructions.png")
    assert "shapes_accuracy" not in metrics


def test_reconstruct_scores_shapes_with_the_checker(tmp_path, repo_root):
    run, _ = make_run(tmp_path, repo_root, source="shapes")
    metrics = load_script(repo_root).main(["-r", str(run), "--n", "2"])
    acc = metrics["shapes_accuracy"]
    assert set(acc) >= {"color", "shape", "size", "position", "all", "found"}
    assert all(0.0 <= v <= 1.0 for v in acc.values())


def test_run_loading_drops_training_losses(tmp_path, repo_root):
    from ldm.models.from_run import load_model_from_run

    run, reference = make_run(tmp_path, repo_root)
    model, _ = load_model_from_run(str(run))
    assert isinstance(model.loss, torch.nn.Identity)  # no LPIPS / discriminator needed for inference
    assert not model.training
    key = "decoder.conv_out.weight"
    assert torch.equal(model.state_dict()[key], reference.state_dict()[key])
