"""Evaluation samples: teacher (Heun, 35 NFE) and HKD (1 NFE) from the same fresh noise seeds."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from hkd.io import save_npz
from hkd.runtime import autocast, progress_enabled
from hkd.teacher.sampler import edm_sigmas, heun_sample, seeded_noise
from hkd.teacher.trajectories import make_denoiser


def evaluation_seeds(cfg: dict) -> np.ndarray:
    """Seeds disjoint from the training trajectories (checked by the config validator)."""
    start = cfg["sample"]["seed_offset"]
    return np.arange(start, start + cfg["data"]["heldout"], dtype=np.int64)


def teacher_sampler(cfg: dict, teacher, device, dtype, compile: bool = False):
    edm = cfg["edm"]
    sigmas = edm_sigmas(cfg["trajectories"]["num_steps"], edm["sigma_min"], edm["sigma_max"], edm["rho"])
    denoise = make_denoiser(teacher, device, dtype, compile=compile)
    return lambda noise: heun_sample(denoise, noise, sigmas).float()


def hkd_sampler(model, device, dtype):
    def sample(noise):
        with torch.no_grad(), autocast(device, dtype):
            return model.sample(noise).float()
    return sample


def draw(sampler, seeds: np.ndarray, shape, batch_size: int, device, desc: str) -> np.ndarray:
    out = []
    for start in tqdm(range(0, len(seeds), batch_size), desc=desc, unit="batch", mininterval=2,
                      disable=not progress_enabled()):
        noise = seeded_noise(seeds[start:start + batch_size], shape, device)
        out.append(sampler(noise).cpu().numpy().astype(np.float32))
    images = np.concatenate(out)
    if not np.isfinite(images).all():
        raise FloatingPointError(f"{desc}: non-finite samples")
    return images


def write_samples(cfg: dict, teacher, model, out_teacher: str, out_hkd: str, device, dtype) -> dict:
    seeds = evaluation_seeds(cfg)
    shape = (teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
    bs = cfg["sample"]["batch_size"]
    times = {}
    # The 35-NFE teacher dominates this stage, so it runs compiled when the config says so;
    # the one-step HKD sampler is cheap eagerly.
    for name, sampler, path in (("teacher", teacher_sampler(cfg, teacher, device, dtype, cfg["compile"]),
                                 out_teacher),
                                ("hkd", hkd_sampler(model, device, dtype), out_hkd)):
        t0 = time.time()
        images = draw(sampler, seeds, shape, bs, device, f"sample {name}")
        times[name] = time.time() - t0
        save_npz(path, images=images, seeds=seeds)
    return times


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8, rounded as EDM saves images."""
    return np.clip(images * 127.5 + 128, 0, 255).astype(np.uint8)
