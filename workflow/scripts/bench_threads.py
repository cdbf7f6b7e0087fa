"""Thread scaling of the training and sampling workloads, measured in one run: is one job
with all the cores faster than several jobs side by side with fewer threads each?

    python workflow/scripts/bench_threads.py --config configs/default.yaml

For each workload and each layout "J jobs x T threads" with J x T = the cores (T = 1, 2,
4, ... up to the cores), J processes run `hkd bench --only <workload> --threads T` at the
same time. It prints each layout's rate per job, the rate of all jobs together, and that
total relative to one job with every core: above 1, side by side is faster, which is what
the rules' `threads:` (workflow/rules/*.smk) are chosen from. Eager by default
(`--compile` to measure the config's compiled paths; the compile itself is excluded).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from hkd.config import load_config  # noqa: E402
from hkd.cost.bench import cost_digest, cpu_model, isolated_command, workloads_of  # noqa: E402
from hkd.io import save_json  # noqa: E402


def layouts(cores: int) -> list[tuple[int, int]]:
    """(jobs, threads) with jobs x threads = cores, threads a power of two."""
    out, t = [], 1
    while t <= cores:
        if cores % t == 0:
            out.append((cores // t, t))
        t *= 2
    if (1, cores) not in out:
        out.append((1, cores))
    return sorted(out, key=lambda jt: -jt[1])


def run_layout(config: str, workload: str, jobs: int, threads: int, steps: int) -> list[float]:
    """Rates of ``jobs`` simultaneous `hkd bench --only` processes."""
    with tempfile.TemporaryDirectory(prefix="hkd-threads-") as tmp:
        procs, outs = [], []
        for j in range(jobs):
            out = Path(tmp) / f"{j}.json"
            cmd, env = isolated_command(config, workload, steps, threads, None, out)
            env["OMP_NUM_THREADS"] = str(threads)
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))
            outs.append(out)
        for p in procs:
            if p.wait() != 0:
                raise SystemExit(f"{workload}: a benchmark process failed ({p.args})")
        return [json.loads(o.read_text())["rate"] for o in outs]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument(
        "--workloads",
        nargs="+",
        default=None,
        help="default: those the config's stages run (bench.workloads_of)",
    )
    ap.add_argument(
        "--compile", action="store_true", help="keep the config's compile setting (default: eager)"
    )
    ap.add_argument(
        "--out", default=None, help="JSON to write (default: benchmarks/threads-<cost digest>-cpu.json)"
    )
    args = ap.parse_args()
    cfg = load_config(args.config)
    digest = cost_digest(cfg)
    args.workloads = args.workloads or workloads_of(cfg)
    config = args.config
    with tempfile.TemporaryDirectory(prefix="hkd-threads-cfg-") as tmp:
        if not args.compile:
            config = str(Path(tmp) / "eager.yaml")
            Path(config).write_text(
                yaml.safe_dump({"extends": str(Path(args.config).resolve()), "compile": False})
            )
        report = {
            "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config": args.config,
            "cost_digest": digest,
            "cpu": cpu_model(),
            "cores": args.cores,
            "compile": "config" if args.compile else False,
            "workloads": {},
        }
        for w in args.workloads:
            rows = []
            for jobs, threads in layouts(args.cores):
                rates = run_layout(config, w, jobs, threads, args.steps)
                rows.append(
                    {
                        "jobs": jobs,
                        "threads": threads,
                        "rate_per_job": sum(rates) / jobs,
                        "total_rate": sum(rates),
                    }
                )
                print(
                    f"{w}: {jobs} x {threads} threads: {sum(rates) / jobs:.2f} per job, {sum(rates):.2f} in all",
                    flush=True,
                )
            whole = next(r["total_rate"] for r in rows if r["jobs"] == 1)
            for r in rows:
                r["total_vs_one_job"] = r["total_rate"] / whole
            report["workloads"][w] = rows
    print(json.dumps(report, indent=1))
    out = Path(args.out or f"benchmarks/threads-{digest}-cpu.json")
    save_json(report, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
