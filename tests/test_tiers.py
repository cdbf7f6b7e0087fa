"""Two tiers over one teacher: `all` (configs/default.yaml) trains one HKD per row; `claims`
(configs/claims.yaml) adds >= 3 seeds per model and the study, in the same run folder."""

import re
import subprocess
import sys

import pytest
from conftest import copy_workflow

from hkd.config import ConfigError, load_config
from hkd.pipeline import (
    ABLATIONS,
    FULL,
    PAPER_ABLATIONS,
    STAGES,
    ablation_variants,
    check_tier,
    own_variants,
    parse_variant,
    run_paths,
    run_variants,
    seed_variants,
    study_variants,
    tier_files,
    tier_owns,
)


@pytest.fixture
def tiers(repo):
    return load_config(repo / "configs" / "default.yaml"), load_config(repo / "configs" / "claims.yaml")


def _trainings_per_model(cfg) -> dict[str, int]:
    """HKD trainings of the adopted recipe per Table 3 model: the run's own plus its seeds."""
    counts = {FULL: 1 + len(seed_variants(cfg))}
    for v in ablation_variants(cfg):
        model = parse_variant(cfg, v)["model"]
        counts[model] = counts.get(model, 0) + 1
    return counts


def test_default_trains_one_per_row(tiers):
    default, _ = tiers
    assert _trainings_per_model(default) == {FULL: 1, **{a: 1 for a in PAPER_ABLATIONS}}
    assert not seed_variants(default) and not study_variants(default)
    assert not any("seed" in v for v in run_variants(default))
    assert default["hkd"]["snapshot_epochs"], "Table 5 comes from the main training's snapshots"


def test_claims_has_three_seeds_per_model_and_the_study(tiers):
    default, claims = tiers
    counts = _trainings_per_model(claims)
    assert set(counts) == {FULL, *ABLATIONS} and min(counts.values()) >= 3, counts
    assert study_variants(claims), "the claims tier runs the optimisation study"
    assert len(claims["study"]["seeds"]) >= 3
    # same run folder and the same upstream settings: `claims` reuses what `all` made
    assert run_paths(claims)["teacher"] == run_paths(default)["teacher"]
    for section in ("data", "network", "edm", "teacher", "trajectories", "hkd", "sample", "evaluate"):
        assert claims[section] == default[section], section
    assert set(run_variants(default)) <= set(run_variants(claims))


def test_a_tier_is_found_by_the_config_it_extends(repo, tiers):
    """configs/claims.yaml is the one tier over the default; a config no tier extends has none."""
    default, claims = tiers
    assert tier_files(repo / "configs" / "default.yaml", repo) == {"claims": repo / "configs" / "claims.yaml"}
    assert tier_files(repo / "configs" / "budget_curve.yaml", repo) == {}
    check_tier(claims, default, "configs/claims.yaml")
    with pytest.raises(ConfigError, match="report_dir"):
        check_tier({**claims, "report_dir": default["report_dir"]}, default, "x.yaml")
    with pytest.raises(ConfigError, match="keeps the run"):
        check_tier({**claims, "run": "other"}, default, "x.yaml")


def test_claims_tier_trains_only_what_all_lacks_and_keeps_its_aggregates_apart(tiers):
    default, claims = tiers
    own = own_variants(claims, default)
    assert own and not set(own) & set(run_variants(default))
    assert set(own) | set(run_variants(default)) == set(run_variants(claims))
    owned = {s.name for s in STAGES if tier_owns(claims, default, s.name)}
    assert owned == {"variant_train", "variant_evaluate", "stability", "recipe_controls", "study", "report"}
    ours, theirs = run_paths(claims), run_paths(default)
    for key in ("stability", "study", "summary", "report", "tables", "run_config", "timings"):
        assert ours[key] != theirs[key], key
    for key in ("teacher", "trajectories", "metrics", "hkd", "variant_hkd", "figures"):
        assert ours[key] == theirs[key], key
    assert ours["run_timings"] == theirs["timings"]


def _snakemake(work, *args):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--forceall", "--cores", "1", *args],
        cwd=work,
        capture_output=True,
        text=True,
    )


def _dry_run_variants(work, *args) -> set[str]:
    r = _snakemake(work, *args)
    assert r.returncode == 0, r.stderr
    return set(re.findall(r"wildcards: variant=(\S+)", r.stdout + r.stderr))


def test_snakemake_claims_target_runs_the_claims_tier(repo, tmp_path, tiers):
    """`snakemake claims` plans the trainings `all` lacks (claims_variant_train), `snakemake
    all` none of the tier's seeds; a config without the tier refuses the target."""
    default, claims = tiers
    work = copy_workflow(tmp_path)
    assert _dry_run_variants(work, "claims") == set(run_variants(claims))
    assert _dry_run_variants(work, "all") == set(run_variants(default))
    r = _snakemake(work, "claims")
    assert "rule claims_variant_train" in r.stdout and "rule claims_report" in r.stdout
    r = _snakemake(work, "claims", "--configfile", "configs/budget_curve.yaml")
    assert r.returncode != 0 and "has no such tier" in r.stdout + r.stderr


def test_plan_of_a_tier_is_its_own_jobs(tiers):
    """`hkd plan --config configs/claims.yaml` times what `snakemake claims` runs after `all`:
    one training and one evaluation per variant the default lacks, then its aggregates."""
    from hkd.cost.plan import jobs

    default, claims = tiers
    planned = [j.name for j in jobs(claims, default)]
    own = own_variants(claims, default)
    assert planned == (
        [f"claims_variant_train[{v}]" for v in own]
        + [f"claims_variant_evaluate[{v}]" for v in own]
        + ["claims_stability", "claims_recipe_controls", "claims_study", "claims_report"]
    )
    assert any(j.name == "teacher" for j in jobs(claims))  # as a run of its own: every stage


@pytest.mark.slow
def test_a_tier_runs_beside_its_run(tmp_path):
    """End to end at smoke scale: `snakemake claims` over configs/smoke.yaml (a claims tier
    written for it, one more seed per ablation) makes everything its report needs, writes its
    stability, study and report apart from the run's, and leaves `all` only the run's own
    aggregates to make."""
    import json

    work = copy_workflow(tmp_path)
    (work / "configs" / "claims.yaml").write_text(
        "extends: smoke.yaml\ntier: claims\nreport_dir: reports/smoke-claims\nablation_seeds: [1]\n"
    )
    smk = [sys.executable, "-m", "snakemake", "--cores", "2"]
    cfg = [
        "--configfile",
        "configs/smoke.yaml",
        "--config",
        "conditional=false",
    ]  # options last: they take lists
    r = subprocess.run([*smk, "claims", *cfg], cwd=work, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    tier = work / "results" / "smoke" / "claims"
    stability = json.loads((tier / "eval" / "stability.json").read_text())
    assert {c["model"] for c in stability["curve_runs"].values()} >= {"no_koopman"}
    study = json.loads((tier / "eval" / "study.json").read_text())
    assert all(study["adopted"]["rows"][m]["n_seeds"] == 2 for m in PAPER_ABLATIONS)
    html = (work / "reports" / "smoke-claims" / "index.html").read_text()
    assert "tier <code>claims</code>" in html and "claims variant-train-no_koopman-seed1" in html
    assert '<a href="../smoke/index.html">its report</a>' in html  # back to the run's report
    assert (work / "results" / "smoke" / "variants" / "no_koopman-seed1" / "metrics.json").is_file()
    assert not (work / "results" / "smoke" / "eval" / "stability.json").exists()  # the run's: not asked for
    assert not (work / "reports" / "smoke" / "index.html").exists()
    r = subprocess.run([*smk, "-n", "all", *cfg], cwd=work, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    planned = set(re.findall(r"^(?:local)?rule (\w+):$", r.stdout + r.stderr, re.M))
    assert planned == {"stability", "recipe_controls", "study", "report", "all"}, planned
