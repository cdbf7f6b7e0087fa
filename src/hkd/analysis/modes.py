"""Koopman modes of a trained HKD: which eigenvalue pairs a band keeps, and decoding with
only some of them (Figure 4 of the paper).

A mode is one 2x2 block: a channel pair (2k, 2k+1) at one position of one level, with
eigenvalues alpha +- i beta. At every level the pairs of all positions are ranked by
|alpha| (``abs_alpha``, as the paper words its bands) or by signed alpha (``alpha``; config
key analysis.band_by); a band is a range of that rank given as quantile edges, e.g.
[0, 1/3) = the smallest third. Masking multiplies the features of the pairs outside the
band by zero, so keeping every band returns the unmasked features bit for bit. Every
function takes the ranks it masks by (``ranks``; None = ``mode_ranks`` by |alpha|), so
that the same figures can be drawn with random ranks (``random_ranks``), the control
that says whether a band of the spectrum differs from any set of modes of its size.
"""

from __future__ import annotations

import torch

#: how the modes are ordered into bands (config key analysis.band_by); the first is the paper's wording
BAND_ORDERS = ("abs_alpha", "alpha")


def _quantiles(values: torch.Tensor) -> torch.Tensor:
    """Each entry's rank quantile in [0, 1) (ties in a stable order), in ``values``' shape."""
    flat = values.flatten()
    order = torch.argsort(flat, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(flat))
    return (rank.float() / len(flat)).reshape(values.shape)


def mode_ranks(model, by: str = "abs_alpha") -> list[torch.Tensor]:
    """Per level, each pair's rank quantile in [0, 1) by |alpha| or signed alpha (``by``)."""
    if by not in BAND_ORDERS:
        raise ValueError(f"unknown band order {by!r}; one of {BAND_ORDERS}")
    return [
        _quantiles(alpha.abs() if by == "abs_alpha" else alpha) for alpha, _ in model.koopman.eigenvalues()
    ]


def random_ranks(model, gen: torch.Generator) -> list[torch.Tensor]:
    """Per level, rank quantiles of a random order of the pairs: bands of the same sizes as
    the spectrum's, holding random modes."""
    return [_quantiles(torch.rand(alpha.shape, generator=gen)) for alpha, _ in model.koopman.eigenvalues()]


def band_masks(model, lo: float, hi: float, ranks: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Per level, a [C/2, H, W] 0/1 float mask of the pairs whose rank quantile (``ranks``,
    default ``mode_ranks``) is in [lo, hi) (``hi`` = 1 includes the largest)."""
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"band [{lo}, {hi}) must satisfy 0 <= lo < hi <= 1")
    return [
        ((q >= lo) & ((q < hi) if hi < 1.0 else torch.ones_like(q, dtype=torch.bool))).float()
        for q in (mode_ranks(model) if ranks is None else ranks)
    ]


def apply_pair_masks(feats: list[torch.Tensor], masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Features [B, C, H, W] per level times a pair mask [C/2, H, W] (or [B, C/2, H, W]),
    each pair's two channels alike."""
    out = []
    for z, m in zip(feats, masks):
        m = m.to(z.device, z.dtype).repeat_interleave(2, dim=-3)
        out.append(z * m)
    return out


def noise_source(model, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_T, T) of a one-step sample: the input its features are encoded from (``HKD.decode``'s
    ``source``)."""
    return noise * model.sigma_max, torch.full((noise.shape[0],), model.sigma_max, device=noise.device)


def features_at(model, noise: torch.Tensor, s: float, class_labels=None) -> list[torch.Tensor]:
    """HKD's latent trajectory from x_T = sigma_max * noise, evolved to time ``s``."""
    x_T, t = noise_source(model, noise)
    return model.evolve(model.encode(x_T, t, class_labels), t, s)


def to_eps(model, feats: list[torch.Tensor], s: float) -> list[torch.Tensor]:
    """Features at time ``s`` evolved to the end time eps."""
    t = torch.full((feats[0].shape[0],), float(s), device=feats[0].device)
    return model.evolve(feats, t, model.eps)


@torch.no_grad()
def band_decodes(model, noise: torch.Tensor, edges: list[float], class_labels=None, ranks=None) -> dict:
    """Figure 4(b-d): the one-step sample decoded with every band of ``edges`` alone, and
    with all modes; keys ``all`` and ``band<i>``."""
    feats = features_at(model, noise, model.eps, class_labels)
    source = noise_source(model, noise)
    out = {"all": model.decode(feats, class_labels, source)}
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        out[f"band{i}"] = model.decode(
            apply_pair_masks(feats, band_masks(model, lo, hi, ranks)), class_labels, source
        )
    return out


@torch.no_grad()
def cumulative_contribution(
    model, noise: torch.Tensor, groups: int, sigmas: list[float], class_labels=None, ranks=None
) -> torch.Tensor:
    """Figure 4(a): [groups + 1, len(sigmas)] share of the decoded state explained by the
    modes of the first k rank-quantile groups (k = 0..groups) at each time s:
    1 - |D_k(s) - D_all(s)|^2 / |D_0(s) - D_all(s)|^2, where D_k decodes the latent at s with
    only those modes kept; 0 for k = 0 and 1 for k = groups by construction."""
    edges = [i / groups for i in range(groups + 1)]
    nothing = [torch.zeros_like(m) for m in band_masks(model, 0.0, 1.0, ranks)]
    kept = [nothing] + [
        band_masks(model, 0.0, edges[k], ranks) for k in range(1, groups + 1)
    ]  # the same at every s
    out = torch.zeros(groups + 1, len(sigmas))
    source = noise_source(model, noise)
    for j, s in enumerate(sigmas):
        feats = features_at(model, noise, s, class_labels)
        full = model.decode(feats, class_labels, source)
        none = model.decode(apply_pair_masks(feats, nothing), class_labels, source)
        base = (none - full).pow(2).sum().item()
        for k in range(groups + 1):
            dk = model.decode(apply_pair_masks(feats, kept[k]), class_labels, source)
            out[k, j] = 1.0 - (dk - full).pow(2).sum().item() / base if base > 0 else float("nan")
    return out


def bands_partition(model, edges: list[float], ranks=None) -> bool:
    """Every pair of every level lies in exactly one band of ``edges``."""
    per_band = [band_masks(model, lo, hi, ranks) for lo, hi in zip(edges[:-1], edges[1:])]
    return all(
        torch.equal(sum(m[level] for m in per_band), torch.ones_like(per_band[0][level]))
        for level in range(len(per_band[0]))
    )
