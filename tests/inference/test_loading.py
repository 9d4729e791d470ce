import os

import pytest
import torch
from omegaconf import OmegaConf

from ldm.errors import UsageError
from ldm.inference.loading import load_model, resolve_source

import diffusion_configs as dc


@pytest.fixture
def run_folder(tmp_path):
    """A run folder as main.py leaves it (configs/*-project.yaml, checkpoints/last.ckpt) holding a tiny LDM."""
    from ldm.util import instantiate_from_config

    config = OmegaConf.create({"model": dc.ldm_config("class")})
    run = tmp_path / "2026-01-01T00-00-00_tiny"
    (run / "configs").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    OmegaConf.save(config, run / "configs" / "2026-01-01T00-00-00-project.yaml")
    model = instantiate_from_config(config.model)
    with torch.no_grad():
        model.model.diffusion_model.out[-1].weight.normal_()
    torch.save({"state_dict": model.state_dict()}, run / "checkpoints" / "last.ckpt")
    return run, model


def test_sources_from_a_run_folder_or_config_and_checkpoint(run_folder):
    run, reference = run_folder
    ckpt = str(run / "checkpoints" / "last.ckpt")
    source = resolve_source(str(run))
    assert (source.ckpt, source.logdir) == (ckpt, str(run))
    assert resolve_source(ckpt).ckpt == ckpt  # -r <run>/checkpoints/<x>.ckpt
    other = run / "checkpoints" / "epoch=1.ckpt"
    other.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    assert resolve_source(str(run), ckpt=str(other)).ckpt == str(other)
    config = str(next((run / "configs").iterdir()))
    by_config = resolve_source(config=[config], ckpt=ckpt)
    assert by_config.logdir is None and by_config.config.model.target.endswith("LatentDiffusion")

    model = load_model(source)
    assert not model.training
    key = "model.diffusion_model.out.2.weight"
    assert torch.equal(model.state_dict()[key], reference.state_dict()[key])


def test_bad_sources_name_the_problem(run_folder, tmp_path):
    run, _ = run_folder
    cases = [
        (dict(resume=str(tmp_path / "nope")), "-r/--resume: cannot find"),
        (dict(resume=str(tmp_path)), "has no checkpoints/last.ckpt"),
        (dict(), "no model given"),
        (dict(config=["x.yaml"]), "--config needs --ckpt"),
        (dict(config=[str(tmp_path / "x.yaml")], ckpt=str(run / "checkpoints" / "last.ckpt")),
         "--config: file not found"),
        (dict(resume=str(run), ckpt=str(tmp_path / "missing.ckpt")), "--ckpt: checkpoint file not found"),
        (dict(resume=str(run), config=["x.yaml"]), "alternatives"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UsageError, match=message):
            resolve_source(**kwargs)
    assert os.path.isdir(run)
