"""``hkd bench`` and ``hkd plan``: measure this machine, then say what a config will cost."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from hkd.config import load_config
from hkd.cost.reference import REFERENCE_STEPS, reference_config, reference_path

COMMANDS = ("bench", "plan")


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure every network workload of a config on this machine "
        "(throughput, first-call time, peak memory) and store it for `hkd plan`",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="run configuration (YAML)")
    what.add_argument(
        "--reference",
        action="store_true",
        help="measure the speed index only: the teacher training step of a fixed network, eager, "
        "fp32, batch 128, at 2 threads (median s/step), stored as benchmarks/reference-*.json",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; with --reference the index's 2)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: the config's device)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"timed calls of each workload after the first (default 10; with --reference {REFERENCE_STEPS})",
    )
    p.add_argument(
        "--out",
        default=None,
        help="JSON to write (default: benchmarks/<cost digest>-<device>.json; with --reference "
        "benchmarks/reference-<machine>-<threads>t-<date>.json)",
    )
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p = sub.add_parser(
        "plan", help="each job's files, disk, memory and time for a config, from stored benchmarks"
    )
    p.add_argument("--config", required=True, help="run configuration (YAML)")
    p.add_argument("--benchmarks", default="benchmarks", help="folder of `hkd bench` results")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument(
        "--index",
        type=float,
        default=None,
        metavar="S",
        help="today's speed index (s/step of `hkd bench --reference`): scale the CPU times by S over "
        "the index stored with the benchmark",
    )


def run(args) -> int:
    if args.stage == "plan":
        return run_plan(args)
    if args.reference:
        return run_reference(args)
    from hkd.cost import bench
    from hkd.io import save_json

    cfg = load_config(args.config)
    if args.device:
        cfg["device"] = args.device
    if args.only:  # one workload, in the process the parent started for it
        save_json(bench.measure_one(cfg, args.only, args.steps, args.threads), args.result)
        return 0
    result = bench.bench_config(cfg, args.config, args.steps or 10, args.threads, args.device)
    out = Path(args.out or bench.default_path(cfg, result["device_kind"]))
    save_json(result, out)
    print(f"wrote {out}")
    if result["reference"] is not None:
        _store_reference(result["reference"])
    return 0


def run_reference(args) -> int:
    """``hkd bench --reference``: the speed index alone, on this machine's CPU (``--only``:
    its measurement, in the process the parent started for it)."""
    from hkd.cost import bench
    from hkd.io import save_json

    if args.device not in (None, "cpu"):
        raise ValueError("the speed index is defined on the CPU: hkd bench --reference takes no --device")
    if args.only:
        save_json(bench.measure_one(reference_config(), args.only, args.steps, args.threads), args.result)
        return 0
    _store_reference(bench.bench_reference(args.steps or REFERENCE_STEPS, args.threads), args.out)
    return 0


def _store_reference(result: dict, out: str | None = None) -> None:
    from hkd.io import save_json

    path = Path(out or reference_path(result))
    save_json(result, path)
    print(f"wrote {path}")


def run_plan(args) -> int:
    from hkd.cost.plan import format_plan, plan, scale_to_index
    from hkd.pipeline import extended_file

    cfg = load_config(args.config)
    extended = load_config(extended_file(args.config)) if cfg.get("tier") else None
    p = plan(cfg, args.benchmarks, extended)
    if extended is not None:
        p["tier"] = {"name": cfg["tier"], "after": os.path.relpath(extended_file(args.config))}
    if args.index is not None:
        p = scale_to_index(p, args.index)
    print(json.dumps(p, indent=1) if args.json else format_plan(p, args.config))
    return 0
