"""scripts/cache_latents.py end to end: cache a captioned folder with a stage-1 checkpoint, train main.py from the
cache for two steps, and stop with a clear error when the cache belongs to another first stage."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import TINY, script_env

OVERLAY = os.path.join(ROOT, "configs", "overlays", "cpu.yaml")
# the demo's text model: KL-f4 and a frozen pretrained text encoder (MiniLM), whose outputs the cache holds
CONFIGS = [os.path.join(ROOT, "configs", "ldm_txt2img_f4.yaml"), OVERLAY]


def stage1_checkpoint(path):
    """A freshly initialised CPU-sized KL-f4 autoencoder saved as stage 1 writes it."""
    import torch
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config, load_configs

    cfg = load_configs([os.path.join(ROOT, "configs", "autoencoder_kl_f4.yaml"), OVERLAY])
    params = OmegaConf.to_container(cfg.model.params, resolve=True)
    ae = instantiate_from_config({"target": "ldm.models.autoencoder.AutoencoderKL",
                                  "params": {"embed_dim": params["embed_dim"], "ddconfig": params["ddconfig"],
                                             "lossconfig": {"target": "torch.nn.Identity"}}})
    torch.save({"state_dict": ae.state_dict()}, path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(tmp folder, stage-1 checkpoint, another stage-1 checkpoint, image folder of 8 captioned 64 px images)."""
    tmp = tmp_path_factory.mktemp("cache")
    ae, other = tmp / "ae.ckpt", tmp / "other.ckpt"
    import torch

    torch.manual_seed(0)
    stage1_checkpoint(ae)
    torch.manual_seed(1)
    stage1_checkpoint(other)
    images = tmp / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((64, 64)).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"a picture number {i % 3}")
    return tmp, ae, other, images


def data_overrides(images):
    return [f"data.params.train.params.root={images}", "data.params.train.params.random_crop=false",
            f"data.params.validation.params.root={images}"]


@pytest.fixture(scope="module")
def cache(setup):
    """The cache of the image folder written by the script (frozen MiniLM, flips on)."""
    tmp, ae, _, images = setup
    out = tmp / "cache"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "cache_latents.py"), "-r", str(ae), "--config", *CONFIGS,
           "--out", str(out), "--batch-size", "4", *TINY, *data_overrides(images)]
    result = subprocess.run(cmd, cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "items=7" in result.stdout and "latent_cache=" in result.stdout
    return out


def train(setup, cache, ckpt, name, *extra):
    tmp, _, _, images = setup
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "-b", *CONFIGS, "-t", "-n", name, "-l",
           str(tmp / "logs"), "--logger", "csv", *TINY, *data_overrides(images),
           f"model.params.first_stage_config.params.ckpt_path={ckpt}",
           f"data.params.train.params.latent_cache={cache}", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=300)


def test_cache_holds_the_train_split_flips_and_text(cache):
    index = json.loads((cache / "index.json").read_text())
    # the folder's train split (a 5% validation share held out), flipped copies, frozen MiniLM outputs cached
    assert index["kind"] == "posterior" and index["flip"] is True and index["cond_key"] == "caption"
    assert len(index["items"]) == 7 and index["fingerprint"]["scale_by_std"] is True
    assert all(len(item["cond_rows"]) == 1 for item in index["items"])


def test_main_trains_from_the_cache(setup, cache):
    ok = train(setup, cache, setup[1], "cached")
    assert ok.returncode == 0, (ok.stdout + ok.stderr)[-3000:]
    (run,) = [d for d in (setup[0] / "logs").iterdir() if d.name.endswith("_cached")]
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_main_refuses_a_cache_of_another_first_stage(setup, cache):
    bad = train(setup, cache, setup[2], "mismatch")
    assert bad.returncode != 0
    assert "does not match the model: first-stage checkpoint" in bad.stdout + bad.stderr


def test_ddp_ranks_train_from_the_cache(setup, cache):
    ok = train(setup, cache, setup[1], "ddp", "lightning.trainer.devices=2", "lightning.trainer.strategy=ddp",
               "lightning.trainer.accelerator=cpu")
    assert ok.returncode == 0, (ok.stdout + ok.stderr)[-3000:]


def test_bad_inputs_are_clear_errors(setup, load_script, one_thread):
    from ldm.data.latent_cache import LatentCacheError
    from ldm.errors import UsageError

    tmp, ae, _, images = setup
    script = load_script("cache_latents")
    with pytest.raises(LatentCacheError, match="only image folders"):  # the shapes data (no root)
        script.main(["-r", str(ae), "--config", *CONFIGS, "--out", str(tmp / "shapes"), *TINY])
    with pytest.raises(UsageError, match="cannot find"):
        script.main(["-r", str(tmp / "nope"), "--config", *CONFIGS, "--out", str(tmp / "x")])
    with pytest.raises(LatentCacheError, match="conditioning on image-like inputs"):
        script.main(["-r", str(ae), "--config", os.path.join(ROOT, "configs", "ldm_sr.yaml"), OVERLAY,
                     "--out", str(tmp / "sr")])
    with pytest.raises(LatentCacheError, match="non-empty folder that holds no latent cache"):
        script.main(["-r", str(ae), "--config", *CONFIGS, "--out", str(images), *TINY, *data_overrides(images)])
