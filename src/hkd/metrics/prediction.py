"""The error of HKD's intermediate-time predictions on held-out teacher trajectories.

One-step FID scores only the prediction of the trajectory's end from x_T. The Koopman flow
also predicts every state between: from x_t at a grid time t, the state at each grid time
eps < s < t (``HKD.forward`` with ``s``). Trained with intermediate targets
(``hkd.prediction_weight``) or not, a recipe can trade one of these for the other, so the
study reports both. The trajectories are drawn by the teacher from noise seeds after the
training trajectories' (none of them was trained on), with every Heun grid state kept.

Per trained model, over every other grid time as input and up to four grid times below each
as targets (``pair_indices``): the mean squared error per pixel of the predictions of the
intermediate states, each divided by the variance of its target x_s (s^2 + sigma_data^2, so
that the noisy early states do not outweigh the rest; ``intermediate_mse``), the mean
squared error per pixel on [-1, 1] of the end from the same inputs (``end_mse``),
and of the intermediate states with the operators zeroed (``zeroed_intermediate_mse``): how
much of the intermediate predictions the learned operators carry.
"""

from __future__ import annotations

import numpy as np
import torch

from hkd.koopman.model import operators_off
from hkd.runtime import autocast
from hkd.teacher.sampler import edm_sigmas, heun_sample, one_hot, seeded_inputs


def heldout_seeds(cfg: dict) -> np.ndarray:
    """Noise seeds of the held-out trajectories: the ``study.heldout_trajectories`` seeds
    right after the training trajectories' (``trajectories.seed_offset + count + i``)."""
    tr = cfg["trajectories"]
    start = tr["seed_offset"] + tr["count"]
    return np.arange(start, start + cfg["study"]["heldout_trajectories"], dtype=np.int64)


@torch.no_grad()
def heldout_trajectories(cfg: dict, denoise, shape, label_dim: int, device, batch: int = 64) -> dict:
    """{states [N, steps + 1, C, H, W] float32 (T .. eps, then the end), sigmas (the grid,
    float64, ending in 0), labels one-hot or None} of the teacher's Heun trajectories from
    ``heldout_seeds``; ``denoise``: the teacher denoiser (``trajectories.make_denoiser``)."""
    edm = cfg["edm"]
    sigmas = edm_sigmas(cfg["trajectories"]["num_steps"], edm["sigma_min"], edm["sigma_max"], edm["rho"])
    states, labels = [], []
    all_seeds = heldout_seeds(cfg)
    for seeds in np.array_split(all_seeds, max(1, -(-len(all_seeds) // batch))):
        noise, lab = seeded_inputs(seeds, shape, label_dim, device)
        hot = one_hot(lab, label_dim)
        _, traj = heun_sample(denoise, noise, sigmas, keep_states=True, class_labels=hot)
        states.append(torch.stack(traj, 1).float().cpu())
        labels.append(hot.cpu() if hot is not None else None)
    return {
        "states": torch.cat(states),
        "sigmas": sigmas,
        "labels": None if labels[0] is None else torch.cat(labels),
    }


def _errors_from(model, x_t, t: float, later, targets, end, labels, dtype) -> tuple[float, float, int]:
    """(summed squared error of the intermediate predictions, of the end prediction, number
    of intermediate terms) from the inputs ``x_t`` [B, ...] at time ``t`` to the grid times
    ``later`` [J] (all below t, above eps) with their states ``targets`` [B, J, ...]."""
    b = len(x_t)
    sigma = torch.full((b,), t, device=x_t.device)
    ends = torch.cat([later.float(), torch.tensor([model.eps])]).to(x_t.device)
    with autocast(x_t.device, dtype):
        pred = model(x_t, sigma, labels, ends.expand(b, -1)).float()  # [B, J + 1, C, H, W]
    scale = later.float().to(x_t.device).square() + model.sigma_data**2  # the variance of x_s
    inter = ((pred[:, :-1] - targets).square().flatten(2).mean(2) / scale).sum().item() if len(later) else 0.0
    end_err = (pred[:, -1] - end).square().flatten(1).mean(1).sum().item()
    return inter, end_err, b * len(later)


#: input times: every INPUT_STRIDE-th grid time from T; targets: up to TARGETS_PER_INPUT grid
#: times strictly between the input and eps, evenly spaced (about 1/8 of every pair's cost)
INPUT_STRIDE, TARGETS_PER_INPUT = 2, 4


def pair_indices(grid_times: int) -> list[tuple[int, list[int]]]:
    """[(input index, [target indices])] on a grid T .. eps of ``grid_times`` times: inputs
    above eps, targets strictly between the input and eps."""
    out = []
    for i in range(0, grid_times - 1, INPUT_STRIDE):
        later = np.arange(i + 1, grid_times - 1)
        pick = np.unique(
            np.linspace(0, len(later) - 1, min(TARGETS_PER_INPUT, len(later))).round().astype(int)
        )
        out.append((i, later[pick].tolist() if len(later) else []))
    return out


@torch.no_grad()
def prediction_errors(model, heldout: dict, device, dtype=None, chunk: int = 32) -> dict:
    """``intermediate_mse`` and ``end_mse`` of one model over the (input, target) pairs of
    ``pair_indices`` of the held-out trajectories (``heldout_trajectories``), in chunks of
    ``chunk`` trajectories."""
    states, sigmas, labels = heldout["states"], heldout["sigmas"], heldout["labels"]
    grid = sigmas[:-1]  # T .. eps
    pairs = pair_indices(len(grid))
    sums = np.zeros(3)  # intermediate squared error, end squared error, intermediate terms
    for rows in torch.arange(len(states)).split(chunk):
        lab = None if labels is None else labels[rows].to(device)
        block = states[rows]  # this chunk's trajectories, gathered once
        end = block[:, -1].to(device)
        for i, later in pairs:
            targets = block[:, later].to(device)
            x_t = block[:, i].to(device)
            sums += _errors_from(model, x_t, float(grid[i]), grid[later], targets, end, lab, dtype)
    inter, end_err, terms = sums
    return {
        "intermediate_mse": float(inter / terms) if terms else None,
        "end_mse": float(end_err / (len(states) * len(pairs))),
        "pairs": int(terms),
        "input_times": len(pairs),
        "trajectories": len(states),
    }


def model_prediction_record(model, heldout: dict, device, dtype=None) -> dict:
    """``prediction_errors`` of the trained model and, for a model with Koopman evolution, the
    intermediate error with its operators zeroed."""
    out = prediction_errors(model, heldout, device, dtype)
    zeroed = None
    if model.evolved_levels:
        with operators_off(model):
            zeroed = prediction_errors(model, heldout, device, dtype)["intermediate_mse"]
    return {**out, "zeroed_intermediate_mse": zeroed}
