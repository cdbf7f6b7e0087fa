"""Kill and resume through Snakemake: each long stage (teacher, trajectories, HKD training,
sampling, evaluation) killed with SIGKILL (Snakemake and the
job, the whole process group) is rerun with `snakemake --cores 1 --unlock` then
`snakemake --rerun-incomplete`; the work done before the kill is reused and the result equals an
uninterrupted run's."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import copy_workflow

from hkd.io import load_torch

BIN = Path(sys.executable).parent
RUN = Path("results/kr")


@pytest.fixture
def work(tmp_path, smoke_cfg):
    """The workflow with a config `kr`: the smoke run, no variants or companion, and stages long
    enough to be killed in the middle."""
    w = copy_workflow(tmp_path)
    cfg = dict(smoke_cfg)
    cfg.update(run="kr", report_dir="reports/kr", precision="fp32", ablations=[], conditional=False)
    cfg["stability"] = dict(cfg["stability"], seeds=[])
    cfg["hkd"] = dict(cfg["hkd"], epochs=12, checkpoint_every=4, snapshot_epochs=[], sample_every=0)
    cfg["teacher"] = dict(cfg["teacher"], kimg=2.0, checkpoint_every=4)  # 40 steps
    cfg["trajectories"] = dict(cfg["trajectories"], count=60, shard_size=20, batch_size=20)
    cfg["sample"] = dict(cfg["sample"], batch_size=10)  # 10 batches per sampler
    (w / "configs" / "kr.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return w


def snakemake(work, *args, timeout=900):
    cmd = [str(BIN / "snakemake"), "--configfile", "configs/kr.yaml", "--cores", "1", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{cmd}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def kill_when(work, target: str, sign, timeout=600):
    """Start `snakemake <target>` and SIGKILL its whole process group once ``sign`` (a path
    relative to the workflow, or a function) is true."""
    ready = sign if callable(sign) else (lambda: (work / sign).exists())
    cmd = [str(BIN / "snakemake"), "--configfile", "configs/kr.yaml", "--cores", "1", target]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen(
        cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + timeout
    while not ready() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert ready(), f"{sign} never happened"


def rerun(work, target):
    snakemake(work, "--unlock")
    return snakemake(work, "--rerun-incomplete", target)


def weights(path):
    ckpt = load_torch(path)
    return ckpt["ema"] if ckpt["kind"] == "edm_teacher" else ckpt["state"]


def shard_states(work):
    return {f.name: np.load(f)["states"] for f in sorted((work / RUN / "trajectories").glob("shard-*.npz"))}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_every_long_stage_resumes_after_sigkill(work):
    # teacher: killed once a resume state is saved; the rerun continues from it
    teacher, resume = RUN / "teacher" / "teacher.pt", RUN / "teacher" / "resume.pt"
    snakemake(work, str(RUN / "data" / "images.npz"))
    kill_when(work, str(teacher), resume)
    assert not (work / teacher).exists()
    killed_at = load_torch(work / resume)["step"]
    assert 0 < killed_at < 40
    rerun(work, str(teacher))
    log = (work / RUN / "logs" / "teacher.log").read_text()
    assert f"resuming from step {killed_at}" in log and not (work / resume).exists()
    resumed = weights(work / teacher)

    # trajectories: one job per shard; killed once the second shard job has started, the
    # first job's shard is kept and only the others are made
    logs = work / RUN / "logs"
    kill_when(
        work,
        str(RUN / "trajectories" / "manifest.json"),
        lambda: len(list(logs.glob("trajectories-0000*.log"))) >= 2,
    )
    done = {f.name: f.stat().st_mtime_ns for f in (work / RUN / "trajectories").glob("shard-*.npz")}
    assert done, "no shard was finished before the kill"
    rerun(work, str(RUN / "trajectories" / "manifest.json"))
    after = {f.name: f.stat().st_mtime_ns for f in (work / RUN / "trajectories").glob("shard-*.npz")}
    assert len(after) == 3 and any(after[name] == t for name, t in done.items())
    states = shard_states(work)

    # HKD training: killed after a resume state, resumed to the same weights
    hkd, hkd_resume = RUN / "hkd" / "hkd.pt", RUN / "hkd" / "resume.pt"
    kill_when(work, str(hkd), hkd_resume)
    hkd_killed_at = load_torch(work / hkd_resume)["step"]
    rerun(work, str(hkd))
    assert f"resuming from step {hkd_killed_at}" in (work / RUN / "logs" / "hkd_train.log").read_text()
    resumed_hkd = weights(work / hkd)
    happened = [
        f"teacher: killed at step {killed_at} of 40, resumed from it",
        f"trajectories: {len(done)} of 3 shards finished before the kill, kept unchanged",
        f"hkd-train: killed at step {hkd_killed_at}, resumed from it",
    ]

    # sampling: killed after a finished teacher batch; the rerun reuses the finished batches
    samples = {k: RUN / "samples" / f"{k}.npz" for k in ("teacher", "teacher_nfe3", "hkd")}
    sample_log = work / RUN / "logs" / "teacher_sample.log"
    kill_when(work, str(samples["teacher"]), RUN / "samples" / ".partial" / "teacher" / "batch-00001.npz")
    rerun(work, str(samples["teacher"]))
    assert "reused" in sample_log.read_text()
    snakemake(work, str(samples["hkd"]))  # HKD's row needs no teacher samples
    assert not (work / RUN / "samples" / ".partial").exists()
    happened += [
        f"teacher-sample: {line.strip()}" for line in sample_log.read_text().splitlines() if "reused" in line
    ]
    drawn = {k: np.load(work / f)["images"] for k, f in samples.items()}

    # evaluation: killed after a finished FID row; the rerun reuses it
    metrics = RUN / "eval" / "metrics.json"
    kill_when(work, str(metrics), RUN / "eval" / ".partial" / "teacher.json")
    rerun(work, str(metrics))
    assert "reused the" in (work / RUN / "logs" / "evaluate.log").read_text()
    rows = json.loads((work / metrics).read_text())["rows"]
    happened += [
        f"evaluate: {line.strip()}"
        for line in (work / RUN / "logs" / "evaluate.log").read_text().splitlines()
        if "reused the" in line
    ]

    # the same stages uninterrupted give the same files
    snakemake(work, "--forcerun", "teacher", str(metrics))
    assert "resuming" not in (work / RUN / "logs" / "teacher.log").read_text()
    assert_same(resumed, weights(work / teacher))
    again = shard_states(work)  # (the files differ: their fingerprint names the teacher file's hash)
    assert again.keys() == states.keys() and all(np.array_equal(again[k], states[k]) for k in states)
    assert "resuming" not in (work / RUN / "logs" / "hkd_train.log").read_text()
    assert_same(resumed_hkd, weights(work / hkd))
    assert "reused" not in sample_log.read_text()
    assert all(np.array_equal(np.load(work / f)["images"], drawn[k]) for k, f in samples.items())
    assert "reused" not in (work / RUN / "logs" / "evaluate.log").read_text()
    assert json.loads((work / metrics).read_text())["rows"] == rows
    print(
        "\n".join(
            happened
            + ["uninterrupted rerun: identical teacher and HKD weights, shard states, samples and metrics"]
        )
    )  # shown with pytest -s
