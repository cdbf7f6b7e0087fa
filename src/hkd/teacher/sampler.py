"""EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1) as pure functions."""

from __future__ import annotations

from typing import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def edm_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """float64 grid sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min, then a final 0."""
    i = torch.arange(num_steps, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


def seeded_noise(seeds, shape, device="cpu") -> torch.Tensor:
    """One standard-normal tensor per seed, each from its own generator (EDM's convention),
    so any single trajectory can be regenerated from its seed alone."""
    out = [torch.randn(list(shape), generator=torch.Generator().manual_seed(int(s)), dtype=torch.float32)
           for s in seeds]
    return torch.stack(out).to(device)


def heun_sample(denoise: Denoiser, noise: torch.Tensor, sigmas: torch.Tensor,
                keep_states: bool = False):
    """Integrate the probability-flow ODE from sigmas[0] down to sigmas[-1] = 0.

    ``denoise(x, sigma)`` returns D(x; sigma). NFE = 2 * (len(sigmas) - 1) - 1.
    Returns the final state, or (final, states) with every grid state when ``keep_states``.
    """
    sigmas = sigmas.to(torch.float64)
    x = noise.to(torch.float64) * sigmas[0]
    states = [x] if keep_states else None
    n = len(sigmas) - 1
    for i in range(n):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        d_cur = (x - denoise(x.float(), s_cur.float()).to(torch.float64)) / s_cur
        x_next = x + (s_next - s_cur) * d_cur
        if i < n - 1:
            d_next = (x_next - denoise(x_next.float(), s_next.float()).to(torch.float64)) / s_next
            x_next = x + (s_next - s_cur) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
        if keep_states:
            states.append(x)
    return (x, states) if keep_states else x


def nfe(num_steps: int) -> int:
    return 2 * num_steps - 1
