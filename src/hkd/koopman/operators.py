"""Spatially varying, block-diagonal Koopman generators and their closed-form flow.

At level l and position (i, j) the generator A is block diagonal with 2x2 blocks
[[alpha, beta], [-beta, alpha]] acting on channel pairs (2k, 2k+1). Its flow over a
time step dt is an elementwise scale-and-rotate:

    exp(dt A) = e^{alpha dt} [[cos(beta dt), sin(beta dt)], [-sin(beta dt), cos(beta dt)]]

so no general matrix exponential is ever formed.

How alpha and beta are stored and start (config keys hkd.operator_param, hkd.operator_init;
the first value of each is the paper's reading):
- ``linear``: alpha and beta are the parameters themselves; ``log``: alpha = e^nu >= 0 and
  beta = e^theta >= 0 (as LRU and S4D store their eigenvalues), so the flow from T towards
  eps (dt < 0) can only decay and alpha's step moves it in proportion to its size;
- ``zero``: every block starts at 0, the identity flow (the model starts as the teacher);
  ``ring``: each pair and position starts at its own point of a ring of the T -> eps flow,
  log-gain alpha |dt| in RING_LOG_GAIN and angle beta |dt| in RING_ANGLE, drawn uniformly
  (LRU's ring initialisation), so positions differ from the start.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: how alpha and beta are stored (hkd.operator_param); ``linear`` is the paper's reading
OPERATOR_PARAMS = ("linear", "log")
#: how the operators start (hkd.operator_init); ``zero`` is the paper's reading
OPERATOR_INITS = ("zero", "ring")
#: the ring initialisation's range of alpha |dt| (the T -> eps flow's log-gain magnitude) ...
RING_LOG_GAIN = (0.01, 0.5)
#: ... and of beta |dt| (its rotation angle, radians)
RING_ANGLE = (0.01, math.pi / 8)


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


def ring_values(
    shape: tuple[int, ...], span: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, beta) of the ring initialisation for a flow of ``span`` time units: alpha * span
    uniform in RING_LOG_GAIN, beta * span uniform in RING_ANGLE, independently per entry."""
    lo, hi = RING_LOG_GAIN
    alpha = (lo + (hi - lo) * torch.rand(shape, generator=gen)) / span
    lo, hi = RING_ANGLE
    beta = (lo + (hi - lo) * torch.rand(shape, generator=gen)) / span
    return alpha, beta


class KoopmanOperators(nn.Module):
    """One generator per level and spatial position. ``linear``: parameters ``alpha`` and
    ``beta``; ``log``: ``log_alpha`` and ``log_beta`` (see the module docstring)."""

    def __init__(
        self,
        channels: list[int],
        resolutions: list[int],
        param: str = "linear",
        init: str = "zero",
        span: float = 1.0,
        seed: int = 0,
    ):
        super().__init__()
        if any(c % 2 for c in channels):
            raise ValueError(f"Koopman levels need even channel counts, got {channels}")
        if param not in OPERATOR_PARAMS or init not in OPERATOR_INITS:
            raise ValueError(
                f"operator param {param!r} / init {init!r}: one of {OPERATOR_PARAMS} / {OPERATOR_INITS}"
            )
        if param == "log" and init == "zero":
            raise ValueError(
                "log-parametrised operators cannot start at 0 (alpha = e^nu > 0): use init 'ring'"
            )
        self.param = param
        shapes = [(c // 2, r, r) for c, r in zip(channels, resolutions)]
        gen = torch.Generator().manual_seed(seed)
        values = [
            ring_values(s, span, gen) if init == "ring" else (torch.zeros(s), torch.zeros(s)) for s in shapes
        ]
        to_param = torch.log if param == "log" else (lambda v: v)
        names = ("log_alpha", "log_beta") if param == "log" else ("alpha", "beta")
        for i, name in enumerate(names):
            setattr(self, name, nn.ParameterList([nn.Parameter(to_param(v[i])) for v in values]))

    @property
    def stored(self) -> tuple[nn.ParameterList, nn.ParameterList]:
        """The parameter lists behind alpha and beta, whichever the parametrisation."""
        return (self.log_alpha, self.log_beta) if self.param == "log" else (self.alpha, self.beta)

    @property
    def num_levels(self) -> int:
        return len(self.stored[0])

    def rates(self, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, beta) of one level, [C/2, H, W] each, with their gradients."""
        a, b = (p[level] for p in self.stored)
        return (a.exp(), b.exp()) if self.param == "log" else (a, b)

    def freeze(self, level: int) -> None:
        """Operators of a level that never evolves are not trained."""
        for p in self.stored:
            p[level].requires_grad_(False)

    def evolve(
        self, feats: list[torch.Tensor], dt: torch.Tensor, levels: list[int] | None = None
    ) -> list[torch.Tensor]:
        """Evolve every level by ``dt`` (or only ``levels``; others pass through)."""
        chosen = range(self.num_levels) if levels is None else levels
        out = list(feats)
        for level in chosen:
            out[level] = evolve_pairs(feats[level], *self.rates(level), dt)
        return out

    def eigenvalues(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(alpha, beta) per level: the eigenvalues alpha +- i beta of every block."""
        out = []
        with torch.no_grad():
            for level in range(self.num_levels):
                a, b = self.rates(level)
                out.append((a.detach().cpu(), b.detach().cpu()))
        return out
