"""EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1) as pure functions."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from hkd.config import nfe_of_steps as nfe  # noqa: F401  (NFE of a Heun step count)
from hkd.runtime import widest_float

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: how the sampler calls the network, part of every trajectory's and sample's fingerprint (files
#: drawn under an earlier convention are drawn again): as EDM's generate.py, one sigma per step
#: for the whole batch (a 0-dim tensor), so the network embeds it at batch 1
SAMPLER_CONVENTION = "edm-generate: one 0-dim sigma per call, noise embedding at batch 1"


def edm_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """float64 grid sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min, then a final 0."""
    i = torch.arange(num_steps, dtype=torch.float64)
    s = (
        sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    ) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


def seeded_inputs(seeds, shape, label_dim: int = 0, device="cpu"):
    """(noise [B, *shape], class labels int64 [B] or None): per seed, its own CPU generator
    draws the standard-normal noise and then, when ``label_dim`` > 0, the class label (EDM's
    convention of one generator per seed), so any single trajectory or sample can be
    regenerated from its seed alone, on any device."""
    noise, labels = [], []
    for s in seeds:
        gen = torch.Generator().manual_seed(int(s))
        noise.append(torch.randn(list(shape), generator=gen, dtype=torch.float32))
        if label_dim:
            labels.append(torch.randint(label_dim, [], generator=gen))
    return torch.stack(noise).to(device), (torch.stack(labels).to(device) if label_dim else None)


def seeded_noise(seeds, shape, device="cpu") -> torch.Tensor:
    """The noise of ``seeded_inputs`` alone."""
    return seeded_inputs(seeds, shape, 0, device)[0]


def one_hot(labels: torch.Tensor | None, label_dim: int):
    """int64 labels -> float one-hot [B, label_dim] (None stays None)."""
    if labels is None:
        return None
    return torch.nn.functional.one_hot(labels, label_dim).float()


def heun_sample(
    denoise: Denoiser, noise: torch.Tensor, sigmas: torch.Tensor, keep_states: bool = False, class_labels=None
):
    """Integrate the probability-flow ODE from sigmas[0] down to sigmas[-1] = 0.

    ``denoise(x, sigma)`` returns D(x; sigma) (``denoise(x, sigma, class_labels)`` when labels
    are given); ``sigma`` is a 0-dim float32 tensor, one for the whole batch, as EDM's
    generate.py calls the network (SAMPLER_CONVENTION). NFE = 2 * (len(sigmas) - 1) - 1.
    Returns the final state, or (final, states) with every grid state when ``keep_states``.
    The state is float64, except on Apple MPS (float32: MPS has no float64).
    """
    if class_labels is not None:
        denoise = functools.partial(_with_labels, denoise, class_labels)
    wide = widest_float(noise.device)
    sigmas = sigmas.to(wide)
    x = noise.to(wide) * sigmas[0]
    states = [x] if keep_states else None
    n = len(sigmas) - 1
    for i in range(n):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        d_cur = (x - denoise(x.float(), s_cur.float()).to(wide)) / s_cur
        x_next = x + (s_next - s_cur) * d_cur
        if i < n - 1:
            d_next = (x_next - denoise(x_next.float(), s_next.float()).to(wide)) / s_next
            x_next = x + (s_next - s_cur) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
        if keep_states:
            states.append(x)
    return (x, states) if keep_states else x


def _with_labels(denoise, class_labels, x, sigma):
    return denoise(x, sigma, class_labels)
