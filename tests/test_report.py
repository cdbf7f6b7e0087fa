"""The paper's tables: built from metrics files, rendered in HTML, LaTeX and Markdown."""

import copy

import numpy as np
import pandas as pd
import pytest

from hkd.metrics.study import NOT_RESOLVED, fid_stats, recipe_summary
from hkd.pipeline import conditional_config
from hkd.report.build import class_grid, image_grid, provenance
from hkd.report.paper import TABLE1, TABLE2, TABLE3_FID, TABLE4
from hkd.report.tables import FORMATS, main_table, render, study_table, table3, table5, table6, write_tables


def metrics(hkd_fid=20.0):
    """A metrics.json as the evaluate stage writes it (small fixture)."""
    speed = {
        "teacher": {
            "images_per_second": 10.0,
            "batch": 64,
            "repeats": 3,
            "seconds_per_batch": 6.4,
            "nfe": 35,
        },
        "teacher_nfe15": {
            "images_per_second": 23.0,
            "batch": 64,
            "repeats": 3,
            "seconds_per_batch": 2.78,
            "nfe": 15,
        },
        "hkd": {"images_per_second": 400.0, "batch": 64, "repeats": 3, "seconds_per_batch": 0.16, "nfe": 1},
        "kd": {"images_per_second": 410.0, "batch": 64, "repeats": 3, "seconds_per_batch": 0.156, "nfe": 1},
    }
    return {
        "rows": [
            {"key": "real", "method": "Real images", "nfe": None, "fid": 5.0},
            {"key": "teacher", "method": "EDM teacher (Heun)", "nfe": 35, "fid": 10.0},
            {"key": "teacher_nfe15", "method": "EDM teacher (Heun)", "nfe": 15, "fid": 12.5},
            {"key": "hkd", "method": "HKD (one step)", "nfe": 1, "fid": hkd_fid},
        ],
        "throughput": speed,
        "device": "test CPU",
        "threads": 2,
        "precision": "bfloat16",
        "teacher_precision": "float32",
        "reference": {"split": "heldout", "images": 1000},
        "feature_extractor": {"name": "hkd-digit-classifier"},
    }


STABILITY = {
    "epochs": [0, 5, 10, 27],
    "total_epochs": 28,
    "before_training": {"fid": 300.0},
    "runs": {"seed0": {}, "seed1": {}, "seed2": {}},
    "fid_by_epoch": {
        "0": {"mean": 60.0, "std": 2.0},
        "5": {"mean": 40.0, "std": 1.5},
        "10": {"mean": 30.0, "std": 1.0},
        "27": {"mean": 25.0, "std": 0.5},
    },
}


def stats(*fids, sampling=0.1):
    return fid_stats([{"fid": f, "fid_sampling_std": sampling, "seed": i} for i, f in enumerate(fids)])


TEACHER = {**stats(10.0), "nfe": 35}


def study(full=(20.0, 20.4, 19.6), **ablations):
    """A study.json summary of the adopted recipe (small fixture): three full seeds, two per ablation."""
    ablations = ablations or {
        "no_koopman": (30.0, 31.0),
        "no_trajectory": (25.0, 24.0),
        "no_hierarchy": (22.0, 21.0),
    }
    rows = {"full": stats(*full), **{k: stats(*v) for k, v in ablations.items()}}
    return {
        "rule": "rule",
        "teacher": TEACHER,
        "adopted": recipe_summary({"decoder": "paper"}, rows, TEACHER),
        "recipes": {},
    }


def test_table3_rows_spreads_verdicts_and_paper_ratio(smoke_cfg):
    t = table3(smoke_cfg, metrics(), study())
    df = t.frame
    assert list(df["Koopman evolution"]) == ["no", "yes", "yes", "yes"]
    assert list(df["Trajectory consistency"]) == ["no", "no", "yes", "yes"]
    assert list(df["Hierarchy"]) == ["yes", "yes", "no", "yes"]
    assert list(df["FID (this run)"]) == [30.5, 24.5, 21.5, 20.0]
    assert list(df["Seeds"]) == [2, 2, 2, 3]
    assert df["± spread"].iloc[0] == pytest.approx(np.std([30.0, 31.0], ddof=1))
    assert df["± spread"].iloc[3] == pytest.approx(0.4)
    assert list(df["FID (paper)"]) == [
        TABLE3_FID[k] for k in ("no_koopman", "no_trajectory", "no_hierarchy", "full")
    ]
    assert df["FID / full (this run)"].iloc[0] == pytest.approx(30.5 / 20.0)
    assert df["FID / full (paper)"].iloc[0] == pytest.approx(5.72 / 3.30)
    assert list(df["Full HKD against it (this run)"]) == ["full lower", "full lower", "full lower", "—"]
    assert "Difference" not in df

    close = table3(smoke_cfg, metrics(), study(no_hierarchy=(20.5, 21.0))).frame  # inside the spreads
    assert close["Full HKD against it (this run)"].iloc[0] == f"full {NOT_RESOLVED}"
    worse = study(full=(23.0, 23.2), no_hierarchy=(20.0, 20.1))
    assert worse["adopted"]["ordering"]["full_best"] == "does not hold"
    assert study()["adopted"]["ordering"]["full_best"] == "holds"


def test_main_table_reproduces_only_the_rows_it_has(smoke_cfg):
    cfg = copy.deepcopy(smoke_cfg)
    cfg["trajectories"]["num_steps"] = 18  # 35 NFE, the paper's EDM row
    t = main_table(cfg, metrics(), study=study())
    assert t.key == "table1" and len(t.frame) == len(TABLE1)
    mine = dict(zip(zip(t.frame["Method"].str.split(" ").str[0], t.frame["NFE"]), t.frame["FID (this run)"]))
    assert mine[("EDM", 35)] == 10.0 and mine[("EDM", 15)] == 12.5
    assert mine[("KD", 1)] == 30.5 and mine[("HKD", 1)] == 20.0  # means over the training seeds
    assert all(pd.isna(v) for (m, _), v in mine.items() if m not in ("EDM", "KD", "HKD"))
    hkd = t.frame[t.frame["Method"] == "HKD"].iloc[0]
    assert "Difference" not in t.frame  # no CIFAR-10 number is subtracted from an MNIST one
    assert hkd["FID / teacher (this run)"] == pytest.approx(2.0)
    assert hkd["FID / EDM 35 (paper)"] == pytest.approx(3.30 / 1.97)
    assert hkd["Seeds"] == 3 and hkd["± spread"] == pytest.approx(0.4)
    assert "embedded MNIST" in t.caption and "hkd-digit-classifier" in t.caption

    t2 = main_table(cfg, metrics(), "table2", study())  # the embedded default fills Table 2 too
    assert t2.key == "table2" and t2.frame[t2.frame["NFE"] == 15]["FID (this run)"].iloc[0] == 12.5
    assert pd.isna(t2.frame[t2.frame["NFE"] == 79]["FID (this run)"].iloc[0])  # no 79-NFE teacher here
    assert (
        t2.frame[t2.frame["Method"] == "HKD"]["FID / EDM 35 (paper)"].isna().all()
    )  # Table 2's EDM is 79 NFE
    extra = t2.frame.iloc[
        len(TABLE2) :
    ]  # this run's 35-NFE teacher has no Table 2 row: listed after the paper's
    assert (
        list(extra["NFE"]) == [35]
        and extra["FID (this run)"].iloc[0] == 10.0
        and pd.isna(extra["FID (paper)"].iloc[0])
    )

    alone = main_table(cfg, metrics())  # no study: each row on its own, the KD row not trained
    assert alone.frame[alone.frame["Method"] == "HKD"]["Seeds"].iloc[0] == 1
    assert pd.isna(alone.frame[alone.frame["Method"] == "KD"]["FID (this run)"].iloc[0])
    assert "Label accuracy (this run)" not in t.frame  # unconditional: no label to check


def test_study_table_lists_each_recipe_and_model(smoke_cfg):
    cfg = copy.deepcopy(smoke_cfg)
    cfg["study"]["models"] = ["full", "no_koopman"]
    paper_rows = {"full": stats(40.0, 41.0), "no_koopman": stats(35.0, 35.5)}
    lever_rows = {"full": stats(30.0)}
    s = study()
    s["recipes"] = {
        "paper": recipe_summary({}, paper_rows, TEACHER),
        "clock_80": recipe_summary({"koopman_time_unit": 80.0}, lever_rows, TEACHER, paper_rows),
    }
    t = study_table(cfg, metrics(), s)
    df = t.frame
    assert list(df["Recipe"]) == [
        "paper-literal",
        "paper-literal",
        "clock_80",
        "clock_80",
        "adopted (this config's hkd:)",
        "adopted (this config's hkd:)",
    ]
    assert df["FID"].iloc[0] == 40.5 and df["FID / teacher"].iloc[0] == pytest.approx(4.05)
    assert df["Against paper-literal"].iloc[2] == "lower" and pd.isna(df["FID"].iloc[3])
    assert "koopman_time_unit = 80.0" in df["Levers"].iloc[2]
    assert "30.000" in render(t, "md")


def conditional_metrics():
    m = metrics()
    for row, acc in zip(m["rows"], (None, 0.97, None, 0.9)):
        if acc is not None:
            row["label_accuracy"] = acc
    return m


def test_table4_from_the_conditional_companion(smoke_cfg):
    """The companion's metrics fill Table 4: its teacher and HKD rows, with how often the
    digit classifier agrees with the requested label."""
    cfg = copy.deepcopy(smoke_cfg)
    cfg["trajectories"]["num_steps"] = 18
    cond = conditional_config(cfg)
    t4 = main_table(cond, conditional_metrics())
    assert t4.key == "table4" and len(t4.frame) == len(TABLE4) + 1  # + the teacher at 15 NFE, not in Table 4
    by_method = t4.frame.set_index(["Method", "NFE"])
    assert (
        by_method.loc[("EDM", 35), "FID (this run)"] == 10.0
        and by_method.loc[("HKD", 1), "FID (this run)"] == 20.0
    )
    assert by_method.loc[("EDM", 35), "Label accuracy (this run)"] == 0.97
    assert by_method.loc[("HKD", 1), "Label accuracy (this run)"] == 0.9
    assert pd.isna(by_method.loc[("DMD", 1), "Label accuracy (this run)"])
    assert pd.isna(by_method.loc[("DMD", 1), "FID (this run)"])
    assert by_method.loc[("EDM", 15), "FID (this run)"] == 12.5 and pd.isna(
        by_method.loc[("EDM", 15), "FID (paper)"]
    )
    assert any("Label accuracy" in n for n in t4.notes) and any("Class-conditional" in n for n in t4.notes)
    assert "0.900" in render(t4, "md") and "Label accuracy" in render(t4, "tex")


def test_class_grid_puts_one_class_per_row():
    images = np.stack([np.full((1, 4, 4), v, np.float32) for v in np.linspace(-1, 0.5, 7)])
    labels = np.array([2, 0, 2, 1, 0, 2, 2])
    grid = np.asarray(
        class_grid(
            images,
            labels,
            per_class=3,
        )
    )
    plain = np.asarray(
        image_grid(
            np.concatenate(
                [
                    images[[1, 4]],
                    np.ones((1, 1, 4, 4), np.float32),
                    images[[3]],
                    np.ones((2, 1, 4, 4), np.float32),
                    images[[0, 2, 5]],
                ]
            ),
            cols=3,
        )
    )
    assert grid.shape == plain.shape and (grid == plain).all()


def test_table6_times_and_speedups(smoke_cfg):
    cfg = copy.deepcopy(smoke_cfg)
    cfg["trajectories"]["num_steps"] = 18
    t = table6(cfg, metrics())
    row = {
        (m.split(" ")[0], n): r
        for m, n, r in zip(t.frame["Method"], t.frame["NFE"], t.frame.to_dict("records"))
    }
    assert row[("EDM", 35)]["s / image (this run)"] == pytest.approx(0.1)
    assert row[("HKD", 1)]["Speed-up vs EDM 35 (this run)"] == pytest.approx(40.0)
    assert row[("HKD", 1)]["Speed-up vs EDM 35 (paper)"] == pytest.approx(0.69 / 0.03)
    assert row[("KD", 1)]["s / image (this run)"] == pytest.approx(1 / 410.0)
    assert pd.isna(row[("DDPM", 1000)]["s / image (this run)"])
    assert "test CPU" in t.caption


def test_precisions_are_reported_and_older_metrics_still_render(smoke_cfg, tmp_path):
    """Table 6 and the provenance name HKD's and the teacher's precision; a metrics file
    written before the teacher's was recorded says so instead of failing."""
    cfg = {**copy.deepcopy(smoke_cfg), "conditional": False}
    cfg["trajectories"]["num_steps"] = 18
    paths = {"timings": str(tmp_path), "run_timings": str(tmp_path)}
    assert "HKD bfloat16, teacher float32" in table6(cfg, metrics()).caption
    p = provenance(cfg, paths, metrics())
    assert (p["precision"], p["teacher_precision"]) == ("bfloat16", "float32")
    old = {k: v for k, v in metrics().items() if k != "teacher_precision"}
    assert "teacher precision not recorded" in table6(cfg, old).caption
    assert provenance(cfg, paths, old)["teacher_precision"] == "not recorded"


def test_table5_pairs_epochs_by_fraction_of_training(smoke_cfg):
    t = table5(smoke_cfg, metrics(), STABILITY)
    f = t.frame
    assert list(f["Epoch (this run)"]) == ["before training", "0 of 28", "5 of 28", "10 of 28", "27 of 28"]
    assert list(f["Epoch (paper)"]) == ["before training", "0 of 53", "10 of 53", "20 of 53", "52 of 53"]
    assert list(f["FID mean (this run)"]) == [300.0, 60.0, 40.0, 30.0, 25.0]
    assert f["FID mean (paper)"].iloc[4] == 3.31 and f["FID std (paper)"].iloc[4] == 0.02
    assert f["Difference (mean)"].iloc[0] == pytest.approx(300.0 - 447.13)
    assert "seed0, seed1, seed2" in " ".join(t.notes)


def test_every_template_renders_every_table(smoke_cfg, tmp_path):
    """HTML, LaTeX (booktabs) and Markdown of each table from the fixture: every value and
    header appears, special characters are escaped, missing values are dashes."""
    cfg = copy.deepcopy(smoke_cfg)
    cfg["trajectories"]["num_steps"] = 18
    tables = [
        main_table(cfg, metrics(), study=study()),
        table3(cfg, metrics(), study()),
        main_table(conditional_config(cfg), conditional_metrics()),
        table5(cfg, metrics(), STABILITY),
        table6(cfg, metrics()),
    ]
    for t in tables:
        html, tex, md = (render(t, f) for f in FORMATS)
        assert html.startswith("<table") and f'id="{t.key}"' in html and t.title in html
        assert (
            "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "\\begin{tabular}" in tex
        )
        assert tex.count(" \\\\\n") == len(t.frame) + 1  # header + one line per row
        assert md.count("\n| ") == len(t.frame) + 1 and ("|---:|" in md or "|:---|" in md)
        for line in t.cells():
            for cell in line:
                assert cell in html and cell.replace("—", "---") in tex.replace("\\_", "_").replace(
                    "\\%", "%"
                )
    t1 = tables[0]
    assert "20.000" in render(t1, "md") and "3.30" in render(t1, "md") and "1.68" in render(t1, "md")
    assert "2-Rectified flow++" in render(t1, "tex")
    assert "s / image" in render(tables[4], "tex") and "before training" in render(tables[3], "md")
    written = write_tables(tables, str(tmp_path / "tables"))
    assert sorted(p.split("/")[-1] for p in written) == sorted(
        f"{t.key}.{f}" for t in tables for f in FORMATS
    )
    (tmp_path / "tables" / "table9.md").write_text("stale")
    write_tables(tables[:1], str(tmp_path / "tables"))
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == [
        "table1.html",
        "table1.md",
        "table1.tex",
    ]
    with pytest.raises(ValueError, match="unknown table format"):
        render(t1, "pdf")


RECOGNISABLE = "Recognisable (p ≥ 0.9, this run)"


def scored_metrics(extractor="hkd-digit-classifier", rates=(0.97, 0.93, 0.9, 0.71)):
    """metrics() with the scores the Sample quality table reads, and with the digit
    classifier, each row's recognisable digit rate (None: a row scored before it existed)."""
    m = metrics()
    m["feature_extractor"] = {"name": extractor}
    for row, rate in zip(m["rows"], rates):
        row.update(is_mean=2.0, is_std=0.1, kid_mean=0.01, kid_std=0.001, images=100, fid_sampling_std=0.5)
        if extractor == "hkd-digit-classifier" and rate is not None:
            row.update(recognisable_rate=rate, recognisable_rate_std=0.02, recognisable_threshold=0.9)
    return m


def test_recognisable_rate_beside_fid_in_the_report_tables(smoke_cfg):
    """The digit classifier's recognisable digit rate sits beside FID in the Sample quality
    table (± its bootstrap spread) and in Tables 1 and 3 (trained rows: the mean over seeds),
    in every format; a row scored before the rate existed says 'not recorded'."""
    from hkd.report.build import metrics_table, summary_tables

    cfg = copy.deepcopy(smoke_cfg)
    cfg["trajectories"]["num_steps"] = 18
    m = scored_metrics(rates=(0.97, 0.93, 0.9, None))
    quality = metrics_table(m)
    assert list(quality.columns).index("Recognisable (p ≥ 0.9)") == list(quality.columns).index("FID") + 3
    assert "<td>0.930 ± 0.020</td>" in summary_tables(m)["metrics"]  # the report's HTML
    assert list(quality["Recognisable (p ≥ 0.9)"]) == [
        "0.970 ± 0.020",
        "0.930 ± 0.020",
        "0.900 ± 0.020",
        "not recorded",
    ]

    with_rates = study()
    with_rates["adopted"]["rows"]["full"] = fid_stats(
        [
            {"fid": 20.0, "fid_sampling_std": 0.1, "seed": i, "recognisable_rate": r}
            for i, r in enumerate((0.7, 0.8))
        ]
    )
    t1 = main_table(cfg, m, study=with_rates)
    by_row = t1.frame.set_index(t1.frame["Method"].str.split(" ").str[0] + "@" + t1.frame["NFE"].astype(str))
    assert by_row.loc["EDM@35", RECOGNISABLE] == 0.93 and by_row.loc["EDM@15", RECOGNISABLE] == 0.9
    assert by_row.loc["HKD@1", RECOGNISABLE] == pytest.approx(0.75)  # mean over the training seeds
    assert by_row.loc["KD@1", RECOGNISABLE] == "not recorded"  # its study row predates the rate
    assert pd.isna(by_row.loc["DDPM@1000", RECOGNISABLE])  # no such sampler here: a dash
    for fmt in FORMATS:
        text = render(t1, fmt)
        assert "0.930" in text and "not recorded" in text
    assert "p $\\geq$ 0.9" in render(t1, "tex") and RECOGNISABLE in render(t1, "html")
    assert any(n.startswith("Recognisable") for n in t1.notes)

    t3 = table3(cfg, m, with_rates).frame
    assert t3[RECOGNISABLE].iloc[-1] == pytest.approx(0.75) and t3[RECOGNISABLE].iloc[0] == "not recorded"


def test_inception_rows_have_no_recognisable_rate(smoke_cfg):
    """With Inception features the rate does not exist: no column, rather than a made-up number."""
    from hkd.report.build import metrics_table

    m = scored_metrics("inception-v3-compat")
    assert not any(c.startswith("Recognisable") for c in metrics_table(m).columns)
    assert not any(
        c.startswith("Recognisable") for c in main_table(smoke_cfg, m, study=study()).frame.columns
    )
    assert not any(c.startswith("Recognisable") for c in table3(smoke_cfg, m, study()).frame.columns)


def test_the_quality_claim_names_the_recognisable_rates():
    from hkd.report.claims import quality_claim

    claim = quality_claim(None, scored_metrics())
    assert (
        "recognisable digits (p ≥ 0.9): teacher 0.93, HKD 0.71 (the run's own samples, 100 each)"
        in (claim["this_run"])
    )
    assert "recognisable" not in quality_claim(None, scored_metrics(rates=(None,) * 4))["this_run"]
    assert "recognisable" not in quality_claim(None, scored_metrics("inception-v3-compat"))["this_run"]


def test_run_and_tier_reports_link_to_each_other(repo):
    """The default's report links to the claims tier's (reports/claims/index.html) and back;
    a run no tier extends links to none."""
    from hkd.config import load_config
    from hkd.report.links import report_links

    def links(name):
        return [
            (link["name"], link["href"])
            for link in report_links(load_config(repo / "configs" / f"{name}.yaml"), repo)
        ]

    assert links("default") == [("claims", "claims/index.html")]
    assert links("claims") == [(None, "../index.html")]
    assert links("smoke") == [] and links("cifar10") == []
