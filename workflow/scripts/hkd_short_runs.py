"""Compare HKD training settings with short runs on an existing run's teacher and
trajectories (e.g. after `snakemake --cores 2 all`), each scored by one-step FID.

    python workflow/scripts/hkd_short_runs.py --config configs/default.yaml \
        --set lambda1=annealed --set lambda1=constant --set lambda1=constant epochs=48

Each --set overrides keys of the config's `hkd:` section for one run, or top-level scalars
such as `compile` or `seed` (values are read as JSON where they parse, e.g. 3e-4, false).
Each run is scored like a variant: FID / IS of sample.count one-step samples from the
evaluation seeds against evaluate.reference, with FID's bootstrap sampling spread.
--trajectories N trains on the run's first N trajectories only. --teacher first scores the
teacher at the trajectories' NFE on the same evaluation seeds, for FID / teacher. Prints
one JSON line per run. Nothing under results/ is modified (weights go to a temporary folder). With a GPU,
the config's `device: auto` uses it.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from hkd.config import load_config, nfe_of_steps, validate_config
from hkd.data.dataset import load_dataset
from hkd.images import to_uint8
from hkd.koopman.model import load_hkd
from hkd.metrics.evaluate import make_scorer, score_one_step
from hkd.pipeline import run_paths
from hkd.runtime import dtype_name, resolve_precision, torch_setup
from hkd.sample import draw, evaluation_seeds, teacher_sampler
from hkd.teacher.network import load_teacher
from hkd.train.hkd_train import train_hkd


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--trajectories",
        type=int,
        default=None,
        metavar="N",
        help="train on the first N trajectories of the run",
    )
    ap.add_argument("--set", nargs="+", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--teacher",
        action="store_true",
        help="first score the teacher at the trajectories' NFE on the same evaluation seeds (the "
        "denominator of FID / teacher), sampled as the sample stage does",
    )
    args = ap.parse_args()
    if not args.set and not args.teacher:
        ap.error("nothing to do: give --set and/or --teacher")
    base = load_config(args.config)
    paths = run_paths(base)
    device, _ = torch_setup(base, args.threads)
    teacher = load_teacher(paths["teacher"], device)
    scorer, _ = make_scorer(base, paths, load_dataset(paths["data"]), device)
    shape = (teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
    if args.teacher:
        t0 = time.time()
        images, _ = draw(
            teacher_sampler(base, teacher, device, base["compile"]),
            evaluation_seeds(base),
            shape,
            teacher.label_dim,
            base["sample"]["batch_size"],
            device,
            "teacher",
        )
        m = scorer(to_uint8(images))
        print(
            json.dumps(
                {
                    "teacher_nfe": nfe_of_steps(base["trajectories"]["num_steps"]),
                    "images": len(images),
                    "seconds": round(time.time() - t0, 1),
                    "fid": m["fid"],
                    "fid_sampling_std": m["fid_sampling_std"],
                    "is": m["is_mean"],
                }
            ),
            flush=True,
        )
    for overrides in args.set:
        cfg = json.loads(json.dumps(base))
        for item in overrides:
            key, _, value = item.partition("=")
            # an `hkd:` key, or a top-level scalar such as `compile`
            section = (
                cfg if key in cfg and key not in cfg["hkd"] and not isinstance(cfg[key], dict) else cfg["hkd"]
            )
            try:
                section[key] = json.loads(value)
            except json.JSONDecodeError:
                section[key] = value
        validate_config(cfg, f"--set {' '.join(overrides)}")
        dtype = resolve_precision(cfg["precision"], device)  # --set precision=bf16 trains and samples in bf16
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            stats = train_hkd(
                cfg,
                teacher,
                paths["trajectories"],
                str(Path(tmp) / "hkd.pt"),
                str(Path(tmp) / "tb"),
                device,
                dtype,
                max_trajectories=args.trajectories,
            )
            model = load_hkd(str(Path(tmp) / "hkd.pt"), device)
            images, _, m = score_one_step(cfg, model, scorer, device, dtype, "sample")
        print(
            json.dumps(
                {
                    "set": overrides,
                    "seed": cfg["seed"],
                    "autocast": dtype_name(dtype),
                    "trajectories": stats["trajectories"],
                    "steps": stats["steps"],
                    "seconds": round(time.time() - t0, 1),
                    "images": len(images),
                    "fid": m["fid"],
                    "fid_sampling_std": m["fid_sampling_std"],
                    "is": m["is_mean"],
                    "koopman_T": stats["koopman_T"],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
