"""Turn the `lightning` config section into Trainer arguments and callbacks, with CompVis step and lr semantics."""

from __future__ import annotations

import inspect
import os
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from ldm.trainer.checkpointing import DEFAULT_EVERY_N_BATCHES, DEFAULT_FILENAME, DEFAULT_TOP_K
from ldm.trainer.logdir import RunPaths
from ldm.util import ConfigError, instantiate_from_config

# Keys of `lightning.trainer` that main.py consumes itself instead of passing them to pl.Trainer.
OWN_TRAINER_KEYS = ("find_unused_parameters", "gpus")
# Lightning 1 `accelerator` values that are strategies in Lightning 2.
LIGHTNING1_STRATEGY_ACCELERATORS = ("ddp", "ddp_spawn", "ddp2", "dp")
# Trainer arguments main.py decides; a config value for them is ignored with a note.
MANAGED_TRAINER_KEYS = ("logger", "callbacks", "plugins", "default_root_dir")

# Callbacks every run gets, under their CompVis names in `lightning.callbacks` (a config entry with the same name
# overrides or extends the params; `name: null` removes it).
DEFAULT_CALLBACKS: dict[str, dict[str, Any]] = {
    "image_logger": {"target": "ldm.trainer.image_logger.ImageLogger",
                     "params": {"batch_frequency": 750, "max_images": 4, "clamp": True}},
    "learning_rate_logger": {"target": "pytorch_lightning.callbacks.LearningRateMonitor",
                             "params": {"logging_interval": "step"}},
    "cuda_callback": {"target": "ldm.trainer.callbacks.CUDACallback"},
    # Stops a diverged run before it overwrites good checkpoints (see ldm/trainer/finite_guard.py).
    "nonfinite_guard": {"target": "ldm.trainer.finite_guard.NonFiniteGuard"},
    # Per-batch seeding: exact resume; validation and logging cannot change training (ldm/trainer/training_rng.py).
    "training_rng": {"target": "ldm.trainer.training_rng.TrainingRNG"},
}
# Lightning's ModelCheckpoint targets that are replaced by LDMModelCheckpoint (same arguments, batch semantics).
_MODELCHECKPOINT_TARGETS = ("pytorch_lightning.callbacks.ModelCheckpoint",
                            "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
                            "lightning.pytorch.callbacks.ModelCheckpoint")
CHECKPOINT_TARGET = "ldm.trainer.checkpointing.LDMModelCheckpoint"


# Numeric `lightning.trainer` keys and what they take; a value that is not such a number is a ConfigError naming it.
NUMERIC_TRAINER_KEYS: dict[str, tuple[type, ...]] = {
    "max_steps": (int,), "min_steps": (int,), "max_epochs": (int,), "min_epochs": (int,), "num_nodes": (int,),
    "accumulate_grad_batches": (int,), "log_every_n_steps": (int,), "num_sanity_val_steps": (int,),
    "check_val_every_n_epoch": (int,), "val_check_interval": (int, float), "limit_train_batches": (int, float),
    "limit_val_batches": (int, float), "limit_test_batches": (int, float), "limit_predict_batches": (int, float),
    "gradient_clip_val": (int, float), "overfit_batches": (int, float),
}


def config_number(value: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    """`value` as an int / float for config key `key` (a string such as "100" is read as one); anything else is a
    ConfigError that names the key."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) or value is None:
        if value is None:
            return value
        raise ConfigError(f"{key}: expected {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    if isinstance(value, kinds):
        return value
    if isinstance(value, int) and float in kinds:
        return float(value)
    for k in kinds:
        try:
            number = float(value) if isinstance(value, str) else value
            if k is int and float(number) == int(float(number)) and "." not in str(value):
                return int(float(number))
            if k is float:
                return float(number)
        except (TypeError, ValueError):
            continue
    raise ConfigError(f"{key}: expected {' or '.join(k.__name__ for k in kinds)}, got {value!r}")


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig,)) else cfg


# --------------------------------------------------------------------------------------------------- devices
def count_devices(accelerator: Any, devices: Any) -> int:
    """Number of devices per node that `Trainer(accelerator, devices)` will use (before building it)."""
    accelerator = str(accelerator or "auto").lower()
    if devices is None or str(devices).strip() in ("auto", "-1"):
        if accelerator == "cpu":
            return (os.cpu_count() or 1) if str(devices).strip() == "-1" else 1
        if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
            return max(1, torch.cuda.device_count())
        return 1
    if isinstance(devices, int):
        return devices
    if isinstance(devices, (list, tuple)):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"lightning.trainer.devices: cannot read '{devices}' (an int, a list or 'auto')") from None


# ---------------------------------------------------------------------------------------------- step counts
def optimizer_steps_per_batch(model: Any) -> int:
    """How many optimizer steps the model takes per training batch (`optimizer_steps_per_batch`, default 1)."""
    value = getattr(model, "optimizer_steps_per_batch", 1)
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{type(model).__name__}.optimizer_steps_per_batch must be a positive int, got {value!r}")
    return value


def translate_max_steps(max_batches: int, steps_per_batch: int, accumulate: int = 1) -> tuple[int, bool]:
    """Trainer `max_steps` for `max_batches` training batches, and whether Lightning then stops at exactly that batch.

    Lightning's `max_steps` counts optimizer steps. Without accumulation a model takes `steps_per_batch` of them per
    batch, so `max_batches * steps_per_batch` is exact. With accumulation the step count per batch varies (steps
    happen every `accumulate` batches and at epoch ends), so the same product only caps the run and a BatchLimit
    callback stops it at the exact batch.
    """
    return int(max_batches) * int(steps_per_batch), int(accumulate) <= 1


def learning_rate(base_lr: float, batch_size: int, accumulate: int = 1, devices: int = 1, nodes: int = 1,
                  scale: bool = True) -> tuple[float, str]:
    """CompVis lr scaling: lr = accumulate_grad_batches x devices (x nodes) x batch_size x base_lr; and its printout."""
    if not scale:
        return base_lr, f"Setting learning rate to {base_lr:.2e} (base_learning_rate; --scale_lr false)"
    lr = accumulate * devices * nodes * batch_size * base_lr
    node_term = f" * {nodes} (num_nodes)" if nodes > 1 else ""
    return lr, (f"Setting learning rate to {lr:.2e} = {accumulate} (accumulate_grad_batches) * {devices} "
                f"(num_devices){node_term} * {batch_size} (batch_size) * {base_lr:.2e} (base_learning_rate)")


# ---------------------------------------------------------------------------------------------------- trainer
def trainer_kwargs(trainer_cfg: Any, model: Any) -> tuple[dict[str, Any], list[str], list[pl.Callback]]:
    """pl.Trainer keyword arguments from `lightning.trainer`, notes to print, and extra callbacks it requires.

    Applies: unknown-key check, Lightning 1 `gpus`, DDP when devices > 1 (`find_unused_parameters`, default on for
    manual-optimization models), the bf16 check (`ldm.precision`), gradient accumulation moved into
    manual-optimization models, and `max_steps` counted in training batches.
    """
    from ldm.precision import checked_trainer_precision
    from ldm.trainer.callbacks import BatchLimit

    cfg = dict(_plain(trainer_cfg) or {})
    for key, kinds in NUMERIC_TRAINER_KEYS.items():
        if key in cfg:
            cfg[key] = config_number(cfg[key], f"lightning.trainer.{key}", kinds)
    notes: list[str] = []
    extra: list[pl.Callback] = []
    accepted = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    unknown = sorted(set(cfg) - accepted - set(OWN_TRAINER_KEYS))
    if unknown:
        import difflib

        hints = [f"{k} (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(k, sorted(accepted), n=1)) else k
                 for k in unknown]
        if "resume_from_checkpoint" in unknown:
            hints.append("(Lightning 1's resume_from_checkpoint is now `main.py -r <logdir or .ckpt>`)")
        raise ConfigError(f"lightning.trainer: pl.Trainer has no argument {', '.join(hints)}")
    if str(cfg.get("accelerator", "")).lower() in LIGHTNING1_STRATEGY_ACCELERATORS:
        # CompVis' main.py wrote `accelerator: ddp` (Lightning 1); today that is a strategy.
        legacy = str(cfg.pop("accelerator")).lower()
        if legacy != "ddp":  # plain ddp: chosen below from the device count, with find_unused_parameters
            cfg.setdefault("strategy", legacy)
        notes.append(f"lightning.trainer.accelerator={legacy} (Lightning 1) -> accelerator=auto"
                     f"{', strategy=' + str(cfg['strategy']) if 'strategy' in cfg else ''}")
    for key in MANAGED_TRAINER_KEYS:
        if key in cfg:
            cfg.pop(key)
            notes.append(f"lightning.trainer.{key} is ignored: main.py sets it")

    gpus = cfg.pop("gpus", None)
    if gpus is not None and "devices" not in cfg:
        cfg["accelerator"] = "gpu"
        cfg["devices"] = gpus if not isinstance(gpus, str) else [int(g) for g in gpus.strip(",").split(",") if g]
        notes.append(f"lightning.trainer.gpus={gpus!r} (Lightning 1) -> accelerator=gpu, devices={cfg['devices']!r}")

    find_unused = cfg.pop("find_unused_parameters", None)
    manual = not getattr(model, "automatic_optimization", True)
    if "strategy" in cfg and isinstance(cfg["strategy"], dict):
        cfg["strategy"] = instantiate_from_config(cfg["strategy"], key_path="lightning.trainer.strategy")
    elif "strategy" not in cfg:
        n = count_devices(cfg.get("accelerator"), cfg.get("devices")) * int(cfg.get("num_nodes", 1) or 1)
        if n > 1:
            from pytorch_lightning.strategies import DDPStrategy

            unused = bool(find_unused) if find_unused is not None else manual
            cfg["strategy"] = DDPStrategy(find_unused_parameters=unused)
            notes.append(f"{n} devices: DDP strategy (find_unused_parameters={unused}"
                         f"{', default for manual optimization' if find_unused is None and manual else ''})")

    if "precision" in cfg:
        cfg["precision"] = checked_trainer_precision(cfg["precision"], cfg.get("accelerator"))

    accumulate = int(cfg.get("accumulate_grad_batches", 1) or 1)
    if manual and accumulate > 1:
        if not hasattr(model, "accumulate_grad_batches"):
            raise ConfigError(f"lightning.trainer.accumulate_grad_batches={accumulate}: {type(model).__name__} uses "
                              "manual optimization, which Lightning cannot accumulate for; set it to 1")
        model.accumulate_grad_batches = accumulate
        cfg["accumulate_grad_batches"] = 1
        notes.append(f"accumulate_grad_batches={accumulate}: done inside {type(model).__name__} "
                     "(manual optimization), Trainer(accumulate_grad_batches=1)")

    max_batches = cfg.get("max_steps")
    if max_batches is not None and int(max_batches) > 0:
        per_batch = optimizer_steps_per_batch(model)
        steps, exact = translate_max_steps(int(max_batches), per_batch, accumulate)
        cfg["max_steps"] = steps
        if not exact:
            extra.append(BatchLimit(int(max_batches)))
        if steps != int(max_batches):
            notes.append(f"lightning.trainer.max_steps={max_batches} counts training batches; {type(model).__name__} "
                         f"steps {per_batch} optimizers per batch, so Trainer(max_steps={steps})")
        if not exact:
            notes.append(f"accumulate_grad_batches={accumulate}: training stops after exactly {max_batches} batches "
                         "(BatchLimit callback)")
    return cfg, notes, extra


# -------------------------------------------------------------------------------------------------- callbacks
def checkpoint_config(lightning_cfg: Any, model: Any, paths: RunPaths) -> DictConfig:
    """`lightning.modelcheckpoint` over the defaults: last.ckpt + top-k by `model.monitor`, else every N batches."""
    params: dict[str, Any] = {"dirpath": paths.ckptdir, "filename": DEFAULT_FILENAME, "verbose": True,
                              "save_last": True}
    monitor = getattr(model, "monitor", None)
    if isinstance(monitor, str) and monitor:
        params.update(monitor=monitor, save_top_k=DEFAULT_TOP_K)
    else:
        params.update(every_n_train_steps=DEFAULT_EVERY_N_BATCHES)
    root = OmegaConf.create({"lightning": {"modelcheckpoint": {"target": CHECKPOINT_TARGET, "params": params}}})
    user = OmegaConf.select(lightning_cfg, "modelcheckpoint", default=None) if lightning_cfg is not None else None
    if user is not None:  # nested under lightning.* so errors name the full key
        root = OmegaConf.merge(root, {"lightning": {"modelcheckpoint": user}})
    merged = root.lightning.modelcheckpoint
    if str(merged.target) in _MODELCHECKPOINT_TARGETS:
        merged.target = CHECKPOINT_TARGET
    merged.params.dirpath = paths.ckptdir  # checkpoints always live in the run folder (resume relies on it)
    return merged


def configured_callbacks(lightning_cfg: Any) -> dict[str, pl.Callback]:
    """Default callbacks merged with `lightning.callbacks` and instantiated, by name (CompVis key layout)."""
    root = OmegaConf.create({"lightning": {"callbacks": DEFAULT_CALLBACKS}})
    user = OmegaConf.select(lightning_cfg, "callbacks", default=None) if lightning_cfg is not None else None
    if user is not None:  # nested under lightning.* so errors name the full key
        root = OmegaConf.merge(root, {"lightning": {"callbacks": user}})
    built: dict[str, pl.Callback] = {}
    for name, spec in root.lightning.callbacks.items():
        if spec is None or name == "setup_callback":  # the run folder callback is always main.py's
            continue
        built[str(name)] = instantiate_from_config(spec)
    return built
