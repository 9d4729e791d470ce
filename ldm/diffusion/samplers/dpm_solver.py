"""DPM-Solver++ (Lu et al. 2022b): exponential integrators of the data-prediction ODE in lambda = -log sigma.

In the VE state x = x0 + sigma eps the exact step from level s to t, h = lambda_t - lambda_s, is
x_t = (sigma_t / sigma_s) x_s + int_0^h e^(tau - h) x0_pred(lambda_s + tau) dtau; the solvers differ in how they
approximate x0_pred over the step: constant (first order = DDIM), a one-step-back difference (2M), a midpoint
evaluation (2S), or two-steps-back differences (3M). The last step to sigma = 0 returns the x0 prediction itself.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch

from ldm.diffusion.samplers.context import Noise, SigmaDenoise, Step
from ldm.diffusion.samplers.sigma_space import ancestral_step
from ldm.diffusion.samplers.signature import sigma_sampler


def exp_step_coefficients(h: float) -> tuple[float, float, float, float]:
    """Weights of x, x0_pred, its lambda-derivative and half its second derivative in the exact step of length h:
    e^-h, 1 - e^-h, h - 1 + e^-h, h^2 - 2h + 2 - 2e^-h (x0_pred Taylor-expanded in lambda, Lu et al. 2022a, sec. 3)."""
    em1 = math.expm1(-h)
    return math.exp(-h), -em1, h + em1, h * h - 2 * h - 2 * em1


def dpmpp_2m(denoise: SigmaDenoise, x: torch.Tensor, sigmas: list[float], step: Step, noise: Noise) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): x0_pred extrapolated as (1 + 1/2r) D_i - (1/2r) D_{i-1} with
    r = h_{i-1} / h_i; the first step is first order. One model call per step."""
    return dpmpp_2m_sde(denoise, x, sigmas, step, noise, eta=0.0)


def dpmpp_2m_sde(denoise: SigmaDenoise, x: torch.Tensor, sigmas: list[float], step: Step, noise: Noise, *, eta: float,
                 s_noise: float = 1.0) -> torch.Tensor:
    """Second-order multistep SDE DPM-Solver++ (Lu et al. 2022b, sec. 5 / app. B; k-diffusion's 2M SDE, midpoint form,
    Gaussian noise per step): with g = eta h, x = (sigma_t / sigma_s) e^-g x + (1 - e^(-h-g)) D + the 2M correction,
    plus sigma_t sqrt(1 - e^-2g) z. eta (None = 1) interpolates from the 2M ODE solver (0) to the reverse SDE (1);
    the first step is first order, the last one (to sigma = 0) returns D."""
    old, h_last = None, None
    for i, (s, s_next) in enumerate(pairwise(sigmas)):
        denoised = denoise(x, s)
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s / s_next)
            g = eta * h
            d = denoised
            if old is not None:
                w = h / (2 * h_last)  # 1 / (2r)
                d = (1 + w) * denoised - w * old
            x = (s_next / s * math.exp(-g)) * x - math.expm1(-h - g) * d
            if g > 0:
                x = x + noise(x) * (s_next * math.sqrt(-math.expm1(-2 * g)) * s_noise)
            old, h_last = denoised, h
        x = step(i, x, denoised)
    return x


def dpmpp_3m(denoise: SigmaDenoise, x: torch.Tensor, sigmas: list[float], step: Step, noise: Noise, *,
             lower_order_final: bool = True) -> torch.Tensor:
    """Third-order multistep DPM-Solver++ (3M): x0_pred's first and second lambda-derivatives from the last three
    predictions on the non-uniform grid, in `exp_step_coefficients`; orders 1 and 2 warm it up. One call per step.
    `lower_order_final`: runs of fewer than 15 steps take the last step before sigma = 0 at second order (as
    DPM-Solver's implementation, for stability when steps are long)."""
    n = len(sigmas) - 1
    hist: list[tuple[torch.Tensor, float]] = []  # (x0_pred, h of the step that followed it), newest last
    for i, (s, s_next) in enumerate(pairwise(sigmas)):
        denoised = denoise(x, s)
        if s_next == 0:  # the last step returns the x0 prediction
            x = step(i, denoised, denoised)
            continue
        h = math.log(s / s_next)
        c_x, c_0, c_1, c_2 = exp_step_coefficients(h)
        x = c_x * x + c_0 * denoised
        order = min(3, n - i) if lower_order_final and n < 15 else 3
        if hist and order > 1:
            (m1, h0) = hist[-1]
            d1_0 = (denoised - m1) / h0  # divided difference over the last step
            if len(hist) >= 2 and order > 2:
                (m2, h1) = hist[-2]
                d2 = (d1_0 - (m1 - m2) / h1) / (h0 + h1)  # half the second derivative
                # full Taylor weight c_2 on d2: DPM-Solver's reference code weights this term half as much,
                # which measures as second order on the exact Gaussian test (tests/.../test_accuracy.py)
                x = x + c_1 * (d1_0 + h0 * d2) + c_2 * d2
            else:
                x = x + c_1 * d1_0
        hist = (hist + [(denoised, h)])[-2:]
        x = step(i, x, denoised)
    return x


def dpmpp_2s(denoise: SigmaDenoise, x: torch.Tensor, sigmas: list[float], step: Step, noise: Noise, *, eta: float,
             s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1, r = 1/2): a first-order half step to the lambda-midpoint, then
    the full step with the midpoint's x0 prediction; 2 * steps - 1 model calls. eta > 0 makes it ancestral (the
    step ends at sigma_down and adds noise sigma_up, `ancestral_step`; eta = 1 is k-diffusion's 2S ancestral)."""
    for i, (s, s_next) in enumerate(pairwise(sigmas)):
        denoised = denoise(x, s)
        down, up = ancestral_step(s, s_next, eta)
        if down == 0:
            x = denoised
        else:
            h = math.log(s / down)
            mid = math.sqrt(s * down)  # lambda midpoint
            x_mid = (mid / s) * x - math.expm1(-h / 2) * denoised
            x = (down / s) * x - math.expm1(-h) * denoise(x_mid, mid)
        if up > 0:
            x = x + noise(x) * (up * s_noise)
        x = step(i, x, denoised)
    return x


sample_dpmpp_2m = sigma_sampler("dpmpp_2m", dpmpp_2m, steps=20)
sample_dpmpp_3m = sigma_sampler("dpmpp_3m", dpmpp_3m, steps=20)
sample_dpmpp_2s = sigma_sampler("dpmpp_2s", dpmpp_2s, steps=15)
sample_dpmpp_2m_sde = sigma_sampler("dpmpp_2m_sde", dpmpp_2m_sde, steps=25, eta=None)
