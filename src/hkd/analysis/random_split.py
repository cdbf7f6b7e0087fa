"""Figures 4 and 5 against random splits of the modes (the controls (d) and (e)).

The paper reads roles into bands of the spectrum: small-|alpha| modes carry global
structure, large ones local detail (Figure 4), and mixing one band edits an image while
keeping its structure (Figure 5). Any set of a third of the modes also changes an image
less than all of them, so those comparisons alone cannot tell a band from chance. Here the
same measurements are repeated with ``draws`` random orders of the modes (bands of the same
sizes, ``modes.random_ranks``) and the spectrum's value is placed in their distribution.

- Figure 4: each band decode's high-frequency share, the part of its image's spectral
  energy above half the Nyquist frequency (mean over the figure's seeds). The bands have
  roles where that share differs between bands (max - min over bands) more than for random
  bands (beyond their 95 % quantile).
- Figure 5: the RMS change of the band edit at the agnostic ratio (mean over pairs). The
  band differs from chance where it lies outside the random sets' 5-95 % range.
"""

from __future__ import annotations

import numpy as np
import torch

from hkd.analysis.editing import edit, midpoint, start_features, start_input, to_eps
from hkd.analysis.modes import band_decodes, random_ranks

#: random mode orders per control (each one decodes every band, or edits every pair, once)
DRAWS = 20
#: the spectrum's value against the random draws: outside this central range it differs from chance
LOW_Q, HIGH_Q = 0.05, 0.95


def high_frequency_share(images: torch.Tensor) -> float:
    """Mean over images [B, C, H, W] of the spectral energy share above half the Nyquist
    frequency (radially), the image mean removed."""
    x = images.float() - images.float().mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fftshift(torch.fft.fft2(x).abs().square(), dim=(-2, -1))
    h, w = x.shape[-2:]
    fy, fx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    radius = (fy.float() / (h / 2)).square().add((fx.float() / (w / 2)).square()).sqrt()
    high = (power * (radius > 0.5)).flatten(1).sum(1)
    total = power.flatten(1).sum(1).clamp_min(1e-20)
    return float((high / total).mean())


def _band_shares(model, noise, edges, cond, ranks) -> list[float]:
    decodes = band_decodes(model, noise, edges, cond, ranks)
    return [high_frequency_share(decodes[f"band{i}"]) for i in range(len(edges) - 1)]


def _placed(value: float, draws: list[float]) -> dict:
    """``value`` against the random ``draws``: their mean, std and 5 / 95 % quantiles."""
    lo, hi = np.quantile(draws, [LOW_Q, HIGH_Q])
    return {
        "value": value,
        "random_mean": float(np.mean(draws)),
        "random_std": float(np.std(draws, ddof=1)),
        "random_q05": float(lo),
        "random_q95": float(hi),
        "draws": len(draws),
        "below_random": bool(value < lo),
        "above_random": bool(value > hi),
    }


@torch.no_grad()
def band_roles_control(model, noise, edges, cond, ranks, seed: int, draws: int = DRAWS) -> dict:
    """Figure 4's bands against random bands of the same sizes (see the module docstring)."""
    shares = _band_shares(model, noise, edges, cond, ranks)
    gen = torch.Generator().manual_seed(seed)
    spreads = [
        float(np.ptp(_band_shares(model, noise, edges, cond, random_ranks(model, gen)))) for _ in range(draws)
    ]
    return {
        "measure": "high-frequency share of each band's decode (energy above half Nyquist)",
        "band_shares": shares,
        "separation": _placed(float(np.ptp(shares)), spreads),
        "increasing_with_band": bool(all(a < b for a, b in zip(shares[:-1], shares[1:]))),
    }


@torch.no_grad()
def edit_control(
    model,
    gen: dict,
    ref: dict,
    band,
    mask,
    ratio: float,
    cond,
    ref_cond,
    ranks,
    seed: int,
    draws: int = DRAWS,
) -> dict:
    """Figure 5's band edit against edits of random mode sets of the same size: the RMS
    change each makes to the generated images at ``ratio`` (mean over pairs)."""
    s = midpoint(model)
    gen_feats, ref_feats = start_features(model, gen, s, cond), start_features(model, ref, s, ref_cond)
    gen_in = start_input(model, gen, s)
    unedited = model.decode(to_eps(model, gen_feats, s), cond, gen_in)

    def change(r) -> float:
        edited = edit(model, gen_feats, ref_feats, s, band, mask, [ratio], cond, gen_in, r)[0]
        return float((edited - unedited).float().pow(2).flatten(1).mean(1).sqrt().mean())

    rng = torch.Generator().manual_seed(seed)
    return {
        "ratio": ratio,
        "rms_change": _placed(change(ranks), [change(random_ranks(model, rng)) for _ in range(draws)]),
    }
