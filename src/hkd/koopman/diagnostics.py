"""Training diagnostics of the Koopman operators: how far the one-step flow T -> eps
scales and rotates each skip, per level."""

from __future__ import annotations

import torch


def koopman_exponents(model) -> dict[str, dict[str, float]]:
    """Per level, the spread of alpha dt and beta dt over every pair and position for the
    one-step flow T -> eps, dt = (eps - T) / unit < 0: the log-gain e^{alpha dt} and the
    rotation angle each skip gets (a positive alpha decays). A mean near 0 can hide a wide
    random walk, which std and the 5 / 95 % quantiles show."""
    dt = (model.eps - model.sigma_max) / model.time_unit
    out = {}
    for level, (a, b) in enumerate(model.koopman.eigenvalues()):
        for name, v in (("alpha_dt", a.flatten() * dt), ("beta_dt", b.flatten() * dt)):
            q05, q95 = torch.quantile(v.double(), torch.tensor([0.05, 0.95], dtype=torch.float64)).tolist()
            out[f"{name}_level{level}"] = {
                "mean": v.mean().item(),
                "std": v.std().item(),
                "q05": q05,
                "q95": q95,
            }
    return out


def log_koopman(writer, model, step: int) -> None:
    """Tensorboard: mean alpha and |beta| per level and the spread of the T -> eps exponents."""
    for level, (a, be) in enumerate(model.koopman.eigenvalues()):
        writer.add_scalar(f"koopman/alpha_mean_level{level}", a.mean().item(), step)
        writer.add_scalar(f"koopman/abs_beta_mean_level{level}", be.abs().mean().item(), step)
    for name, stats in koopman_exponents(model).items():
        for stat in ("std", "q05", "q95"):
            writer.add_scalar(f"koopman_T/{name}_{stat}", stats[stat], step)
