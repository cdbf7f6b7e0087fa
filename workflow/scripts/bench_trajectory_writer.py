"""Trajectory-generation throughput with and without writing shards, measured in one run.

    python workflow/scripts/bench_trajectory_writer.py --config configs/default.yaml
    python workflow/scripts/bench_trajectory_writer.py --config configs/cifar10.yaml --trajectories 4000

The teacher is the config's architecture with random weights (EDM zero-initialises its
output layers, so the ODE stays finite) unless --teacher names a checkpoint. Runs
alternate between generating without writing and the full stage (shards written by the
background writer, then the manifest with every shard's sha256), after one warm-up run;
the medians are compared. Prints one JSON object: trajectories/s each way, the denoiser
images/s (trajectories x NFE), and the writer's cost as a fraction of the time.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from hkd.config import load_config  # noqa: E402
from hkd.nn.precond import EDMPrecond  # noqa: E402
from hkd.runtime import device_name, dtype_name, teacher_dtype, torch_setup  # noqa: E402
from hkd.teacher.network import load_teacher, save_teacher, teacher_kwargs  # noqa: E402
from hkd.teacher.sampler import nfe  # noqa: E402
from hkd.teacher.trajectories import generate_trajectories  # noqa: E402


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--teacher", default=None, help="teacher checkpoint (default: random weights)")
    ap.add_argument("--trajectories", type=int, default=500, help="trajectories per run")
    ap.add_argument("--shard-size", type=int, default=None, help="default: a fifth of --trajectories")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each kind")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default=None, help="override the config's device (auto|cpu|cuda)")
    ap.add_argument("--eager", action="store_true", help="no torch.compile, whatever the config says")
    ap.add_argument("--out", default=None, help="folder for the shards (default: a temporary one)")
    return ap.parse_args()


def bench_config(args: argparse.Namespace) -> dict:
    """The config with the benchmark's trajectory count, shard size, batch, device and compile."""
    cfg = copy.deepcopy(load_config(args.config))
    t = cfg["trajectories"]
    t.update(count=args.trajectories, shard_size=args.shard_size or max(1, args.trajectories // 5))
    if args.batch_size:
        t["batch_size"] = args.batch_size
    if args.device:
        cfg["device"] = args.device
    if args.eager:
        cfg["compile"] = False
    return cfg


def measure(cfg: dict, args: argparse.Namespace, device, dtype) -> tuple[float, dict, int]:
    """(warm-up seconds, {kind: seconds of each run}, bytes of the last run's shards): runs
    alternate between generating without writing and the full stage."""
    t = cfg["trajectories"]
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        tmp = Path(tmp)
        teacher_path = args.teacher
        if teacher_path is None:
            torch.manual_seed(0)
            net = EDMPrecond(**teacher_kwargs(cfg))
            teacher_path = str(tmp / "teacher.pt")
            save_teacher(net, teacher_path)
        teacher = load_teacher(teacher_path, device)

        def run(write: bool, tag: str) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            generate_trajectories(cfg, teacher, teacher_path, str(tmp / tag), device, write=write)
            return time.perf_counter() - t0

        warm = copy.deepcopy(cfg)
        warm["trajectories"].update(count=t["batch_size"], shard_size=t["batch_size"])
        t0 = time.perf_counter()
        generate_trajectories(warm, teacher, teacher_path, str(tmp / "warm"), device, write=False)
        warm_s = time.perf_counter() - t0
        times = {"without_writing": [], "with_writing": []}
        for r in range(args.repeats):
            times["without_writing"].append(run(False, f"no-write-{r}"))
            times["with_writing"].append(run(True, f"write-{r}"))
        shard_bytes = sum(p.stat().st_size for p in (tmp / f"write-{args.repeats - 1}").glob("shard-*.npz"))
    return warm_s, times, shard_bytes


def main() -> int:
    args = parse_args()
    cfg = bench_config(args)
    t = cfg["trajectories"]
    device, dtype = torch_setup(cfg, args.threads)
    warm_s, times, shard_bytes = measure(cfg, args, device, dtype)
    med = {k: statistics.median(v) for k, v in times.items()}
    n, steps = t["count"], t["num_steps"]
    out = {
        "config": args.config,
        "device": device_name(device),
        "teacher_precision": dtype_name(teacher_dtype(cfg, device)),
        "compile": cfg["compile"],
        "trajectories": n,
        "shards": -(-n // t["shard_size"]),
        "batch_size": t["batch_size"],
        "nfe": nfe(steps),
        "bytes_written": shard_bytes,
        "warmup_seconds": round(warm_s, 2),
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "trajectories_per_second": {k: n / s for k, s in med.items()},
        "denoiser_images_per_second": {k: n * nfe(steps) / s for k, s in med.items()},
        "writer_cost_fraction": med["with_writing"] / med["without_writing"] - 1,
    }
    if device.type == "cuda":
        out["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
