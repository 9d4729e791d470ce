"""Confidence intervals for accuracies measured on a finite number of samples."""

from __future__ import annotations

import math

Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927): (low, high) in [0, 1].

    Unlike the normal approximation p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and is not zero-width at p = 0 or 1,
    which matters for the near-perfect accuracies a checker reports on a few hundred samples.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: rounding must not move them
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high
