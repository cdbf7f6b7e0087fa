"""Table 5's snapshots: the last one, when it holds a run's final weights, takes the scores and
samples that run's evaluation wrote; any other snapshot is sampled and scored."""

import numpy as np
import pytest
import torch
from test_analysis import small_hkd

from hkd.koopman.model import hkd_checkpoint, load_hkd
from hkd.metrics.stability import _score_snapshot
from hkd.teacher.network import teacher_kwargs


class CountingScorer:
    """Stands in for the FID scorer: counts the image sets it is given."""

    def __init__(self):
        self.calls = []

    def __call__(self, images_u8):
        self.calls.append(len(images_u8))
        return {"fid": 1.0, "is_mean": 1.0}


@pytest.fixture
def final_run(tmp_path, smoke_cfg):
    """A run's final weights, with the scores and samples its evaluation wrote."""
    torch.save(hkd_checkpoint(small_hkd(smoke_cfg, seed=0), teacher_kwargs(smoke_cfg)), tmp_path / "hkd.pt")
    images = np.full((smoke_cfg["sample"]["count"], 1, 32, 32), 0.25, dtype=np.float32)
    np.savez(tmp_path / "samples.npz", images=images)
    scores = {"key": "hkd", "fid": 42.0, "is_mean": 3.0, "fid_sampling_std": 0.5, "images": len(images)}
    return {
        "hkd": str(tmp_path / "hkd.pt"),
        "scores": scores,
        "samples": str(tmp_path / "samples.npz"),
        "weights": load_hkd(str(tmp_path / "hkd.pt"), "cpu", smoke_cfg),
    }


def test_final_weights_take_the_evaluation_scores(smoke_cfg, final_run):
    scorer = CountingScorer()
    snapshot = load_hkd(final_run["hkd"], "cpu", smoke_cfg)
    images, scores = _score_snapshot(smoke_cfg, snapshot, final_run, scorer, torch.device("cpu"), None, "t")
    assert scorer.calls == []
    assert scores == {"fid": 42.0, "is_mean": 3.0, "fid_sampling_std": 0.5}
    assert np.all(images == 0.25)


def test_other_weights_are_sampled_and_scored(smoke_cfg, final_run):
    scorer = CountingScorer()
    earlier = small_hkd(smoke_cfg, seed=1)
    images, scores = _score_snapshot(smoke_cfg, earlier, final_run, scorer, torch.device("cpu"), None, "t")
    assert scorer.calls == [smoke_cfg["sample"]["count"]] and scores["fid"] == 1.0
    assert len(images) == smoke_cfg["sample"]["count"] and not np.all(images == 0.25)


def test_budget_curve_table_has_one_column_per_model():
    from hkd.metrics.stability import budget_curve_table

    curves = {
        "full": {
            "0": {"mean": 90.0, "std": 2.0, "examples": 16},
            "1": {"mean": 80.0, "std": None, "examples": 32},
        },
        "no_koopman": {
            "0": {"mean": 95.0, "std": 1.0, "examples": 16},
            "1": {"mean": 85.0, "std": 3.0, "examples": 32},
        },
    }
    runs = {
        "seed0": {"0": {"fid": 90.0}, "1": {"fid": 80.0}},
        "no_koopman": {"0": {"fid": 95.0}, "1": {"fid": 85.0}},
    }
    table = budget_curve_table(curves, before=300.0, runs=runs)
    assert list(table["epoch"]) == [-1, 0, 1] and list(table["examples"]) == [0, 16, 32]
    assert list(table["run:seed0"]) == [300.0, 90.0, 80.0]
    assert list(table["full"]) == [300.0, 90.0, 80.0] and list(table["no_koopman"]) == [300.0, 95.0, 85.0]
    assert table["no_koopman_std"].iloc[2] == 3.0 and np.isnan(table["full_std"].iloc[2])
