"""`DiffusionWrapper` (routes conditioning into the UNet as the CompVis original) and the method-free `model_fn`.

Conditioning reaches the wrapper as keyword lists, the original `apply_model` convention:
`c_concat` (channel-concatenated to x), `c_crossattn` (concatenated along the token dim, the UNet's `context`),
and, for the SD2 `*-adm` keys, `c_adm` (the UNet's `y`). `wrapper_kwargs` turns any conditioning value (None, a
tensor, a list of tensors, or such a dict) into those keywords; `make_model_fn` closes over a wrapper so samplers get
a plain `model_fn(x, t, cond)` and never see a LightningModule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ldm.diffusion.parameterization import ModelFn
from ldm.util import instantiate_from_config

# The original's accepted keys, plus the Stable Diffusion 2 `hybrid-adm` / `crossattn-adm` variants.
CONDITIONING_KEYS = (None, "concat", "crossattn", "hybrid", "adm", "hybrid-adm", "crossattn-adm")
WRAPPER_INPUTS = ("c_concat", "c_crossattn", "c_adm")


def _as_list(value: Any) -> list | None:
    """None stays None; a tensor becomes [tensor]; lists/tuples are copied as lists."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def wrapper_kwargs(cond: Any, conditioning_key: str | None) -> dict[str, list]:
    """Keyword arguments for `DiffusionWrapper.forward` from a conditioning value (original `apply_model` rule).

    A dict is taken as `{c_concat: [...], c_crossattn: [...], c_adm: ...}` (single tensors are wrapped in lists);
    anything else is one conditioning: `c_concat` for the 'concat' key, `c_crossattn` otherwise.
    """
    if cond is None:
        return {}
    if isinstance(cond, Mapping):
        unknown = sorted(set(cond) - set(WRAPPER_INPUTS))
        if unknown:
            raise ValueError(f"conditioning dict has unknown keys {unknown}; expected some of {WRAPPER_INPUTS}")
        return {k: _as_list(v) if k != "c_adm" else v for k, v in cond.items()}
    key = "c_concat" if conditioning_key == "concat" else "c_crossattn"
    return {key: _as_list(cond)}


class DiffusionWrapper(nn.Module):
    """Holds the UNet as `diffusion_model` and feeds it the conditioning by `conditioning_key` (CompVis names).

    None: unconditional. concat: x and c_concat concatenated along channels. crossattn: c_crossattn concatenated
    along the token dim as `context`. hybrid: both. adm: `y = c_crossattn[0]` (a class embedding or label).
    hybrid-adm / crossattn-adm (SD2): hybrid / crossattn plus `y = c_adm`.
    """

    def __init__(self, diff_model_config: Any, conditioning_key: str | None):
        super().__init__()
        if conditioning_key not in CONDITIONING_KEYS:
            raise ValueError(f"unknown conditioning_key {conditioning_key!r}; expected one of {CONDITIONING_KEYS}")
        self.diffusion_model = instantiate_from_config(diff_model_config, key_path="model.params.unet_config")
        self.conditioning_key = conditioning_key

    def conditioning_inputs(self, cond: Any) -> dict[str, Any]:
        """`forward`'s keyword arguments for conditioning in any accepted form (a tensor, a list, or a dict of
        c_concat / c_crossattn / c_adm): the one place conditioning is normalised (`wrapper_kwargs`)."""
        return wrapper_kwargs(cond, self.conditioning_key)

    def route(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """UNet output for x_t at timesteps t with conditioning in any accepted form."""
        return self(x, t, **self.conditioning_inputs(cond))

    def _required(self, name: str, value: list | None) -> list:
        """`value` (a list of conditioning tensors), or a ValueError naming what this conditioning_key needs."""
        if not value:
            raise ValueError(f"conditioning_key {self.conditioning_key!r} needs {name} (a non-empty list of tensors)")
        return value

    def forward(self, x: torch.Tensor, t: torch.Tensor, c_concat: list | None = None,
                c_crossattn: list | None = None, c_adm: torch.Tensor | None = None) -> torch.Tensor:
        """UNet output for x_t at timesteps t with the conditioning routed as described in the class docstring."""
        key = self.conditioning_key
        if key is None:
            return self.diffusion_model(x, t)
        if key == "concat":
            return self.diffusion_model(torch.cat([x, *self._required("c_concat", c_concat)], dim=1), t)
        if key == "crossattn":
            return self.diffusion_model(x, t, context=torch.cat(self._required("c_crossattn", c_crossattn), dim=1))
        if key == "hybrid":
            xc = torch.cat([x, *self._required("c_concat", c_concat)], dim=1)
            return self.diffusion_model(xc, t, context=torch.cat(self._required("c_crossattn", c_crossattn), dim=1))
        if key == "adm":
            return self.diffusion_model(x, t, y=self._required("c_crossattn", c_crossattn)[0])
        if c_adm is None:
            raise ValueError(f"conditioning_key {key!r} needs c_adm (the UNet's y)")
        context = torch.cat(self._required("c_crossattn", c_crossattn), dim=1)
        if key == "hybrid-adm":
            xc = torch.cat([x, *self._required("c_concat", c_concat)], dim=1)
            return self.diffusion_model(xc, t, context=context, y=c_adm)
        return self.diffusion_model(x, t, context=context, y=c_adm)  # crossattn-adm


def make_model_fn(wrapper: DiffusionWrapper, params: Mapping[str, torch.Tensor] | None = None) -> ModelFn:
    """A plain `model_fn(x, t, cond) -> raw output` over `wrapper`; with `params`, those weights are used instead
    of the wrapper's own (`torch.func.functional_call`, so nothing is swapped in or out of the module)."""

    def model_fn(x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """Raw network output (eps, x0 or v) at x_t and integer timesteps t."""
        if params is None:
            out = wrapper.route(x, t, cond)
        else:
            out = torch.func.functional_call(wrapper, dict(params), (x, t), wrapper.conditioning_inputs(cond),
                                             strict=False)
        return out[0] if isinstance(out, tuple) else out

    return model_fn


def ema_parameters(wrapper: nn.Module, ema: Any) -> dict[str, torch.Tensor]:
    """{parameter name: EMA shadow} for the wrapper's trainable parameters (LitEma built over that wrapper)."""
    shadows = dict(ema.named_buffers(recurse=False))
    out = {}
    for name, param in wrapper.named_parameters():
        if not param.requires_grad:
            continue
        s_name = ema.m_name2s_name.get(name)
        if s_name is None or s_name not in shadows:
            raise KeyError(f"the EMA has no shadow for {name!r}; was it built over this DiffusionWrapper?")
        out[name] = shadows[s_name]
    return out
