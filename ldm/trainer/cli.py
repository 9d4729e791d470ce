"""The CompVis `main.py` command line: flags, trailing `a.b=c` overrides, `-r` resume resolution, config merging."""

from __future__ import annotations

import argparse
import glob
import os
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from ldm.util import load_configs

# Flags that take an optional CompVis-style boolean (`-t`, `-t True`, `--scale_lr false`).
BOOL_FLAGS = ("-t", "--train", "--no-test", "--scale_lr", "-d", "--debug")
_TRUE = ("yes", "true", "t", "y", "1", "on")
_FALSE = ("no", "false", "f", "n", "0", "off")
LOGGER_CHOICES = ("wandb", "csv", "tensorboard")


class UsageError(ValueError):
    """The command line is wrong (bad resume path, conflicting flags); main.py prints it and exits with code 2."""


def str2bool(value: str | bool) -> bool:
    """CompVis-style boolean: yes/true/t/y/1 or no/false/f/n/0 (any case)."""
    if isinstance(value, bool):
        return value
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got '{value}'")


def _is_bool_literal(token: str) -> bool:
    return token.lower() in _TRUE + _FALSE


def normalize_argv(argv: list[str]) -> list[str]:
    """Give every bare boolean flag an explicit `true`, so `-t model.x=1` does not take `model.x=1` as its value."""
    out: list[str] = []
    for i, token in enumerate(argv):
        out.append(token)
        if token in BOOL_FLAGS:
            following = argv[i + 1] if i + 1 < len(argv) else None
            if following is None or not _is_bool_literal(following):
                out.append("true")
    return out


def get_parser() -> argparse.ArgumentParser:
    """Argument parser with the CompVis flags (trailing `key=value` overrides are collected separately)."""
    parser = argparse.ArgumentParser(
        prog="main.py", allow_abbrev=False,
        description="Train latent-diffusion models from YAML configs (CompVis main.py interface on Lightning 2).",
        epilog="Trailing key=value arguments override config entries, e.g. lightning.trainer.max_steps=100.")
    parser.add_argument("-n", "--name", type=str, default="",
                        help="name part of the log dir (default: the first config's name)")
    parser.add_argument("-r", "--resume", type=str, default="",
                        help="resume from a log dir or from a checkpoint inside <logdir>/checkpoints/")
    parser.add_argument("-b", "--base", nargs="*", metavar="base_config.yaml", default=[],
                        help="config files, merged left to right; key=value arguments override them")
    parser.add_argument("-t", "--train", type=str2bool, nargs="?", const=True, default=None,
                        help="train (the default with -r: a resumed run continues training)")
    parser.add_argument("--no-test", type=str2bool, nargs="?", const=True, default=False,
                        help="skip testing after training")
    parser.add_argument("-p", "--project", type=str, default=None,
                        help="experiment tracking project (wandb project; default $WANDB_PROJECT or 'ldm')")
    parser.add_argument("-d", "--debug", type=str2bool, nargs="?", const=True, default=False,
                        help="debug run: full tracebacks (post-mortem on a terminal), run moved to debug_runs/")
    parser.add_argument("-s", "--seed", type=int, default=23, help="seed for seed_everything")
    parser.add_argument("-f", "--postfix", type=str, default="", help="postfix appended to the run name")
    parser.add_argument("-l", "--logdir", type=str, default="logs", help="root folder of run folders")
    parser.add_argument("--scale_lr", type=str2bool, nargs="?", const=True, default=True,
                        help="lr = accumulate_grad_batches x devices x batch_size x base_learning_rate")
    parser.add_argument("--logger", choices=LOGGER_CHOICES, default=None,
                        help="experiment tracker (default: lightning.logger in the config, else wandb); "
                             "metrics also always go to a CSV file in the log dir")
    parser.add_argument("--gpus", type=str, default=None,
                        help="Lightning 1.x style GPU list ('0,' or '0,1'); same as lightning.trainer.devices")
    parser.add_argument("--unsafe-load", metavar="FILE", action="append", default=[],
                        help="unpickle this one checkpoint with weights_only=False when resuming (only for a file "
                             "you trust: unpickling can run code); better: scripts/convert_checkpoint.py")
    parser.add_argument("--allow-target", metavar="PREFIX", action="append", default=[],
                        help="also allow config targets under this module prefix (your own package); same as "
                             "LDM_ALLOW_TARGETS=PREFIX,...")
    return parser


def _looks_like_override(token: str) -> bool:
    return "=" in token and not token.startswith("-")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Parse the command line into (options, dotlist overrides); unknown options are an error."""
    import sys

    parser = get_parser()
    argv = normalize_argv(list(sys.argv[1:] if argv is None else argv))
    opt, unknown = parser.parse_known_args(argv)
    # `-b a.yaml x.y=1` puts the override into --base (nargs='*'): move it where it belongs.
    dotlist = [b for b in opt.base if _looks_like_override(b) and not b.endswith((".yaml", ".yml"))]
    opt.base = [b for b in opt.base if b not in dotlist]
    bad = [u for u in unknown if not _looks_like_override(u)]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (config overrides are written key.path=value)")
    dotlist += unknown
    if opt.train is None:  # `-r RUN` alone continues training; plain `--base` runs train only with -t
        opt.train = bool(opt.resume)
    if opt.name and opt.resume:
        raise UsageError("-n/--name and -r/--resume cannot be given together: a resumed run keeps its folder name "
                         "(start a new run from its weights with model.params.ckpt_path=... instead)")
    return opt, dotlist


# The original CompVis layout of a released / exported model: one folder with these two files (the original
# `sample_diffusion.py -r FOLDER` reads them; `scripts/export.py --format compvis` writes them).
COMPVIS_CONFIG, COMPVIS_CKPT = "config.yaml", "model.ckpt"


@dataclass
class ResumeInfo:
    """What `-r` points at: the run folder, the checkpoint to continue from, and the run's saved configs.

    `layout` is "run" for a main.py run folder and "compvis" for a config.yaml + model.ckpt folder (inference only).
    """

    logdir: str
    ckpt: str
    configs: list[str] = field(default_factory=list)
    layout: str = "run"


def _compvis_folder(folder: str, ckpt: str | None = None) -> ResumeInfo | None:
    """ResumeInfo of a config.yaml + model.ckpt folder (another .ckpt inside it may be named), else None."""
    config = os.path.join(folder, COMPVIS_CONFIG)
    ckpt = ckpt or os.path.join(folder, COMPVIS_CKPT)
    if os.path.isfile(config) and os.path.isfile(ckpt) and not os.path.isdir(os.path.join(folder, "configs")):
        return ResumeInfo(logdir=folder, ckpt=os.path.abspath(ckpt), configs=[config], layout="compvis")
    return None


def resolve_resume(path: str, inference: bool = False) -> ResumeInfo:
    """Turn `-r <logdir>` or `-r <logdir>/checkpoints/<x>.ckpt` into a ResumeInfo; clear errors for bad paths.

    With `inference`, a folder holding config.yaml + model.ckpt (the original layout), or a .ckpt inside it, is
    accepted too; training cannot resume from it (no optimizer or loop state), which the error says.
    """
    if not os.path.exists(path):
        raise UsageError(f"-r/--resume: cannot find {path}")
    path = os.path.normpath(path)
    folder = os.path.dirname(os.path.abspath(path)) if os.path.isfile(path) else os.path.abspath(path)
    compvis = _compvis_folder(folder, os.path.abspath(path) if os.path.isfile(path) else None)
    if compvis is not None:
        if not inference:
            raise UsageError(f"-r/--resume: {folder} holds {COMPVIS_CONFIG} + {COMPVIS_CKPT} (an exported model), "
                             "which has no training state to resume; sampling scripts take it with -r, and training "
                             f"starts from it with --base {os.path.join(folder, COMPVIS_CONFIG)} "
                             f"model.params.ckpt_path={compvis.ckpt}")
        return compvis
    if os.path.isfile(path):
        ckptdir = os.path.dirname(os.path.abspath(path))
        if os.path.basename(ckptdir) != "checkpoints":
            raise UsageError(f"-r/--resume: {path} is not inside a run's checkpoints/ folder "
                             "(expected <logdir>/checkpoints/<name>.ckpt"
                             + (f" or a folder with {COMPVIS_CONFIG} + {COMPVIS_CKPT})" if inference else ")"))
        logdir = os.path.dirname(ckptdir)
        ckpt = os.path.abspath(path)
    else:
        logdir = os.path.abspath(path)
        if os.path.basename(logdir) == "checkpoints" and not os.path.isdir(os.path.join(logdir, "configs")):
            logdir = os.path.dirname(logdir)
        ckpt = os.path.join(logdir, "checkpoints", "last.ckpt")
        if not os.path.isfile(ckpt):
            hint = f" (nor {COMPVIS_CONFIG} + {COMPVIS_CKPT})" if inference else ""
            raise UsageError(f"-r/--resume: {logdir} has no checkpoints/last.ckpt{hint}; nothing to resume from")
    configs = sorted(glob.glob(os.path.join(logdir, "configs", "*.yaml")))
    if not configs:
        raise UsageError(f"-r/--resume: {logdir} has no saved configs in configs/*.yaml; is it a run folder?")
    return ResumeInfo(logdir=logdir, ckpt=ckpt, configs=configs)


def load_run_config(opt: argparse.Namespace, dotlist: list[str], resume: ResumeInfo | None = None) -> DictConfig:
    """Saved configs of a resumed run first, then `--base` files, then the command-line overrides, then CLI flags."""
    files = (resume.configs if resume else []) + list(opt.base)
    if not files:
        raise UsageError("no config given: pass --base <config.yaml> (or -r <logdir> to resume a run)")
    config = load_configs(files, dotlist)
    apply_flag_overrides(config, opt)
    return config


def apply_flag_overrides(config: DictConfig, opt: argparse.Namespace) -> None:
    """Write `--logger` and `--gpus` into the config, so the saved config (and a resume) keeps them."""
    if opt.logger:
        OmegaConf.update(config, "lightning.logger", opt.logger, force_add=True)
    if opt.gpus is not None:
        devices = [int(g) for g in str(opt.gpus).replace(" ", "").strip(",").split(",") if g != ""]
        if not devices:
            raise UsageError(f"--gpus: no GPU index in '{opt.gpus}'")
        OmegaConf.update(config, "lightning.trainer.accelerator", "gpu", force_add=True)
        OmegaConf.update(config, "lightning.trainer.devices", devices, force_add=True)
