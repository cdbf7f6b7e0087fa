"""results/<run>/eval/summary.json: the flat numbers DVC shows as the run's metrics."""

import json
from pathlib import Path

from hkd.pipeline import run_paths
from hkd.report.summary import run_summary


def _row(key, fid):
    return {"key": key, "fid": fid, "fid_sampling_std": 1.0, "is_mean": 2.0, "kid_mean": 3.0, "images": 10}


def test_summary_holds_every_row_the_ratio_and_the_variants(tmp_path, smoke_cfg):
    cfg = {
        **smoke_cfg,
        "run": "t",
        "ablations": ["no_koopman"],
        "ablation_seeds": [],
        "conditional": False,
        "stability": {**smoke_cfg["stability"], "seeds": []},
        "study": {**smoke_cfg["study"], "recipes": {}},
    }
    paths = {k: str(tmp_path / v) for k, v in run_paths(cfg).items()}
    metrics = {"rows": [_row("teacher", 50.0), _row("hkd", 75.0)], "speedup_hkd_vs_teacher": 30.0}
    for key, obj in (("metrics", metrics), ("study", _study())):
        (tmp_path / run_paths(cfg)[key]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / run_paths(cfg)[key]).write_text(json.dumps(obj))
    variant = tmp_path / run_paths(cfg)["variant_metrics"].replace("{variant}", "no_koopman")
    variant.parent.mkdir(parents=True)
    variant.write_text(json.dumps({"variant": "no_koopman", "fid": 70.0, "is_mean": 2.5}))
    s = run_summary(cfg, paths)
    assert s["teacher/fid"] == 50.0 and s["hkd/fid"] == 75.0 and s["hkd/images"] == 10
    assert s["hkd_over_teacher"] == 1.5 and s["speedup_hkd_vs_teacher"] == 30.0
    assert s["variant/no_koopman/fid"] == 70.0
    assert s["table3/full_vs/no_koopman"] == "higher" and s["table3/full_best"] == "does not hold"
    assert all(not isinstance(v, (dict, list)) for v in s.values())


def test_summary_holds_the_recognisable_rate_where_the_rows_have_one(tmp_path, smoke_cfg):
    """Digit-classifier rows (and variants) carry their recognisable digit rate and its spread
    into summary.json; rows without one (Inception features, older files) add no key."""
    cfg = {**smoke_cfg, "run": "t", "ablations": ["no_koopman"], "ablation_seeds": [], "conditional": False}
    cfg["stability"] = dict(cfg["stability"], seeds=[])
    cfg["study"] = {**smoke_cfg["study"], "recipes": {}}
    paths = {k: str(tmp_path / v) for k, v in run_paths(cfg).items()}
    rate = {"recognisable_rate": 0.85, "recognisable_rate_std": 0.02, "recognisable_threshold": 0.9}
    rows = [{**_row("teacher", 50.0), **rate}, _row("hkd", 75.0)]
    files = {
        paths["metrics"]: {"rows": rows, "speedup_hkd_vs_teacher": 30.0},
        paths["study"]: _study(),
        paths["variant_metrics"].replace("{variant}", "no_koopman"): {"fid": 70.0, **rate},
    }
    for path, obj in files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj))
    s = run_summary(cfg, paths)
    assert s["teacher/recognisable_rate"] == 0.85 and s["teacher/recognisable_rate_std"] == 0.02
    assert s["variant/no_koopman/recognisable_rate"] == 0.85
    assert not any(k.startswith("hkd/recognisable") for k in s)


def _study():
    rows = {
        "full": {"mean": 75.0, "spread": 1.0, "n_seeds": 1},
        "no_koopman": {"mean": 70.0, "spread": 1.0, "n_seeds": 1},
    }
    return {
        "adopted": {
            "rows": rows,
            "ratio_to_teacher": {m: {"mean": r["mean"] / 50.0} for m, r in rows.items()},
            "ordering": {"full_vs": {"no_koopman": "higher"}, "full_best": "does not hold"},
        }
    }


def test_loss_table_keeps_the_last_value_of_a_step_logged_twice(tmp_path):
    """A resumed training logs the steps after its checkpoint again; the table keeps the rerun's."""
    import time

    from torch.utils.tensorboard import SummaryWriter

    from hkd.report.loss_curve import loss_table

    for values in ({10: 5.0, 20: 4.0, 30: 3.5}, {30: 3.0, 40: 2.0}):  # killed after step 30, resumed from 20
        with SummaryWriter(str(tmp_path)) as w:
            for step, v in values.items():
                w.add_scalar("hkd/loss_total", v, step)
        time.sleep(1.1)  # event files are named by the second they were opened
    table = loss_table(str(tmp_path))
    assert list(table["step"]) == [10, 20, 30, 40] and list(table["loss_total"]) == [5.0, 4.0, 3.0, 2.0]
