"""Regional `torch.compile` of the networks (U-Net and autoencoder blocks), with a checked fallback to eager.

Regional: instead of one graph for the whole network, every repeated block (ResBlock, SpatialTransformer, ...) is
compiled in place with `nn.Module.compile()`. Blocks of the same structure share compiled code, so a U-Net compiles in
a fraction of the time of a whole-model `torch.compile`, and because nothing is wrapped (no `OptimizedModule`) the
state_dict keys stay free of `_orig_mod.`: checkpoints of a compiled model load into an uncompiled one and back.

The backend is probed once per device type by compiling and running a two-op function; when that fails (no C++
compiler for the CPU backend, no Triton for CUDA, an unsupported platform) the network stays eager and a warning says
why, so `compile: true` never stops a run that would work without it.
"""

from __future__ import annotations

import functools
import logging
import warnings

import torch
from torch import nn

log = logging.getLogger(__name__)

# Dynamo keeps one cache per code object: all blocks of one class share their `forward`, and every block whose shapes
# or structure differ adds an entry. A U-Net has a few dozen distinct blocks, more than dynamo's default of 8 entries
# before it gives up on that code (and silently runs it eager); the limit is raised to this when compiling regions.
RECOMPILE_LIMIT = 64


def region_types() -> tuple[type[nn.Module], ...]:
    """The block classes compiled one by one: U-Net ResBlock / SpatialTransformer / AttentionBlock, AE blocks."""
    from ldm.modules.attention import SpatialTransformer
    from ldm.modules.diffusionmodules.model import AttnBlock, ResnetBlock
    from ldm.modules.diffusionmodules.unet_blocks import AttentionBlock, ResBlock

    return (ResBlock, SpatialTransformer, AttentionBlock, ResnetBlock, AttnBlock)


@functools.cache
def _probe(device_type: str) -> str | None:
    try:
        fn = torch.compile(lambda t: torch.sin(t) * 2 + 1, fullgraph=True)
        t = torch.ones(4, device=device_type)
        if not torch.allclose(fn(t), torch.sin(t) * 2 + 1):
            return "a compiled test function returned a wrong result"
    except Exception as e:  # noqa: BLE001 -- any failure means the backend cannot be used here
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"{type(e).__name__}: {first_line}"
    return None


def compile_unavailable_reason(device: torch.device | str) -> str | None:
    """Why torch.compile cannot run on `device` here, or None when it can (probed once per device type)."""
    return _probe(torch.device(device).type)


def compile_regions(module: nn.Module, regions: tuple[type[nn.Module], ...] | None = None, **compile_kwargs) -> int:
    """Compile in place every outermost submodule of a `regions` type (whole `module` when it has none).

    Returns the number of compiled modules. State_dict keys are unchanged (`nn.Module.compile` wraps no module).
    `compile_kwargs` go to `torch.compile` (default `dynamic=False`).
    """
    regions = region_types() if regions is None else regions
    # Static shapes: blocks of one class come in a handful of sizes, each compiled once; dynamic-shape graphs shared
    # by all sizes trip inductor on GroupNorm's size arithmetic (torch 2.14) and run slower.
    compile_kwargs.setdefault("dynamic", False)

    def visit(sub: nn.Module) -> int:
        if isinstance(sub, regions):
            sub.compile(**compile_kwargs)
            return 1
        return sum(visit(child) for child in sub.children())

    import torch._dynamo  # for its config below

    compiled = visit(module)
    if not compiled:
        module.compile(**compile_kwargs)
        compiled = 1
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return compiled


def compile_or_warn(module: nn.Module, device: torch.device | str, what: str, **compile_kwargs) -> bool:
    """`compile_regions(module)` when torch.compile works on `device`; otherwise warn, keep it eager, return False."""
    reason = compile_unavailable_reason(device)
    if reason is None:
        try:
            n = compile_regions(module, **compile_kwargs)
        except Exception as e:  # noqa: BLE001 -- e.g. an option this torch does not know
            reason = f"{type(e).__name__}: {e}"
            if is_compiled(module):  # some blocks were compiled in place before the error
                warnings.warn(f"compile: true: compiling {what} failed part way ({reason}); the blocks compiled "
                              "before the error stay compiled, the rest run eagerly (same results)", RuntimeWarning,
                              stacklevel=2)
                return False
        else:
            log.info("torch.compile: %s compiled as %d region(s)", what, n)
            return True
    warnings.warn(f"compile: true but torch.compile is unavailable on {torch.device(device).type} ({reason}); "
                  f"{what} runs eagerly (same results, no speed-up)", RuntimeWarning, stacklevel=2)
    return False


def is_compiled(module: nn.Module) -> bool:
    """True when `module` or any submodule was compiled in place with `nn.Module.compile()`."""
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in module.modules())
