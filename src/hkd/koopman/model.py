"""Hierarchical Koopman Diffusion model: encoder -> per-level linear flow -> decoder.

Encoder and decoder are the two halves of the teacher's U-Net (initialised from its
weights). The encoder sees x_t and its noise level sigma(t) = t through EDM's
c_in / c_noise. The Koopman flow runs over ``dt = (s - t) / time_unit``; ``time_unit = 1``
is the paper's clock (t = sigma), and eigenvalues per unit of t are alpha / time_unit,
beta / time_unit.

How the decoder's output becomes an image (``decoder``, see DECODERS):
- ``paper``: the decoder sees sigma = eps and its raw output is multiplied by sigma_data.
  At step 0 this is the teacher's raw F at sigma = eps, which EDM trains towards a noise
  prediction, so training starts far from the teacher's denoiser.
- ``sigma_max``: the decoder sees sigma = T; at step 0 a one-step sample is then the
  teacher's D(x_T; T) without its skip term c_skip(T) x_T (c_skip(80) = 4e-5).
- ``boundary``: the consistency-model parametrisation c_skip(t) x_t + c_out(t) F with
  c_skip = sd^2 / ((t - eps)^2 + sd^2), c_out = (t - eps) sd / sqrt(t^2 + sd^2), the
  decoder seeing the input's sigma(t): the prediction from x_eps is x_eps itself, and at
  step 0 the model is the teacher's network at t (where consistency models and ECM start).

Ablations of the paper's Table 3: ``koopman=False`` evolves nothing (the encoder-decoder
maps x_t to x_eps directly, a one-step distillation baseline); ``hierarchy=False`` evolves
only the bottleneck (the last level) and passes the skips through unevolved. Operators
that are never applied are frozen, so the optimiser and DDP see only what is trained.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from hkd.koopman.operators import KoopmanOperators
from hkd.nn.precond import EDMPrecond, edm_coefficients

#: the decoder parametrisations (config key hkd.decoder); ``paper`` is the paper's reading
DECODERS = ("paper", "sigma_max", "boundary")


def boundary_coefficients(sigma: torch.Tensor, eps: float, sigma_data: float):
    """(c_skip, c_out) of the consistency-model parametrisation: c_skip(eps) = 1, c_out(eps) = 0."""
    c_skip = sigma_data**2 / ((sigma - eps) ** 2 + sigma_data**2)
    c_out = (sigma - eps) * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    return c_skip, c_out


class HKD(nn.Module):
    def __init__(
        self,
        teacher: EDMPrecond,
        eps: float,
        sigma_max: float,
        time_unit: float = 1.0,
        koopman: bool = True,
        hierarchy: bool = True,
        decoder: str = "paper",
    ):
        super().__init__()
        self.unet = copy.deepcopy(teacher.model).train().requires_grad_(True)
        self.sigma_data = float(teacher.sigma_data)
        self.img_resolution = teacher.img_resolution
        self.img_channels = teacher.img_channels
        self.label_dim = teacher.label_dim
        self.eps = float(eps)
        self.sigma_max = float(sigma_max)
        self.time_unit = float(time_unit)
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder parametrisation {decoder!r}; one of {DECODERS}")
        self.decoder = decoder
        #: constructor arguments besides the teacher, stored in checkpoints to rebuild the model
        self.init_kwargs = {
            "eps": self.eps,
            "sigma_max": self.sigma_max,
            "time_unit": self.time_unit,
            "koopman": bool(koopman),
            "hierarchy": bool(hierarchy),
            "decoder": decoder,
        }
        self.koopman = KoopmanOperators(self.unet.skip_channels, self.unet.skip_resolutions)
        n = self.koopman.num_levels
        #: levels whose features evolve in time (all; the bottleneck alone; none)
        self.evolved_levels = list(range(n)) if hierarchy else [n - 1]
        if not koopman:
            self.evolved_levels = []
        for level in range(n):
            if level not in self.evolved_levels:
                self.koopman.alpha[level].requires_grad_(False)
                self.koopman.beta[level].requires_grad_(False)
        if self.unet.map_augment is not None:  # HKD never passes augmentation labels
            self.unet.map_augment.requires_grad_(False)

    def encode(self, x_t: torch.Tensor, sigma_t: torch.Tensor, class_labels=None) -> list[torch.Tensor]:
        sigma = sigma_t.float().reshape(-1, 1, 1, 1)
        _, _, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        emb = self.unet.embed(c_noise.flatten(), class_labels)
        x = (c_in * x_t.float()).to(memory_format=torch.channels_last)
        return self.unet.encode(x, emb)

    def evolve(self, feats, t_from: torch.Tensor, t_to: torch.Tensor | float):
        t_to = torch.as_tensor(t_to, dtype=torch.float32, device=t_from.device).expand_as(t_from)
        return self.koopman.evolve(feats, (t_to - t_from.float()) / self.time_unit, self.evolved_levels)

    def decode(self, feats: list[torch.Tensor], class_labels=None, source=None) -> torch.Tensor:
        """Image from (evolved) features. ``source``: (x_t, sigma_t), the input the features
        were encoded from; the boundary parametrisation needs it (its skip term and the
        decoder's noise level), the others ignore it."""
        b = feats[0].shape[0]
        if self.decoder == "boundary":
            if source is None:
                raise ValueError("the boundary decoder needs source=(x_t, sigma_t), the encoded input")
            x_t, sigma_t = source
            sigma = sigma_t.float().reshape(-1).expand(b)
        else:
            level = self.eps if self.decoder == "paper" else self.sigma_max
            sigma = torch.full((b,), level, device=feats[0].device)
        _, _, _, c_noise = edm_coefficients(sigma, self.sigma_data)
        out = self.unet.decode(feats, self.unet.embed(c_noise, class_labels)).float()
        if self.decoder != "boundary":
            return self.sigma_data * out
        c_skip, c_out = boundary_coefficients(sigma.reshape(-1, 1, 1, 1), self.eps, self.sigma_data)
        return c_skip * x_t.float() + c_out * out

    def state_at(self, x_t, sigma_t, s, class_labels=None) -> torch.Tensor:
        """Decoded state at time ``s`` from input ``x_t`` at time ``sigma_t``."""
        feats = self.evolve(self.encode(x_t, sigma_t, class_labels), sigma_t, s)
        return self.decode(feats, class_labels, source=(x_t, sigma_t))

    def forward(self, x_t, sigma_t, class_labels=None) -> torch.Tensor:
        """Prediction of the trajectory's end x_eps from x_t."""
        return self.state_at(x_t, sigma_t, self.eps, class_labels)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, class_labels=None) -> torch.Tensor:
        """One-step generation (paper Alg. 2): x_T = sigma_max * noise -> x_eps."""
        sigma = torch.full((noise.shape[0],), self.sigma_max, device=noise.device)
        return self(noise * self.sigma_max, sigma, class_labels)


def build_hkd(teacher: EDMPrecond, cfg: dict) -> HKD:
    """The untrained HKD of a run's config (edm: and hkd: sections), teacher-initialised."""
    hk, edm = cfg["hkd"], cfg["edm"]
    return HKD(
        teacher,
        eps=edm["sigma_min"],
        sigma_max=edm["sigma_max"],
        time_unit=hk["koopman_time_unit"],
        koopman=hk["koopman"],
        hierarchy=hk["hierarchy"],
        decoder=hk["decoder"],
    )


def hkd_checkpoint(weights: HKD, teacher_kwargs: dict, stats: dict | None = None, ema: bool = False) -> dict:
    """What ``load_hkd`` reads: ``weights`` (the EMA copy where EMA was on), the arguments
    that rebuild it, and the training's record."""
    return {
        "kind": "hkd",
        "teacher_kwargs": teacher_kwargs,
        "hkd_kwargs": weights.init_kwargs,
        "state": {k: v.detach().contiguous().clone() for k, v in weights.state_dict().items()},
        "ema": ema,
        "stats": stats,
    }


def load_hkd(path: str, device="cpu", cfg: dict | None = None) -> HKD:
    """HKD weights written by ``hkd hkd-train`` (EMA weights when EMA was on). With ``cfg``, a
    checkpoint trained on another architecture's teacher is refused, naming the keys."""
    from hkd.io import load_torch
    from hkd.teacher.network import check_matches_config

    ckpt = load_torch(path, "HKD checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "hkd":
        raise ValueError(f"{path} is not an HKD checkpoint written by 'hkd hkd-train'")
    if cfg is not None:
        check_matches_config(ckpt["teacher_kwargs"], cfg, f"HKD checkpoint {path}")
    teacher_like = EDMPrecond(**ckpt["teacher_kwargs"])
    model = HKD(teacher_like, **ckpt["hkd_kwargs"])
    try:
        model.load_state_dict(ckpt["state"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match the stored network arguments: {exc}") from exc
    model.train_stats = ckpt.get("stats")  # what hkd-train recorded: steps, seconds, examples/s
    return model.eval().requires_grad_(False).to(device)
