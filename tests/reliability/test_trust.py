"""A run folder someone else wrote runs no code: not through a pickled checkpoint, not through its saved config.

Each case plants a payload whose only effect is to create a marker file, then checks the marker is absent after the
refusal, and present when the user names the file (`--unsafe-load FILE`) or the package (`--allow-target PREFIX`).
"""

import importlib.util
import os
import re

import pytest
import torch
from omegaconf import OmegaConf

import main
from ldm.checkpoint import load_checkpoint
from ldm.targets import ALLOW_ENV
from trainer_helpers import ROOT, only_run_folder, write_config


class Payload:
    """Unpickling this calls os.system: the classic `__reduce__` attack."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _train(tmp_path, capsys, steps=2):
    cfg = write_config(tmp_path, max_steps=steps, enable_progress_bar=False)
    logs = tmp_path / "logs"
    assert main.main(["-b", cfg, "-t", "-l", str(logs), "--logger", "csv"]) == 0
    capsys.readouterr()
    return only_run_folder(logs)


def _plant_pickle(path, marker):
    """Rewrite the checkpoint at `path` with a payload beside its real content (still a valid checkpoint)."""
    state = load_checkpoint(path)
    state["payload"] = Payload(marker)
    torch.save(state, path)


def test_resume_refuses_a_pickled_payload_in_last_ckpt_unless_the_file_is_named(tmp_path, capsys):
    run = _train(tmp_path, capsys)
    last = os.path.join(run, "checkpoints", "last.ckpt")
    marker = tmp_path / "pwned"
    _plant_pickle(last, marker)

    before = open(last, "rb").read()
    code = main.main(["-r", run, "lightning.trainer.max_steps=4"])
    err = capsys.readouterr().err
    assert code != 0
    assert not marker.exists()
    assert last in err and "--unsafe-load" in err and "Traceback" not in err
    assert open(last, "rb").read() == before  # the file is left as it was

    # The user read the file and names it: now it loads (and the payload runs, as they chose).
    code = main.main(["-r", run, "--unsafe-load", last, "lightning.trainer.max_steps=4"])
    capsys.readouterr()
    assert code == 0 and marker.exists()


def test_naming_another_file_does_not_unlock_last_ckpt(tmp_path, capsys):
    run = _train(tmp_path, capsys)
    last = os.path.join(run, "checkpoints", "last.ckpt")
    marker = tmp_path / "pwned"
    _plant_pickle(last, marker)
    other = tmp_path / "other.ckpt"
    other.write_bytes(b"")
    code = main.main(["-r", run, "--unsafe-load", str(other), "lightning.trainer.max_steps=4"])
    capsys.readouterr()
    assert code != 0 and not marker.exists()


@pytest.mark.parametrize("where", ["model.params.first_stage_config.params.ckpt_path", "model.params.ckpt_path"])
def test_ckpt_paths_in_a_config_with_a_payload_are_refused(tmp_path, where):
    from diffusion_configs import ldm_config

    from ldm.checkpoint import UnsafeCheckpointError
    from ldm.util import instantiate_from_config

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload(marker)}, evil)
    config = OmegaConf.create({"model": ldm_config("none")})
    OmegaConf.update(config, where, str(evil))
    with pytest.raises(UnsafeCheckpointError, match="convert_checkpoint.py"):
        instantiate_from_config(config.model)
    assert not marker.exists()


def test_sampling_script_refuses_a_payload_checkpoint(tmp_path, capsys):
    from diffusion_configs import ldm_config

    from ldm.inference import entry

    marker = tmp_path / "pwned"
    evil = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}, "payload": Payload(marker)}, evil)
    config = tmp_path / "model.yaml"
    OmegaConf.save(OmegaConf.create({"model": ldm_config("none")}), config)
    code = entry.run(_load_script("txt2img").main, ["--config", str(config), "--ckpt", str(evil),
                                                   "--outdir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0 and not marker.exists()
    assert str(evil) in err and "convert_checkpoint.py" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------ saved configs
def _plant_target(run, target="os.system", params=None):
    """Point the model target of every saved config in `run` at `target`."""
    folder = os.path.join(run, "configs")
    for name in os.listdir(folder):
        config = OmegaConf.load(os.path.join(folder, name))
        if "model" in config:
            config.model.target = target
            config.model.params = params or {"command": "touch never"}
            OmegaConf.save(config, os.path.join(folder, name))


def test_resume_refuses_a_foreign_target_in_the_saved_config(tmp_path, capsys):
    run = _train(tmp_path, capsys)
    _plant_target(run, params={"command": f"touch {tmp_path / 'pwned'}"})
    code = main.main(["-r", run, "lightning.trainer.max_steps=4"])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "pwned").exists()
    assert "os.system" in err and "not in an allowed package" in err
    assert err.count("\n") == 1  # one line


def test_a_re_exported_name_or_a_function_does_not_pass(tmp_path, capsys):
    run = _train(tmp_path, capsys)
    # Names that resolve through an allowed module: a module imported there, a class re-exported there from an
    # outside package, an (unmarked) function.
    for target, reason in [("ldm.checkpoint.pickle", "is a module, not a class"),
                           ("ldm.util.OmegaConf", "defined in 'omegaconf.omegaconf'.*re-exported names do not count"),
                           ("ldm.util.instantiate_from_config", "is a function, not a class")]:
        _plant_target(run, target=target, params={"config": {"target": "os.system"}})
        assert main.main(["-r", run, "lightning.trainer.max_steps=4"]) == 2
        err = capsys.readouterr().err
        assert re.search(reason, err), err


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", ["reconstruct", "txt2img", "sample_diffusion"])
def test_scripts_refuse_a_foreign_target_in_a_run_folder(tmp_path, capsys, script):
    from ldm.inference import entry

    run = tmp_path / "2026-01-01T00-00-00_shared"
    (run / "configs").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    marker = tmp_path / "pwned"
    payload = {"target": "os.system", "params": {"command": f"touch {marker}"}}
    # reconstruct.py builds the validation data first, the samplers the model: both carry the payload.
    OmegaConf.save(OmegaConf.create({"model": payload, "data": {"params": {"validation": payload}}}),
                   run / "configs" / "2026-01-01T00-00-00-project.yaml")
    torch.save({"state_dict": {}}, run / "checkpoints" / "last.ckpt")
    module = _load_script(script)
    out = ["--out", str(tmp_path / "recon.png")] if script == "reconstruct" else ["--outdir", str(tmp_path / "out")]
    argv = ["-r", str(run), *out]
    code = entry.run(module.main, argv)
    err = capsys.readouterr().err
    assert code != 0 and not marker.exists()
    assert "os.system" in err and "Traceback" not in err


def test_allow_target_lets_the_users_own_package_in(tmp_path, capsys, monkeypatch):
    """The test models live in `trainer_dummies`, outside the built-in list: refused until allowed by name."""
    cfg = write_config(tmp_path, max_steps=1, enable_progress_bar=False)
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    logs = tmp_path / "logs"
    assert main.main(["-b", cfg, "-t", "-l", str(logs), "--logger", "csv"]) == 2
    err = capsys.readouterr().err
    assert "trainer_dummies" in err and "--allow-target trainer_dummies" in err
    assert not logs.exists()
    assert main.main(["-b", cfg, "-t", "-l", str(logs), "--logger", "csv", "--allow-target", "trainer_dummies"]) == 0
    assert os.environ[ALLOW_ENV] == "trainer_dummies"
