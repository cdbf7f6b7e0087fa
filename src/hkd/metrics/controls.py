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

#: verdicts of the zeroed-operator control, by the sign of the FID change beyond the spreads
USED, HELPS, UNRESOLVED = "zeroing costs FID", "zeroing lowers FID", "not resolved"


def change_verdict(change: float, spread: float) -> str:
    """``change`` = FID zeroed - FID trained, ``spread`` = the sum of both rows' spreads."""
    if change > spread:
        return USED
    if change < -spread:
        return HELPS
    return UNRESOLVED


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


def zeroed_summary(zeroed: dict, trained: dict, mean_abs_change: float, images: int) -> dict:
    """The control's record from the two rows' scores."""
    spread = (zeroed.get("fid_sampling_std") or 0.0) + (trained.get("fid_sampling_std") or 0.0)
    change = zeroed["fid"] - trained["fid"]
    return {
        "images": images,
        "fid": zeroed["fid"],
        "fid_sampling_std": zeroed.get("fid_sampling_std"),
        "fid_trained": trained["fid"],
        "fid_change": change,
        "fid_change_spread": spread,
        "verdict": change_verdict(change, spread),
        "mean_abs_pixel_change": mean_abs_change,  # on [-1, 1]
    }


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


def zeroed_over_seeds(records: dict[str, dict | None]) -> dict | None:
    """The zeroed-operator control over a model's training seeds ({run: its record}): the
    mean FID change with spread = max(std over seeds (ddof = 1), the mean of the records'
    bootstrap spreads), as every row of the report is spread; one seed keeps its bootstrap
    spread (never zero). None where no record exists (no Koopman evolution)."""
    found = {k: r for k, r in records.items() if r is not None}
    if not found:
        return None
    changes = np.array([r["fid_change"] for r in found.values()])
    seeds_std = float(changes.std(ddof=1)) if len(changes) > 1 else 0.0
    spread = max(seeds_std, float(np.mean([r["fid_change_spread"] for r in found.values()])))
    mean = float(changes.mean())
    return {
        "n_seeds": len(found),
        "fid_change_mean": mean,
        "fid_change_std_over_seeds": seeds_std if len(changes) > 1 else None,
        "spread": spread,
        "mean_abs_pixel_change": float(np.mean([r["mean_abs_pixel_change"] for r in found.values()])),
        "verdict": change_verdict(mean, spread),
        "runs": found,
    }
