"""Spreads and verdicts of the trained rows (src/hkd/metrics/study.py), from metrics files laid
out as the variant stages write them."""

import json

import numpy as np
import pytest

from hkd.config import load_config
from hkd.metrics.study import NOT_RESOLVED, compare, fid_stats, summarise
from hkd.pipeline import run_variants


def test_spread_is_the_larger_of_seed_std_and_sampling_std():
    one = fid_stats([{"fid": 10.0, "fid_sampling_std": 0.7, "seed": 0}])
    assert one["spread"] == 0.7 and one["std_seeds"] is None and one["n_seeds"] == 1
    two = fid_stats(
        [{"fid": 10.0, "fid_sampling_std": 0.1, "seed": 0}, {"fid": 12.0, "fid_sampling_std": 0.2, "seed": 1}]
    )
    assert two["mean"] == 11.0 and two["spread"] == pytest.approx(np.std([10.0, 12.0], ddof=1))
    assert two["sampling_std"] == 0.2 and two["seeds"] == [0, 1]


def test_an_ordering_needs_a_difference_beyond_both_spreads():
    a = {"mean": 10.0, "spread": 1.0}
    assert compare(a, {"mean": 12.5, "spread": 1.0}) == "lower"
    assert compare(a, {"mean": 7.5, "spread": 1.0}) == "higher"
    assert compare(a, {"mean": 11.9, "spread": 1.0}) == NOT_RESOLVED
    assert compare(a, {"mean": 12.0, "spread": 1.0}) == NOT_RESOLVED  # exactly the sum: not beyond it


def test_summary_reads_every_training_of_the_run(repo, tmp_path):
    cfg = load_config(repo / "configs" / "claims.yaml")
    pattern = str(tmp_path / "variants" / "{variant}" / "metrics.json")
    rng = np.random.default_rng(0)
    base = {
        "no_koopman_times": 21.0,
        "no_koopman": 30.0,
        "no_trajectory": 25.0,
        "no_hierarchy": 22.0,
        "full": 20.0,
    }
    for v in run_variants(cfg):
        model = next((m for m in base if v.startswith(m) or f"-{m}-" in v), "full")
        fid = base[model] + (8.0 if v.startswith("study-paper") else 0.0) + rng.normal(0, 0.1)
        path = tmp_path / "variants" / v / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"fid": fid, "fid_sampling_std": 0.2, "images": 4000}))
    metrics = {
        "rows": [
            {"key": "teacher", "nfe": 35, "fid": 10.0, "fid_sampling_std": 0.1, "images": 4000},
            {"key": "hkd", "nfe": 1, "fid": 20.0, "fid_sampling_std": 0.2, "images": 4000},
        ]
    }
    s = summarise(cfg, metrics, pattern)
    adopted = s["adopted"]["rows"]
    assert adopted["full"]["n_seeds"] == 3 and adopted["full"]["seeds"] == [0, 1, 2]
    assert adopted["no_koopman"]["n_seeds"] == 3 and adopted["no_koopman"]["seeds"] == [0, 1, 2]
    assert s["adopted"]["ordering"]["full_best"] == "holds"
    assert s["adopted"]["ratio_to_teacher"]["full"]["mean"] == pytest.approx(adopted["full"]["mean"] / 10.0)
    paper = s["recipes"]["paper"]["rows"]
    assert paper["full"]["n_seeds"] == 3 and paper["full"]["mean"] == pytest.approx(28.0, abs=0.5)
    assert s["adopted"]["vs_paper"]["full"] == "lower"
    assert s["adopted"]["rows"]["no_koopman_times"]["n_seeds"] == 3  # the control beside Table 3
    ring = s["recipes"]["ring"]  # over the adopted recipe (study.base: adopted)
    assert set(ring["rows"]) == {"full"} and ring["rows"]["full"]["n_seeds"] == 1
    assert ring["levers"]["operator_init"] == "ring" and ring["levers"]["koopman_time_unit"] == 80.0
    assert ring["levers"]["decoder"] == cfg["hkd"]["decoder"] and ring["vs_paper"]["full"] == "lower"


def test_recipes_lie_over_their_base_and_confirmed_ones_get_every_seed(repo):
    from hkd.config import ConfigError, validate_config
    from hkd.pipeline import PAPER_LEVERS, recipe_hkd, study_variants

    cfg = load_config(repo / "configs" / "claims.yaml")
    adopted = recipe_hkd(cfg, "fixed_sigma", "full")
    assert adopted["network_sigma"] == "sigma_max" and adopted["decoder"] == cfg["hkd"]["decoder"]
    cfg["study"]["base"] = "paper"
    assert recipe_hkd(cfg, "fixed_sigma", "full")["decoder"] == PAPER_LEVERS["decoder"]
    cfg["study"]["base"] = "adopted"
    assert "study-ring-full-seed1" not in study_variants(cfg)
    cfg["study"]["confirmed"] = ["ring"]
    assert {f"study-ring-full-seed{n}" for n in cfg["study"]["seeds"]} <= set(study_variants(cfg))
    cfg["study"]["confirmed"] = ["nothing"]
    with pytest.raises(ConfigError, match="study.confirmed"):
        validate_config(cfg)
    cfg["study"]["confirmed"] = []
    cfg["study"]["recipes"]["same"] = {"decoder": cfg["hkd"]["decoder"]}  # changes nothing over the base
    assert not any(v.startswith("study-same-") for v in study_variants(cfg))
