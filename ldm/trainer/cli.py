"""The CompVis `main.py` command line: flags, trailing `a.b=c` overrides, `-r` resume resolution, config merging."""

from __future__ import annotations

import argparse

from omegaconf import DictConfig, OmegaConf

from ldm.errors import UsageError
from ldm.run_folder import ResumeInfo
from ldm.util import load_configs

# Flags that take an optional CompVis-style boolean (`-t`, `-t True`, `--scale_lr false`).
BOOL_FLAGS = ("-t", "--train", "--no-test", "--scale_lr", "-d", "--debug")
_TRUE = ("yes", "true", "t", "y", "1", "on")
_FALSE = ("no", "false", "f", "n", "0", "off")
LOGGER_CHOICES = ("wandb", "csv", "tensorboard")


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
