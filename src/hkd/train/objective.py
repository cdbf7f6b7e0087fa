"""What HKD training compares, and where: the trajectory times of each example
(``hkd.time_sampling``), the distance between a prediction and the trajectory's end
(``hkd.distance``) and the weights of the terms (``hkd.trajectory_weight``). The first
value of each is the paper's literal reading:

- times: ``uniform_sigma``, uniform in sigma on [eps, T); ``grid_index``, uniform over the
  stored Heun grid states strictly between T and eps (as consistency distillation draws
  n ~ U{1..N-1}; eps itself is left out, its term has no gradient under the boundary decoder);
  ``lognormal``, EDM's training distribution ln sigma ~ N(P_mean, P_std), clipped to [eps, T);
- distance: MSE, or iCT's pseudo-Huber sqrt(|x - y|^2 + c^2) - c;
- weights: 1 for t = T and ``trajectory_weight`` for every other time (1 = the plain sum).
"""

from __future__ import annotations

import math

import torch

#: how the intermediate times are drawn (config key hkd.time_sampling); the first is the paper's literal reading
TIME_SAMPLINGS = ("uniform_sigma", "grid_index", "lognormal")


def sample_times(
    b: int,
    k: int,
    sigmas: torch.Tensor,
    gen: torch.Generator,
    how: str = "uniform_sigma",
    lognormal: tuple[float, float] = (-1.2, 1.2),
) -> torch.Tensor:
    """[B, 1 + k] times: column 0 is T = sigmas[0], the other k on [eps, T) drawn ``how``
    (TIME_SAMPLINGS); ``lognormal``: (P_mean, P_std) of ln sigma."""
    grid = sigmas[:-1].double()  # the stored states' times, T .. eps (the final 0 is the target)
    eps, T = float(grid[-1]), float(grid[0])
    if how == "uniform_sigma":
        mid = eps + (T - eps) * torch.rand(b, k, generator=gen, dtype=torch.float64)
    elif how == "grid_index":  # never eps itself, where c_out = 0 leaves the term no gradient
        mid = grid[torch.randint(1, max(len(grid) - 1, 2), (b, k), generator=gen)]
    elif how == "lognormal":
        p_mean, p_std = lognormal
        log_sigma = p_mean + p_std * torch.randn(b, k, generator=gen, dtype=torch.float64)
        mid = log_sigma.exp().clamp(eps, math.nextafter(T, 0.0))
    else:
        raise ValueError(f"unknown hkd.time_sampling {how!r}; one of {TIME_SAMPLINGS}")
    return torch.cat([torch.full((b, 1), T, dtype=torch.float64), mid], dim=1)


#: the distances d(x, y) between a prediction and the trajectory's end (config key hkd.distance)
DISTANCES = ("mse", "pseudo_huber")


def pseudo_huber_c(dims: int, c: float | None) -> float:
    """iCT's constant c = 0.00054 sqrt(d) for data of ``dims`` values, unless ``c`` is given."""
    return 0.00054 * math.sqrt(dims) if c is None else float(c)


def distance(mse: torch.Tensor, dims: int, how: str = "mse", c: float | None = None) -> torch.Tensor:
    """The training distance per (example, time point) from the mean squared error over
    ``dims`` values: MSE itself, or pseudo-Huber sqrt(|x - y|^2 + c^2) - c."""
    if how == "mse":
        return mse
    if how == "pseudo_huber":
        c = pseudo_huber_c(dims, c)
        return (mse * dims + c * c).sqrt() - c
    raise ValueError(f"unknown hkd.distance {how!r}; one of {DISTANCES}")


def prediction_times(t: torch.Tensor, sigmas: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """[B, K] intermediate targets for the times ``t`` [B, K]: for each, one stored grid time
    s with eps < s < t, uniformly; where no grid time lies between, s = t (a term that is
    zero with no gradient: the boundary map from t to t is the identity)."""
    grid = sigmas[:-1].double()  # T .. eps
    inner = grid[1:-1]  # the grid times strictly between T and eps
    below = (inner[None, None, :] < t[..., None]).sum(-1)  # how many of them lie below each t
    pick = (torch.rand(t.shape, generator=gen, dtype=torch.float64) * below).floor().long()
    idx = (len(inner) - below + pick).clamp(max=max(len(inner) - 1, 0))
    s = inner[idx] if len(inner) else t.clone()
    return torch.where(below > 0, s, t)


def time_weights(k: int, trajectory_weight: float) -> torch.Tensor:
    """[1 + k] weights of the loss terms: 1 for t = T, ``trajectory_weight`` for each other time."""
    return torch.tensor([1.0] + [float(trajectory_weight)] * k)
