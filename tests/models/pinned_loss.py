"""Regression pins of the training loss of a tiny DDPM and a tiny LatentDiffusion (the test configs of
`tests/models/diffusion/diffusion_configs.py`), and their generator.

Weights are set by parameter name from name-seeded generators (`named_init`), so the pins depend on the maths and
the state_dict names, not on the order in which modules create their parameters. Each case records the loss and
its log dict (loss_simple, loss_vlb, loss) of `p_losses` at fixed t and noise, in train and eval mode, and of
`shared_step` (the first training step's loss: random t and noise from torch's global RNG seeded with 0).

Regenerate (on the code the pins should describe; they were first made from the commit before issue 16):

    python tests/models/pinned_loss.py --write    # tests/models/pinned_loss.json
    python tests/models/pinned_loss.py            # compare the current code with the stored pins
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PIN_FILE = os.path.join(HERE, "pinned_loss.json")
sys.path.insert(0, os.path.join(HERE, "diffusion"))

import diffusion_configs as dc  # noqa: E402

MODELS = {"ddpm": lambda: dc.ddpm_config(),
          "ddpm_x0_l1_elbo": lambda: dc.ddpm_config(parameterization="x0", loss_type="l1", original_elbo_weight=0.1),
          "ldm_class": lambda: dc.ldm_config("class"),
          "ldm_v_min_snr": lambda: dc.ldm_config("class", parameterization="v", l_simple_weight=0.5,
                                                 original_elbo_weight=0.1, min_snr_gamma=5.0)}


def name_seed(name: str) -> int:
    """A stable 31-bit seed from a parameter name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little") & 0x7FFFFFFF


@torch.no_grad()
def named_init(model: torch.nn.Module) -> None:
    """Every parameter from a generator seeded by its name: fan-in-scaled normals for weights with >= 2 dims,
    1 + 0.1 z for 1-d weights (norm scales), 0.1 z for biases and the rest."""
    for name, p in model.named_parameters():
        z = torch.randn(p.shape, generator=torch.Generator().manual_seed(name_seed(name)), dtype=torch.float64)
        if p.dim() >= 2:
            value = z / math.sqrt(p[0].numel())
        elif name.endswith("weight"):
            value = 1 + 0.1 * z
        else:
            value = 0.1 * z
        p.copy_(value.to(p.dtype))


def build(name: str):
    """The tiny model of case `name` with `named_init` weights."""
    from ldm.util import instantiate_from_config

    model = instantiate_from_config(MODELS[name]())
    named_init(model)
    return model


def fixed_inputs(model, batch: dict):
    """(x_start, encoded cond or None, t, noise) of the fixed batch: t and noise from their own seeded generators."""
    torch.manual_seed(11)  # the first stage samples its posterior from the global RNG
    if hasattr(model, "first_stage_model"):
        z, c = model.get_input(batch, model.first_stage_key)
        if model.cond_stage_trainable:
            c = model.get_learned_conditioning(c)
    else:
        z, c = model.get_input(batch, model.first_stage_key), None
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, model.num_timesteps, (z.shape[0],), generator=g)
    noise = torch.randn(z.shape, generator=g)
    return z, c, t, noise


def loss_values(name: str) -> dict[str, float]:
    """The pinned numbers of one case: 'p_losses/<mode>/<key>' and 'shared_step/<key>'."""
    model = build(name)
    batch = dc.batch(n=2)
    out: dict[str, float] = {}
    for mode in ("train", "eval"):
        model.train(mode == "train")
        z, c, t, noise = fixed_inputs(model, batch)
        args = (z, t) if c is None else (z, c, t)
        with torch.no_grad():
            loss, logs = model.p_losses(*args, noise=noise)
        out[f"p_losses/{mode}/loss"] = float(loss)
        out.update({f"p_losses/{mode}/{k}": float(v) for k, v in logs.items()})
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        loss, logs = model.shared_step(batch)
    out["shared_step/loss"] = float(loss)
    out.update({f"shared_step/{k}": float(v) for k, v in logs.items()})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write the pins to {PIN_FILE}")
    args = parser.parse_args(argv)
    import ldm

    print(f"ldm from {os.path.dirname(ldm.__file__)}", file=sys.stderr)
    torch.set_num_threads(1)
    values = {name: loss_values(name) for name in MODELS}
    if args.write:
        tmp = PIN_FILE + ".tmp"
        with open(tmp, "w") as f:
            json.dump(values, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, PIN_FILE)
        print(f"wrote {PIN_FILE}")
        return 0
    with open(PIN_FILE) as f:
        pins = json.load(f)
    worst = max(abs(values[m][k] - pins[m][k]) for m in pins for k in pins[m])
    print(f"max |diff| {worst:.3g}")
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
