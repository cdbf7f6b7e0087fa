"""Sample quality of a teacher: FID (with its bootstrap spread), the recognisable digit rate and,
for a class-conditional teacher, how often the digit classifier reads the requested label; the
real-image floor beside them. These are the numbers of docs/teacher.md.

    python workflow/scripts/teacher_quality.py --config configs/teacher_mnist.yaml \
        [--conditional] [--pickle resources/<file>.pkl] [--count 4000] [--threads 2] [--out FILE.json]

The teacher is the run's ``hkd teacher`` checkpoint, or with ``--pickle`` an EDM network pickle
(the file shipped under resources/, read through the ``edm_pickle`` loader). Samples use the
config's Heun grid and ``teacher_precision`` on the evaluation seeds; the digit classifier is
the run's (its ``classifier`` stage runs first when missing).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--conditional", action="store_true", help="the run's class-conditional companion")
    p.add_argument("--pickle", default=None, help="score this EDM network pickle instead of the checkpoint")
    p.add_argument("--count", type=int, default=4000, help="teacher samples (evaluation seeds)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="also write the result here (JSON)")
    return p.parse_args()


def _teacher(args, paths: dict, cfg: dict, device):
    from hkd.teacher.edm_pickle import load_edm_pickle
    from hkd.teacher.network import check_matches_config, load_teacher

    if args.pickle is None:
        return load_teacher(paths["teacher"], device, cfg)
    net = load_edm_pickle(args.pickle)
    check_matches_config(net.init_kwargs, cfg, f"EDM network pickle {args.pickle}")
    return net.to(device)


def _classifier_ready(cfg: dict, paths: dict) -> None:
    from hkd.metrics.classifier import train_classifier

    if not Path(paths["classifier"]).is_file():
        print(f"training the digit classifier ({paths['classifier']})")
        train_classifier(cfg, paths["data"], paths["classifier"])


def score(args) -> dict:
    from hkd.cli import run_config
    from hkd.data.dataset import load_dataset
    from hkd.images import to_uint8
    from hkd.metrics.classifier import accuracy_on, load_classifier
    from hkd.metrics.evaluate import make_scorer
    from hkd.pipeline import run_paths
    from hkd.runtime import device_name, dtype_name, teacher_dtype, torch_setup
    from hkd.sample import draw, evaluation_seeds, teacher_sampler

    cfg = run_config(args)
    paths = run_paths(cfg)
    device, _ = torch_setup(cfg, args.threads)
    _classifier_ready(cfg, paths)
    teacher = _teacher(args, paths, cfg, device)
    seeds = evaluation_seeds(cfg)[: args.count]
    shape = (teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
    t0 = time.time()
    sampler = teacher_sampler(cfg, teacher, device, cfg["compile"])
    images, labels = draw(
        sampler, seeds, shape, teacher.label_dim, cfg["sample"]["batch_size"], device, "teacher"
    )
    sample_seconds = time.time() - t0
    data = load_dataset(paths["data"])
    scorer, _ = make_scorer(cfg, paths, data, device)
    rng = np.random.default_rng(cfg["seed"] + 3)
    real = data["heldout_images"][np.sort(rng.choice(len(data["heldout_images"]), 1000, replace=False))]
    out = {
        "config": args.config,
        "conditional": args.conditional,
        "teacher": args.pickle or paths["teacher"],
        "images": len(images),
        "reference": f"{cfg['evaluate']['reference']} split",
        "teacher_scores": scorer(to_uint8(images)),
        "real_floor_scores (1000 held-out digits)": scorer(to_uint8(real)),
        "sample_seconds": round(sample_seconds, 1),
        "device": device_name(device),
        "teacher_precision": dtype_name(teacher_dtype(cfg, device)),
    }
    if teacher.label_dim:
        out["label_accuracy"] = accuracy_on(load_classifier(paths["classifier"])[0], images, labels)
    return out


def main() -> None:
    args = _parse()
    result = score(args)
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out:
        from hkd.io import save_json

        save_json(result, args.out)


if __name__ == "__main__":
    main()
