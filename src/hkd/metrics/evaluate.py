"""The evaluate stage: FID / IS rows of both samplers against the configured reference
images (held-out split, or the training split as in the paper), with the digit classifier
also each row's recognisable digit rate, plus sampler throughput; and the same one-step row
for each Table 3 ablation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from hkd.data.dataset import load_dataset
from hkd.images import to_uint8
from hkd.io import load_json, load_npz, save_json, save_npz, sha256_array, sha256_file, sha256_json
from hkd.metrics.controls import zeroed_operators
from hkd.metrics.fidelity import EXTRACTOR_NAME, Scorer
from hkd.metrics.throughput import measure
from hkd.runtime import device_name, dtype_name, teacher_dtype
from hkd.sample import draw, evaluation_seeds, hkd_sampler, teacher_sampler
from hkd.teacher.network import describe_origin, teacher_stats
from hkd.teacher.sampler import nfe, seeded_inputs


def feature_extractor(cfg: dict, paths: dict, data: dict) -> tuple[str, str | None, dict]:
    """(torch-fidelity extractor name, its weights path, description for the report)."""
    ecfg = cfg["evaluate"]
    if ecfg["feature_extractor"] == "digit_classifier":
        from hkd.metrics.classifier import accuracy_on, load_classifier

        classifier, acc = load_classifier(paths["classifier"])
        info = {
            "name": EXTRACTOR_NAME,
            "description": "digit classifier trained on the training split; FID on its 128-d "
            "penultimate features, IS on its 10-class logits",
            "heldout_accuracy": acc,
        }
        if len(data["heldout_images"]):
            info["accuracy_on_heldout_recomputed"] = accuracy_on(
                classifier, data["heldout_images"], data["heldout_labels"]
            )
        return EXTRACTOR_NAME, paths["classifier"], info
    weights = ecfg["inception_weights"]
    return (
        "inception-v3-compat",
        weights,
        {
            "name": "inception-v3-compat",
            "description": "torch-fidelity's Inception-v3 port of the TF FID network: FID on pool3 (2048-d), "
            "IS on its logits",
            "weights": weights or "torch-fidelity download (torch hub cache)",
        },
    )


def reference_images(cfg: dict, data: dict) -> np.ndarray:
    """The FID reference (evaluate.reference: the training or held-out split) as uint8."""
    return to_uint8(data[f"{cfg['evaluate']['reference']}_images"])


def make_scorer(cfg: dict, paths: dict, data: dict, device) -> tuple[Scorer, dict]:
    """(the run's Scorer against its reference images, the feature extractor's description)."""
    extractor, weights, info = feature_extractor(cfg, paths, data)
    scorer = Scorer(
        reference_images(cfg, data),
        extractor,
        weights,
        cuda=device.type == "cuda",
        bootstrap=cfg["evaluate"]["bootstrap"],
        seed=cfg["seed"],
    )
    return scorer, info


def _row(key: str, label: str, nfe_: int | None, images: np.ndarray, scores: dict) -> dict:
    return {"key": key, "method": label, "nfe": nfe_, "images": int(len(images)), **scores}


def _cached_scores(
    partial: Path, key: str, images_u8: np.ndarray, ref_u8: np.ndarray, scorer: Scorer
) -> dict:
    """FID / IS / KID (and the recognisable digit rate) of one row, reusing the scores an
    interrupted run of this stage left in ``partial`` for the same images, reference, feature
    extractor, bootstrap and recognisable threshold."""
    weights = scorer.weights_path
    parts = [
        sha256_array(images_u8),
        sha256_array(ref_u8),
        scorer.extractor,
        scorer.bootstrap,
        sha256_file(weights) if weights and Path(weights).is_file() else str(weights),
    ]
    if scorer.threshold is not None:  # rows scored before the rate existed are scored again
        parts.append({"recognisable_threshold": scorer.threshold})
    fingerprint = sha256_json(parts)
    cached = partial / f"{key}.json"
    if cached.is_file():
        d = load_json(cached)
        if d.get("fingerprint") == fingerprint:
            print(f"evaluate: reused the {key} row from {cached}")
            return d["scores"]
    scores = scorer(images_u8)
    save_json({"fingerprint": fingerprint, "scores": scores}, cached)
    return scores


def evaluate(cfg: dict, paths: dict, teacher, model, device, dtype, kd=None) -> dict:
    """FID / IS / KID rows (real floor, teacher at each NFE, HKD), HKD's zeroed-operator
    control (``metrics.controls``) and the time per image of every sampler (teacher at each NFE, HKD, and ``kd``, the no-Koopman one-step
    distillation, when trained), measured in this one process: the teacher under
    ``teacher_precision``, HKD under ``dtype`` (the run's ``precision``)."""
    data = load_dataset(paths["data"])
    ref_split = cfg["evaluate"]["reference"]
    reference = data[f"{ref_split}_images"]
    steps = cfg["trajectories"]["num_steps"]
    extra = cfg["sample"]["extra_teacher_nfe"]
    sample_files = {"teacher": paths["samples_teacher"], "hkd": paths["samples_hkd"]}
    sample_files.update(
        {f"teacher_nfe{n}": paths["samples_teacher_nfe"].replace("{nfe}", str(n)) for n in extra}
    )
    loaded = {k: load_npz(f, ("images", "labels")) for k, f in sample_files.items()}
    generated = {k: d["images"] for k, d in loaded.items()}
    n = cfg["sample"]["count"]
    for name, imgs in generated.items():
        if imgs.shape[1:] != reference.shape[1:] or len(imgs) != n:
            raise ValueError(
                f"{sample_files[name]}: expected {n} images of shape {reference.shape[1:]}, got {imgs.shape}"
            )
    # the real-image floor: images of the other split, as many as each sampler is given
    other = data["train_images" if ref_split == "heldout" else "heldout_images"]
    rng = np.random.default_rng(cfg["seed"] + 3)
    real = other[np.sort(rng.choice(len(other), min(n, len(other)), replace=False))] if len(other) else None
    scorer, extractor_info = make_scorer(cfg, paths, data, device)
    ref = to_uint8(reference)
    candidates = [("EDM teacher (Heun)", "teacher", generated["teacher"], nfe(steps))]
    candidates += [("EDM teacher (Heun)", f"teacher_nfe{k}", generated[f"teacher_nfe{k}"], k) for k in extra]
    candidates.append(("HKD (one step)", "hkd", generated["hkd"], 1))
    if real is not None:
        split = "training" if ref_split == "heldout" else "held-out"
        candidates.insert(0, (f"Real images ({split} split)", "real", real, None))
    rows = []
    partial = Path(paths["metrics"]).parent / ".partial"  # finished rows, kept until metrics.json is written
    for label, key, images, nfe_ in candidates:
        rows.append(
            _row(key, label, nfe_, images, _cached_scores(partial, key, to_uint8(images), ref, scorer))
        )
    if teacher.label_dim and scorer.extractor == EXTRACTOR_NAME:
        # does a conditional sampler draw the digit it is asked for? (the classifier's call)
        from hkd.metrics.classifier import accuracy_on, load_classifier

        classifier = load_classifier(paths["classifier"])[0]
        for row in rows:
            if row["key"] in loaded:
                row["label_accuracy"] = accuracy_on(
                    classifier, generated[row["key"]], loaded[row["key"]]["labels"]
                )

    hkd_row = next(r for r in rows if r["key"] == "hkd")
    zeroed = zeroed_operators(cfg, model, scorer, generated["hkd"], hkd_row, device, dtype)
    speed = time_samplers(cfg, teacher, model, kd, device, dtype)
    result = {
        "rows": rows,
        "zeroed_operators": zeroed,
        "reference": {"split": ref_split, "images": int(len(reference))},
        "feature_extractor": extractor_info,
        "throughput": speed,
        "speedup_hkd_vs_teacher": speed["hkd"]["images_per_second"] / speed["teacher"]["images_per_second"],
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "precision": dtype_name(dtype),
        "teacher_precision": dtype_name(teacher_dtype(cfg, device)),
        "teacher_origin": describe_origin(teacher_stats(paths["teacher"])),
    }
    save_json(result, paths["metrics"])
    shutil.rmtree(partial, ignore_errors=True)
    return result


def time_samplers(cfg: dict, teacher, model, kd, device, dtype) -> dict:
    """Time per image of every sampler on one noise batch (``metrics.throughput.measure``),
    each with its NFE: the teacher at each NFE under ``teacher_precision``, HKD and ``kd``
    (when trained) under ``dtype``. All eager (compile=False): the ratios compare the same
    kind of code."""
    steps, extra = cfg["trajectories"]["num_steps"], cfg["sample"]["extra_teacher_nfe"]
    noise, labels = seeded_inputs(
        np.arange(cfg["evaluate"]["throughput_batch"]) + cfg["sample"]["seed_offset"],
        (teacher.img_channels, teacher.img_resolution, teacher.img_resolution),
        teacher.label_dim,
        device,
    )
    samplers = {"teacher": teacher_sampler(cfg, teacher, device, compile=False)}
    for k in extra:
        samplers[f"teacher_nfe{k}"] = teacher_sampler(cfg, teacher, device, compile=False, nfe=k)
    samplers["hkd"] = hkd_sampler(model, device, dtype)
    if kd is not None:
        samplers["kd"] = hkd_sampler(kd, device, dtype)
    speed = measure(samplers, noise, cfg["evaluate"]["throughput_repeats"], labels)
    speed["teacher"]["nfe"] = nfe(steps)
    for k in extra:
        speed[f"teacher_nfe{k}"]["nfe"] = k
    for k in ("hkd", "kd"):
        if k in speed:
            speed[k]["nfe"] = 1
    return speed


def score_one_step(
    cfg: dict, model, scorer: Scorer, device, dtype, desc: str
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images, labels, FID / IS / KID) of an HKD model's one-step samples from the
    evaluation seeds the full HKD row uses, against the scorer's reference."""
    shape = (model.img_channels, model.img_resolution, model.img_resolution)
    images, labels = draw(
        hkd_sampler(model, device, dtype),
        evaluation_seeds(cfg),
        shape,
        model.label_dim,
        cfg["sample"]["batch_size"],
        device,
        desc,
    )
    return images, labels, scorer(to_uint8(images))


def evaluate_variant(cfg: dict, paths: dict, variant: str, model, device, dtype) -> dict:
    """One variant (a Table 3 ablation or a Table 5 seed) scored like the full HKD row:
    ``paths`` holds this variant's files (``pipeline.variant_paths``)."""
    from hkd.pipeline import ABLATIONS, variant_config

    data = load_dataset(paths["data"])
    scorer, extractor_info = make_scorer(cfg, paths, data, device)
    images, labels, m = score_one_step(cfg, model, scorer, device, dtype, f"sample {variant}")
    save_npz(paths["variant_samples"], images=images, seeds=evaluation_seeds(cfg), labels=labels)
    ref_split = cfg["evaluate"]["reference"]
    result = {
        "variant": variant,
        "hkd_overrides": ABLATIONS.get(variant, {}),
        "seed": variant_config(cfg, variant)["seed"],
        "nfe": 1,
        "images": int(len(images)),
        "koopman": bool(model.init_kwargs["koopman"]),
        "hierarchy": bool(model.init_kwargs["hierarchy"]),
        **m,
        "zeroed_operators": zeroed_operators(cfg, model, scorer, images, m, device, dtype),
        "reference": {"split": ref_split, "images": int(len(data[f"{ref_split}_images"]))},
        "feature_extractor": extractor_info["name"],
        "training": model.train_stats,
    }
    save_json(result, paths["variant_metrics"])
    return {k: result[k] for k in ("variant", "fid", "is_mean")}
