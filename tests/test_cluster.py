"""The SLURM profile plans the paper configs, GPU stages get GPUs, and the workflow lints clean."""

import re
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, copy_workflow

from hkd.config import load_config
from hkd.cost.resources import rule_memory

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


@pytest.mark.parametrize("config", ["default", "cifar10"])
def test_profile_asks_each_rule_for_its_planned_memory(work, config):
    """Each job of the profile's dry run asks for its rule's planned peak times the margin
    (hkd.cost.resources.rule_memory, checked against `hkd plan`'s rows in test_cost), from the
    config's stored `hkd bench` numbers; rules with no planned peak, and every rule of a config
    with no stored benchmark (CIFAR-10 until one is measured on a GPU), get the default."""
    shutil.copytree(REPO / "benchmarks", work / "benchmarks")
    cfg = load_config(work / "configs" / f"{config}.yaml")
    requested = rule_memory(cfg, work / "benchmarks")
    if config == "default":  # its CPU benchmark is stored: the heavy rules are sized
        assert requested["hkd_train"]["mem_mb"] > 0 and requested["trajectory_shard"]["mem_mb"] > 0
    default_mb = yaml.safe_load((work / PROFILE / "config.yaml").read_text())["default-resources"]["mem_mb"]
    asked = jobs(dry_run(work, "--profile", PROFILE, "--configfile", f"configs/{config}.yaml"))
    for rule, res, _ in asked:
        if rule == "all":
            continue
        planned = requested.get(rule, {})
        mem_mb = int(re.search(r"\bmem_mb=(\d+)", res).group(1))
        assert mem_mb == planned.get("mem_mb", default_mb), (rule, res)
        gpu = re.search(r"\bgpu_mem_mb=(\d+)", res)
        assert (int(gpu.group(1)) if gpu else None) == planned.get("gpu_mem_mb"), (rule, res)
    assert {r for r, _, _ in asked} >= {r for r, p in requested.items() if p}


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
