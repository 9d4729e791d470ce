"""Wilson intervals: known values, inside [0, 1], non-degenerate at 0 and n, narrower with more samples."""
import pytest

from ldm.eval.intervals import wilson_interval


def test_known_values_and_edges():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0.15 < high < 0.17  # not the zero-width interval of the normal approximation
    low, high = wilson_interval(256, 256)
    assert high == 1.0 and 0.98 < low < 0.99
    assert wilson_interval(230, 256)[1] - wilson_interval(230, 256)[0] < wilson_interval(23, 26)[1] - \
        wilson_interval(23, 26)[0]


def test_bad_counts():
    with pytest.raises(ValueError, match="n must be positive"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)
