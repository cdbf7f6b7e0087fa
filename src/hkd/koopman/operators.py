"""Spatially varying, block-diagonal Koopman generators and their closed-form flow.

At level l and position (i, j) the generator A is block diagonal with 2x2 blocks
[[alpha, beta], [-beta, alpha]] acting on channel pairs (2k, 2k+1). Its flow over a
time step dt is an elementwise scale-and-rotate:

    exp(dt A) = e^{alpha dt} [[cos(beta dt), sin(beta dt)], [-sin(beta dt), cos(beta dt)]]

so no general matrix exponential is ever formed.
"""

from __future__ import annotations

import torch
from torch import nn


def evolve_pairs(z: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """Apply exp(dt A) to features ``z`` [B, C, H, W] with ``alpha``/``beta`` [C/2, H, W]
    and one time step per example ``dt`` [B]."""
    b, c, h, w = z.shape
    zf = z.float().reshape(b, c // 2, 2, h, w)
    x1, x2 = zf[:, :, 0], zf[:, :, 1]
    dt = dt.float().reshape(b, 1, 1, 1)
    scale = torch.exp(alpha * dt)
    cos, sin = torch.cos(beta * dt), torch.sin(beta * dt)
    y1 = scale * (cos * x1 + sin * x2)
    y2 = scale * (cos * x2 - sin * x1)
    return torch.stack([y1, y2], dim=2).reshape(b, c, h, w).to(z.dtype)


class KoopmanOperators(nn.Module):
    """One generator per level and spatial position, stored as alpha and beta tensors."""

    def __init__(self, channels: list[int], resolutions: list[int]):
        super().__init__()
        if any(c % 2 for c in channels):
            raise ValueError(f"Koopman levels need even channel counts, got {channels}")
        self.alpha = nn.ParameterList(
            [nn.Parameter(torch.zeros(c // 2, r, r)) for c, r in zip(channels, resolutions)]
        )
        self.beta = nn.ParameterList(
            [nn.Parameter(torch.zeros(c // 2, r, r)) for c, r in zip(channels, resolutions)]
        )

    @property
    def num_levels(self) -> int:
        return len(self.alpha)

    def evolve(
        self, feats: list[torch.Tensor], dt: torch.Tensor, levels: list[int] | None = None
    ) -> list[torch.Tensor]:
        """Evolve every level by ``dt`` (or only ``levels``; others pass through)."""
        chosen = range(self.num_levels) if levels is None else levels
        out = list(feats)
        for level in chosen:
            out[level] = evolve_pairs(feats[level], self.alpha[level], self.beta[level], dt)
        return out

    def eigenvalues(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(alpha, beta) per level: the eigenvalues alpha +- i beta of every block."""
        return [(a.detach().cpu(), b.detach().cpu()) for a, b in zip(self.alpha, self.beta)]
