"""Where a config's stored cost measurements are found: ``hkd bench`` results (and the
thread scaling of ``workflow/scripts/bench_threads.py``) are filed under ``benchmarks/`` by
the digest of the settings a workload's cost depends on. Torch-free, so that Snakemake can
look for them each time it reads the workflow without importing torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def cost_keys(cfg: dict) -> dict:
    """The settings a workload's cost depends on: two configs with the same keys share a
    benchmark (e.g. configs/claims.yaml and the default it extends)."""
    return {
        "data": {k: cfg["data"][k] for k in ("source", "resolution")},
        "network": {k: v for k, v in cfg["network"].items() if k != "label_dim"},
        "batches": {
            "teacher": cfg["teacher"].get("batch_size"),
            "trajectories": cfg["trajectories"]["batch_size"],
            "hkd": cfg["hkd"]["batch_size"],
            "hkd_micro": cfg["hkd"]["micro_batch"],
            "sample": cfg["sample"]["batch_size"],
            "classifier": cfg["evaluate"].get("classifier_batch_size"),
        },
        "precision": cfg["precision"],
        "teacher_precision": cfg["teacher_precision"],
        "compile": cfg["compile"],
        "feature_extractor": cfg["evaluate"]["feature_extractor"],
        # only where set: a config following `compile` keeps the digest of its stored benchmarks
        **({"hkd_compile": cfg["hkd_compile"]} if cfg["hkd_compile"] is not None else {}),
    }


def cost_digest(cfg: dict) -> str:
    """The name of a config's cost settings in stored benchmarks (benchmarks/<digest>-<kind>.json)."""
    text = json.dumps(cost_keys(cfg), sort_keys=True)  # as hkd.io.sha256_json, without torch
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _newest(cfg: dict, root: str | Path, pattern: str, **match) -> dict | None:
    """The newest stored result under ``root`` matching ``pattern`` for this config's cost
    settings (and the ``match`` fields)."""
    digest = cost_digest(cfg)
    found = [
        b
        for b in (json.loads(p.read_text()) for p in Path(root).glob(pattern))
        if b.get("cost_digest") == digest and all(b.get(k) == v for k, v in match.items())
    ]
    return max(found, key=lambda b: b["measured"]) if found else None


def find_benchmark(cfg: dict, device_kind: str, root: str | Path = "benchmarks") -> dict | None:
    """The newest stored ``hkd bench`` result of this config's cost settings on that device kind."""
    return _newest(cfg, root, f"*-{device_kind}.json", device_kind=device_kind)


def find_thread_scaling(cfg: dict, root: str | Path = "benchmarks") -> dict | None:
    """The newest stored ``bench_threads.py`` result for this config's cost settings."""
    return _newest(cfg, root, "threads-*-cpu.json")
