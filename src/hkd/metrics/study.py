"""Spreads and verdicts: every trained row of the report (Table 3, the HKD row of Tables
1 / 2, the optimisation study) as mean and spread over its training seeds, and an ordering
said only where the difference exceeds the spread.

A row's spread is the larger of the standard deviation of its FID over training seeds
(ddof = 1, two seeds or more) and FID's sampling spread (the bootstrap standard deviation
over its generated images, ``Scorer``): one training seed still has the sampling noise.
Two rows are ordered only when their means differ by more than the sum of their spreads;
otherwise the comparison is "not resolved at this budget"."""

from __future__ import annotations

import numpy as np

from hkd.io import load_json, save_json
from hkd.metrics.zeroed import zeroed_over_seeds
from hkd.pipeline import (
    ADOPTED_RECIPE,
    CONTROL_ABLATIONS,
    FULL,
    PAPER_LEVERS,
    PAPER_RECIPE,
    ablation_variants,
    parse_variant,
    recipe_hkd,
    seed_variants,
    stage_enabled,
    study_variants,
    variant_config,
)

NOT_RESOLVED = "not resolved at this budget"
RULE = (
    "spread = max(std over training seeds (ddof = 1), FID's bootstrap sampling std); two rows are ordered only "
    "where their means differ by more than the sum of their spreads"
)


def mean_recognisable_rate(entries: list[dict]) -> float | None:
    """The recognisable digit rate averaged over one row's trainings, as FID is; None when
    any of them has none (Inception features, or metrics written before the rate existed)."""
    rates = [e.get("recognisable_rate") for e in entries]
    return None if not rates or None in rates else float(np.mean(rates))


def fid_stats(entries: list[dict]) -> dict:
    """Mean and spread of FID over one row's trainings (``entries``: metrics with ``fid``,
    ``fid_sampling_std`` and ``seed``), and the mean recognisable digit rate beside it."""
    fids = np.array([e["fid"] for e in entries], dtype=float)
    std_seeds = float(fids.std(ddof=1)) if len(fids) > 1 else None
    sampling = max((e.get("fid_sampling_std") or 0.0) for e in entries)
    return {
        "mean": float(fids.mean()),
        "std_seeds": std_seeds,
        "sampling_std": sampling,
        "spread": max(std_seeds or 0.0, sampling),
        "n_seeds": len(fids),
        "seeds": [e.get("seed") for e in entries],
        "fids": fids.tolist(),
        "images": entries[0].get("images"),
        "recognisable_rate": mean_recognisable_rate(entries),
    }


def compare(a: dict, b: dict) -> str:
    """``lower`` / ``higher`` (a's FID against b's), or NOT_RESOLVED inside the spreads."""
    diff = a["mean"] - b["mean"]
    if abs(diff) <= a["spread"] + b["spread"]:
        return NOT_RESOLVED
    return "lower" if diff < 0 else "higher"


def ratio_stats(row: dict, teacher: dict) -> dict:
    """FID relative to the teacher's, with the spread of both carried to first order."""
    r = row["mean"] / teacher["mean"]
    rel = np.hypot(row["spread"] / row["mean"], teacher["spread"] / teacher["mean"])
    return {"mean": float(r), "spread": float(r * rel)}


def _main_entry(cfg: dict, metrics: dict) -> dict:
    row = next(r for r in metrics["rows"] if r["key"] == "hkd")
    return {**row, "seed": cfg["seed"]}


def _variant_entry(cfg: dict, metrics_file: str, variant: str) -> dict:
    return {
        **load_json(metrics_file.replace("{variant}", variant)),
        "seed": variant_config(cfg, variant)["seed"],
    }


def adopted_entries(cfg: dict, metrics: dict, variant_metrics: str) -> dict[str, list[dict]]:
    """{model: metrics of each training} of the run's own recipe: the full HKD over the run's
    and the Table 5 seeds, each ablation over the run's seed and ``ablation_seeds``."""
    rows = {
        FULL: [{**_main_entry(cfg, metrics), "zeroed_operators": metrics.get("zeroed_operators")}]
        + [_variant_entry(cfg, variant_metrics, v) for v in seed_variants(cfg)]
    }
    for a in cfg["ablations"]:
        names = [v for v in ablation_variants(cfg) if parse_variant(cfg, v)["model"] == a]
        rows[a] = [_variant_entry(cfg, variant_metrics, v) for v in names]
    return rows


def study_entries(cfg: dict, variant_metrics: str) -> dict[str, dict[str, list[dict]]]:
    """{recipe: {model: metrics of each training}} of the study (``paper`` and each lever recipe)."""
    out: dict[str, dict[str, list]] = {}
    for v in study_variants(cfg):
        p = parse_variant(cfg, v)
        out.setdefault(p["recipe"], {}).setdefault(p["model"], []).append(
            _variant_entry(cfg, variant_metrics, v)
        )
    return out


def model_controls(entries: list[dict], weights_controls: dict | None) -> dict:
    """The controls of one recipe's model: the zeroed-operator FID change over its seeds (from
    each training's metrics) and, where the recipe_controls stage ran, the intermediate-time
    prediction errors and the alpha maps' agreement across seeds."""
    zeroed = zeroed_over_seeds({f"seed{e['seed']}": e.get("zeroed_operators") for e in entries})
    if zeroed is not None:
        zeroed = {k: v for k, v in zeroed.items() if k != "runs"}
    weights_controls = weights_controls or {}
    return {
        "zeroed_operators": zeroed,
        "prediction": weights_controls.get("prediction"),
        "alpha_agreement": weights_controls.get("alpha_agreement"),
    }


def ordering(rows: dict[str, dict]) -> dict | None:
    """Table 3's claim on {model: stats}: the full model beats each ablation, as a verdict per
    ablation and overall (None without the full model and another)."""
    if FULL not in rows or len(rows) < 2:
        return None
    out = {"full_vs": {a: compare(rows[FULL], rows[a]) for a in rows if a != FULL}}
    paper = [v for a, v in out["full_vs"].items() if a not in CONTROL_ABLATIONS]  # the paper's rows
    out["full_best"] = (
        NOT_RESOLVED
        if not paper
        else "holds"
        if all(v == "lower" for v in paper)
        else "does not hold"
        if any(v == "higher" for v in paper)
        else NOT_RESOLVED
    )
    return out


def recipe_summary(
    levers: dict,
    rows: dict[str, dict],
    teacher: dict,
    paper: dict | None = None,
    controls: dict | None = None,
) -> dict:
    """One recipe's rows with their ratio to the teacher, the full model against the others,
    (``paper``: the paper-literal recipe's rows) each model against the paper-literal one, and
    each model's controls (``model_controls``)."""
    return {
        "levers": levers,
        "rows": rows,
        "ratio_to_teacher": {m: ratio_stats(s, teacher) for m, s in rows.items()},
        "ordering": ordering(rows),
        "vs_paper": {m: compare(s, paper[m]) for m, s in rows.items() if m in paper} if paper else None,
        "controls": controls,
    }


def _controls(entries: dict[str, list[dict]], weights: dict | None) -> dict:
    return {m: model_controls(e, (weights or {}).get(m)) for m, e in entries.items()}


def summarise(cfg: dict, metrics: dict, variant_metrics: str, recipe_controls: dict | None = None) -> dict:
    """study.json: the teacher row, the adopted recipe (the run's own hkd: settings: Table 3
    and Table 5 trainings) and, with study.recipes, the paper-literal recipe and each lever
    recipe against it; ``recipe_controls``: what the recipe_controls stage wrote."""
    teacher = next(r for r in metrics["rows"] if r["key"] == "teacher")
    teacher_stats = {**fid_stats([{**teacher, "seed": None}]), "nfe": teacher["nfe"]}
    weights = (recipe_controls or {}).get("recipes", {})
    entries = study_entries(cfg, variant_metrics)
    study = {r: {m: fid_stats(e) for m, e in models.items()} for r, models in entries.items()}
    paper = study.get(PAPER_RECIPE)
    recipes = {
        r: recipe_summary(
            {k: recipe_hkd(cfg, r, FULL)[k] for k in PAPER_LEVERS} if r != PAPER_RECIPE else {},
            rows,
            teacher_stats,
            None if r == PAPER_RECIPE else paper,
            _controls(entries[r], weights.get(r)),
        )
        for r, rows in study.items()
    }
    adopted_e = adopted_entries(cfg, metrics, variant_metrics)
    adopted = recipe_summary(
        {k: cfg["hkd"][k] for k in PAPER_LEVERS},
        {m: fid_stats(e) for m, e in adopted_e.items()},
        teacher_stats,
        paper,
        _controls(adopted_e, weights.get(ADOPTED_RECIPE)),
    )
    heldout = (recipe_controls or {}).get("heldout")
    return {
        "rule": RULE,
        "teacher": teacher_stats,
        "adopted": adopted,
        "recipes": recipes,
        "heldout": heldout,
    }


def write_study(cfg: dict, paths: dict) -> dict:
    controls = load_json(paths["recipe_controls"]) if stage_enabled(cfg, "recipe_controls") else None
    summary = summarise(cfg, load_json(paths["metrics"]), paths["variant_metrics"], controls)
    save_json(summary, paths["study"])
    return {
        "adopted": {m: round(s["mean"], 3) for m, s in summary["adopted"]["rows"].items()},
        "recipes": {
            r: {m: round(s["mean"], 3) for m, s in v["rows"].items()} for r, v in summary["recipes"].items()
        },
    }
