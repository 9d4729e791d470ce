"""--from-diffusers DIR: our config built from a diffusers folder, weights converted when the model loads, and
scripts/txt2img.py sampling from it."""
import importlib.util
import os

import pytest
import torch

from ldm.errors import UsageError
from ldm.inference.loading import load_model, resolve_source
from ldm.inference.model_info import describe_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(our txt2img model, a diffusers folder exported from it)."""
    from ldm.interop.diffusers import export_diffusers

    tiny = _load("interop_models", os.path.join(ROOT, "tests", "interop", "conftest.py"))
    clip = tiny.make_tiny_clip(tmp_path_factory.mktemp("clip"))
    config = tiny.ldm_config(tiny.clip_cond(clip), use_ema=False)
    model = tiny.build(config)
    folder = str(tmp_path_factory.mktemp("diffusers") / "sd")
    export_diffusers(model, {"model": config}, folder)
    return model, folder


def test_resolve_and_load_a_diffusers_folder(exported):
    model, folder = exported
    source = resolve_source(from_diffusers=folder)
    assert source.ckpt == folder and source.logdir is None
    info = describe_model(source.config)
    assert info.conditioning == "text" and info.factor == 2 and info.num_timesteps == 100
    loaded = load_model(source)
    for name, value in model.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    assert float(loaded.scale_factor) == pytest.approx(float(model.scale_factor))


def test_bad_from_diffusers_arguments(exported, tmp_path):
    _, folder = exported
    with pytest.raises(UsageError, match="drop -r/--config/--ckpt"):
        resolve_source(config=["x.yaml"], from_diffusers=folder)
    with pytest.raises(UsageError, match="is not a diffusers folder"):
        resolve_source(from_diffusers=str(tmp_path))


def test_txt2img_samples_from_a_diffusers_folder(exported, tmp_path):
    _, folder = exported
    txt2img = _load("txt2img_script", os.path.join(ROOT, "scripts", "txt2img.py"))
    out = txt2img.main(["--from-diffusers", folder, "--prompt", "red", "--sampler", "ddim", "--steps", "2",
                        "--n_samples", "2", "--outdir", str(tmp_path / "out"), "--device", "cpu"])
    assert len(out.images) == 2 and all(os.path.isfile(p) for p in out.images)
