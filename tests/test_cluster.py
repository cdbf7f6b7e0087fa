"""The SLURM profile plans the paper configs, GPU stages get GPUs, and the workflow lints clean."""

import re
import subprocess
import sys

import pytest
from conftest import copy_workflow

PROFILE = "workflow/profiles/slurm"


@pytest.fixture
def work(tmp_path):
    """A copy of the workflow: Snakemake writes results/<run>/config.yaml even in a dry run."""
    return copy_workflow(tmp_path)


def dry_run(work, *args):
    """A Snakemake dry run in ``work`` (a copy of the workflow, never the checkout)."""
    r = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", *args],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout + r.stderr


def jobs(text):
    """[(rule, resources line, shell command)] of a dry run's job blocks."""
    out = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", text):
        m = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not m:
            continue
        res = re.search(r"^    resources: (.*)$", block, re.M)
        cmd = re.search(r"^Shell command: (.*)$", block, re.M)
        out.append((m.group(1), res.group(1) if res else "", cmd.group(1) if cmd else ""))
    return out


@pytest.mark.parametrize("config", ["cifar10", "cifar10_cond", "ffhq64"])
def test_profile_plans_the_paper_configs(work, config):
    planned = jobs(dry_run(work, "--profile", PROFILE, "--configfile", f"configs/{config}.yaml"))
    rules = {r for r, _, _ in planned}
    assert {
        "teacher",
        "trajectory_shard",
        "hkd_train",
        "teacher_sample",
        "sample",
        "evaluate",
        "report",
    } <= rules
    for rule, res, _ in planned:
        if rule in (
            "teacher",
            "trajectory_shard",
            "hkd_train",
            "variant_train",
            "teacher_sample",
            "sample",
            "evaluate",
        ):
            assert "slurm_partition=gpu" in res and "gpu=1" in res, (rule, res)
        elif rule in ("data", "spectral", "report"):
            assert "slurm_partition=cpu" in res and "gpu=" not in res, (rule, res)
        assert "runtime=" in res and "mem_mb=" in res, (rule, res)


def test_several_gpus_start_torchrun(work):
    planned = jobs(
        dry_run(
            work,
            "--profile",
            PROFILE,
            "--configfile",
            "configs/cifar10.yaml",
            "--set-resources",
            "hkd_train:gpu=4",
        )
    )
    cmd = next(c for r, _, c in planned if r == "hkd_train")
    assert (
        cmd.startswith("if [ 4 -gt 1 ]; then")
        and "-m torch.distributed.run --standalone --nproc-per-node 4 -m hkd hkd-train" in cmd
    )
    one = next(c for r, _, c in planned if r == "variant_train")
    assert one.startswith("if [ 1 -gt 1 ]")  # one GPU: a plain process


def test_lint_is_clean(work):
    for config in ("configs/default.yaml", "configs/cifar10.yaml"):
        r = subprocess.run(
            [sys.executable, "-m", "snakemake", "--lint", "--configfile", config],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert (
            r.returncode == 0
            and "Congratulations, your workflow is in a good condition" in r.stdout + r.stderr
        ), r.stdout[-2000:] + r.stderr[-2000:]
