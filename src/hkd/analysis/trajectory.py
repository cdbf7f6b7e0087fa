"""HKD along the teacher's trajectory (Figure 2 of the paper) and HKD's own latent
trajectory (the report's viewer).

Figure 2: for states x_t of the teacher's probability-flow trajectory from T to eps,
HKD's prediction decode(evolve-to-eps(encode(x_t))) should already be (nearly) the final
image for every t; the distance of each prediction to the trajectory's end is the
numerical check.

Viewer: from x_T, HKD's latent evolved to each time s and decoded, beside the teacher's
state x_s and HKD's prediction from it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from hkd.analysis.modes import features_at, noise_source
from hkd.teacher.sampler import edm_sigmas, heun_sample, one_hot


def teacher_states(denoise, noise: torch.Tensor, cfg: dict, labels=None, label_dim: int = 0):
    """(sigmas [N + 1] with a final 0, states [N + 1, B, C, H, W]) of EDM's Heun sampler with
    the trajectories' grid."""
    edm, steps = cfg["edm"], cfg["trajectories"]["num_steps"]
    sigmas = edm_sigmas(steps, edm["sigma_min"], edm["sigma_max"], edm["rho"])
    _, states = heun_sample(denoise, noise, sigmas, keep_states=True, class_labels=one_hot(labels, label_dim))
    return sigmas, torch.stack([s.float() for s in states])


@torch.no_grad()
def predictions_along(predict: Callable, sigmas: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """[N, B, ...]: ``predict(x_t, t)`` for every state of the trajectory but the final one
    (t = sigmas[i] > 0)."""
    out = []
    for i in range(len(sigmas) - 1):
        t = torch.full((states.shape[1],), float(sigmas[i]), device=states.device)
        out.append(predict(states[i], t).float())
    return torch.stack(out)


def consistency(preds: torch.Tensor, final: torch.Tensor) -> np.ndarray:
    """Root-mean-square distance of each column's prediction to the trajectory's end, mean
    over seeds: [N]."""
    d = (preds - final[None]).pow(2).flatten(2).mean(2).sqrt()
    return d.mean(1).cpu().numpy()


def consistency_check(distance: np.ndarray) -> dict:
    """The figure's claim in numbers: the prediction from the last noisy state is closer to
    the final image than the one-step prediction from x_T, and the distance grows with t
    overall (Spearman correlation between t's rank and the distance)."""
    n = len(distance)
    order = np.argsort(np.argsort(distance))
    t_rank = np.arange(n)[::-1]  # columns run from T (largest t) to eps
    rho = float(np.corrcoef(t_rank, order)[0, 1]) if n > 1 else float("nan")
    return {
        "distance_at_T": float(distance[0]),
        "distance_near_eps": float(distance[-1]),
        "small_near_eps": bool(distance[-1] < distance[0]),
        "spearman_t_vs_distance": rho,
        "grows_with_t": bool(rho > 0),
    }


@torch.no_grad()
def latent_trajectory(model, noise: torch.Tensor, sigmas: list[float], class_labels=None) -> torch.Tensor:
    """[len(sigmas), B, C, H, W]: decode(evolve(encode(x_T), T -> s)) for each time s."""
    source = noise_source(model, noise)
    return torch.stack(
        [
            model.decode(features_at(model, noise, s, class_labels), class_labels, source).float()
            for s in sigmas
        ]
    )
