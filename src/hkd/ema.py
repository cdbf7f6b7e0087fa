"""Exponential moving average of weights with EDM's half-life schedule."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """EDM-style EMA: half-life in images, ramped up early (``rampup_ratio`` x images seen)."""

    def __init__(self, net: nn.Module, halflife_kimg: float, rampup_ratio: float | None):
        self.halflife_nimg = halflife_kimg * 1000
        self.rampup_ratio = rampup_ratio
        self.net = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module, nimg: int, batch_size: int) -> None:
        half = self.halflife_nimg
        if self.rampup_ratio:
            half = min(half, nimg * self.rampup_ratio)
        beta = 0.5 ** (batch_size / max(half, 1e-8))
        for p_ema, p in zip(self.net.parameters(), net.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.net.buffers(), net.buffers()):
            b_ema.copy_(b)
