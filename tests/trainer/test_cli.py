"""Command line: CompVis flags and booleans, overrides, resume resolution, config merge order."""

import os

import pytest
from omegaconf import OmegaConf

from ldm.errors import UsageError
from ldm.run_folder import resolve_resume
from ldm.trainer.cli import load_run_config, normalize_argv, parse_args, str2bool


def test_defaults_match_compvis():
    opt, dotlist = parse_args(["--base", "a.yaml"])
    assert opt.seed == 23 and opt.logdir == "logs" and opt.scale_lr is True
    assert opt.train is False and opt.no_test is False and opt.debug is False
    assert opt.base == ["a.yaml"] and dotlist == []


@pytest.mark.parametrize("argv, expected", [
    (["-t"], True), (["-t", "True"], True), (["-t", "false"], False), (["--train", "1"], True), ([], False),
])
def test_compvis_booleans(argv, expected):
    opt, _ = parse_args(["-b", "a.yaml", *argv])
    assert opt.train is expected


def test_scale_lr_can_be_switched_off():
    opt, _ = parse_args(["-b", "a.yaml", "--scale_lr", "False"])
    assert opt.scale_lr is False


def test_bare_bool_flag_does_not_swallow_an_override():
    assert normalize_argv(["-t", "model.x=1"]) == ["-t", "true", "model.x=1"]
    opt, dotlist = parse_args(["-b", "a.yaml", "-t", "model.params.embed_dim=8"])
    assert opt.train is True and dotlist == ["model.params.embed_dim=8"]


def test_overrides_after_base_are_moved_to_the_dotlist():
    opt, dotlist = parse_args(["-b", "a.yaml", "b.yaml", "lightning.trainer.max_steps=100", "-t",
                               "data.params.batch_size=4"])
    assert opt.base == ["a.yaml", "b.yaml"]
    assert dotlist == ["lightning.trainer.max_steps=100", "data.params.batch_size=4"]


def test_unknown_option_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(["-b", "a.yaml", "--nme", "x"])
    assert info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_name_and_resume_conflict():
    with pytest.raises(UsageError, match="cannot be given together"):
        parse_args(["-n", "x", "-r", "logs/y"])


def test_str2bool_rejects_garbage():
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")


def _fake_run(tmp_path, with_ckpt=True):
    logdir = tmp_path / "logs" / "2024-01-01T00-00-00_tiny"
    (logdir / "checkpoints").mkdir(parents=True)
    (logdir / "configs").mkdir()
    (logdir / "configs" / "2024-01-01T00-00-00-project.yaml").write_text("model:\n  params:\n    a: 1\n    b: 1\n")
    (logdir / "configs" / "2024-01-01T00-00-00-lightning.yaml").write_text("lightning:\n  trainer:\n    max_steps: 4\n")
    if with_ckpt:
        (logdir / "checkpoints" / "last.ckpt").write_bytes(b"x")
        (logdir / "checkpoints" / "epoch=1.ckpt").write_bytes(b"x")
    return logdir


def test_resume_from_log_dir(tmp_path):
    logdir = _fake_run(tmp_path)
    info = resolve_resume(str(logdir) + "/")
    assert info.logdir == str(logdir)
    assert info.ckpt == str(logdir / "checkpoints" / "last.ckpt")
    assert [os.path.basename(c) for c in info.configs] == ["2024-01-01T00-00-00-lightning.yaml",
                                                           "2024-01-01T00-00-00-project.yaml"]


def test_resume_from_checkpoint_file(tmp_path):
    logdir = _fake_run(tmp_path)
    info = resolve_resume(str(logdir / "checkpoints" / "epoch=1.ckpt"))
    assert info.logdir == str(logdir) and info.ckpt.endswith("epoch=1.ckpt")


def test_resume_errors(tmp_path):
    with pytest.raises(UsageError, match="cannot find"):
        resolve_resume(str(tmp_path / "missing"))
    stray = tmp_path / "stray.ckpt"
    stray.write_bytes(b"x")
    with pytest.raises(UsageError, match="checkpoints/ folder"):
        resolve_resume(str(stray))
    empty = _fake_run(tmp_path / "b", with_ckpt=False)
    with pytest.raises(UsageError, match="no checkpoints/last.ckpt"):
        resolve_resume(str(empty))


def test_resume_config_merge_order(tmp_path):
    """Saved configs first, then extra --base files, then the command-line overrides."""
    logdir = _fake_run(tmp_path)
    extra = tmp_path / "extra.yaml"
    extra.write_text("model:\n  params:\n    b: 2\n    c: 2\n")
    opt, dotlist = parse_args(["-r", str(logdir), "-b", str(extra), "model.params.c=3", "--logger", "csv"])
    config = load_run_config(opt, dotlist, resolve_resume(opt.resume))
    assert OmegaConf.to_container(config.model.params) == {"a": 1, "b": 2, "c": 3}
    assert config.lightning.trainer.max_steps == 4
    assert config.lightning.logger == "csv"


def test_gpus_flag_becomes_trainer_devices(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text("model: {}\n")
    opt, dotlist = parse_args(["-b", str(cfg), "--gpus", "0,1"])
    config = load_run_config(opt, dotlist)
    assert config.lightning.trainer.accelerator == "gpu"
    assert list(config.lightning.trainer.devices) == [0, 1]


def test_no_config_is_a_usage_error():
    opt, dotlist = parse_args(["-t"])
    with pytest.raises(UsageError, match="no config given"):
        load_run_config(opt, dotlist)
