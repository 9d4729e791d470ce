"""Tiny trained runs of configs/ldm_inpainting.yaml and configs/ldm_sr.yaml, made once per test session.

`main.py -t` runs in a subprocess with the CPU overlay (configs/overlays/cpu.yaml) on a freshly initialised
CPU-sized KL-f8 first stage (the autoencoder of configs/overlays/cpu.yaml, not trained: only shapes matter), for two
training batches with image logging on every batch. Test modules of the models and the scripts share the runs
through `trained_run`, which caches them in this module (one training per config per session).

`trained_run` needs this folder on sys.path (its conftest puts it there; other test folders insert it themselves).
"""
import os
import subprocess
import sys

from torch.utils.data import DataLoader

from ldm.util import instantiate_from_config, load_configs
from diffusion_configs import ROOT, cpu_stage1_checkpoint

TASK_CONFIGS = ("ldm_inpainting", "ldm_sr")
TINY = ["lightning.trainer.max_steps=2", "data.params.batch_size=2", "data.params.num_workers=0",
        "model.params.unet_config.params.model_channels=32", "lightning.trainer.num_sanity_val_steps=0",
        "lightning.callbacks.image_logger.params.batch_frequency=1",
        "lightning.callbacks.image_logger.params.log_images_kwargs.ddim_steps=2"]

_CACHE: dict = {}


def subprocess_env():
    """Offline, quiet, one thread, the repository importable."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    for key in ("LDM_LOGDIR", "LDM_RUN_NOW", "WANDB_API_KEY", "LOCAL_RANK", "RANK", "WORLD_SIZE"):
        env.pop(key, None)
    return env


def _base(tmp_path_factory):
    if "base" not in _CACHE:
        base = tmp_path_factory.mktemp("task_runs")
        cpu_stage1_checkpoint(base / "ae.ckpt")
        _CACHE["base"] = base
    return _CACHE["base"]


def trained_run(name, tmp_path_factory):
    """(run folder or None, CompletedProcess) of `main.py -t` on configs/<name>.yaml + the CPU overlay.

    The first call trains every config of TASK_CONFIGS at once (one process each, so two cores are both busy).
    """
    if name not in TASK_CONFIGS:
        raise KeyError(f"{name} is not one of {TASK_CONFIGS}")
    if name not in _CACHE:
        base = _base(tmp_path_factory)
        procs = {}
        for config in TASK_CONFIGS:
            args = [sys.executable, os.path.join(ROOT, "main.py"), "--base", f"configs/{config}.yaml",
                    "configs/overlays/cpu.yaml", "-t", "-l", str(base / config), "--logger", "csv",
                    f"model.params.first_stage_config.params.ckpt_path={base / 'ae.ckpt'}", *TINY]
            procs[config] = (args, subprocess.Popen(args, cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE, text=True))
        for config, (args, proc) in procs.items():
            try:
                out, err = proc.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            logs = base / config
            runs = sorted(logs.iterdir()) if logs.exists() else []
            _CACHE[config] = (runs[0] if len(runs) == 1 else None,
                              subprocess.CompletedProcess(args, proc.returncode, out, err))
    return _CACHE[name]


def successful_run(name, tmp_path_factory):
    """The run folder of `trained_run(name)`, asserting that main.py succeeded."""
    run, proc = trained_run(name, tmp_path_factory)
    assert proc.returncode == 0 and run is not None, proc.stderr[-3000:]
    return run


def overlay_model_and_batch(name, folder, batch_size=2):
    """(model, one training batch) of configs/<name>.yaml + the CPU overlay (UNet width 32) on a fresh CPU stage 1
    saved in `folder`; call from the repository root."""
    ckpt = folder / "ae.ckpt"
    cpu_stage1_checkpoint(ckpt)
    cfg = load_configs([f"configs/{name}.yaml", "configs/overlays/cpu.yaml"],
                       [f"model.params.first_stage_config.params.ckpt_path={ckpt}",
                        "model.params.unet_config.params.model_channels=32"])
    data = instantiate_from_config(cfg.data)
    data.setup("fit")
    return instantiate_from_config(cfg.model), next(iter(DataLoader(data.datasets["train"], batch_size=batch_size)))
