"""``hkd bench`` and ``hkd plan``: measure this machine, then say what a config will cost."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hkd.config import load_config

COMMANDS = ("bench", "plan")


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure every network workload of a config on this machine "
        "(throughput, first-call time, peak memory) and store it for `hkd plan`",
    )
    p.add_argument("--config", required=True, help="run configuration (YAML)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the config's device)")
    p.add_argument("--steps", type=int, default=10, help="timed calls of each workload after the first")
    p.add_argument(
        "--out", default=None, help="JSON to write (default: benchmarks/<cost digest>-<device>.json)"
    )
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p = sub.add_parser(
        "plan", help="each job's files, disk, memory and time for a config, from stored benchmarks"
    )
    p.add_argument("--config", required=True, help="run configuration (YAML)")
    p.add_argument("--benchmarks", default="benchmarks", help="folder of `hkd bench` results")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args) -> int:
    cfg = load_config(args.config)
    if args.stage == "plan":
        from hkd.cost.plan import format_plan, plan

        p = plan(cfg, args.benchmarks)
        print(json.dumps(p, indent=1) if args.json else format_plan(p, args.config))
        return 0
    from hkd.cost import bench
    from hkd.io import save_json

    if args.device:
        cfg["device"] = args.device
    if args.only:  # one workload, in the process the parent started for it
        save_json(bench.measure_one(cfg, args.only, args.steps, args.threads), args.result)
        return 0
    result = bench.bench_config(cfg, args.config, args.steps, args.threads, args.device)
    out = Path(args.out or bench.default_path(cfg, result["device_kind"]))
    save_json(result, out)
    print(f"wrote {out}")
    return 0
