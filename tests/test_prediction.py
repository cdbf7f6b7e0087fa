"""The error of intermediate-time predictions on held-out teacher trajectories
(metrics.prediction) and the study's controls from the trained weights (metrics.recipe_controls)."""

import numpy as np
import pytest
import torch
from test_levers import EPS, T, small_teacher

from hkd.config import load_config
from hkd.koopman.model import HKD
from hkd.metrics.prediction import (
    heldout_seeds,
    heldout_trajectories,
    model_prediction_record,
    pair_indices,
    prediction_errors,
)
from hkd.metrics.recipe_controls import errors_over_seeds, recipe_weights
from hkd.metrics.study import model_controls
from hkd.pipeline import (
    ADOPTED_RECIPE,
    FULL,
    run_paths,
    seed_variants,
    stage_enabled,
    stage_inputs,
    study_variants,
)
from hkd.report.tables import _control_columns
from hkd.teacher.sampler import edm_sigmas, heun_sample, seeded_noise
from hkd.teacher.trajectories import make_denoiser


def _cfg(repo, n=3, steps=6):
    cfg = load_config(repo / "configs" / "smoke.yaml")
    cfg["study"]["heldout_trajectories"] = n
    cfg["trajectories"]["num_steps"] = steps
    cfg["edm"].update({"sigma_min": EPS, "sigma_max": T})
    return cfg


def test_pairs_run_from_every_other_time_above_eps_to_at_most_four_times_strictly_below():
    pairs = pair_indices(18)  # the default's grid: T .. eps
    assert [i for i, _ in pairs] == list(range(0, 17, 2))
    for i, targets in pairs:
        assert all(i < j < 17 for j in targets) and len(targets) <= 4 and targets == sorted(set(targets))
    assert pairs[0][1][0] == 1 and pairs[0][1][-1] == 16  # the spread reaches both ends
    assert pairs[-1] == (16, [])  # the last input before eps has nothing between


def test_heldout_trajectories_are_the_teachers_from_seeds_after_the_training_ones(repo):
    cfg = _cfg(repo)
    seeds = heldout_seeds(cfg)
    tr = cfg["trajectories"]
    assert seeds[0] == tr["seed_offset"] + tr["count"] and len(seeds) == 3
    teacher = small_teacher()
    denoise = make_denoiser(teacher, torch.device("cpu"), None)
    held = heldout_trajectories(cfg, denoise, (1, 16, 16), 0, torch.device("cpu"), batch=2)
    assert held["states"].shape == (3, 7, 1, 16, 16) and held["labels"] is None
    sigmas = edm_sigmas(6, EPS, T, cfg["edm"]["rho"])
    final = heun_sample(denoise, seeded_noise(seeds[2:], (1, 16, 16)), sigmas)
    assert torch.allclose(held["states"][2, -1], final[0].float(), atol=1e-5)  # the same batching-free path


def _heldout(teacher, n=3, steps=6):
    gen = torch.Generator().manual_seed(1)
    sigmas = edm_sigmas(steps, EPS, T, 7.0)
    states = (
        torch.randn(n, steps + 1, 1, 16, 16, generator=gen)
        * torch.cat([sigmas[:-1], torch.ones(1)]).float()[None, :, None, None, None]
    )
    return {"states": states, "sigmas": sigmas, "labels": None}


@pytest.mark.parametrize("decoder", ["boundary", "paper"])
def test_errors_equal_the_pairs_computed_one_at_a_time(decoder):
    teacher = small_teacher()
    model = HKD(
        teacher, EPS, T, time_unit=80.0, decoder=decoder, operator_param="log", operator_init="ring"
    ).eval()
    held = _heldout(teacher)
    out = prediction_errors(model, held, torch.device("cpu"), chunk=2)
    grid, states = held["sigmas"][:-1], held["states"]
    inter, ends, terms = [], [], 0
    with torch.no_grad():
        for i, targets in pair_indices(len(grid)):
            x_t, t = states[:, i], torch.full((3,), float(grid[i]))
            ends.append((model(x_t, t) - states[:, -1]).square().mean().item())
            for j in targets:
                err = (model.state_at(x_t, t, float(grid[j])) - states[:, j]).square().flatten(1).mean(1)
                inter.append((err / (float(grid[j]) ** 2 + model.sigma_data**2)).sum().item())
                terms += 3
    assert out["intermediate_mse"] == pytest.approx(sum(inter) / terms, rel=1e-4)
    assert out["end_mse"] == pytest.approx(np.mean(ends), rel=1e-4)
    assert out["pairs"] == terms and out["trajectories"] == 3


def test_zeroed_record_is_the_identity_flow_and_absent_without_koopman():
    teacher = small_teacher()
    ring = HKD(
        teacher, EPS, T, time_unit=1.0, decoder="boundary", operator_param="log", operator_init="ring"
    ).eval()
    held = _heldout(teacher)
    rec = model_prediction_record(ring, held, torch.device("cpu"))
    assert rec["zeroed_intermediate_mse"] != pytest.approx(rec["intermediate_mse"])  # the ring moves features
    zero = HKD(teacher, EPS, T, decoder="boundary").eval()  # alpha = beta = 0: zeroing changes nothing
    rec0 = model_prediction_record(zero, held, torch.device("cpu"))
    assert rec0["zeroed_intermediate_mse"] == pytest.approx(rec0["intermediate_mse"], rel=1e-6)
    plain = HKD(teacher, EPS, T, koopman=False, decoder="boundary").eval()
    assert model_prediction_record(plain, held, torch.device("cpu"))["zeroed_intermediate_mse"] is None


def test_errors_over_seeds_keep_one_seeds_std_unknown():
    rec = {"intermediate_mse": 0.4, "end_mse": 0.02, "zeroed_intermediate_mse": None}
    one = errors_over_seeds({"seed0": rec})
    assert one["intermediate_mse"] == 0.4 and one["intermediate_mse_std"] is None
    assert one["zeroed_intermediate_mse"] is None
    two = errors_over_seeds({"a": rec, "b": {**rec, "intermediate_mse": 0.6}})
    assert two["intermediate_mse"] == pytest.approx(0.5) and two["intermediate_mse_std"] == pytest.approx(
        np.std([0.4, 0.6], ddof=1)
    )


def test_recipe_weights_group_every_study_training_and_the_adopted_seeds(repo):
    cfg = load_config(repo / "configs" / "claims.yaml")
    paths = run_paths(cfg)
    weights = recipe_weights(cfg, paths)
    assert list(weights[ADOPTED_RECIPE][FULL]) == ["seed0", *seed_variants(cfg)]
    assert weights[ADOPTED_RECIPE][FULL]["seed0"] == paths["hkd"]
    listed = [v for r, models in weights.items() if r != ADOPTED_RECIPE for m in models.values() for v in m]
    assert sorted(listed) == sorted(study_variants(cfg))
    assert len(weights["paper"][FULL]) == len(cfg["study"]["seeds"])


def test_the_stage_runs_only_with_lever_recipes_and_reads_every_weight(repo):
    claims = load_config(repo / "configs" / "claims.yaml")
    assert stage_enabled(claims, "recipe_controls")
    inputs = stage_inputs(claims, "recipe_controls")
    assert len(inputs["study_hkd"]) == len(study_variants(claims))
    assert len(inputs["seed_hkd"]) == len(seed_variants(claims))
    assert stage_inputs(claims, "study")["recipe_controls"].endswith("claims/eval/recipe_controls.json")
    default = load_config(repo / "configs" / "default.yaml")
    assert not stage_enabled(default, "recipe_controls") and "recipe_controls" not in stage_inputs(
        default, "study"
    )


def _metric(seed, change):
    return {
        "seed": seed,
        "zeroed_operators": {"fid_change": change, "fid_change_spread": 1.0, "mean_abs_pixel_change": 0.01},
    }


def test_study_controls_carry_the_zeroed_change_and_the_table_shows_them():
    weights = {
        "prediction": errors_over_seeds(
            {"s": {"intermediate_mse": 0.3, "end_mse": 0.02, "zeroed_intermediate_mse": 0.5}}
        ),
        "alpha_agreement": None,
    }
    c = model_controls([_metric(0, 4.0), _metric(1, 6.0)], weights)
    assert (
        c["zeroed_operators"]["fid_change_mean"] == pytest.approx(5.0) and "runs" not in c["zeroed_operators"]
    )
    cols = _control_columns(c)
    assert cols["Zeroed ΔFID"] == pytest.approx(5.0) and cols["α maps agree"] == "—"
    assert cols["Intermediate error"] == 0.3 and cols["… operators zeroed"] == 0.5
    bare = _control_columns(model_controls([{"seed": 0}], None))
    assert bare["Zeroed ΔFID"] is None and bare["Intermediate error"] is None


def test_operators_claim_lists_each_recipes_zeroed_change():
    from hkd.report.claims import operators_claim

    stability = {
        "operator_controls": {
            "zeroed_operators": model_controls([_metric(0, 0.5)], None)["zeroed_operators"],
            "alpha_agreement": None,
        }
    }
    study = {
        "recipes": {
            "ring": {"controls": {"full": model_controls([_metric(0, 9.0)], None)}},
            "paper": {"controls": {"full": model_controls([{"seed": 0}], None)}},
        }
    }
    claim = operators_claim(stability, study)
    assert "ring +9.00 ± 1.00 (n = 1, α maps: one seed)" in claim["this_run"]
    assert "paper" not in claim["this_run"].split("study recipes")[1]  # no control: not listed
    assert claim["verdict"] == "not resolved at this budget"
    assert "study recipes" not in operators_claim(stability)["this_run"]
