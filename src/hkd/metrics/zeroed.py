"""The zeroed-operator control's records and verdicts, without torch (the study and the
report read them): what zeroing a trained model's operators (alpha = beta = 0) changes in
FID, against the spreads of both rows, for one training and over a model's seeds. The
sampling itself is ``controls.zeroed_operators``."""

from __future__ import annotations

import numpy as np

#: verdicts of the zeroed-operator control, by the sign of the FID change beyond the spreads
USED, HELPS, UNRESOLVED = "zeroing costs FID", "zeroing lowers FID", "not resolved"


def change_verdict(change: float, spread: float) -> str:
    """``change`` = FID zeroed - FID trained, ``spread`` = the sum of both rows' spreads."""
    if change > spread:
        return USED
    if change < -spread:
        return HELPS
    return UNRESOLVED


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
