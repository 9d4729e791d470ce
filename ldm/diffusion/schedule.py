"""Discrete DDPM noise schedules and the buffers the CompVis `DDPM` registers (names and float32 storage kept).

Everything is computed in float64 on the CPU, as the original did with numpy; `register_schedule` stores float32
copies on a torch module so that original checkpoints (which contain these buffers) load unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# Defaults of the original `make_beta_schedule` / `DDPM.__init__`; other modules import them from here.
NUM_TIMESTEPS = 1000
LINEAR_START = 1e-4
LINEAR_END = 2e-2
COSINE_S = 8e-3
BETA_SCHEDULES = ("linear", "cosine", "sqrt_linear", "sqrt")

# The buffers `DDPM.register_schedule` creates, in its order. `lvlb_weights` (non-persistent) lives in losses.py.
SCHEDULE_BUFFER_NAMES = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)

# The original clips log(posterior_variance) from below at log(1e-20) because the variance is 0 at t=0.
POSTERIOR_VARIANCE_FLOOR = 1e-20


def make_beta_schedule(schedule: str, n_timestep: int, linear_start: float = LINEAR_START,
                       linear_end: float = LINEAR_END, cosine_s: float = COSINE_S) -> torch.Tensor:
    """Float64 betas of length `n_timestep` with the original's four recipes (note: `sqrt_linear` is linear in beta)."""
    if n_timestep < 1:
        raise ValueError(f"n_timestep must be >= 1, got {n_timestep}")
    if schedule == "linear":
        # LDM's "linear": linear in sqrt(beta), then squared.
        return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, n_timestep, dtype=torch.float64) ** 2
    if schedule == "cosine":
        # Nichol & Dhariwal 2021, eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) * pi/2).
        steps = torch.arange(n_timestep + 1, dtype=torch.float64) / n_timestep + cosine_s
        f = torch.cos(steps / (1 + cosine_s) * math.pi / 2).pow(2)
        abar = f / f[0]
        return (1 - abar[1:] / abar[:-1]).clamp(min=0.0, max=0.999)
    if schedule == "sqrt_linear":
        return torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64)
    if schedule == "sqrt":
        return torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64) ** 0.5
    raise ValueError(f"unknown beta schedule {schedule!r}; expected one of {BETA_SCHEDULES}")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(abar) so abar_T = 0 and abar_0 is kept (Lin et al. 2023, Algorithm 1); float64 betas."""
    betas = torch.as_tensor(betas, dtype=torch.float64)
    sqrt_abar = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    abar = sqrt_abar ** 2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def posterior_coefficients(betas: torch.Tensor, alphas_cumprod: torch.Tensor, alphas_cumprod_prev: torch.Tensor,
                           v_posterior: float = 0.0) -> dict[str, torch.Tensor]:
    """q(x_{t-1} | x_t, x_0) terms (Ho et al. 2020, eqs. 6-7) with the original's `v_posterior` variance mix."""
    one_minus = 1.0 - alphas_cumprod
    # v_posterior interpolates between beta_tilde (the true posterior variance) and beta (the original's option).
    variance = (1 - v_posterior) * betas * (1.0 - alphas_cumprod_prev) / one_minus + v_posterior * betas
    return {
        "posterior_variance": variance,
        "posterior_log_variance_clipped": torch.log(variance.clamp(min=POSTERIOR_VARIANCE_FLOOR)),
        "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / one_minus,
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * (1.0 - betas).sqrt() / one_minus,
    }


class DiffusionSchedule:
    """A discrete DDPM schedule: betas and the 12 derived CompVis buffers as float64 CPU tensors (or a cast copy)."""

    def __init__(self, betas: torch.Tensor | Sequence[float], v_posterior: float = 0.0):
        betas = torch.as_tensor(betas).detach().to(device="cpu", dtype=torch.float64).flatten()
        if betas.numel() < 1:
            raise ValueError("a diffusion schedule needs at least one beta")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must lie in (0, 1]")
        self.v_posterior = float(v_posterior)
        self._set_from_betas(betas)

    @classmethod
    def from_config(cls, beta_schedule: str = "linear", timesteps: int = NUM_TIMESTEPS,
                    linear_start: float = LINEAR_START, linear_end: float = LINEAR_END, cosine_s: float = COSINE_S,
                    given_betas: torch.Tensor | Sequence[float] | None = None, v_posterior: float = 0.0,
                    zero_terminal_snr: bool = False) -> DiffusionSchedule:
        """Build from the original `register_schedule` arguments (`given_betas` wins over the named schedule)."""
        if given_betas is not None:
            betas = torch.as_tensor(given_betas, dtype=torch.float64)
        else:
            betas = make_beta_schedule(beta_schedule, timesteps, linear_start, linear_end, cosine_s)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        return cls(betas, v_posterior=v_posterior)

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> DiffusionSchedule:
        """Rebuild from a module carrying the registered `betas` buffer (float32, so with that buffer's precision)."""
        betas = getattr(module, "betas", None)
        if not isinstance(betas, torch.Tensor):
            raise ValueError(f"{type(module).__name__} has no `betas` buffer; call register_schedule on it first")
        return cls(betas, v_posterior=getattr(module, "v_posterior", 0.0))

    @classmethod
    def view_of(cls, module: torch.nn.Module) -> DiffusionSchedule:
        """The module's registered buffers as a schedule, without copies (float32, on the module's device): what a
        training step reads, with no host transfer. Carries the module's `lvlb_weights` table when it has one."""
        missing = [name for name in SCHEDULE_BUFFER_NAMES if not isinstance(getattr(module, name, None), torch.Tensor)]
        if missing:
            raise ValueError(f"{type(module).__name__} lacks the schedule buffers {missing}; call register_schedule")
        view = object.__new__(cls)
        view.v_posterior = float(getattr(module, "v_posterior", 0.0))
        for name in (*SCHEDULE_BUFFER_NAMES, "lvlb_weights"):
            if isinstance(getattr(module, name, None), torch.Tensor):
                view.__dict__[name] = getattr(module, name)
        return view

    def _set_from_betas(self, betas: torch.Tensor) -> None:
        """Compute all buffers from float64 betas, with the original's formulas."""
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        self.betas = betas
        self.alphas_cumprod = abar
        self.alphas_cumprod_prev = abar_prev
        self.sqrt_alphas_cumprod = abar.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - abar).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log(1.0 - abar)
        self.sqrt_recip_alphas_cumprod = (1.0 / abar).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / abar - 1).sqrt()
        for name, value in posterior_coefficients(betas, abar, abar_prev, self.v_posterior).items():
            setattr(self, name, value)

    @property
    def num_timesteps(self) -> int:
        """T, the number of discrete steps (indices 0..T-1)."""
        return self.betas.shape[0]

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio abar / (1 - abar) per step."""
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)

    @property
    def sigmas(self) -> torch.Tensor:
        """Variance-exploding noise levels sigma_t = sqrt((1 - abar) / abar) (Karras et al. 2022)."""
        return ((1.0 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()

    @property
    def device(self) -> torch.device:
        """Device of the held tensors."""
        return self.betas.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the held tensors (float64 unless this is a cast copy)."""
        return self.betas.dtype

    def buffers(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The 12 named buffers cast to `dtype` (float32 as the original stores them)."""
        return {name: getattr(self, name).to(dtype) for name in SCHEDULE_BUFFER_NAMES}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> DiffusionSchedule:
        """A copy whose tensors are cast (on the CPU first: some devices lack float64) and then moved."""
        out = object.__new__(type(self))
        out.v_posterior = self.v_posterior
        for name in SCHEDULE_BUFFER_NAMES:
            out.__dict__[name] = getattr(self, name).to(dtype=dtype or self.dtype).to(device=device or self.device)
        return out

    def __repr__(self) -> str:
        abar = self.alphas_cumprod
        return (f"DiffusionSchedule(T={self.num_timesteps}, abar[0]={float(abar[0]):.6g}, "
                f"abar[T-1]={float(abar[-1]):.6g}, v_posterior={self.v_posterior}, dtype={self.dtype})")


def register_schedule(module: torch.nn.Module, schedule: DiffusionSchedule, dtype: torch.dtype = torch.float32,
                      persistent: bool = True) -> None:
    """Register the 12 schedule buffers on `module` under the CompVis names (float32 by default), replacing old ones."""
    if not isinstance(schedule, DiffusionSchedule):
        raise TypeError(f"register_schedule needs a DiffusionSchedule, got {type(schedule).__name__}")
    for name, value in schedule.buffers(dtype).items():
        existing = getattr(module, name, None)
        device = existing.device if isinstance(existing, torch.Tensor) else None
        # Keep the device of a buffer being replaced so re-registering after .to(device) stays on that device.
        module.register_buffer(name, value.to(device) if device is not None else value, persistent=persistent)


def extract_into_tensor(a: torch.Tensor, t: torch.Tensor, x_shape: Sequence[int],
                        dtype: torch.dtype | None = None) -> torch.Tensor:
    """Gather `a[t]` for a batch of indices, shaped (B, 1, ..., 1) to broadcast over `x_shape` (original helper)."""
    if a.device != t.device:
        # Cast before moving: float64 tables cannot go to every device (e.g. MPS).
        a = a.to(dtype=dtype or a.dtype).to(t.device)
    out = a.gather(-1, t.long())
    if dtype is not None:
        out = out.to(dtype)
    return out.reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))
