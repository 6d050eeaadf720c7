"""Flow matching as the action decoder uses it: time samplers, the noisy path, Euler sampling.

Convention (the paper's, and Cosmos'): tau = 0 is data, tau = 1 is pure noise,
x_tau = (1 - tau) x0 + tau eps, the network predicts the velocity d x_tau / d tau = eps - x0,
and sampling integrates from tau = 1 down to tau = 0. Pure functions so training, sampling and
tests share one definition of the path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

TIME_SAMPLING_KINDS = ("uniform", "beta")


@dataclass(frozen=True)
class TimeSamplingConfig:
    """How training draws the flow time tau in [min_tau, 1] for each example.

    Fields:
        kind: "uniform" (the paper's released code) or "beta" (pi0 / openpi).
        alpha, beta: Beta(alpha, beta) parameters for kind "beta". openpi's Beta(1.5, 1) puts
            more mass near tau = 1, the noisy end, where the velocity is hardest to predict.
        min_tau: tau = min_tau + (1 - min_tau) u with u in [0, 1] drawn by `kind`; openpi uses
            0.001 so training never sits exactly on the data, where the target carries no noise.
    """

    kind: str = "uniform"
    alpha: float = 1.5
    beta: float = 1.0
    min_tau: float = 0.001

    def __post_init__(self) -> None:
        if self.kind not in TIME_SAMPLING_KINDS:
            raise ValueError(f"time sampling kind must be one of {TIME_SAMPLING_KINDS}, "
                             f"got {self.kind!r}")
        if not (self.alpha > 0 and self.beta > 0):
            raise ValueError(f"beta parameters must be > 0, got alpha={self.alpha}, "
                             f"beta={self.beta}")
        if not 0.0 <= self.min_tau < 1.0:
            raise ValueError(f"min_tau must be in [0, 1), got {self.min_tau}")


def sample_time(
    config: TimeSamplingConfig,
    batch_size: int,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one flow time per example, `[B]` float32 in [min_tau, 1].

    Takes a `generator` (on `device`) so a training step can be replayed exactly;
    torch.distributions.Beta cannot, hence the sampler of our own for kind "beta".
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if config.kind == "uniform":
        u = torch.rand(batch_size, device=device, generator=generator)  # [B]
    else:
        u = sample_beta(config.alpha, config.beta, batch_size, device=device,
                        generator=generator)  # [B]
    return config.min_tau + (1.0 - config.min_tau) * u


def sample_beta(
    alpha: float,
    beta: float,
    n: int,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Beta(alpha, beta) samples `[n]` as X / (X + Y) with X, Y Gamma-distributed."""
    x = _sample_gamma(alpha, n, device, generator)  # [n]
    y = _sample_gamma(beta, n, device, generator)  # [n]
    return x / (x + y)


def _sample_gamma(
    shape: float, n: int, device: torch.device | str, generator: torch.Generator | None
) -> Tensor:
    """Gamma(shape, 1) samples `[n]` by Marsaglia & Tsang's rejection method.

    Shapes below 1 use the boost Gamma(a) = Gamma(a + 1) * U^(1 / a). Acceptance is above
    95 %, so the loop ends after a few rounds.
    """
    boosted = shape < 1.0
    a = shape + 1.0 if boosted else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, device=device)
    pending = torch.arange(n, device=device)
    while pending.numel() > 0:
        z = torch.randn(pending.numel(), device=device, generator=generator)
        u = torch.rand(pending.numel(), device=device, generator=generator)
        v = (1.0 + c * z) ** 3
        log_v = torch.log(v.clamp_min(torch.finfo(v.dtype).tiny))
        accept = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * log_v)
        out[pending[accept]] = d * v[accept]
        pending = pending[~accept]
    if boosted:
        out = out * torch.rand(n, device=device, generator=generator) ** (1.0 / shape)
    return out


def interpolate(x0: Tensor, eps: Tensor, tau: Tensor) -> Tensor:
    """Point on the straight path, x_tau = (1 - tau) x0 + tau eps; `tau` is `[B]`."""
    if x0.shape != eps.shape:
        raise ValueError(f"x0 and eps must have the same shape, got {list(x0.shape)} and "
                         f"{list(eps.shape)}")
    if tau.shape != (x0.shape[0],):
        raise ValueError(f"tau must have shape [B] = [{x0.shape[0]}], got {list(tau.shape)}")
    t = tau.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))  # [B, 1, ...]
    return (1.0 - t) * x0 + t * eps


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """The velocity d x_tau / d tau of `interpolate`, the network's regression target."""
    if x0.shape != eps.shape:
        raise ValueError(f"x0 and eps must have the same shape, got {list(x0.shape)} and "
                         f"{list(eps.shape)}")
    return eps - x0


def integrate(
    velocity_fn: Callable[[Tensor, Tensor], Tensor], noise: Tensor, steps: int
) -> Tensor:
    """Euler-integrate d x / d tau = velocity_fn(x, tau) from tau = 1 (`noise`) to tau = 0.

    `velocity_fn(x [B, ...], tau [B])` is called at tau = 1, 1 - 1/steps, ..., 1/steps; the
    step sizes sum to -1, so a constant field returns noise - velocity up to rounding.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = noise
    for i in range(steps):
        tau_now, tau_next = 1.0 - i / steps, 1.0 - (i + 1) / steps
        tau = torch.full((noise.shape[0],), tau_now, device=noise.device)  # [B]
        x = x + (tau_next - tau_now) * velocity_fn(x, tau)
    return x
