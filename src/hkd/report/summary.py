"""One flat JSON of a run's headline numbers (results/<run>/eval/summary.json), the file DVC
declares as the run's metrics, so that ``dvc metrics show``, ``dvc metrics diff`` and
``dvc exp show`` compare runs without reading the report."""

from __future__ import annotations

from hkd.io import load_json, save_json
from hkd.pipeline import CONDITIONAL, run_variants, stage_enabled

#: the per-row numbers copied from an evaluation row (a key the row lacks is left out: the
#: recognisable digit rate exists only with the digit classifier, label accuracy only with labels)
ROW_KEYS = (
    "fid",
    "fid_sampling_std",
    "is_mean",
    "kid_mean",
    "images",
    "recognisable_rate",
    "recognisable_rate_std",
    "label_accuracy",
)


def _rows(metrics: dict, prefix: str) -> dict:
    """``<prefix><row>/<number>`` for every row of an evaluate stage's metrics.json."""
    return {f"{prefix}{row['key']}/{k}": row[k] for row in metrics["rows"] for k in ROW_KEYS if k in row}


def _ratio_and_speed(metrics: dict, prefix: str) -> dict:
    rows = {r["key"]: r for r in metrics["rows"]}
    return {
        f"{prefix}hkd_over_teacher": rows["hkd"]["fid"] / rows["teacher"]["fid"],
        f"{prefix}speedup_hkd_vs_teacher": metrics["speedup_hkd_vs_teacher"],
    }


def _variants(cfg: dict, paths: dict) -> dict:
    out = {}
    for variant in run_variants(cfg):
        m = load_json(paths["variant_metrics"].replace("{variant}", variant))
        out.update({f"variant/{variant}/{k}": m[k] for k in ROW_KEYS if k in m})
    return out


def _table3(study: dict) -> dict:
    """The adopted recipe's rows (mean and spread over training seeds) and Table 3's verdicts."""
    adopted = study["adopted"]
    out = {}
    for model, stats in adopted["rows"].items():
        out.update(
            {
                f"table3/{model}/fid_mean": stats["mean"],
                f"table3/{model}/fid_spread": stats["spread"],
                f"table3/{model}/seeds": stats["n_seeds"],
                f"table3/{model}/fid_over_teacher": adopted["ratio_to_teacher"][model]["mean"],
            }
        )
    if adopted["ordering"]:
        out.update({f"table3/full_vs/{a}": v for a, v in adopted["ordering"]["full_vs"].items()})
        out["table3/full_best"] = adopted["ordering"]["full_best"]
    return out


def run_summary(cfg: dict, paths: dict) -> dict:
    """Every FID / IS / KID row (with the digit classifier, its recognisable digit rate),
    HKD / teacher, the speed-up, the zeroed-operator control, each variant's row, the conditional companion's rows and
    Table 3's spreads and verdicts, under flat keys."""
    metrics = load_json(paths["metrics"])
    out = {**_rows(metrics, ""), **_ratio_and_speed(metrics, "")}
    zeroed = metrics.get("zeroed_operators")
    if zeroed:  # the control: what zeroing the run's operators does to FID
        out["hkd/zeroed_operators_fid_change"] = zeroed["fid_change"]
        out["hkd/zeroed_operators_fid_change_spread"] = zeroed["fid_change_spread"]
    out.update(_variants(cfg, paths))
    if stage_enabled(cfg, "study"):
        out.update(_table3(load_json(paths["study"])))
    if cfg[CONDITIONAL]:
        companion = load_json(paths[f"{CONDITIONAL}_metrics"])
        out.update({**_rows(companion, f"{CONDITIONAL}/"), **_ratio_and_speed(companion, f"{CONDITIONAL}/")})
    return out


def write_summary(cfg: dict, paths: dict) -> dict:
    summary = run_summary(cfg, paths)
    save_json(summary, paths["summary"])
    return summary
