"""Evaluation samples: teacher (Heun, 35 NFE) and HKD (1 NFE) from the same fresh noise seeds."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from hkd.io import save_npz
from hkd.runtime import autocast, progress_enabled
from hkd.teacher.sampler import edm_sigmas, heun_sample, one_hot, seeded_inputs
from hkd.teacher.trajectories import make_denoiser


def evaluation_seeds(cfg: dict) -> np.ndarray:
    """Seeds disjoint from the training trajectories (checked by the config validator)."""
    start = cfg["sample"]["seed_offset"]
    return np.arange(start, start + cfg["sample"]["count"], dtype=np.int64)


def teacher_sampler(cfg: dict, teacher, device, dtype, compile: bool = False, nfe: int | None = None):
    """EDM's Heun sampler on the EDM grid: the trajectories' step count, or ``nfe`` (odd)."""
    edm = cfg["edm"]
    steps = cfg["trajectories"]["num_steps"] if nfe is None else (nfe + 1) // 2
    sigmas = edm_sigmas(steps, edm["sigma_min"], edm["sigma_max"], edm["rho"])
    denoise = make_denoiser(teacher, device, dtype, compile=compile)

    def sample(noise, labels=None):
        return heun_sample(denoise, noise, sigmas, class_labels=one_hot(labels, teacher.label_dim)).float()
    return sample


def hkd_sampler(model, device, dtype):
    def sample(noise, labels=None):
        with torch.no_grad(), autocast(device, dtype):
            return model.sample(noise, one_hot(labels, model.label_dim)).float()
    return sample


def draw(sampler, seeds: np.ndarray, shape, label_dim: int, batch_size: int, device,
         desc: str) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [N, C, H, W], labels int64 [N], -1 when unconditional) of ``seeds``."""
    out, labels = [], []
    for start in tqdm(range(0, len(seeds), batch_size), desc=desc, unit="batch", mininterval=2,
                      disable=not progress_enabled()):
        batch = seeds[start:start + batch_size]
        noise, lab = seeded_inputs(batch, shape, label_dim, device)
        out.append(sampler(noise, lab).cpu().numpy().astype(np.float32))
        labels.append(lab.cpu().numpy() if lab is not None else np.full(len(batch), -1, np.int64))
    images = np.concatenate(out)
    if not np.isfinite(images).all():
        raise FloatingPointError(f"{desc}: non-finite samples")
    return images, np.concatenate(labels)


def write_samples(cfg: dict, teacher, model, paths: dict, device, dtype) -> dict:
    """Teacher (at the trajectories' NFE and each ``sample.extra_teacher_nfe``) and HKD
    samples from the evaluation seeds, to the files named in ``paths``."""
    seeds = evaluation_seeds(cfg)
    shape = (teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
    bs = cfg["sample"]["batch_size"]
    times = {}
    # The teacher dominates this stage, so it runs compiled when the config says so; the
    # one-step HKD sampler is cheap eagerly.
    jobs = [("teacher", teacher_sampler(cfg, teacher, device, dtype, cfg["compile"]), paths["samples_teacher"])]
    for n in cfg["sample"]["extra_teacher_nfe"]:
        jobs.append((f"teacher_nfe{n}", teacher_sampler(cfg, teacher, device, dtype, cfg["compile"], nfe=n),
                     paths["samples_teacher_nfe"].replace("{nfe}", str(n))))
    jobs.append(("hkd", hkd_sampler(model, device, dtype), paths["samples_hkd"]))
    for name, sampler, path in jobs:
        t0 = time.time()
        images, labels = draw(sampler, seeds, shape, teacher.label_dim, bs, device, f"sample {name}")
        times[name] = time.time() - t0
        save_npz(path, images=images, seeds=seeds, labels=labels)
    return times


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8, rounded as EDM saves images."""
    return np.clip(images * 127.5 + 128, 0, 255).astype(np.uint8)
