"""Config instantiation (`{target, params}`) with errors that name the config key and file, plus small helpers."""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import omegaconf
from omegaconf import DictConfig, ListConfig, OmegaConf

from ldm.targets import TargetNotAllowed, check_name, check_object

_omegaconf_version = tuple(int(p) for p in omegaconf.__version__.split(".")[:2])

# Strings that stand in for a config in the CompVis interface; they are resolved by the model, not instantiated.
SPECIAL_CONFIG_STRINGS = ("__is_first_stage__", "__is_unconditional__")

# Targets named in original CompVis / taming-transformers configs whose classes live elsewhere here. Used only when
# the original path cannot be imported, so an installed taming-transformers still wins for its own names.
LEGACY_TARGETS = {
    "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator":
        "ldm.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
    "taming.modules.losses.lpips.LPIPS": "ldm.modules.losses.lpips.LPIPS",
    "taming.modules.discriminator.model.NLayerDiscriminator": "ldm.modules.losses.discriminator.NLayerDiscriminator",
    "taming.models.vqgan.VQModel": "ldm.models.autoencoder.VQModel",
    "taming.modules.vqvae.quantize.VectorQuantizer2": "ldm.modules.vqvae.quantize.VectorQuantizer2",
    "taming.modules.vqvae.quantize.VectorQuantizer": "ldm.modules.vqvae.quantize.VectorQuantizer",
    # CompVis configs name classes of its main.py; ours live in the package (main.py re-exports them).
    "main.DataModuleFromConfig": "ldm.data.datamodule.DataModuleFromConfig",
    "main.ImageLogger": "ldm.trainer.image_logger.ImageLogger",
    "main.SetupCallback": "ldm.trainer.callbacks.SetupCallback",
    "main.CUDACallback": "ldm.trainer.callbacks.CUDACallback",
}

def latent_side(ddconfig: Any) -> int:
    """Latent side of a first stage: `resolution / 2 ** (len(ch_mult) - 1)` (no `ch_mult`: f = 1, pixel space).

    Registered as the config resolver `${ldm.latent_side:<ddconfig>}`, so an overlay that sets the image size can
    give every first stage (f4, f8, ...) its latent size:
    `latent_size: ${ldm.latent_side:${model.first_stage_ddconfig}}`.
    """
    resolution = int(ddconfig["resolution"])
    levels = len(ddconfig["ch_mult"]) if "ch_mult" in ddconfig else 1
    return resolution // 2 ** (levels - 1)


if not OmegaConf.has_resolver("ldm.latent_side"):
    # OmegaConf 2.4 renamed register_new_resolver (now deprecated) back to register_resolver; 2.3 has only the former.
    _register = OmegaConf.register_resolver if _omegaconf_version >= (2, 4) else OmegaConf.register_new_resolver
    _register("ldm.latent_side", latent_side)

# Files that were merged into the running config, in merge order: (path, loaded config). Filled by `load_configs`
# so that an error about key `a.b.c` can say which file defined it.
_CONFIG_SOURCES: list[tuple[str, DictConfig]] = []


class ConfigError(ValueError):
    """A config is wrong; the message names the key path (e.g. `model.params.lossconfig`) and the file it came from."""


# Top-level key of a config file that holds sections for some kinds of model only: `{class path: config}`. A
# section is merged (right after its file) when the model's `model.target` is that class or a subclass, so one
# overlay (configs/overlays/cpu.yaml) can size an autoencoder and a diffusion model differently.
FOR_MODEL_KEY = "for_model"


def _model_class(merged: DictConfig, path: str) -> type:
    """The class named by `model.target` of the files merged so far (needed by `path`'s `for_model` sections)."""
    target = OmegaConf.select(merged, "model.target", default=None)
    if target is None:
        raise ConfigError(f"{path}: its '{FOR_MODEL_KEY}' sections depend on model.target, which no earlier config "
                          "file sets (put this file after the model's config in --base)")
    return resolve_target(str(target), "model.target")


def _model_sections(path: str, sections: Any, merged: DictConfig) -> list[tuple[str, DictConfig]]:
    """(source name, config) of every section of `path`'s `for_model` that applies to the merged model."""
    if not isinstance(sections, DictConfig):
        raise ConfigError(f"{path}: '{FOR_MODEL_KEY}' must map model classes to configs, got {type(sections).__name__}")
    model_class = _model_class(merged, path)
    chosen = []
    for class_path, section in sections.items():
        section_class = resolve_target(str(class_path), f"{path}: {FOR_MODEL_KEY}.{class_path}")
        if inspect.isclass(section_class) and issubclass(model_class, section_class):
            chosen.append((f"{path} ({FOR_MODEL_KEY}: {class_path})", section))
    if not chosen:
        raise ConfigError(f"{path}: none of its '{FOR_MODEL_KEY}' sections ({', '.join(map(str, sections.keys()))}) "
                          f"applies to model.target {model_class.__module__}.{model_class.__qualname__}")
    return chosen


def load_configs(paths: list[str], dotlist: list[str] | None = None) -> DictConfig:
    """Load YAML files and merge them left to right, then apply `a.b=c` overrides; remember which file said what.

    A file's `for_model` sections that match the model (see FOR_MODEL_KEY) are merged right after that file; the
    result has no `for_model` key.
    """
    import os

    _CONFIG_SOURCES.clear()
    merged = OmegaConf.create()
    for path in paths:
        if os.path.isdir(path):
            yamls = sorted(f for f in os.listdir(path) if f.endswith((".yaml", ".yml")))[:3]
            hint = f", e.g. {', '.join(os.path.join(path, f) for f in yamls)}" if yamls else ""
            raise ConfigError(f"config {path} is a folder; pass YAML files{hint}")
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            cfg = OmegaConf.load(path)
        except Exception as err:  # YAML syntax errors carry line numbers; keep them
            raise ConfigError(f"cannot parse config file {path}: {err}") from err
        sections = cfg.pop(FOR_MODEL_KEY, None) if isinstance(cfg, DictConfig) else None
        _CONFIG_SOURCES.append((path, cfg))
        merged = OmegaConf.merge(merged, cfg)
        if sections is not None:
            for source, section in _model_sections(path, sections, merged):
                _CONFIG_SOURCES.append((source, section))
                merged = OmegaConf.merge(merged, section)
    if dotlist:
        overrides = OmegaConf.from_dotlist(list(dotlist))
        _CONFIG_SOURCES.append(("<command line>", overrides))
        merged = OmegaConf.merge(merged, overrides)
    return merged


def _sources_for(key_path: str) -> list[str]:
    """Files among the registered sources that define `key_path`."""
    found = []
    for path, cfg in _CONFIG_SOURCES:
        try:
            if key_path and OmegaConf.select(cfg, key_path, default=None, throw_on_missing=False) is not None:
                found.append(path)
        except Exception:
            continue
    return found


def _where(key_path: str) -> str:
    """Human-readable location of a config key: `key (from file.yaml)`."""
    key = key_path or "<config>"
    files = _sources_for(key_path)
    return f"{key} (from {', '.join(files)})" if files else key


def _key_path_of(config: Any, fallback: str) -> str:
    """Full dotted key of an OmegaConf node, or `fallback` for plain dicts."""
    if isinstance(config, (DictConfig, ListConfig)):
        try:
            key = config._get_full_key(None)
            if key:
                return str(key)
        except Exception:
            pass
    return fallback


def get_obj_from_str(string: str, reload: bool = False) -> Any:
    """Import `package.module.Name` and return `Name`, if the allow-list in `ldm.targets` permits it.

    The name is checked before anything is imported and the object after; TargetNotAllowed (an ImportError) says why.
    """
    module, _, name = string.rpartition(".")
    if not module:
        raise ImportError(f"'{string}' is not a dotted path of the form package.module.Name")
    check_name(string)
    mod = importlib.import_module(module)
    if reload:
        mod = importlib.reload(mod)
    if not hasattr(mod, name):
        raise ImportError(f"module '{module}' has no attribute '{name}'")
    obj = getattr(mod, name)
    check_object(string, obj)
    return obj


def resolve_target(target_path: str, key_path: str) -> Any:
    """The object a config's `target` names; a CompVis / taming name that cannot be imported falls back to ours
    (LEGACY_TARGETS). Errors (including targets outside the allow-list of `ldm.targets`) name `key_path` and its
    file."""
    try:
        return get_obj_from_str(target_path)
    except TargetNotAllowed as err:
        raise ConfigError(f"{_where(key_path)}: refusing target '{target_path}': {err}") from None
    except ImportError as err:
        if target_path not in LEGACY_TARGETS:
            raise ConfigError(f"{_where(key_path)}: cannot import '{target_path}': {err}") from err
        return get_obj_from_str(LEGACY_TARGETS[target_path])
    except Exception as err:
        raise ConfigError(f"{_where(key_path)}: cannot import '{target_path}': {err}") from err


def _accepted_parameters(target: Any) -> tuple[set[str] | None, set[str]]:
    """Keyword names a callable accepts (None = anything) and those it requires.

    Follows `**kwargs` up a class's MRO, because CompVis classes forward unknown keys to their base class.
    """
    accepted: set[str] = set()
    required: set[str] = set()
    callables = [c.__init__ for c in inspect.getmro(target) if "__init__" in c.__dict__] if inspect.isclass(target) else [target]
    first = True
    for fn in callables:
        owner = getattr(fn, "__qualname__", "").split(".")[0]
        module = getattr(fn, "__module__", "") or ""
        if not first and (module.startswith(("torch", "pytorch_lightning", "lightning")) or owner == "object"):
            # `**kwargs` still open when we reach a framework base class: the class below swallows extra keys on
            # purpose (e.g. IdentityFirstStage), so any key is accepted.
            return None, required
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return None, required
        params = list(sig.parameters.values())
        if inspect.isclass(target) and params and params[0].name == "self":
            params = params[1:]
        var_kw = False
        for p in params:
            if p.kind is p.VAR_KEYWORD:
                var_kw = True
            elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                accepted.add(p.name)
                if first and p.default is p.empty:
                    required.add(p.name)
        first = False
        if not var_kw:
            return accepted, required
    return (accepted, required) if inspect.isclass(target) else (None, required)


# Scalar types a config value can be checked against; a string where one of these is expected is an error.
_SCALARS = {"int": int, "float": float, "bool": bool}


def _expected_scalars(param: inspect.Parameter) -> tuple[str, ...] | None:
    """Names of the scalar types a parameter takes ("int", "float", "bool"), or None when it may take anything else.

    Read from a simple annotation (`int`, `float | None`, ...; string annotations included) or, without one, from
    the type of its default value."""
    annotation = param.annotation
    if annotation is not inspect.Parameter.empty:
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
        names = [t.strip() for t in str(text).replace("Optional[", "").rstrip("]").split("|")]
        scalars = tuple(n for n in names if n in _SCALARS)
        return scalars if scalars and all(n in _SCALARS or n == "None" for n in names) else None
    default = param.default
    if isinstance(default, (bool, int, float)) and default is not None:
        return (type(default).__name__,)
    return None


def _parses_as(text: str, kind: str) -> bool:
    """Whether a string reads as the scalar kind (a quoted "1e-4" where a float is expected passes, as before)."""
    if kind == "bool":
        return text.strip().lower() in ("true", "false")
    try:
        _SCALARS[kind](text)
    except ValueError:
        return False
    return True


def _check_scalar_types(target: Any, kwargs: dict[str, Any], where: str, target_path: str) -> None:
    """A string given where a number or bool is expected (e.g. `model.params.embed_dim=abc`) is a ConfigError that
    names the key, instead of a failure deep inside the model."""
    try:
        fn = target.__init__ if inspect.isclass(target) else target
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    for name, value in kwargs.items():
        if not isinstance(value, str) or name not in params:
            continue
        expected = _expected_scalars(params[name])
        if expected and not any(_parses_as(value, kind) for kind in expected):
            raise ConfigError(f"{_where(where + '.params.' + name)}: {target_path} expects {' or '.join(expected)} "
                              f"for '{name}', got the string {value!r}")


def instantiate_from_config(config: Any, key_path: str | None = None, **extra_kwargs: Any) -> Any:
    """Build the object described by `{target: dotted.path, params: {...}}`.

    Errors name the config key path and the file that defined it. The CompVis placeholder strings
    `__is_first_stage__` / `__is_unconditional__` return None, as in the original.
    """
    where = _key_path_of(config, key_path or "<config>")
    if isinstance(config, str) and config in SPECIAL_CONFIG_STRINGS:
        return None
    if not isinstance(config, Mapping) and not isinstance(config, DictConfig):
        raise ConfigError(f"{_where(where)}: expected a mapping with a 'target' key, got {type(config).__name__}: {config!r}")
    if "target" not in config:
        raise ConfigError(f"{_where(where)}: missing 'target' key (expected {{target: package.module.Class, params: {{...}}}})")
    target_path = str(config["target"])
    target = resolve_target(target_path, where + ".target")

    params = config.get("params", None)
    if params is None:
        params = {}
    elif not isinstance(params, (Mapping, DictConfig)):
        raise ConfigError(f"{_where(where + '.params')}: 'params' must be a mapping, got {type(params).__name__}")
    kwargs = dict(params.items()) if isinstance(params, DictConfig) else dict(params)
    kwargs.update(extra_kwargs)

    accepted, required = _accepted_parameters(target)
    if accepted is not None:
        for name in kwargs:
            if name not in accepted:
                close = difflib.get_close_matches(name, sorted(accepted), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(
                    f"{_where(where + '.params.' + name)}: {target_path} has no parameter '{name}'{hint}; "
                    f"accepted: {', '.join(sorted(accepted))}"
                )
    _check_scalar_types(target, kwargs, where, target_path)
    missing = sorted(required - set(kwargs))
    if missing:
        raise ConfigError(f"{_where(where + '.params')}: {target_path} needs parameter(s) {', '.join(missing)}")
    try:
        return target(**kwargs)
    except Exception as err:
        # Keep the original error (type and traceback) and say which config entry was being built.
        if hasattr(err, "add_note") and not getattr(err, "_ldm_noted", False):
            err.add_note(f"while building {target_path} from config {_where(where)}")
            err._ldm_noted = True
        raise


def count_params(model: Any, verbose: bool = False) -> int:
    """Number of parameters of a module, optionally printed in millions."""
    total = sum(p.numel() for p in model.parameters())
    if verbose:
        print(f"{model.__class__.__name__} has {total * 1.e-6:.2f} M params.")
    return total


def batches_seen(trainer: Any) -> int:
    """Training batches completed so far; inside `training_step` this is the 0-based index of the current batch.

    Restored on resume. Lightning's `global_step` counts optimizer steps, so a GAN with a generator and a discriminator step advances it
    twice per batch; CompVis step settings (`disc_start`, image logging cadence, `max_steps`) mean batches.
    """
    if trainer is None:
        return 0
    try:
        return int(trainer.fit_loop.epoch_loop.batch_progress.total.completed)
    except AttributeError:
        return int(getattr(trainer, "global_step", 0))
