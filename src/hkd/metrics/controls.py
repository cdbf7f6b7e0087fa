"""Controls that say whether a trained HKD uses its Koopman operators.

- Zeroed operators: the trained model sampled again with alpha = beta = 0 (the identity flow,
  ``koopman.model.operators_off``) on the same evaluation seeds. What zeroing costs in FID,
  against the two rows' bootstrap spreads, and how far the images move. A network that
  co-adapted to random gains also loses FID when they are removed, so this counts only
  together with the agreement across seeds.
- Agreement across seeds: the correlation of the learned alpha maps of trainings that differ
  only in their seed. Learned structure agrees across seeds; operators that moved only as
  far as gradient noise moves them do not. The reference is the same correlation after the
  positions of one map are shuffled (``permutations`` times): what maps with the same values
  and no shared structure give.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from hkd.koopman.model import operators_off
from hkd.metrics.zeroed import zeroed_summary


def zeroed_operators(
    cfg: dict, model, scorer, images: np.ndarray, scores: dict, device, dtype
) -> dict | None:
    """The zeroed-operator control of one trained model whose one-step ``images`` (in [-1, 1],
    on the evaluation seeds) scored ``scores``; None for a model without Koopman evolution."""
    from hkd.metrics.evaluate import score_one_step

    if not model.evolved_levels:
        return None
    with operators_off(model):
        zeroed, _, m = score_one_step(cfg, model, scorer, device, dtype, "sample, operators zeroed")
    return zeroed_summary(m, scores, float(np.abs(zeroed - images).mean()), len(zeroed))


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denom = (a.square().sum() * b.square().sum()).sqrt()
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def alpha_agreement(
    alpha_maps: list[list[torch.Tensor]], permutations: int = 200, seed: int = 0
) -> dict | None:
    """Per level, the mean Pearson correlation of the alpha maps over every pair of training
    seeds (``alpha_maps``: per seed, per level), and the shuffled-position reference: the
    95 % quantile of |r| after a random permutation of one map's entries. ``agrees`` where
    the mean correlation exceeds that quantile. None with fewer than two seeds."""
    if len(alpha_maps) < 2:
        return None
    gen = torch.Generator().manual_seed(seed)
    levels = []
    for level in range(len(alpha_maps[0])):
        maps = [m[level].flatten() for m in alpha_maps]
        pairs = list(itertools.combinations(range(len(maps)), 2))
        r = [_pearson(maps[i], maps[j]) for i, j in pairs]
        null = [
            abs(_pearson(maps[i], maps[j][torch.randperm(len(maps[j]), generator=gen)]))
            for _ in range(max(1, permutations // len(pairs)))
            for i, j in pairs
        ]
        q95 = float(np.quantile(null, 0.95))
        mean = float(np.mean(r))
        levels.append(
            {
                "level": level,
                "pairs": len(pairs),
                "mean_r": mean,
                "min_r": min(r),
                "shuffled_q95": q95,
                "agrees": mean > q95,
            }
        )
    return {"seeds": len(alpha_maps), "levels": levels, "agrees": all(lv["agrees"] for lv in levels)}
