"""The suite does not depend on the checkout's state: its Snakemake, DVC and stage-command
checks run in copies, so a run interrupted in the checkout (Snakemake's incomplete-output
markers, a stale lock, half-written results) changes nothing, and the suite leaves nothing
there."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, copy_workflow, pipeline_tool

#: one test per way the suite drives the tools: forced dry runs and dvc.yaml (test_pipeline's
#: snakemake_dag), a plain dry run with a profile (test_cluster's dry_run), `hkd dvc-yaml
#: --check`, a stage command, and git on the checkout's .gitignore
SUITE_CHECKS = (
    "tests/test_pipeline.py::test_snakemake_and_dvc_agree",
    "tests/test_pipeline.py::test_dvc_yaml_is_generated_from_pipeline",
    "tests/test_pipeline.py::test_conditional_companion",
    "tests/test_pipeline.py::test_dvc_declares_metrics_and_plots",
    "tests/test_cluster.py::test_profile_plans_the_paper_configs[cifar10]",
)
#: a job that leaves its output half-written until it is killed: the default run's data file
#: (the data rule has no inputs, so without the marker the file would count as done)
INTERRUPTED = """
rule interrupted:
    output: "{output}"
    shell: "printf half > {{output}}; sleep 600"
"""


def interrupt_a_run(checkout: Path) -> str:
    """Start a Snakemake job in ``checkout`` and SIGKILL it once its output exists, as a
    killed run leaves it: marked incomplete in .snakemake/, the lock still held."""
    output = "results/default/data/images.npz"
    (checkout / "interrupted.smk").write_text(INTERRUPTED.format(output=output))
    job = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "-s", "interrupted.smk", "--cores", "1"],
        cwd=checkout,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 60
    while not (checkout / output).exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # the shell has written the file
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    (checkout / "interrupted.smk").unlink()
    assert (checkout / output).exists(), "the job ended before its output was written"
    assert list((checkout / ".snakemake" / "incomplete").iterdir()), "Snakemake marked nothing incomplete"
    return output


def state(checkout: Path) -> dict[str, tuple[int, int] | None]:
    """Every folder and file in the checkout with each file's (size, mtime), bytecode
    caches aside."""
    return {
        str(p.relative_to(checkout)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
        for p in checkout.rglob("*")
        if "__pycache__" not in p.parts
    }


def test_suite_checks_pass_in_a_checkout_left_by_an_interrupted_run(tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    copy_workflow(checkout)
    shutil.copytree(REPO / "tests", checkout / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    output = interrupt_a_run(checkout)
    # there, Snakemake itself refuses to plan the run: the markers are what a user would have
    r = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "configs/default.yaml"],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "--rerun-incomplete" in r.stdout + r.stderr and output in r.stdout + r.stderr
    before = state(checkout)
    # the suite's own checks, run from that checkout (their conftest's REPO is the checkout)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider"]
        + [f"--basetemp={tmp_path / 'suite'}", *SUITE_CHECKS],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert f"{len(SUITE_CHECKS)} passed" in r.stdout
    assert state(checkout) == before  # and they left the checkout as they found it


@pytest.mark.parametrize(
    ("args", "tool"),
    [
        ([sys.executable, "-m", "snakemake", "-n"], "snakemake"),
        (["/venv/bin/dvc", "repro"], "dvc"),
        (
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                "2",
                "-m",
                "hkd",
                "trajectories",
            ],
            "hkd",
        ),
        ("snakemake --cores 1 all", "snakemake"),
        (["git", "check-ignore", "dvc.yaml"], None),
        ([sys.executable, "-m", "pytest", "tests/test_dvc.py"], None),
    ],
)
def test_pipeline_tools_are_recognised(args, tool):
    assert pipeline_tool(args) == tool


def test_a_pipeline_tool_in_the_checkout_is_refused(tmp_path):
    """The guard every test runs under (conftest): refused before anything starts there."""
    with pytest.raises(RuntimeError, match="started snakemake in the checkout"):
        subprocess.run([sys.executable, "-m", "snakemake", "--version"], cwd=REPO / "workflow")
    r = subprocess.run([sys.executable, "-m", "hkd", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and "dvc-yaml" in r.stdout
