"""Session fixtures for the sampling-script tests: a text and a class-conditional model trained by main.py.

Both runs take 2 training steps of configs/ldm_txt2img.yaml / ldm_cin.yaml with the CPU overlay, shrunk further
(UNet width 32, 1 text layer), on a freshly initialised CPU-sized KL-f8 first stage; they train in parallel.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIFFUSION_TESTS = os.path.join(ROOT, "tests", "models", "diffusion")
if DIFFUSION_TESTS not in sys.path:
    sys.path.insert(0, DIFFUSION_TESTS)

import diffusion_configs  # noqa: E402

TINY = ["model.params.unet_config.params.model_channels=32", "model.context_dim=32", "model.text_layers=1",
        "data.params.batch_size=2", "data.params.num_workers=0", "lightning.trainer.max_steps=2",
        "lightning.trainer.limit_val_batches=1", "lightning.trainer.val_check_interval=2",
        "lightning.trainer.enable_progress_bar=false", "lightning.trainer.enable_model_summary=false",
        "lightning.callbacks.image_logger.params.disabled=true"]


def script_env():
    """Environment for subprocesses: offline, quiet, one thread each, the repo importable."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=ROOT)
    for key in ("LDM_LOGDIR", "LDM_RUN_NOW", "LOCAL_RANK", "RANK", "WORLD_SIZE"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="session")
def run_script():
    """Run scripts/<name>.py with arguments in a subprocess; returns the CompletedProcess (text output)."""
    def run(name, *args, timeout=180):
        return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", f"{name}.py"), *map(str, args)],
                              cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def one_thread():
    """In-process runs of the tiny models: one thread is fastest and does not fight the subprocesses for cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory):
    """{"text": run folder, "class": run folder}, each trained for 2 steps by `main.py -t`."""
    root = tmp_path_factory.mktemp("sampling_runs")
    ae = root / "ae.ckpt"
    diffusion_configs.cpu_stage1_checkpoint(ae)
    procs = {}
    for kind, config in (("text", "ldm_txt2img"), ("class", "ldm_cin")):
        cmd = [sys.executable, os.path.join(ROOT, "main.py"), "-b", os.path.join(ROOT, "configs", f"{config}.yaml"),
               os.path.join(ROOT, "configs", "overlays", "cpu.yaml"), "-t", "-n", kind, "-l", str(root / "logs"),
               "--logger", "csv", *TINY, f"model.params.first_stage_config.params.ckpt_path={ae}"]
        procs[kind] = subprocess.Popen(cmd, cwd=ROOT, env=script_env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
    runs = {}
    for kind, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
        (folder,) = [d for d in (root / "logs").iterdir() if d.name.endswith("_" + kind)]
        runs[kind] = folder
    return runs


@pytest.fixture(scope="session")
def load_script():
    """Import scripts/<name>.py as a module (to call its `main(argv)` in-process)."""
    import importlib.util

    def load(name):
        spec = importlib.util.spec_from_file_location(f"script_{name}", os.path.join(ROOT, "scripts", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def tiny_run(tmp_path):
    """Make a run folder by hand (configs/*-project.yaml + checkpoints/last.ckpt) for a tiny 16 px model of
    tests/models/diffusion/diffusion_configs.py: make(cond) with cond "class", "caption" or "none"."""
    import torch
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config

    def make(cond):
        config = OmegaConf.create({"model": diffusion_configs.ldm_config(cond)})
        run = tmp_path / f"2026-01-01T00-00-00_{cond}"
        (run / "configs").mkdir(parents=True)
        (run / "checkpoints").mkdir()
        OmegaConf.save(config, run / "configs" / "2026-01-01T00-00-00-project.yaml")
        torch.save({"state_dict": instantiate_from_config(config.model).state_dict()},
                   run / "checkpoints" / "last.ckpt")
        return run

    return make


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if a script gets as far as loading a model (bad input must be refused before)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    # cli first: importing it binds loading.load_model, which must still be the real one to be restored later
    monkeypatch.setattr("ldm.inference.cli.load_model", refuse)
    monkeypatch.setattr("ldm.inference.loading.load_model", refuse)


@pytest.fixture
def assert_refused(capsys):
    """assert_refused(main, cases): each (argv, regex) makes `entry.run(main, argv)` exit 2 with a matching error."""
    import re

    from ldm.inference import entry

    def check(main, cases):
        for argv, message in cases:
            assert entry.run(main, argv) == 2, argv
            err = capsys.readouterr().err
            assert err.startswith("error: ") and re.search(message, err), (argv, err)

    return check
