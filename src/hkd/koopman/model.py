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

The network's noise level (``network_sigma``): ``input``, the paper's reading, embeds the
input's sigma(t) in the encoder (and, with the boundary decoder, in the decoder); ``sigma_max``
embeds one fixed level in both, so that only the Koopman flow knows t (the c_in / c_skip /
c_out scalings still follow t, so step 0 is still the teacher at T). ``state_at`` decodes at
any target time s <= t; the boundary decoder then uses the coefficients between t and s
(``boundary_coefficients``), the identity at s = t and today's decoder at s = eps.

Ablations of the paper's Table 3: ``koopman=False`` evolves nothing (the encoder-decoder
maps x_t to x_eps directly, a one-step distillation baseline); ``hierarchy=False`` evolves
only the bottleneck (the last level) and passes the skips through unevolved. Operators
that are never applied are frozen, so the optimiser and DDP see only what is trained.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from hkd.koopman.operators import KoopmanOperators
from hkd.nn.precond import EDMPrecond, edm_coefficients

#: the decoder parametrisations (config key hkd.decoder); ``paper`` is the paper's reading
DECODERS = ("paper", "sigma_max", "boundary")
#: the noise level the encoder and decoder embed (config key hkd.network_sigma); ``input`` is the paper's
NETWORK_SIGMAS = ("input", "sigma_max")


def boundary_coefficients(sigma: torch.Tensor, target, sigma_data: float):
    """(c_skip, c_out) of the consistency-model parametrisation from time ``sigma`` to
    ``target`` (eps, or any time s <= sigma): c_skip = 1 and c_out = 0 where sigma = target."""
    c_skip = sigma_data**2 / ((sigma - target) ** 2 + sigma_data**2)
    c_out = (sigma - target) * sigma_data / (sigma**2 + sigma_data**2).sqrt()
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
        operator_param: str = "linear",
        operator_init: str = "zero",
        network_sigma: str = "input",
        seed: int = 0,
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
        if network_sigma not in NETWORK_SIGMAS:
            raise ValueError(f"unknown network noise level {network_sigma!r}; one of {NETWORK_SIGMAS}")
        self.network_sigma = network_sigma
        #: constructor arguments besides the teacher, stored in checkpoints to rebuild the model
        self.init_kwargs = {
            "eps": self.eps,
            "sigma_max": self.sigma_max,
            "time_unit": self.time_unit,
            "koopman": bool(koopman),
            "hierarchy": bool(hierarchy),
            "decoder": decoder,
            "operator_param": operator_param,
            "operator_init": operator_init,
            "network_sigma": network_sigma,
        }
        span = (self.sigma_max - self.eps) / self.time_unit  # |dt| of the one-step flow T -> eps
        self.koopman = KoopmanOperators(
            self.unet.skip_channels, self.unet.skip_resolutions, operator_param, operator_init, span, seed
        )
        n = self.koopman.num_levels
        #: levels whose features evolve in time (all; the bottleneck alone; none)
        self.evolved_levels = list(range(n)) if hierarchy else [n - 1]
        if not koopman:
            self.evolved_levels = []
        for level in range(n):
            if level not in self.evolved_levels:
                self.koopman.freeze(level)
        if self.unet.map_augment is not None:  # HKD never passes augmentation labels
            self.unet.map_augment.requires_grad_(False)

    def embedded_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """The noise level the network embeds for input level ``sigma`` [B] (network_sigma)."""
        return sigma if self.network_sigma == "input" else torch.full_like(sigma, self.sigma_max)

    def encode(self, x_t: torch.Tensor, sigma_t: torch.Tensor, class_labels=None) -> list[torch.Tensor]:
        sigma = sigma_t.float().reshape(-1, 1, 1, 1)
        _, _, c_in, _ = edm_coefficients(sigma, self.sigma_data)
        _, _, _, c_noise = edm_coefficients(self.embedded_sigma(sigma.flatten()), self.sigma_data)
        emb = self.unet.embed(c_noise, class_labels)
        x = (c_in * x_t.float()).to(memory_format=torch.channels_last)
        return self.unet.encode(x, emb)

    def evolve(self, feats, t_from: torch.Tensor, t_to: torch.Tensor | float):
        t_to = torch.as_tensor(t_to, dtype=torch.float32, device=t_from.device).expand_as(t_from)
        return self.koopman.evolve(feats, (t_to - t_from.float()) / self.time_unit, self.evolved_levels)

    def decode(self, feats: list[torch.Tensor], class_labels=None, source=None, target=None) -> torch.Tensor:
        """Image from (evolved) features. ``source``: (x_t, sigma_t), the input the features
        were encoded from; the boundary parametrisation needs it (its skip term and the
        decoder's noise level), the others ignore it. ``target``: the time [B] the features
        were evolved to (None: eps), for the boundary coefficients between sigma_t and it."""
        b = feats[0].shape[0]
        if self.decoder == "boundary":
            if source is None:
                raise ValueError("the boundary decoder needs source=(x_t, sigma_t), the encoded input")
            x_t, sigma_t = source
            sigma = self.embedded_sigma(sigma_t.float().reshape(-1).expand(b))
        else:
            level = self.eps if self.decoder == "paper" else self.sigma_max
            sigma = torch.full((b,), level, device=feats[0].device)
        _, _, _, c_noise = edm_coefficients(sigma, self.sigma_data)
        out = self.unet.decode(feats, self.unet.embed(c_noise, class_labels)).float()
        if self.decoder != "boundary":
            return self.sigma_data * out
        end = self.eps if target is None else target.float().reshape(-1, 1, 1, 1)
        t = sigma_t.float().reshape(-1, 1, 1, 1).expand(b, 1, 1, 1)
        c_skip, c_out = boundary_coefficients(t, end, self.sigma_data)
        return c_skip * x_t.float() + c_out * out

    def state_at(self, x_t, sigma_t, s, class_labels=None) -> torch.Tensor:
        """Decoded state at time ``s`` (a number, or one per example) from input ``x_t`` at
        time ``sigma_t``."""
        return self(x_t, sigma_t, class_labels, s)

    def forward(self, x_t, sigma_t, class_labels=None, s=None) -> torch.Tensor:
        """Prediction of the trajectory's end x_eps from x_t (``s`` None), or of its states at
        the times ``s``: [B] gives [B, C, H, W]; [B, J] gives [B, J, C, H, W], each input
        encoded once and decoded J times."""
        feats = self.encode(x_t, sigma_t, class_labels)
        if s is None:
            return self.decode(self.evolve(feats, sigma_t, self.eps), class_labels, (x_t, sigma_t))
        s = torch.as_tensor(s, dtype=torch.float32, device=x_t.device)
        many = s.dim() == 2
        s = s.expand(len(x_t)) if s.dim() == 0 else s
        j = s.shape[1] if many else 1

        def repeat(v):
            return v if v is None or j == 1 else v.repeat_interleave(j, dim=0)

        feats = [repeat(f) for f in feats]
        source = (repeat(x_t), repeat(sigma_t.reshape(-1)))
        s = s.reshape(-1)
        out = self.decode(self.evolve(feats, source[1], s), repeat(class_labels), source, s)
        return out.reshape(len(x_t), j, *out.shape[1:]) if many else out

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, class_labels=None) -> torch.Tensor:
        """One-step generation (paper Alg. 2): x_T = sigma_max * noise -> x_eps."""
        sigma = torch.full((noise.shape[0],), self.sigma_max, device=noise.device)
        return self(noise * self.sigma_max, sigma, class_labels)


@contextlib.contextmanager
def operators_off(model: HKD):
    """The model with alpha = beta = 0 on every level (the identity flow), for the
    zeroed-operator control: what its one-step map is without what the operators learned."""
    levels = model.evolved_levels
    model.evolved_levels = []
    try:
        yield model
    finally:
        model.evolved_levels = levels


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
        operator_param=hk["operator_param"],
        operator_init=hk["operator_init"],
        network_sigma=hk["network_sigma"],
        seed=cfg["seed"],
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
