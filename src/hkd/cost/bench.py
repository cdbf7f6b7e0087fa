"""Throughput and peak memory of every network workload of a config, measured here.

Each workload runs the code its stages run (the teacher's and HKD's real training steps,
the teacher denoiser and HKD's one-step sampler as the sampling stages call them, the FID
feature extractor) with random weights and random images: content does not change the
cost. Each runs in a process of its own, so its peak memory and its compile are its own;
the first call (compiling from an empty cache, where the config compiles) is timed apart
from the steady state. ``hkd plan`` turns the stored results into the cost of every stage.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hkd.cost import reference
from hkd.cost.reference import cpu_model  # noqa: F401 (workflow/scripts/bench_threads.py reads it here)
from hkd.cost.stored import cost_digest, cost_keys
from hkd.io import save_npz
from hkd.runtime import synchronize

#: workload -> (what its rate counts, the stages that run it)
WORKLOADS = {
    "teacher_train": ("images/s", "teacher"),
    "denoiser": ("image NFE/s", "trajectories, sample"),
    "hkd_train": ("example time points/s", "hkd_train, variant_train"),
    "one_step": ("images/s", "sample, variant_evaluate, stability"),
    "features": ("images/s", "evaluate, variant_evaluate, stability, study"),
    "classifier_train": ("images/s", "classifier"),
}


def _random_dataset(cfg: dict, path: Path, count: int) -> str:
    """A data-stage file of random images in the config's shape (costs only)."""
    from hkd.config import SOURCE_CHANNELS

    shape = (
        count,
        SOURCE_CHANNELS[cfg["data"]["source"]],
        cfg["data"]["resolution"],
        cfg["data"]["resolution"],
    )
    rng = np.random.default_rng(0)
    label_dim = cfg["network"]["label_dim"]
    labels = rng.integers(0, label_dim, count) if label_dim else np.full(count, -1, np.int64)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    save_npz(
        path,
        train_images=images,
        train_labels=labels,
        heldout_images=images[:1],
        heldout_labels=labels[:1],
        train_index=np.arange(count),
        heldout_index=np.arange(1),
    )
    return str(path)


def _random_teacher(cfg: dict, tmp: Path, device):
    from hkd.nn.precond import EDMPrecond
    from hkd.teacher.network import load_teacher, save_teacher, teacher_kwargs

    torch.manual_seed(0)
    save_teacher(EDMPrecond(**teacher_kwargs(cfg)), tmp / "teacher.pt")
    return load_teacher(str(tmp / "teacher.pt"), device)


def _timed_calls(fn, steps: int) -> tuple[float, float]:
    """(seconds of the first call, seconds per later call) of ``fn()``."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return first, (time.perf_counter() - t0) / steps


@contextlib.contextmanager
def _each_call_timed(module, name: str):
    """Seconds of every call of ``module.name`` while inside: the trainer returns only the
    total after its first step, and the speed index wants the median step, which the other
    jobs of a shared machine move less than the mean."""
    original, seconds = getattr(module, name), []

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - t0)

    setattr(module, name, timed)
    try:
        yield seconds
    finally:
        setattr(module, name, original)


def _teacher_train(cfg, device, dtype, steps, tmp):
    """The teacher's real training loop, stopped after the first step and ``steps`` more;
    ``step_seconds``: each of those ``steps`` (the step returns its loss as a number, so
    the time includes the device's work)."""
    from hkd.teacher import train

    batch = cfg["teacher"]["batch_size"]
    cfg["teacher"]["kimg"] = (steps + 2) * batch / 1000
    data = _random_dataset(cfg, tmp / "images.npz", 2 * batch)
    t0 = time.perf_counter()
    with _each_call_timed(train, "_train_step") as step_seconds:
        stats = train.train_teacher(
            cfg, data, str(tmp / "t.pt"), str(tmp / "tb-t"), device, dtype, stop_after=steps + 1
        )
    total = time.perf_counter() - t0
    per_step = stats["seconds_after_first_step"] / steps
    return {
        "rate": batch / per_step,
        "batch": batch,
        "first_call_seconds": total - stats["seconds_after_first_step"],
        "step_seconds": step_seconds[1:],
    }


def _denoiser(cfg, device, dtype, steps, tmp):
    """The teacher's ODE step, at the teacher's precision (``dtype`` is HKD's)."""
    from hkd.runtime import teacher_dtype
    from hkd.teacher.sampler import one_hot, seeded_inputs
    from hkd.teacher.trajectories import make_denoiser

    teacher = _random_teacher(cfg, tmp, device)
    batch = cfg["trajectories"]["batch_size"]
    denoise = make_denoiser(teacher, device, teacher_dtype(cfg, device), compile=cfg["compile"])
    noise, labels = seeded_inputs(
        range(batch),
        (teacher.img_channels, teacher.img_resolution, teacher.img_resolution),
        teacher.label_dim,
        device,
    )
    onehot = one_hot(labels, teacher.label_dim)
    sigma = torch.full((batch,), 2.0, device=device)  # fp32, as heun_sample passes it
    first, per_call = _timed_calls(lambda: _sync(denoise(noise * 2.0, sigma, onehot)), steps)
    return {"rate": batch / per_call, "batch": batch, "first_call_seconds": first}


def _hkd_train(cfg, device, dtype, steps, tmp):
    from hkd.teacher.trajectories import generate_trajectories
    from hkd.train.hkd_train import train_hkd

    teacher = _random_teacher(cfg, tmp, device)
    n = 2 * cfg["hkd"]["batch_size"]
    tcfg = cfg["trajectories"]
    tcfg.update(count=n, shard_size=n, batch_size=min(tcfg["batch_size"], n))
    cfg["hkd"]["epochs"] = steps + 2  # 2 steps per epoch over these trajectories
    generate_trajectories(
        {**cfg, "compile": False}, teacher, str(tmp / "teacher.pt"), str(tmp / "traj"), device
    )
    t0 = time.perf_counter()
    stats = train_hkd(
        cfg,
        teacher,
        str(tmp / "traj" / "manifest.json"),
        str(tmp / "h.pt"),
        str(tmp / "tb-h"),
        device,
        dtype,
        stop_after=steps + 1,
    )
    total = time.perf_counter() - t0
    per_step = stats["seconds_after_first_step"] / steps
    return {
        "rate": stats["batch"] * stats["time_points"] / per_step,
        "batch": stats["batch"],
        "time_points": stats["time_points"],
        "first_call_seconds": total - stats["seconds_after_first_step"],
    }


def _one_step(cfg, device, dtype, steps, tmp):
    from hkd.koopman.model import build_hkd
    from hkd.sample import hkd_sampler
    from hkd.teacher.sampler import seeded_inputs

    model = build_hkd(_random_teacher(cfg, tmp, device), cfg).to(device).eval()
    batch = cfg["sample"]["batch_size"]
    noise, labels = seeded_inputs(
        range(batch),
        (model.img_channels, model.img_resolution, model.img_resolution),
        model.label_dim,
        device,
    )
    sample = hkd_sampler(model, device, dtype)
    first, per_call = _timed_calls(lambda: _sync(sample(noise, labels)), steps)
    return {"rate": batch / per_call, "batch": batch, "first_call_seconds": first}


def _features(cfg, device, dtype, steps, tmp):
    """The extractor's forward at torch-fidelity's batch of 250: the digit classifier with
    random weights, or Inception-v3's architecture (torchvision, random weights) at 299 x 299,
    the cost of torch-fidelity's extractor without its weights file."""
    from hkd.metrics.classifier import DigitClassifier

    batch = 250
    if cfg["evaluate"]["feature_extractor"] == "digit_classifier":
        res = cfg["data"]["resolution"]
        net = DigitClassifier(resolution=res).to(device).eval()
        x = torch.zeros(batch, 1, res, res, device=device)
    else:
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=False, init_weights=False).to(device).eval()
        x = torch.zeros(batch, 3, 299, 299, device=device)

    def call():
        with torch.no_grad():
            _sync(net(x))

    first, per_call = _timed_calls(call, steps)
    return {"rate": batch / per_call, "batch": batch, "first_call_seconds": first}


def _classifier_train(cfg, device, dtype, steps, tmp):
    from hkd.metrics.classifier import DigitClassifier

    batch = cfg["evaluate"]["classifier_batch_size"]
    res = cfg["data"]["resolution"]
    net = DigitClassifier(resolution=res)
    opt = torch.optim.Adam(net.parameters())
    x, y = torch.zeros(batch, 1, res, res), torch.zeros(batch, dtype=torch.long)

    def step():
        loss = torch.nn.functional.cross_entropy(net(x)[1], y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    first, per_call = _timed_calls(step, steps)
    return {"rate": batch / per_call, "batch": batch, "first_call_seconds": first}


def _sync(out):
    if isinstance(out, torch.Tensor):
        synchronize(out.device)
    return out


_MEASURE = {
    "teacher_train": _teacher_train,
    "denoiser": _denoiser,
    "hkd_train": _hkd_train,
    "one_step": _one_step,
    "features": _features,
    "classifier_train": _classifier_train,
}


def workloads_of(cfg: dict) -> list[str]:
    """The workloads a config's stages run (an imported teacher is not trained; an Inception
    run has no digit classifier)."""
    out = list(WORKLOADS)
    if cfg["teacher"]["source"] != "train":
        out.remove("teacher_train")
    if cfg["evaluate"]["feature_extractor"] != "digit_classifier":
        out.remove("classifier_train")
    return out


def measure_one(cfg: dict, workload: str, steps: int, threads: int | None) -> dict:
    """One workload in this process: its rate, first-call seconds and peak memory."""
    from hkd.runtime import torch_setup

    cfg = copy.deepcopy(cfg)
    device, dtype = torch_setup(cfg, threads)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="hkd-bench-") as tmp:
        out = _MEASURE[workload](cfg, device, dtype, steps, Path(tmp))
    out.update(
        unit=WORKLOADS[workload][0],
        steps=steps,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        peak_gpu_bytes=torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
    )
    return out


def isolated_command(
    config_file: str | None, workload: str, steps: int, threads: int | None, device: str | None, result: Path
) -> tuple[list[str], dict]:
    """(command, environment) of ``measure_one`` in a fresh process (``hkd bench --only``)
    that writes its JSON to ``result``, compiling into an empty cache beside it, so that the
    first call costs what it costs on a fresh machine. ``config_file`` None: the reference
    workload (``hkd bench --reference``)."""
    cmd = [sys.executable, "-m", "hkd", "bench"]
    cmd += ["--config", config_file] if config_file else ["--reference"]
    cmd += [
        "--only",
        workload,
        "--steps",
        str(steps),
        "--result",
        str(result),
    ]
    cmd += ["--threads", str(threads)] if threads else []
    cmd += ["--device", device] if device else []
    env = dict(
        os.environ,
        TQDM_DISABLE="1",
        TORCHINDUCTOR_CACHE_DIR=str(result.parent / f"inductor-{result.stem}"),
    )
    return cmd, env


def _run_isolated(
    config_file: str | None, workload: str, steps: int, threads: int | None, device: str | None
) -> dict:
    """``measure_one`` in a fresh process, its JSON read back."""
    with tempfile.TemporaryDirectory(prefix="hkd-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd, env = isolated_command(config_file, workload, steps, threads, device, out)
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def reference_parameters() -> int:
    """Parameters of the reference network (built on the meta device: no memory, no time)."""
    from hkd.nn.precond import EDMPrecond
    from hkd.teacher.network import teacher_kwargs

    with torch.device("meta"):
        net = EDMPrecond(**teacher_kwargs(reference.reference_config()))
    return sum(p.numel() for p in net.parameters())


def bench_reference(steps: int = reference.REFERENCE_STEPS, threads: int | None = None) -> dict:
    """The speed index: the reference workload (``hkd.cost.reference``) in a process of its
    own, at ``threads`` (default: the 2 the index is defined at), stored form."""
    from hkd.runtime import device_name

    threads = threads or reference.REFERENCE_THREADS
    print(f"bench: reference teacher step, {threads} threads ...", flush=True)
    when = _now()
    measured = _run_isolated(None, "teacher_train", steps, threads, "cpu")
    versions = {"device": device_name(torch.device("cpu")), "torch": torch.__version__}
    result = reference.reference_result(measured, when, threads, reference_parameters(), versions)
    print(f"bench: speed index {reference.describe(result)}", flush=True)
    return result


def bench_config(
    cfg: dict,
    config_file: str,
    steps: int,
    threads: int | None,
    device: str | None,
    workloads: list[str] | None = None,
    with_reference: bool = True,
) -> dict:
    """Every workload of a config, each in its own process, with where and when it ran, and
    on CPU the speed index measured first, in the same session (``with_reference``): the
    newest stored one may be from another day, and the plan scales by the ratio of the two."""
    from hkd.runtime import device_name, pick_device, resolve_precision

    dev = pick_device(device or cfg["device"])
    ref = bench_reference() if with_reference and dev.type == "cpu" else None
    results = {}
    for w in workloads or workloads_of(cfg):
        print(f"bench: {w} ...", flush=True)
        results[w] = _run_isolated(config_file, w, steps, threads, device)
        print(
            f"bench: {w}: {results[w]['rate']:.1f} {results[w]['unit']}, first call "
            f"{results[w]['first_call_seconds']:.1f} s, peak RSS {results[w]['peak_rss_bytes'] / 2**20:.0f} MiB",
            flush=True,
        )
    return {
        "measured": _now(),
        "config": config_file,
        "device_kind": dev.type,
        "device": device_name(dev),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "precision": str(resolve_precision(cfg["precision"], dev)),
        "cost_keys": cost_keys(cfg),
        "cost_digest": cost_digest(cfg),
        "workloads": results,
        "reference": ref,
    }


def default_path(cfg: dict, device_kind: str, root: str | Path = "benchmarks") -> Path:
    """benchmarks/<cost digest>-<cpu|cuda>.json: where ``hkd plan`` looks for a config's numbers."""
    return Path(root) / f"{cost_digest(cfg)}-{device_kind}.json"
