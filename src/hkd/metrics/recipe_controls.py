"""The study's controls that need the trained weights, per recipe and model: the error of
the intermediate-time predictions on held-out teacher trajectories (``metrics.prediction``)
and the agreement of the alpha maps across training seeds (``metrics.controls``). The
zeroed-operator FID change is read from each training's metrics by the study stage.

Recipes: ``paper``, each lever recipe of ``study.recipes`` and ``adopted`` (the run's own
``hkd:`` settings: the run's full HKD and its Table 5 seeds)."""

from __future__ import annotations

import numpy as np

from hkd.io import save_json
from hkd.koopman.model import load_hkd
from hkd.metrics.controls import alpha_agreement
from hkd.metrics.prediction import heldout_seeds, heldout_trajectories, model_prediction_record
from hkd.pipeline import ADOPTED_RECIPE, FULL, parse_variant, seed_variants, study_variants, variant_paths
from hkd.runtime import say
from hkd.teacher.trajectories import make_denoiser

#: the prediction errors summarised over a row's training seeds
ERRORS = ("intermediate_mse", "end_mse", "zeroed_intermediate_mse")


def recipe_weights(cfg: dict, paths: dict) -> dict[str, dict[str, dict[str, str]]]:
    """{recipe: {model: {run: checkpoint}}} of the study's trainings and the adopted full HKD."""
    out: dict[str, dict[str, dict[str, str]]] = {ADOPTED_RECIPE: {FULL: {f"seed{cfg['seed']}": paths["hkd"]}}}
    out[ADOPTED_RECIPE][FULL].update({v: variant_paths(cfg, v)["variant_hkd"] for v in seed_variants(cfg)})
    for v in study_variants(cfg):
        p = parse_variant(cfg, v)
        out.setdefault(p["recipe"], {}).setdefault(p["model"], {})[v] = variant_paths(cfg, v)["variant_hkd"]
    return out


def errors_over_seeds(records: dict[str, dict]) -> dict:
    """Mean and standard deviation over training seeds (ddof = 1; None for one seed) of each
    prediction error, with every run's record."""
    out = {"n_seeds": len(records), "runs": records}
    for key in ERRORS:
        values = [r[key] for r in records.values() if r[key] is not None]
        out[key] = float(np.mean(values)) if values else None
        out[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return out


def weights_controls(cfg: dict, runs: dict[str, str], heldout: dict, device, dtype) -> dict:
    """One recipe's model over its training seeds: prediction errors and alpha agreement."""
    records, maps = {}, []
    for run, path in runs.items():
        say(f"recipe controls: {path}")
        model = load_hkd(path, device, cfg)
        records[run] = model_prediction_record(model, heldout, device, dtype)
        if model.evolved_levels:
            maps.append([a.cpu() for a, _ in model.koopman.eigenvalues()])
    return {
        "prediction": errors_over_seeds(records),
        "alpha_agreement": alpha_agreement(maps, seed=cfg["seed"]) if maps else None,
    }


def write_recipe_controls(cfg: dict, paths: dict, teacher, device, dtype, teacher_dtype) -> dict:
    """recipe_controls.json: per recipe and model, ``weights_controls``."""
    shape = (teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
    denoise = make_denoiser(teacher, device, teacher_dtype)
    heldout = heldout_trajectories(cfg, denoise, shape, teacher.label_dim, device)
    seeds = heldout_seeds(cfg)
    recipes = {
        recipe: {m: weights_controls(cfg, runs, heldout, device, dtype) for m, runs in models.items()}
        for recipe, models in recipe_weights(cfg, paths).items()
    }
    save_json(
        {
            "heldout": {
                "trajectories": len(seeds),
                "seeds": [int(seeds[0]), int(seeds[-1])],
                "grid_times": len(heldout["sigmas"]) - 1,
            },
            "error": "intermediate: mean squared error per pixel over the variance of x_s (s^2 + sigma_data^2); "
            "end: mean squared error per pixel on [-1, 1]",
            "recipes": recipes,
        },
        paths["recipe_controls"],
    )
    return {
        r: {m: round(c["prediction"]["intermediate_mse"] or 0.0, 5) for m, c in models.items()}
        for r, models in recipes.items()
    }
