"""The sampling progress bar counts the steps the sampler actually runs (its timestep grid, not `steps`)."""
import pytest
import torch

from ldm.inference.sampling import initial_noise, progress, sample


class RecordingBar:
    """Stands in for tqdm: remembers (n, total) after every update."""

    instances = []

    def __init__(self, total=None, **kwargs):
        self.total, self.n, self.seen, self.closed = total, 0, [], False
        RecordingBar.instances.append(self)

    def reset(self, total=None):
        self.total, self.n = total, 0

    def update(self, k=1):
        self.n += k
        self.seen.append((self.n, self.total))

    def close(self):
        self.closed = True


@pytest.fixture
def bars(monkeypatch):
    RecordingBar.instances = []
    monkeypatch.setattr("tqdm.auto.tqdm", RecordingBar)
    return RecordingBar.instances


@pytest.mark.parametrize("sampler, steps, strength, expected", [
    ("ddim", 3, 1.0, 4),  # uniform spacing over T = 100: range(0, 100, 33) gives 4 indices for 3 steps
    ("ddim", 3, 0.5, 2),  # img2img keeps floor(0.5 * 4) of them
    ("plms", 3, 1.0, 4),
    ("euler", 3, 1.0, 3),
])
def test_bar_total_is_the_number_of_steps_run(uncond_model, bars, sampler, steps, strength, expected):
    model, _ = uncond_model
    noise = initial_noise((4, 8, 8), [0])
    calls = []
    opts = {"x_init": torch.zeros_like(noise), "strength": strength} if strength < 1 else {}
    sample(model, noise, sampler, steps, callback=lambda i, t, x, x0: calls.append(i), **opts)
    (bar,) = bars
    assert bar.seen == [(i + 1, expected) for i in range(expected)]  # the right total from the first step on
    assert calls == list(range(expected)) and bar.closed


def test_bar_grows_for_a_sampler_that_announces_nothing(bars):
    with progress(2) as step:
        for i in range(3):
            step(i, 0, None, None)
    assert bars[0].seen == [(1, 2), (2, 2), (3, 3)]


def test_no_bar_passes_the_callback_through(bars):
    def callback(i, t, x, x0):
        pass

    with progress(5, enabled=False, callback=callback) as step:
        assert step is callback
    assert bars == []
