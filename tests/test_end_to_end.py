"""The smoke config through Snakemake and DVC, in a scratch copy of the repository."""

import json
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import copy_workflow

from hkd.config import load_config
from hkd.cost.plan import SMALL, plan
from hkd.pipeline import ABLATIONS

BIN = Path(sys.executable).parent


def run(cmd, cwd, timeout=600):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def check_plan_against_run(work: Path) -> None:
    """`hkd plan` names every file the smoke run wrote (logs aside), and estimates the size
    of each sizeable one within 25 %."""
    planned = {
        f: size
        for r in plan(load_config(work / "configs" / "smoke.yaml"), work / "benchmarks")["jobs"]
        for f, size in r["files"].items()
    }
    for f, size in planned.items():
        assert (work / f).exists(), f"planned but not written: {f}"
        if size is not None and size >= SMALL:
            real = (work / f).stat().st_size
            assert abs(real - size) <= 0.25 * size, f"{f}: planned {size} bytes, written {real}"
    assert sum(1 for size in planned.values() if size and size >= SMALL) >= 10

    def covered(f: str) -> bool:
        return (
            f in planned
            or any(f.startswith(d + "/") for d in planned)
            or "/logs/" in f
            or f == "results/smoke/config.yaml"  # the config Snakemake's jobs read, no stage output
            or f.endswith("/.gitignore")  # DVC's entries for the folder outputs it recorded
        )

    written = {str(q.relative_to(work)) for q in (work / "results" / "smoke").rglob("*") if q.is_file()}
    assert not [f for f in written if not covered(f)], sorted(f for f in written if not covered(f))


@pytest.mark.slow
def test_smoke_dag_with_snakemake(tmp_path):
    work = copy_workflow(tmp_path)
    dvc_repository(work)  # Snakemake's run is then recorded in DVC (check_dvc_records_the_run)
    smk = [str(BIN / "snakemake"), "--configfile", "configs/smoke.yaml", "--cores", "2"]
    t0 = time.time()
    first = run(smk, work)
    elapsed = time.time() - t0
    html = (work / "reports" / "smoke" / "index.html").read_text()
    metrics = json.loads((work / "results" / "smoke" / "eval" / "metrics.json").read_text())
    fids = {r["key"]: r["fid"] for r in metrics["rows"]}
    assert set(fids) == {"real", "teacher", "teacher_nfe3", "hkd"}
    for key, value in fids.items():
        assert isinstance(value, float) and value == value and value >= 0, key
        # the table in the report shows the same numbers
        assert f"{value:.3f}" in html, key
    assert re.search(r"HKD FID / teacher FID = <strong>[0-9.]+</strong>", html)
    # the digit classifier's recognisable digit rate beside each row's FID, and in DVC's metrics
    summary = json.loads((work / "results" / "smoke" / "eval" / "summary.json").read_text())
    for r in metrics["rows"]:
        assert 0.0 <= r["recognisable_rate"] <= 1.0 and f"{r['recognisable_rate']:.3f} ± " in html, r["key"]
        assert summary[f"{r['key']}/recognisable_rate"] == r["recognisable_rate"]
    assert "Table 3: ablations" in html
    for variant in ("no_koopman", "no_trajectory", "no_hierarchy", "seed1"):  # as configs/smoke.yaml lists
        abl = json.loads((work / "results" / "smoke" / "variants" / variant / "metrics.json").read_text())
        assert abl["variant"] == variant and abl["images"] == next(
            r["images"] for r in metrics["rows"] if r["key"] == "hkd"
        )
        if variant in ABLATIONS:
            assert f"{abl['fid']:.3f}" in html, variant
    tables = work / "reports" / "smoke" / "tables"
    assert sorted(f.name for f in tables.glob("table*")) == sorted(
        f"table{n}.{fmt}" for n in (1, 2, 3, 4, 5, 6) for fmt in ("html", "md", "tex")
    )
    study = json.loads((work / "results" / "smoke" / "eval" / "study.json").read_text())
    full = study["adopted"]["rows"]["full"]  # the run's HKD and its Table 5 seed
    hkd_fid = next(r["fid"] for r in metrics["rows"] if r["key"] == "hkd")
    assert full["n_seeds"] == 2 and full["mean"] == pytest.approx(
        (
            hkd_fid
            + json.loads((work / "results" / "smoke" / "variants" / "seed1" / "metrics.json").read_text())[
                "fid"
            ]
        )
        / 2
    )
    for fmt in ("md", "tex"):  # the paper's HKD row beside this run's mean over seeds
        assert f"{full['mean']:.3f}" in (tables / f"table1.{fmt}").read_text()
    # the optimisation study (configs/smoke.yaml: the paper-literal recipe and one lever)
    assert set(study["recipes"]) == {"paper", "decoder_boundary"}
    boundary = json.loads(
        (
            work / "results" / "smoke" / "variants" / "study-decoder_boundary-full-seed0" / "metrics.json"
        ).read_text()
    )
    assert study["recipes"]["decoder_boundary"]["rows"]["full"]["mean"] == boundary["fid"]
    assert f"{boundary['fid']:.3f}" in (tables / "study.md").read_text() and 'id="study"' in html
    # each recipe's controls from its weights: intermediate-time errors on held-out trajectories
    controls = json.loads((work / "results" / "smoke" / "eval" / "recipe_controls.json").read_text())
    assert set(controls["recipes"]) == {"paper", "decoder_boundary", "adopted"}
    assert controls["heldout"]["trajectories"] == 4
    boundary_controls = study["recipes"]["decoder_boundary"]["controls"]["full"]
    error = boundary_controls["prediction"]["intermediate_mse"]
    assert error > 0 and boundary_controls["prediction"]["zeroed_intermediate_mse"] > 0
    assert boundary_controls["zeroed_operators"]["fid_change_mean"] == pytest.approx(
        boundary["zeroed_operators"]["fid_change"]
    )
    assert f"{error:.4f}" in (tables / "study.md").read_text()
    assert (
        'id="claims"' in html
        and html.count("<strong>holds</strong>")
        + html.count("<strong>does not hold</strong>")
        + html.count("<strong>not resolved at this budget</strong>")
        >= 5
    )
    assert (
        "Budget curves" in html and (work / "results" / "smoke" / "eval" / "budget_curves.png").stat().st_size
    )
    assert all(r["fid_sampling_std"] > 0 for r in metrics["rows"])
    assert {r["key"] for r in metrics["rows"]} >= {"teacher_nfe3"} and "kd" in metrics["throughput"]
    assert "config sha256" in html and "hkd-train" in html  # provenance with per-stage wall time
    # ... and how each stage's network paths ran (configs/smoke.yaml: compile: false)
    assert "the teacher training step: eager (compile: false)" in html
    assert "the teacher denoiser: eager (compile: false)" in html
    stability = json.loads((work / "results" / "smoke" / "eval" / "stability.json").read_text())
    assert list(stability["runs"]) == ["seed0", "seed1"] and stability["epochs"] == [0, 1]
    assert set(stability["budget_curves"]) == {"full", "no_koopman", "no_trajectory", "no_hierarchy"}
    assert f"{stability['fid_by_epoch']['1']['mean']:.3f}" in (tables / "table5.md").read_text()
    # the last snapshot is the final weights: Table 5 scores them as variant_evaluate does
    seed1 = json.loads((work / "results" / "smoke" / "variants" / "seed1" / "metrics.json").read_text())
    assert stability["runs"]["seed1"]["1"]["fid"] == pytest.approx(seed1["fid"], rel=1e-6)
    # the controls of the operators: zeroed on each full training, alpha maps across the two seeds,
    # the figures' bands against random splits, each with its verdict in the report
    zeroed = stability["operator_controls"]["zeroed_operators"]
    assert zeroed["n_seeds"] == 2 and metrics["zeroed_operators"]["fid_trained"] == hkd_fid
    assert zeroed["runs"]["seed1"] == seed1["zeroed_operators"] and "Control, the operators zeroed" in html
    assert stability["operator_controls"]["alpha_agreement"]["seeds"] == 2
    figures = json.loads((work / "results" / "smoke" / "analysis" / "figures.json").read_text())
    assert (
        figures["figure4"]["band_by"] == "abs_alpha"
        and figures["figure4"]["random_split"]["separation"]["draws"] == 20
    )
    assert (
        figures["figure5"]["random_split"]["rms_change"]["draws"] == 20 and "Against random mode sets" in html
    )
    assert "The generative dynamics live in the learned Koopman operators" in html
    # Table 4: the class-conditional companion, scored with the run's classifier on the same seeds
    cond = json.loads((work / "results" / "smoke" / "conditional" / "eval" / "metrics.json").read_text())
    assert {r["key"] for r in cond["rows"]} == {"real", "teacher", "hkd"}
    for r in cond["rows"]:
        if r["key"] != "real":
            assert (
                0.0 <= r["label_accuracy"] <= 1.0 and f"{r['fid']:.3f}" in (tables / "table4.md").read_text()
            )
    labels = np.load(work / "results" / "smoke" / "conditional" / "samples" / "hkd.npz")["labels"]
    assert labels.min() == 0 and labels.max() == 9
    assert (
        json.loads(
            (work / "results" / "smoke" / "conditional" / "trajectories" / "manifest.json").read_text()
        )["label_dim"]
        == 10
    )
    assert 'id="table4"' in html and "Class-conditional HKD" in html
    assert "conditional teacher" in html  # the companion's stage times in the provenance block
    # Figures 2, 4, 5, 6 and the viewer, with their exactness checks
    figs = json.loads((work / "results" / "smoke" / "analysis" / "figures.json").read_text())
    assert figs["figure4"]["all_bands_equal_unmasked"] and figs["figure5"]["ratio0_equals_unedited"]
    assert (
        len(figs["figure5"]["band_edit_rms_change"]) == len(figs["figure5"]["agnostic_edit_rms_change"]) > 0
    )
    assert figs["figure6"]["checks"]["inpaint"]["known_max_abs_error"] == 0.0
    assert figs["figure6"]["checks"]["upsample"]["known_max_abs_error"] < 1e-5
    assert len(figs["figure2"]["distance"]) == 6  # the smoke config's 6 Heun steps
    for section in ("figure2", "figure4", "figure5", "figure6", "viewer"):
        assert f'id="{section}"' in html, section
    frames = re.search(r"var frames = (\[.*?\]);", html).group(1)
    assert 'id="t-slider"' in html and len(json.loads(frames)) == 6  # one viewer frame per noisy state
    koop = json.loads((work / "results" / "smoke" / "variants" / "no_koopman" / "metrics.json").read_text())
    assert koop["koopman"] is False and koop["training"]["steps"] > 0
    assert "data:image/png;base64," in html and 'src="results' not in html
    for stage in ("data", "teacher", "trajectories", "hkd_train", "evaluate", "report"):
        assert (work / "results" / "smoke" / "logs" / f"{stage}.log").stat().st_size > 0
    check_plan_against_run(work)
    print(f"smoke DAG: {elapsed:.1f} s")
    assert "hkd dvc-commit: dvc.yaml recorded" in first.stdout + first.stderr
    check_dvc_records_the_run(work, smk, tmp_path)
    r = run(smk, work)
    assert "Nothing to be done" in r.stdout + r.stderr
    check_snakemake_report_and_benchmarks(work, smk)
    check_config_override(work, smk)


def dvc_repository(work: Path) -> None:
    """``work`` as a git and DVC repository whose dvc.yaml is the smoke config's (the default's
    claims tier, claims/dvc.yaml, has no stage in it)."""
    shutil.rmtree(work / "claims")
    run(["git", "init", "-q"], work)
    run([str(BIN / "dvc"), "init", "-q"], work)
    run([str(BIN / "hkd"), "dvc-yaml", "--config", "configs/smoke.yaml"], work)


def git_commit(work: Path, message: str) -> None:
    run(["git", "add", "-A"], work)
    run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-q", "-m", message],
        work,
    )


def dvc(args: list[str], cwd: Path) -> str:
    r = run([str(BIN / "dvc"), *args], cwd)
    return r.stdout + r.stderr


def check_dvc_records_the_run(work: Path, smk: list[str], tmp_path: Path) -> None:
    """After `snakemake all`, DVC holds the run (its onsuccess handler's `dvc commit`): status
    is clean and `dvc repro` runs nothing; pushed to a remote, a fresh clone pulls the data
    and checkpoints, and Snakemake there, its mtimes set with `--touch`, has nothing to do."""
    assert "up to date" in dvc(["status"], work)
    out = dvc(["repro"], work)
    assert "up to date" in out and "Running stage" not in out, out
    dvc(["remote", "add", "-d", "store", str(tmp_path / "remote")], work)
    git_commit(work, "smoke run")
    dvc(["push"], work)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(work), str(clone)], tmp_path)
    in_git = {str(p.relative_to(clone)) for p in (clone / "results").rglob("*") if p.is_file()}
    assert in_git == {f"results/smoke/eval/{f}" for f in ("summary.json", "loss.csv", "budget_curves.csv")}
    dvc(["pull"], clone)
    for rel in (
        "results/smoke/hkd/hkd.pt",
        "results/smoke/trajectories/manifest.json",
        "results/smoke/hkd/tensorboard",
        "results/smoke/conditional/hkd/hkd.pt",
        "reports/smoke/index.html",
        "reports/smoke/tables/table1.md",
    ):
        assert (clone / rel).exists(), rel
    assert (clone / "results/smoke/hkd/hkd.pt").read_bytes() == (
        work / "results/smoke/hkd/hkd.pt"
    ).read_bytes()
    run(smk + ["--touch"], clone)  # the pulled files' mtimes in the DAG's order
    r = run(smk + ["-n"], clone)
    assert "Nothing to be done" in r.stdout + r.stderr, r.stdout[-3000:] + r.stderr[-3000:]
    assert "up to date" in dvc(["status"], clone)


def check_config_override(work: Path, smk: list[str]) -> None:
    """`--config` changes one key: only the jobs that read its section are planned again, and
    the stage that runs reads the value from results/<run>/config.yaml."""
    override = ["--config", "hkd={lr: 0.0005}"]
    r = run(smk + ["-n"] + override, work)
    planned = set(re.findall(r"^(?:local)?rule (\w+):", r.stdout + r.stderr, re.M))
    assert {"hkd_train", "variant_train", "report"} <= planned, planned
    assert not planned & {
        "data",
        "classifier",
        "teacher",
        "trajectory_shard",
        "trajectories",
        "conditional_teacher",
    }, planned
    r = run(smk + override + ["--", "results/smoke/hkd/hkd.pt"], work)
    assert "not recorded in DVC: the run had targets other than all or a tier" in r.stderr
    assert load_config(work / "results" / "smoke" / "config.yaml")["hkd"]["lr"] == 0.0005
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lrs = []
    for events in (work / "results" / "smoke" / "hkd" / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        lrs += [e.value for e in acc.Scalars("hkd/lr")] if "hkd/lr" in acc.Tags()["scalars"] else []
    assert max(lrs) == pytest.approx(0.0005), lrs  # the rerun's (the first run's events were removed with it)


def check_snakemake_report_and_benchmarks(work: Path, smk: list[str]) -> None:
    """Every job leaves a Snakemake benchmark; `snakemake --report` archives the report,
    the figures and the tables with their captions."""
    for rel in (
        "teacher",
        "hkd_train",
        "variant_train-no_koopman",
        "report",
        "conditional/logs/benchmarks/evaluate",
    ):
        tsv = work / "results" / "smoke" / (rel if "/" in rel else f"logs/benchmarks/{rel}")
        header = tsv.with_name(tsv.name + ".tsv").read_text().splitlines()[0].split("\t")
        assert header[:2] == ["s", "h:m:s"] and "max_rss" in header, rel
    run(smk + ["--report", "report.zip"], work)
    with zipfile.ZipFile(work / "report.zip") as z:
        names = z.namelist()
    for name in (
        "index.html",
        "figure4_bands.png",
        "figure5_editing.png",
        "spectral.png",
        "budget_curves.png",
        "table3.html",
    ):
        assert any(n.endswith(name) for n in names), name


def one_of_each_kind(work: Path) -> None:
    """The smoke config with one stage of each kind DVC runs (one ablation, no seed runs,
    study or companion): the Snakemake smoke test runs all of them, and test_pipeline checks
    that DVC declares every stage as Snakemake does."""
    cfg = load_config(work / "configs" / "smoke.yaml")
    cfg.update(ablations=["no_koopman"], ablation_seeds=[], conditional=False)
    cfg["stability"], cfg["study"] = dict(cfg["stability"], seeds=[]), dict(cfg["study"], recipes={})
    (work / "configs" / "smoke.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def check_metrics_and_plots(work: Path, env: dict) -> None:
    """`dvc metrics show` lists the run's FID rows; `dvc plots show` draws the budget curves."""
    r = subprocess.run(
        [str(BIN / "dvc"), "metrics", "show", "--json"], cwd=work, capture_output=True, text=True, env=env
    )
    assert r.returncode == 0 and '"hkd/fid"' in r.stdout and '"teacher/fid"' in r.stdout, r.stdout + r.stderr
    r = subprocess.run(
        [str(BIN / "dvc"), "plots", "show", "-o", "plots_html"],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
    )
    page = work / "plots_html" / "index.html"
    assert r.returncode == 0 and page.exists(), r.stdout + r.stderr
    assert "budget_curves.csv" in page.read_text()
    shutil.rmtree(work / "plots_html")


@pytest.mark.slow
def test_smoke_dag_with_dvc(tmp_path):
    work = copy_workflow(tmp_path)
    one_of_each_kind(work)
    dvc_repository(work)
    env_bin = str(BIN)
    import os

    env = dict(
        os.environ, PATH=env_bin + os.pathsep + os.environ.get("PATH", ""), PYTHONPATH=str(work / "src")
    )
    r = subprocess.run(
        [str(BIN / "dvc"), "repro"], cwd=work, capture_output=True, text=True, env=env, timeout=600
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (work / "reports" / "smoke" / "index.html").exists()
    check_metrics_and_plots(work, env)
    r = subprocess.run(
        [str(BIN / "dvc"), "repro"], cwd=work, capture_output=True, text=True, env=env, timeout=600
    )
    assert r.returncode == 0
    assert "up to date" in r.stdout, r.stdout
    r = subprocess.run([str(BIN / "dvc"), "status"], cwd=work, capture_output=True, text=True, env=env)
    assert "up to date" in r.stdout, r.stdout
    git_commit(work, "smoke run")  # the baseline `dvc exp run` starts from
    check_experiment(work, env)


def _find_runs(node, found: list) -> list:
    """Every {"params", "metrics"} record in `dvc exp show --json` output, at any depth."""
    if isinstance(node, dict):
        if "params" in node and "metrics" in node:
            found.append(node)
        for v in node.values():
            _find_runs(v, found)
    elif isinstance(node, list):
        for v in node:
            _find_runs(v, found)
    return found


def check_experiment(work: Path, env: dict) -> None:
    """`dvc exp run -S` on a key that does not change the DAG reruns only the stages that read
    its section, and `dvc exp show` lists the experiment with its parameter and metrics."""
    env = dict(
        env,
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.com",
    )
    r = subprocess.run(
        [str(BIN / "dvc"), "exp", "run", "-S", "configs/smoke.yaml:hkd.lr=0.0005"],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ran = set(re.findall(r"Running stage '([^']+)'", r.stdout))
    assert {"hkd_train", "variant_train_no_koopman", "report"} <= ran, ran
    assert not ran & {"data", "teacher", "trajectories", "classifier"}, ran
    r = subprocess.run(
        [str(BIN / "dvc"), "exp", "show", "--json"], cwd=work, capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    runs = _find_runs(json.loads(r.stdout), [])
    lrs = [json.dumps(run["params"]).count('"lr": 0.0005') for run in runs]
    assert any(lrs) and all('"hkd/fid"' in json.dumps(run["metrics"]) for run in runs), r.stdout[-3000:]
