"""The controls that say whether a trained HKD uses its operators (metrics.controls)."""

import pytest
import torch

from hkd.metrics.controls import alpha_agreement
from hkd.metrics.zeroed import HELPS, UNRESOLVED, USED, zeroed_over_seeds, zeroed_summary


def _record(trained, zeroed, spread=1.0):
    return zeroed_summary(
        {"fid": zeroed, "fid_sampling_std": spread}, {"fid": trained, "fid_sampling_std": spread}, 0.01, 100
    )


def test_zeroing_verdict_counts_only_beyond_both_spreads():
    assert _record(70.0, 73.0)["verdict"] == USED  # +3 against 1 + 1
    assert _record(70.0, 71.5)["verdict"] == UNRESOLVED
    assert _record(70.0, 60.0)["verdict"] == HELPS
    assert _record(70.0, 73.0)["fid_change_spread"] == 2.0


def test_over_seeds_the_spread_is_the_larger_of_seed_std_and_bootstrap():
    agree = zeroed_over_seeds({"seed0": _record(70, 80), "seed1": _record(70, 81), "seed2": _record(70, 79)})
    assert agree["n_seeds"] == 3 and agree["fid_change_mean"] == pytest.approx(10.0)
    assert agree["spread"] == pytest.approx(2.0) and agree["verdict"] == USED  # std 1 < bootstrap 2
    scattered = zeroed_over_seeds({"a": _record(70, 90), "b": _record(70, 60), "c": _record(70, 75)})
    assert scattered["spread"] == pytest.approx(15.0) and scattered["verdict"] == UNRESOLVED
    one = zeroed_over_seeds({"seed0": _record(70, 73), "seed1": None})
    assert one["n_seeds"] == 1 and one["spread"] == 2.0 and one["fid_change_std_over_seeds"] is None
    assert zeroed_over_seeds({"seed0": None}) is None


def test_alpha_maps_that_share_structure_agree_and_noise_does_not():
    gen = torch.Generator().manual_seed(0)
    structure = [torch.randn(8, 7, 7, generator=gen), torch.randn(16, 4, 4, generator=gen)]
    learned = [[s + 0.5 * torch.randn(s.shape, generator=gen) for s in structure] for _ in range(3)]
    out = alpha_agreement(learned)
    assert out["agrees"] and out["seeds"] == 3 and all(lv["mean_r"] > 0.7 for lv in out["levels"])
    noise = [[torch.randn(s.shape, generator=gen) for s in structure] for _ in range(3)]
    out = alpha_agreement(noise)
    assert not out["agrees"] and all(abs(lv["mean_r"]) < lv["shuffled_q95"] + 0.05 for lv in out["levels"])
    assert alpha_agreement(learned[:1]) is None
