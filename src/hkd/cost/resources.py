"""Each Snakemake rule's memory request from the plan: the planned peak of its jobs (``hkd
plan``, from the stored ``hkd bench`` numbers of the config) times ``MARGIN``.

A cluster job then asks for what it needs instead of one size for all. Jobs the plan has no
peak for (no network workload: data, trajectory manifest, spectral, report) and configs with
no stored benchmark get nothing from here: the profile's ``default-resources`` apply.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from hkd.cost.stored import find_benchmark

#: requested memory = planned peak x MARGIN. The plan's peak is one workload's measured peak
#: RSS plus the arrays the stage holds beside it; the stage's own allocations around them
#: (data loading, checkpoints, the allocator's slack) are what the margin covers: measured
#: max RSS / planned peak was 0.77-1.44 over the jobs of the default's `all` (docs/cluster.md).
MARGIN = 1.5
#: memory resources set from the plan: Snakemake's mem_mb (RAM) and, on a CUDA run, gpu_mem_mb
RESOURCES = {"mem_mb": "peak_ram_bytes", "gpu_mem_mb": "peak_gpu_bytes"}


def rule_of(job_name: str) -> str:
    """The Snakemake rule of a plan job ("variant_train[no_koopman]" -> "variant_train")."""
    return job_name.split("[", 1)[0]


def requested_mb(peak_bytes: int) -> int:
    return math.ceil(peak_bytes * MARGIN / 1e6)


def device_kind(cfg: dict, root: str | Path) -> str | None:
    """The benchmark kind that sizes the config's jobs: its own device's where stored; a CUDA
    run without a GPU benchmark takes the CPU one (its peak RSS bounds the host RAM a GPU job
    needs, whose activations live on the GPU)."""
    kinds = ("cuda", "cpu") if cfg["device"] == "cuda" else ("cpu",)
    return next((k for k in kinds if find_benchmark(cfg, k, root) is not None), None)


def rule_memory(cfg: dict, root: str | Path = "benchmarks", extended: dict | None = None) -> dict[str, dict]:
    """{rule: {"mem_mb": n, "gpu_mem_mb": m}} for the rules of the config's ``all`` (or of a
    tier over ``extended``), the largest request among each rule's jobs; {} without a benchmark."""
    kind = device_kind(cfg, root)
    if kind is None:
        device = " --device cuda" if cfg["device"] == "cuda" else ""
        print(
            f"hkd: job memory not planned: no hkd bench numbers of run {cfg['run']!r} in {root} "
            f"(hkd bench --config <its config>{device} stores them); the profile's default-resources apply",
            file=sys.stderr,
        )
        return {}
    from hkd.cost.plan import plan  # torch: only where a benchmark is stored

    try:
        rows = plan(cfg, root, extended)["jobs"]
    except KeyError as exc:  # a benchmark older than the config's workloads: size nothing
        print(f"hkd: job memory not planned ({exc.args[0]}; rerun `hkd bench`)", file=sys.stderr)
        return {}
    out: dict[str, dict] = {}
    for row in rows:
        for resource, key in RESOURCES.items():
            peak = row[kind][key]
            if peak:
                rule = out.setdefault(rule_of(row["job"]), {})
                rule[resource] = max(rule.get(resource, 0), requested_mb(peak))
    return out
