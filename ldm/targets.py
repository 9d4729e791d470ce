"""Which `target:` names a config may instantiate: an allow-list, because a config is code.

A config's `target: a.b.C` imports module `a.b` and calls `C(**params)`. Without a limit, a run folder someone shares
(its saved `configs/*.yaml`) could name `os.system` or any importable module and run code when a script loads it.
So a target must

- live under an allowed module prefix (`ALLOWED_PREFIXES`: this package, the CompVis `main`/`taming` names, the torch
  and Lightning classes configs use), checked on the name *before* anything is imported, and on the resolved
  object's `__module__` (so a name re-exported into an allowed module does not count); and
- be a class, or a function marked with `@config_target` (a factory written to be named in configs).

Users add prefixes for their own code explicitly: `LDM_ALLOW_TARGETS=my_pkg,other.mod` in the environment, or
`main.py --allow-target my_pkg`. There is deliberately no config key for it: a shared config must not be able to
allow itself.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

# Environment variable with extra allowed prefixes, comma-separated.
ALLOW_ENV = "LDM_ALLOW_TARGETS"

# Module prefixes whose classes configs may name. A prefix matches itself and its submodules (`torch.nn` matches
# `torch.nn.modules.linear`, not `torch.nnx`).
ALLOWED_PREFIXES = (
    "ldm", "main", "taming",
    "torch.nn", "torch.optim",
    "pytorch_lightning.callbacks", "pytorch_lightning.strategies", "pytorch_lightning.loggers",
    "pytorch_lightning.plugins", "pytorch_lightning.profilers",
    "lightning.pytorch.callbacks", "lightning.pytorch.strategies", "lightning.pytorch.loggers",
    "lightning.pytorch.plugins", "lightning.pytorch.profilers",
)

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__ldm_config_target__"


class TargetNotAllowed(ImportError):
    """A config names a target outside the allow-list (or a non-class that is not a marked factory)."""


def config_target(fn: F) -> F:
    """Mark a function as a factory that configs may name as `target:` (classes need no mark)."""
    setattr(fn, _MARK, True)
    return fn


def allowed_prefixes(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The built-in prefixes plus `$LDM_ALLOW_TARGETS` and `extra`."""
    from_env = [p.strip() for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip()]
    return ALLOWED_PREFIXES + tuple(from_env) + tuple(p for p in extra if p)


def _describe() -> str:
    extra = allowed_prefixes()[len(ALLOWED_PREFIXES):]
    return "ldm, main, taming, torch.nn, torch.optim, Lightning callbacks/strategies/loggers/plugins/profilers" + (
        f", {', '.join(extra)}" if extra else "")


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def check_name(path: str) -> None:
    """Raise TargetNotAllowed unless the dotted `path` lies under an allowed prefix (nothing is imported)."""
    if not _under(path, allowed_prefixes()):
        raise TargetNotAllowed(
            f"'{path}' is not in an allowed package ({_describe()}); if it is your own code, allow it explicitly "
            f"with {ALLOW_ENV}={path.partition('.')[0]} or main.py --allow-target {path.partition('.')[0]}")


def check_object(path: str, obj: Any) -> None:
    """Raise TargetNotAllowed unless `obj` (what `path` resolved to) is an allowed class or marked factory."""
    module = getattr(obj, "__module__", None) or ""
    if not (inspect.isclass(obj) or getattr(obj, _MARK, False)):
        kind = "module" if inspect.ismodule(obj) else type(obj).__name__
        raise TargetNotAllowed(f"'{path}' is a {kind}, not a class: configs may only name classes "
                               "(and factory functions marked with ldm.targets.config_target)")
    if not _under(module, allowed_prefixes()):
        raise TargetNotAllowed(f"'{path}' is defined in '{module}', which is not under an allowed module prefix "
                               f"(re-exported names do not count); allow '{module.partition('.')[0]}' with {ALLOW_ENV} "
                               "or --allow-target")
