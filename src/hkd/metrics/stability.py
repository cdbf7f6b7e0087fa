"""Table 5, training stability: FID of the HKD weights after fixed epochs, over the run's
own training and the ``stability.seeds`` trainings (same teacher and trajectories, other
initialisation and minibatch seeds), as mean and standard deviation per epoch; plus the
model before training (the teacher-initialised encoder/decoder with zero Koopman
generators, the same for every seed). With ``stability.ablation_curves``, the same snapshots
of every Table 3 ablation training give the budget curves: FID against training examples
for each model (else the full HKD's curve alone). A run's
last snapshot, when it holds the run's final weights, takes the scores its run's evaluation
already wrote (the same samples) instead of being sampled and scored again. The first
``GRID_SAMPLES`` samples of the run's own training at each epoch are kept for the report's
grids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from hkd.data.dataset import load_dataset
from hkd.io import atomic_path, load_json, load_npz, save_json, save_npz
from hkd.koopman.model import build_hkd, load_hkd
from hkd.metrics.controls import alpha_agreement
from hkd.metrics.evaluate import make_scorer, score_one_step
from hkd.metrics.fidelity import SCORE_KEYS
from hkd.metrics.zeroed import zeroed_over_seeds
from hkd.pipeline import (
    FULL,
    curve_variants,
    parse_variant,
    run_paths,
    seed_variants,
    snapshot_paths,
    variant_paths,
)

#: samples per epoch kept for the report (which shows the first report.grid_images of them)
GRID_SAMPLES = 64


def snapshot_runs(cfg: dict) -> dict[str, dict]:
    """{run name: {"model": full or an ablation, "files": {epoch: snapshot file}}}: the run's
    own HKD first, then the Table 5 seeds, then the Table 3 ablation trainings when
    ``stability.ablation_curves``."""
    p = run_paths(cfg)
    runs = {f"seed{cfg['seed']}": {"model": FULL, "files": snapshot_paths(cfg, p["hkd_snapshots"])}}
    for v in curve_variants(cfg):
        runs[v] = {
            "model": parse_variant(cfg, v)["model"],
            "files": snapshot_paths(cfg, p["variant_snapshots"].replace("{variant}", v)),
        }
    return runs


def _mean_std(fids: list[float]) -> dict:
    a = np.array(fids, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else None, "runs": len(a)}


def budget_curves(cfg: dict, runs: dict, models: dict[str, str]) -> dict[str, dict]:
    """{model: {epoch: FID mean / std over its runs, training examples}}: Table 3's models
    against the training they had (examples = steps x batch; the ablations without
    trajectory times see one time point per example, the full model 1 + time_points)."""
    out = {}
    for model in dict.fromkeys(models.values()):
        names = [r for r, m in models.items() if m == model]
        out[model] = {
            str(e): {
                **_mean_std([runs[r][str(e)]["fid"] for r in names]),
                "examples": runs[names[0]][str(e)]["examples"],
            }
            for e in cfg["hkd"]["snapshot_epochs"]
        }
    return out


def plot_budget_curves(curves: dict[str, dict], before: float, path: str) -> None:
    from hkd.analysis.plots import errorbar_plot

    series = {}
    for model, by_epoch in curves.items():
        pts = sorted(by_epoch.values(), key=lambda v: v["examples"])
        series[model.replace("_", " ")] = (
            [0] + [v["examples"] for v in pts],
            [before] + [v["mean"] for v in pts],
            [0.0] + [v["std"] or 0.0 for v in pts],
        )
    errorbar_plot(
        series,
        "training examples (trajectories seen)",
        "FID (one step)",
        "FID against training budget (mean +- std over seeds)",
        path,
        logy=True,
    )


def budget_curve_table(
    curves: dict[str, dict], before: float, runs: dict[str, dict] | None = None
) -> pd.DataFrame:
    """The budget curves as one row per snapshot epoch (and the weights before training,
    epoch -1): training examples, each model's FID mean and its std over seeds, and each
    training's own FID (``run:<name>``, Table 5's rows)."""

    runs = runs or {}
    epochs = sorted({int(e) for by_epoch in curves.values() for e in by_epoch})
    rows = [{"epoch": -1, "examples": 0, **{m: before for m in curves}, **{f"run:{r}": before for r in runs}}]
    for e in epochs:
        row = {"epoch": e, "examples": next(c[str(e)]["examples"] for c in curves.values() if str(e) in c)}
        for model, by_epoch in curves.items():
            row[model], row[f"{model}_std"] = by_epoch[str(e)]["mean"], by_epoch[str(e)]["std"]
        row.update({f"run:{r}": by_epoch[str(e)]["fid"] for r, by_epoch in runs.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def final_runs(cfg: dict, paths: dict) -> dict[str, dict]:
    """{run name: its final weights, their scores and samples}, as the evaluate and
    variant-evaluate stages wrote them (the run's HKD row; each seed and ablation training)."""
    metrics = load_json(paths["metrics"])
    own = next(r for r in metrics["rows"] if r["key"] == "hkd")
    out = {f"seed{cfg['seed']}": {"hkd": paths["hkd"], "scores": own, "samples": paths["samples_hkd"]}}
    for v in curve_variants(cfg):
        vp = variant_paths(cfg, v)
        out[v] = {
            "hkd": vp["variant_hkd"],
            "scores": load_json(vp["variant_metrics"]),
            "samples": vp["variant_samples"],
        }
    return out


def _score_snapshot(cfg, model, final: dict, scorer, device, dtype, desc: str):
    """(images, FID / IS / KID) of a snapshot: read from its run's evaluation where the
    snapshot holds the run's final weights (``final["weights"]``; same evaluation seeds, same
    scorer), else sampled and scored here."""
    if _same_weights(model, final["weights"]):
        images = load_npz(final["samples"], ("images",))["images"]
        return images, {k: final["scores"][k] for k in SCORE_KEYS if k in final["scores"]}
    images, _, scores = score_one_step(cfg, model, scorer, device, dtype, desc)
    return images, scores


def _score_runs(cfg: dict, paths: dict, scorer, device, dtype) -> tuple[dict, dict, dict]:
    """({run: {epoch: scores, steps, examples}}, {run: model}, {grid name: the run's own images})."""
    runs, models, grids = {}, {}, {}
    own = f"seed{cfg['seed']}"
    finals = final_runs(cfg, paths)
    for name, run in snapshot_runs(cfg).items():
        runs[name], models[name] = {}, run["model"]
        final = {**finals[name], "weights": load_hkd(finals[name]["hkd"], device, cfg)}  # once per run
        for epoch, path in run["files"].items():
            model = load_hkd(path, device, cfg)
            images, m = _score_snapshot(
                cfg, model, final, scorer, device, dtype, f"stability: {name} epoch {epoch}"
            )
            stats = model.train_stats or {}
            runs[name][str(epoch)] = {**m, "steps": stats.get("steps"), "examples": stats.get("examples")}
            if name == own:
                grids[f"epoch{epoch:04d}"] = images[:GRID_SAMPLES]
    return runs, models, grids


def operator_controls(cfg: dict, paths: dict) -> dict:
    """The controls of ``metrics.controls`` over the full HKD's training seeds (the run's own
    and the Table 5 seeds): the zeroed-operator FID change and the alpha maps' agreement."""
    own = f"seed{cfg['seed']}"
    zeroed = {own: load_json(paths["metrics"]).get("zeroed_operators")}
    weights = {own: paths["hkd"]}
    for v in seed_variants(cfg):
        vp = variant_paths(cfg, v)
        zeroed[v] = load_json(vp["variant_metrics"]).get("zeroed_operators")
        weights[v] = vp["variant_hkd"]
    maps = [[a for a, _ in load_hkd(w, "cpu", cfg).koopman.eigenvalues()] for w in weights.values()]
    return {
        "zeroed_operators": zeroed_over_seeds(zeroed),
        "alpha_agreement": alpha_agreement(maps, seed=cfg["seed"]),
    }


def evaluate_stability(cfg: dict, paths: dict, teacher, device, dtype) -> dict:
    data = load_dataset(paths["data"])
    scorer, info = make_scorer(cfg, paths, data, device)
    hk = cfg["hkd"]
    torch.manual_seed(cfg["seed"] + 1)  # as hkd-train builds it (nothing in it is random today)
    initial = build_hkd(teacher, cfg).to(device).eval()
    images, _, before = score_one_step(cfg, initial, scorer, device, dtype, "stability: before training")
    runs, models, grids = _score_runs(cfg, paths, scorer, device, dtype)
    grids["before"] = images[:GRID_SAMPLES]
    full = [r for r, m in models.items() if m == FULL]
    by_epoch = {str(e): _mean_std([runs[r][str(e)]["fid"] for r in full]) for e in hk["snapshot_epochs"]}
    curves = budget_curves(cfg, runs, models)
    plot_budget_curves(curves, before["fid"], paths["budget_curves"])
    with atomic_path(paths["budget_curve_table"]) as tmp:
        budget_curve_table(curves, before["fid"], runs).to_csv(tmp, index=False)
    result = {
        "epochs": hk["snapshot_epochs"],
        "total_epochs": hk["epochs"],
        "before_training": before,
        "runs": {r: runs[r] for r in full},
        "fid_by_epoch": by_epoch,
        "std": "sample standard deviation (ddof = 1) over the runs",
        "budget_curves": curves,
        "curve_runs": {r: {"model": models[r], "fid_by_epoch": runs[r]} for r in runs},
        "feature_extractor": info["name"],
        "images": cfg["sample"]["count"],
        "operator_controls": operator_controls(cfg, paths) if cfg["hkd"]["koopman"] else None,
    }
    save_npz(paths["stability_samples"], **grids)
    save_json(result, paths["stability"])
    return {"before": before["fid"], "fid_by_epoch": {e: v["mean"] for e, v in by_epoch.items()}}
