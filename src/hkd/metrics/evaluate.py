"""The evaluate stage: FID / IS rows of both samplers against the configured reference
images (held-out split, or the training split as in the paper), plus sampler throughput;
and the same one-step row for each Table 3 ablation."""

from __future__ import annotations

import numpy as np
import torch

from hkd.data.dataset import load_dataset
from hkd.io import load_npz, save_json, save_npz
from hkd.metrics.fidelity import EXTRACTOR_NAME, fidelity_metrics
from hkd.metrics.throughput import measure
from hkd.runtime import device_name
from hkd.sample import draw, evaluation_seeds, hkd_sampler, teacher_sampler, to_uint8
from hkd.teacher.sampler import nfe, seeded_inputs


def feature_extractor(cfg: dict, paths: dict, data: dict) -> tuple[str, str | None, dict]:
    """(torch-fidelity extractor name, its weights path, description for the report)."""
    ecfg = cfg["evaluate"]
    if ecfg["feature_extractor"] == "digit_classifier":
        from hkd.metrics.classifier import accuracy_on, load_classifier

        classifier, acc = load_classifier(paths["classifier"])
        info = {"name": EXTRACTOR_NAME,
                "description": "digit classifier trained on the training split; FID on its 128-d "
                               "penultimate features, IS on its 10-class logits",
                "heldout_accuracy": acc}
        if len(data["heldout_images"]):
            info["accuracy_on_heldout_recomputed"] = accuracy_on(classifier, data["heldout_images"],
                                                                 data["heldout_labels"])
        return EXTRACTOR_NAME, paths["classifier"], info
    weights = ecfg["inception_weights"]
    return "inception-v3-compat", weights, {
        "name": "inception-v3-compat",
        "description": "torch-fidelity's Inception-v3 port of the TF FID network: FID on pool3 (2048-d), "
                       "IS on its logits",
        "weights": weights or "torch-fidelity download (torch hub cache)"}


def evaluate(cfg: dict, paths: dict, teacher, model, device, dtype) -> dict:
    data = load_dataset(paths["data"])
    ref_split = cfg["evaluate"]["reference"]
    reference = data[f"{ref_split}_images"]
    generated = {
        "teacher": load_npz(paths["samples_teacher"], ("images",))["images"],
        "hkd": load_npz(paths["samples_hkd"], ("images",))["images"],
    }
    n = cfg["sample"]["count"]
    for name, imgs in generated.items():
        if imgs.shape[1:] != reference.shape[1:] or len(imgs) != n:
            raise ValueError(f"{paths['samples_' + name]}: expected {n} images of shape "
                             f"{reference.shape[1:]}, got {imgs.shape}")
    # the real-image floor: images of the other split, as many as each sampler is given
    other = data["train_images" if ref_split == "heldout" else "heldout_images"]
    rng = np.random.default_rng(cfg["seed"] + 3)
    real = other[np.sort(rng.choice(len(other), min(n, len(other)), replace=False))] if len(other) else None
    extractor, weights, extractor_info = feature_extractor(cfg, paths, data)
    cuda = device.type == "cuda"
    ref = to_uint8(reference)
    steps = cfg["trajectories"]["num_steps"]
    rows = []
    candidates = [("EDM teacher (Heun)", "teacher", generated["teacher"], nfe(steps)),
                  ("HKD (one step)", "hkd", generated["hkd"], 1)]
    if real is not None:
        split = "training" if ref_split == "heldout" else "held-out"
        candidates.insert(0, (f"Real images ({split} split)", "real", real, None))
    for label, key, images, nfe_ in candidates:
        m = fidelity_metrics(to_uint8(images), ref, extractor, weights, cuda=cuda)
        rows.append({"key": key, "method": label, "nfe": nfe_, "images": int(len(images)),
                     "fid": float(m["frechet_inception_distance"]),
                     "is_mean": float(m["inception_score_mean"]),
                     "is_std": float(m["inception_score_std"])})

    noise, labels = seeded_inputs(np.arange(cfg["evaluate"]["throughput_batch"]) + cfg["sample"]["seed_offset"],
                                  (teacher.img_channels, teacher.img_resolution, teacher.img_resolution),
                                  teacher.label_dim, device)
    # both eager (compile=False): the ratio compares the same kind of code
    speed = measure({"teacher": teacher_sampler(cfg, teacher, device, dtype, compile=False),
                     "hkd": hkd_sampler(model, device, dtype)}, noise, cfg["evaluate"]["throughput_repeats"],
                    labels)
    result = {
        "rows": rows,
        "reference": {"split": ref_split, "images": int(len(reference))},
        "feature_extractor": extractor_info,
        "throughput": speed,
        "speedup_hkd_vs_teacher": speed["hkd"]["images_per_second"] / speed["teacher"]["images_per_second"],
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "precision": str(dtype).replace("torch.", "") if dtype is not None else "float32",
    }
    save_json(result, paths["metrics"])
    return result


def evaluate_ablation(cfg: dict, paths: dict, variant: str, model, device, dtype) -> dict:
    """One-step samples of a Table 3 ablation from the evaluation seeds the full HKD row uses,
    scored against the same reference with the same extractor: ``paths`` holds this
    variant's files (``pipeline.variant_paths``)."""
    from hkd.pipeline import ABLATIONS

    data = load_dataset(paths["data"])
    ref_split = cfg["evaluate"]["reference"]
    shape = (model.img_channels, model.img_resolution, model.img_resolution)
    images, labels = draw(hkd_sampler(model, device, dtype), evaluation_seeds(cfg), shape, model.label_dim,
                          cfg["sample"]["batch_size"], device, f"sample {variant}")
    save_npz(paths["ablation_samples"], images=images, seeds=evaluation_seeds(cfg), labels=labels)
    extractor, weights, extractor_info = feature_extractor(cfg, paths, data)
    m = fidelity_metrics(to_uint8(images), to_uint8(data[f"{ref_split}_images"]), extractor, weights,
                         cuda=device.type == "cuda")
    result = {"variant": variant, "hkd_overrides": ABLATIONS[variant], "nfe": 1, "images": int(len(images)),
              "koopman": bool(model.init_kwargs["koopman"]), "hierarchy": bool(model.init_kwargs["hierarchy"]),
              "fid": float(m["frechet_inception_distance"]), "is_mean": float(m["inception_score_mean"]),
              "is_std": float(m["inception_score_std"]),
              "reference": {"split": ref_split, "images": int(len(data[f"{ref_split}_images"]))},
              "feature_extractor": extractor_info["name"], "training": model.train_stats}
    save_json(result, paths["ablation_metrics"])
    return {k: result[k] for k in ("variant", "fid", "is_mean")}
