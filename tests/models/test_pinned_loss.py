"""The training loss of a tiny DDPM and LatentDiffusion stays what it was before issue 16's refactor: `p_losses` at
fixed t and noise (train and eval prefixes) and the first `shared_step`, loss and log entries within 1e-5 (the U-Net
may be re-fused within that). Cases and generator: `pinned_loss.py`."""
import json

import pinned_loss
import pytest

ATOL = 1e-5

with open(pinned_loss.PIN_FILE) as _f:
    PINS = json.load(_f)


def test_pins_cover_every_case():
    assert set(PINS) == set(pinned_loss.MODELS)
    for values in PINS.values():
        keys = {k.rsplit("/", 1)[-1] for k in values}
        assert {"loss", "loss_simple", "loss_vlb"} <= keys


@pytest.mark.parametrize("name", list(pinned_loss.MODELS))
def test_loss_matches_the_pin(name):
    got = pinned_loss.loss_values(name)
    assert set(got) == set(PINS[name])
    for key, want in PINS[name].items():
        assert got[key] == pytest.approx(want, abs=ATOL, rel=0), f"{name} {key}: {got[key]} != pinned {want}"
