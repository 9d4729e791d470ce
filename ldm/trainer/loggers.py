"""Experiment loggers: wandb (online with credentials, else offline), TensorBoard, and an always-written CSV file."""

from __future__ import annotations

import configparser
import importlib.util
import netrc
import os
import re
from typing import Any
from urllib.parse import urlsplit

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn

from ldm.util import ConfigError, instantiate_from_config

DEFAULT_LOGGER = "wandb"
DEFAULT_PROJECT = "ldm"
# Seconds wandb may spend reaching its server before main.py falls back to offline logging (wandb's own default is
# 90 s; the user's WANDB_INIT_TIMEOUT wins).
WANDB_INIT_TIMEOUT_S = "60"
WANDB_HOST = "https://api.wandb.ai"


# ------------------------------------------------------------------------------------------------------- CSV
class _AppendingWriter(ExperimentWriter):
    """CSV writer that keeps an existing `metrics.csv` (a resumed run appends) instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            import csv

            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(set(header))


class ResumableCSVLogger(CSVLogger):
    """CSVLogger writing `<save_dir>/metrics.csv` directly and appending to it when a run is resumed."""

    def __init__(self, save_dir: str, flush_logs_every_n_steps: int = 100):
        super().__init__(save_dir=save_dir, name="", version="", flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    def log_dir(self) -> str:
        """The run folder itself (metrics.csv lives at its top level)."""
        return self.save_dir

    @property
    def experiment(self) -> ExperimentWriter:
        """The appending CSV writer (a no-op stand-in on ranks > 0)."""
        from pytorch_lightning.utilities.rank_zero import rank_zero_only

        if self._experiment is not None:
            return self._experiment
        if rank_zero_only.rank != 0:  # as Lightning's rank_zero_experiment: other ranks never write
            from lightning_fabric.loggers.logger import _DummyExperiment

            return _DummyExperiment()  # type: ignore[return-value]
        os.makedirs(self.save_dir, exist_ok=True)
        self._experiment = _AppendingWriter(log_dir=self.save_dir)
        return self._experiment


# ----------------------------------------------------------------------------------------------------- wandb
def wandb_credentials() -> str | None:
    """Where a wandb API key would come from (env var, netrc, wandb settings file), or None; reads no network."""
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if os.environ.get(var):
            return var
    host = urlsplit(os.environ.get("WANDB_BASE_URL", WANDB_HOST)).netloc
    candidates = [os.environ["NETRC"]] if os.environ.get("NETRC") else [os.path.expanduser("~/.netrc"),
                                                                          os.path.expanduser("~/_netrc")]
    for path in candidates:
        if os.path.isfile(path):
            try:
                if netrc.netrc(path).authenticators(host):
                    return path
            except (netrc.NetrcParseError, OSError):
                pass
    config_dir = os.environ.get("WANDB_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".config", "wandb")
    settings = os.path.join(config_dir, "settings")
    if os.path.isfile(settings):
        parser = configparser.ConfigParser()
        try:
            parser.read(settings)
            if parser.get("default", "api_key", fallback=None):
                return settings
        except configparser.Error:
            pass
    return None


def _wandb_id(name: str) -> str:
    """A wandb run id from the run folder name (wandb forbids / \\ # ? % :)."""
    return re.sub(r"[/\\#?%:]", "-", name)[:128]


def run_group(name: str) -> str | None:
    """The run folder name without its timestamp (`-n` name or config name + postfix): the wandb group, so runs of
    one config are shown together; None when nothing is left."""
    from ldm.trainer.logdir import TIME_FORMAT

    stamp = re.escape(TIME_FORMAT).replace("%Y", r"\d{4}")
    for field in ("%m", "%d", "%H", "%M", "%S"):
        stamp = stamp.replace(field, r"\d{2}")
    group = re.sub(rf"^{stamp}_?", "", name)
    return group or None


def wandb_mode(debug: bool = False) -> str:
    """'online', 'offline' or 'disabled', from WANDB_MODE, `-d`, and whether credentials exist."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode == "disabled":
        return "disabled"
    if debug or mode in ("offline", "dryrun"):
        return "offline"
    return "online" if wandb_credentials() else "offline"


def make_wandb_logger(logdir: str, name: str, project: str | None, offline: bool, **params: Any) -> Logger:
    """WandbLogger writing into `<logdir>/wandb/`, run id and name = run folder name (so `-r` continues the same
    run), group = `run_group(name)`; `params` (lightning.logger.params) override these."""
    from pytorch_lightning.loggers import WandbLogger

    if importlib.util.find_spec("wandb") is None:
        raise ConfigError("lightning.logger: wandb is not installed (pip install wandb), or use --logger csv")
    os.environ.setdefault("WANDB_INIT_TIMEOUT", WANDB_INIT_TIMEOUT_S)
    kwargs: dict[str, Any] = dict(name=name, group=run_group(name), save_dir=logdir, id=_wandb_id(name),
                                  project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                                  offline=offline)
    kwargs.update(params)
    return WandbLogger(**kwargs)


def start_wandb(loggers: list[Logger], logdir: str, name: str, project: str | None) -> list[Logger]:
    """Start an online wandb run now (rank 0); if the server cannot be reached, switch to offline logging."""
    from pytorch_lightning.loggers import WandbLogger
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:
        return loggers
    out = []
    for logger in loggers:
        if isinstance(logger, WandbLogger) and not logger._offline:
            try:
                _ = logger.experiment
            except Exception as err:  # network down, bad key, timeout: keep training, log offline
                rank_zero_warn(f"wandb could not start online ({type(err).__name__}: {err}); logging offline")
                _finish_wandb()
                logger = make_wandb_logger(logdir, name, project, offline=True)
        out.append(logger)
    return out


def _finish_wandb() -> None:
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except Exception:
        pass


def finish_wandb(loggers: list[Logger]) -> str | None:
    """Close the wandb run (rank 0); for an offline run return the `wandb sync <dir>` command that uploads it."""
    from pytorch_lightning.loggers import WandbLogger

    hint = None
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            run_dir = getattr(logger._experiment, "dir", None)
            if logger._offline and run_dir:
                hint = f"wandb sync {os.path.dirname(os.path.normpath(run_dir))}"
    _finish_wandb()
    return hint


# ----------------------------------------------------------------------------------------------- selection
def logger_kind(spec: Any) -> str:
    """'wandb', 'csv', 'tensorboard' or 'custom' for a `lightning.logger` entry (a name or {target, params})."""
    if spec is None:
        return DEFAULT_LOGGER
    if isinstance(spec, str):
        kind = spec.lower()
        if kind not in ("wandb", "csv", "tensorboard"):
            raise ConfigError(f"lightning.logger: unknown logger '{spec}'; use wandb, csv or tensorboard "
                              "(or {target: ..., params: ...})")
        return kind
    target = str(spec.get("target", "")) if isinstance(spec, (dict, DictConfig)) else ""
    for key, kind in (("wandb", "wandb"), ("tensorboard", "tensorboard"), ("csv", "csv"), ("testtube", "csv")):
        if key in target.lower():
            return kind
    if not target:
        raise ConfigError("lightning.logger: expected wandb, csv, tensorboard or {target: ..., params: ...}")
    return "custom"


def build_loggers(spec: Any, logdir: str, name: str, project: str | None = None, debug: bool = False) -> list[Logger]:
    """The chosen logger plus a CSV logger in the log dir (metrics always reach `<logdir>/metrics.csv`)."""
    kind = logger_kind(spec)
    params: dict[str, Any] = {}
    if isinstance(spec, (dict, DictConfig)):
        raw = spec.get("params") or {}
        params = OmegaConf.to_container(raw, resolve=True) if isinstance(raw, DictConfig) else dict(raw)
        for key in ("save_dir", "name", "id", "version", "offline"):  # decided by main.py
            params.pop(key, None)
    csv = ResumableCSVLogger(logdir)
    if kind == "csv":
        return [csv]
    if kind == "tensorboard":
        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            raise ConfigError("--logger tensorboard: the tensorboard package is not installed "
                              "(pip install tensorboard), or use --logger csv / wandb")
        from pytorch_lightning.loggers import TensorBoardLogger

        return [TensorBoardLogger(save_dir=logdir, name="tensorboard", version="", **params), csv]
    if kind == "custom":
        return [instantiate_from_config(spec, key_path="lightning.logger"), csv]
    mode = wandb_mode(debug)
    if mode == "offline":
        rank_zero_info("wandb: logging offline (no credentials found, WANDB_MODE=offline, or -d); "
                       "the end of the run prints the `wandb sync` command that uploads it")
    return [make_wandb_logger(logdir, name, project, offline=(mode == "offline"), **params), csv]
