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

    def beta(self, nimg: int, batch_size: int) -> float:
        """How much of the average a step of ``batch_size`` images keeps, ``nimg`` images into
        training (EDM counts the images before the step's batch)."""
        half = self.halflife_nimg
        if self.rampup_ratio:
            half = min(half, nimg * self.rampup_ratio)
        return 0.5 ** (batch_size / max(half, 1e-8))

    @torch.no_grad()
    def update(self, net: nn.Module, nimg: int, batch_size: int) -> None:
        """Move the average towards ``net``'s parameters and copy its buffers. ``nimg``: the
        image count the ramp-up reads (see ``beta``). A ``net`` whose parameter or buffer names
        differ from the copy's is an error: pairing by position would average unrelated tensors."""
        params = _paired(self.net.named_parameters(), net.named_parameters(), "parameters")
        buffers = _paired(self.net.named_buffers(), net.named_buffers(), "buffers")
        beta = self.beta(nimg, batch_size)
        for p_ema, p in params:
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in buffers:
            b_ema.copy_(b)


def _paired(ema_items, net_items, kind: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(average, network) tensor pairs of two ``named_*`` iterators whose names agree."""
    ema_items, net_items = list(ema_items), list(net_items)
    ema_names, net_names = [n for n, _ in ema_items], [n for n, _ in net_items]
    if ema_names != net_names:
        first = next(
            (i for i, (a, b) in enumerate(zip(ema_names, net_names)) if a != b),
            min(len(ema_names), len(net_names)),
        )
        theirs = net_names[first] if first < len(net_names) else "nothing"
        ours = ema_names[first] if first < len(ema_names) else "nothing"
        raise ValueError(
            f"EMA: the network's {kind} do not match the averaged copy's ({len(net_names)} against "
            f"{len(ema_names)}; at position {first} the network has {theirs!r}, the copy {ours!r}); "
            "update the EMA with the network it was made from (not a compiled or DDP wrapper)"
        )
    return [(a, b) for (_, a), (_, b) in zip(ema_items, net_items)]
