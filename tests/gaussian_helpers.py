"""The exact denoiser for Gaussian data, shared by the diffusion and sampler tests."""
from ldm.diffusion.parameterization import v_from_x0_eps


def gaussian_prediction(x, abar, mu: float, s: float, parameterization: str = "eps"):
    """What an exact model outputs at x_t for data x0 ~ N(mu, s^2) per entry, given abar_t broadcastable to x:
    E[eps | x_t], E[x0 | x_t], or v from them."""
    a, b = abar.sqrt(), (1 - abar).sqrt()
    denom = abar * s ** 2 + 1 - abar
    eps = (x - a * mu) * b / denom
    x0 = mu + a * s ** 2 * (x - a * mu) / denom
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    return v_from_x0_eps(x0, eps, a, b)
