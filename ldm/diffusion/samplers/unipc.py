"""UniPC (Zhao et al. 2023): a unified predictor (UniP-p) and corrector (UniC) for the data-prediction ODE in
lambda = -log sigma. The corrector reuses the model call at the predicted point, which the next step needs anyway,
so it raises the order by one at no extra cost: one model call per step, as DPM-Solver++(2M).
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch

from ldm.diffusion.samplers.context import Noise, SigmaDenoise, Step
from ldm.diffusion.samplers.signature import sigma_sampler

UNIPC_VARIANTS = ("bh1", "bh2")  # B(h) = h or e^h - 1 (Zhao et al. 2023, sec. 3.1 / app. C)


def unipc_coefficients(rks: list[float], h: float, variant: str = "bh2") -> tuple[float, list[float], list[float]]:
    """(B(h), predictor rhos, corrector rhos) for relative offsets rks = (lambda_k - lambda_0) / h of the history
    (newest first, excluding the current point), from R rho = phi_k(h) k! / B(h) (UniPC Algorithm 2/3)."""
    hh = -h  # data prediction integrates in -lambda
    b_h = hh if variant == "bh1" else math.expm1(hh)
    nodes = torch.tensor(rks + [1.0], dtype=torch.float64)
    order = len(nodes)
    phi = math.expm1(hh) / hh - 1
    factorial, rows, rhs = 1, [], []
    for i in range(1, order + 1):
        rows.append(nodes ** (i - 1))
        rhs.append(phi * factorial / b_h)
        factorial *= i + 1
        phi = phi / hh - 1 / factorial
    r_mat, b = torch.stack(rows), torch.tensor(rhs, dtype=torch.float64)
    if order == 1:
        rho_p, rho_c = [], [0.5]
    else:
        # UniP-2 uses the fixed weight 1/2 (the h -> 0 limit of the 1x1 system), as the paper's implementation
        rho_p = [0.5] if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b[:-1]).tolist()
        rho_c = torch.linalg.solve(r_mat, b).tolist()
    return b_h, rho_p, rho_c


def unipc(denoise: SigmaDenoise, x: torch.Tensor, sigmas: list[float], step: Step, noise: Noise, *, order: int = 2,
          variant: str = "bh2", lower_order_final: bool = True) -> torch.Tensor:
    """UniPC with data prediction: UniP-`order` predicts sigma_{i+1} from the last `order` x0 predictions, UniC
    corrects it with the prediction at the new point (order + 1 accurate). Warm-up raises the order one step at a
    time; `lower_order_final` lowers it over the last steps of short runs (< 10 steps). order 2 with "bh2" is the
    paper's choice for guided sampling, order 3 for unconditional. One model call per step."""
    if order not in (1, 2, 3):
        raise ValueError(f"unipc order must be 1, 2 or 3, got {order}")
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"unknown unipc variant {variant!r}; expected one of {UNIPC_VARIANTS}")
    n = len(sigmas) - 1
    hist = [(denoise(x, sigmas[0]), -math.log(sigmas[0]))]  # (x0_pred, lambda), newest last
    for i, (s, s_next) in enumerate(pairwise(sigmas)):
        m0, lam0 = hist[-1]
        if s_next == 0:
            x = step(i, m0, m0)
            continue
        lam_t = -math.log(s_next)
        h = lam_t - lam0
        p = min(order, len(hist))
        if lower_order_final and n < 10:
            p = min(p, n - i)  # counts the final step to sigma = 0 (which is first order anyway)
        past = hist[-p:-1][::-1]  # newest first, without the current point
        b_h, rho_p, rho_c = unipc_coefficients([(lam - lam0) / h for _, lam in past], h, variant)
        diffs = [(m - m0) * (h / (lam - lam0)) for m, lam in past]  # D1_k = (m_k - m_0) / r_k
        x_lin = (s_next / s) * x - math.expm1(-h) * m0  # first order (DDIM) part
        x_pred = x_lin - b_h * sum((r * d for r, d in zip(rho_p, diffs)), torch.zeros_like(x))
        if i + 1 == n:  # no later step needs a model call at the new point: keep the prediction
            x = step(i, x_pred, m0)
            continue
        m_t = denoise(x_pred, s_next)
        corr = sum((r * d for r, d in zip(rho_c[:-1], diffs)), rho_c[-1] * (m_t - m0))
        x = step(i, x_lin - b_h * corr, m0)
        hist = (hist + [(m_t, lam_t)])[-order:]
    return x


sample_unipc = sigma_sampler("unipc", unipc, steps=20)
