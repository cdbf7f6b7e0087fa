"""Two tiers over one teacher: `all` (configs/default.yaml) trains one HKD per row; `claims`
(configs/claims.yaml) adds >= 3 seeds per model and the study, in the same run folder."""

import re
import subprocess
import sys

import pytest
from conftest import copy_workflow

from hkd.config import load_config
from hkd.pipeline import (
    ABLATIONS,
    FULL,
    ablation_variants,
    parse_variant,
    requested_tier,
    run_paths,
    run_variants,
    seed_variants,
    study_variants,
    tier_config_files,
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
    assert _trainings_per_model(default) == {FULL: 1, **{a: 1 for a in ABLATIONS}}
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


def test_tier_target_picks_its_config(tmp_path):
    base = str(tmp_path)
    assert requested_tier(["--cores", "2", "all"]) is None
    assert requested_tier(["--cores", "2", "claims"]) == "claims"
    assert tier_config_files(None, [], base) == [f"{base}/configs/default.yaml"]
    assert tier_config_files("claims", [], base) == [f"{base}/configs/claims.yaml"]
    # an explicit --configfile wins over the tier's
    assert tier_config_files("claims", ["configs/budget_curve.yaml"], base) == ["configs/budget_curve.yaml"]


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
    """`snakemake claims` (no --configfile) plans the claims trainings; `snakemake all` none of
    its seeds."""
    default, claims = tiers
    work = copy_workflow(tmp_path)
    assert _dry_run_variants(work, "claims") == set(run_variants(claims))
    assert _dry_run_variants(work, "all") == set(run_variants(default))
    assert _dry_run_variants(work, "claims", "--configfile", "configs/claims.yaml") == set(
        run_variants(claims)
    )
    r = _snakemake(work, "claims", "--configfile", "configs/budget_curve.yaml")
    assert r.returncode != 0 and "the claims target runs configs/claims.yaml" in r.stdout + r.stderr
