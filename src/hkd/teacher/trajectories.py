"""Teacher probability-flow ODE trajectories: every grid state, fp16, with its noise seed."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from hkd.io import save_npz
from hkd.runtime import autocast, maybe_compile, progress_enabled
from hkd.teacher.sampler import edm_sigmas, heun_sample, seeded_noise


def make_denoiser(net, device, dtype, compile: bool = False):
    """D(x; sigma) in fp32 out, autocast inside, channels-last for CPU convolutions;
    ``compile``: through torch.compile (one graph per batch shape, sigma is a tensor input)."""
    net = maybe_compile(net, compile, "the teacher denoiser")

    def denoise(x, sigma):
        with torch.no_grad(), autocast(device, dtype):
            out = net(x.contiguous(memory_format=torch.channels_last), sigma)
        return out.float()
    return denoise


def generate_trajectories(cfg: dict, teacher, out_path: str, device, dtype) -> dict:
    tcfg, edm = cfg["trajectories"], cfg["edm"]
    sigmas = edm_sigmas(tcfg["num_steps"], edm["sigma_min"], edm["sigma_max"], edm["rho"])
    seeds = np.arange(tcfg["seed_offset"], tcfg["seed_offset"] + tcfg["count"], dtype=np.int64)
    res = teacher.img_resolution
    shape = (teacher.img_channels, res, res)
    states = np.empty((len(seeds), len(sigmas)) + shape, dtype=np.float16)
    denoise = make_denoiser(teacher, device, dtype, compile=cfg["compile"])
    bs = tcfg["batch_size"]
    for start in tqdm(range(0, len(seeds), bs), desc="trajectories", unit="batch", mininterval=2,
                      disable=not progress_enabled()):
        batch = seeds[start:start + bs]
        _, traj = heun_sample(denoise, seeded_noise(batch, shape, device), sigmas, keep_states=True)
        block = torch.stack(traj, dim=1).float().cpu().numpy()
        if not np.isfinite(block).all():
            raise FloatingPointError(f"non-finite teacher states for seeds {batch[0]}..{batch[-1]}")
        states[start:start + len(batch)] = block.astype(np.float16)
    save_npz(out_path, states=states, sigmas=sigmas.numpy(), seeds=seeds)
    return {"count": int(len(seeds)), "grid_points": int(len(sigmas)), "nfe": 2 * tcfg["num_steps"] - 1}


def load_trajectories(path: str) -> dict[str, np.ndarray]:
    from hkd.io import load_npz

    d = load_npz(path, ("states", "sigmas", "seeds"))
    s = d["states"]
    if s.ndim != 5 or s.shape[1] != len(d["sigmas"]) or s.shape[0] != len(d["seeds"]):
        raise ValueError(f"{path}: 'states' has shape {s.shape}, expected [N, {len(d['sigmas'])}, C, H, W]")
    return d
