"""The evaluate stage: FID / IS rows against the held-out split, plus sampler throughput."""

from __future__ import annotations

import numpy as np
import torch

from hkd.data.mnist import load_dataset
from hkd.io import load_npz, save_json
from hkd.metrics.classifier import accuracy_on, load_classifier
from hkd.metrics.fidelity import EXTRACTOR_NAME, fidelity_metrics
from hkd.metrics.throughput import measure
from hkd.runtime import device_name
from hkd.sample import hkd_sampler, teacher_sampler, to_uint8
from hkd.teacher.sampler import nfe, seeded_noise


def evaluate(cfg: dict, paths: dict, teacher, model, device, dtype) -> dict:
    data = load_dataset(paths["data"])
    heldout = data["heldout_images"]
    n = len(heldout)
    rng = np.random.default_rng(cfg["seed"] + 3)
    train_subset = data["train_images"][np.sort(rng.choice(len(data["train_images"]), n, replace=False))]
    generated = {
        "teacher": load_npz(paths["samples_teacher"], ("images",))["images"],
        "hkd": load_npz(paths["samples_hkd"], ("images",))["images"],
    }
    for name, imgs in generated.items():
        if imgs.shape[1:] != heldout.shape[1:] or len(imgs) != n:
            raise ValueError(f"{paths['samples_' + name]}: expected {n} images of shape "
                             f"{heldout.shape[1:]}, got {imgs.shape}")
    cuda = device.type == "cuda"
    ref = to_uint8(heldout)
    steps = cfg["trajectories"]["num_steps"]
    rows = []
    for label, key, images, nfe_ in (("Real images (training split)", "real", train_subset, None),
                                     ("EDM teacher (Heun)", "teacher", generated["teacher"], nfe(steps)),
                                     ("HKD (one step)", "hkd", generated["hkd"], 1)):
        m = fidelity_metrics(to_uint8(images), ref, paths["classifier"], cuda=cuda)
        rows.append({"key": key, "method": label, "nfe": nfe_, "images": int(len(images)),
                     "fid": float(m["frechet_inception_distance"]),
                     "is_mean": float(m["inception_score_mean"]),
                     "is_std": float(m["inception_score_std"])})
    classifier, acc = load_classifier(paths["classifier"])

    noise = seeded_noise(np.arange(cfg["evaluate"]["throughput_batch"]) + cfg["sample"]["seed_offset"],
                         (teacher.img_channels, teacher.img_resolution, teacher.img_resolution), device)
    # both eager (compile=False): the ratio compares the same kind of code
    speed = measure({"teacher": teacher_sampler(cfg, teacher, device, dtype, compile=False),
                     "hkd": hkd_sampler(model, device, dtype)}, noise, cfg["evaluate"]["throughput_repeats"])
    result = {
        "rows": rows,
        "reference": {"split": "held-out", "images": int(n)},
        "feature_extractor": {
            "name": EXTRACTOR_NAME,
            "description": "digit classifier trained on the training split; FID on its 128-d "
                           "penultimate features, IS on its 10-class logits",
            "heldout_accuracy": acc,
            "accuracy_on_heldout_recomputed": accuracy_on(classifier, heldout, data["heldout_labels"]),
        },
        "throughput": speed,
        "speedup_hkd_vs_teacher": speed["hkd"]["images_per_second"] / speed["teacher"]["images_per_second"],
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "precision": str(dtype).replace("torch.", "") if dtype is not None else "float32",
    }
    save_json(result, paths["metrics"])
    return result
