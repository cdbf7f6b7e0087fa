"""Zero-shot inpainting and colourisation with HKD as the one-step denoiser (Figure 6),
by the iterative procedure of consistency models (Song et al. 2023, Algorithm 4):

    y <- A^-1[(A y) * (1 - O)]              (O = 1 on the components to generate)
    x <- f(y + t_1 z, t_1);  x <- A^-1[(A y) * (1 - O) + (A x) * O]
    for n = 2..N:  x <- f(x + sqrt(t_n^2 - eps^2) z, t_n);  x <- A^-1[(A y) * (1 - O) + (A x) * O]

with f = HKD's one-step map x_t -> x_eps and t_1 > ... > t_N EDM's sigma grid. A is an
orthonormal transform, so the known components of the result are the reference's:

- ``inpaint``: A = identity, O = a spatial mask (exact on the known pixels);
- ``colourise`` (RGB data): A = luma + two orthogonal chroma axes, O = the chroma;
- ``upsample`` (the grey-scale stand-in for colourisation, which has no colour to restore):
  A = the orthonormal 2x2 Haar transform of each pixel block, O = the three detail
  components, i.e. the image is restored from its 2x2 block means, the same structure as
  colourisation (one known component per group, the others generated).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hkd.analysis.editing import spatial_mask
from hkd.teacher.sampler import edm_sigmas

TASKS = ("inpaint", "colourise", "upsample")

_COLOUR = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0], [1.0, 1.0, -2.0]])
_COLOUR = _COLOUR / _COLOUR.norm(dim=1, keepdim=True)
_HAAR = 0.5 * torch.tensor(
    [[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, 1.0]]
)


class Transform:
    """An orthonormal A with ``forward`` / ``inverse`` and the generated-component mask O."""

    def __init__(self, task: str, shape: tuple[int, int, int], mask: str = "lower_half"):
        c, h, _ = shape
        self.task = task
        if task == "inpaint":
            self.omega = spatial_mask(mask, h).expand(c, h, h).clone()
        elif task == "colourise":
            if c != 3:
                raise ValueError(
                    f"colourisation needs RGB images, got {c} channel(s); use 'upsample' for grey data"
                )
            self.omega = torch.ones(3, h, h)
            self.omega[0] = 0
        elif task == "upsample":
            if h % 2:
                raise ValueError(f"upsample needs an even resolution, got {h}")
            self.omega = torch.ones(4 * c, h // 2, h // 2)
            self.omega[0::4] = 0
        else:
            raise ValueError(f"unknown task {task!r}; one of {TASKS}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.task == "inpaint":
            return x
        if self.task == "colourise":
            return torch.einsum("ij,bjhw->bihw", _COLOUR.to(x), x)
        b, c = x.shape[:2]
        blocks = F.pixel_unshuffle(x, 2)  # [B, 4C, H/2, W/2], the 4 pixels of each block per channel
        g = blocks.reshape(b, c, 4, *blocks.shape[-2:])
        return torch.einsum("ij,bcjhw->bcihw", _HAAR.to(x), g).reshape(blocks.shape)

    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        if self.task == "inpaint":
            return a
        if self.task == "colourise":
            return torch.einsum("ji,bjhw->bihw", _COLOUR.to(a), a)
        b, c4 = a.shape[:2]
        g = a.reshape(b, c4 // 4, 4, *a.shape[-2:])
        blocks = torch.einsum("ji,bcjhw->bcihw", _HAAR.to(a), g).reshape(a.shape)
        return F.pixel_shuffle(blocks, 2)

    def impose(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A^-1[(A y)(1 - O) + (A x) O]."""
        o = self.omega.to(x)
        return self.inverse(self.forward(y) * (1 - o) + self.forward(x) * o)

    def known_error(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Largest |A x - A y| over the known components."""
        known = (1 - self.omega.to(x)).bool().expand_as(self.forward(x))
        return float((self.forward(x) - self.forward(y))[known].abs().max())


@torch.no_grad()
def restore(
    model, y: torch.Tensor, transform: Transform, steps: int, rho: float, seed: int, class_labels=None
) -> torch.Tensor:
    """Algorithm 4 on images ``y`` in [-1, 1] with ``steps`` noise levels from sigma_max to eps."""
    ts = edm_sigmas(steps, model.eps, model.sigma_max, rho)[:-1].tolist()
    gen = torch.Generator().manual_seed(int(seed))

    def noise_like(x):
        return torch.randn(x.shape, generator=gen).to(x.device)

    o = transform.omega.to(y)
    y = transform.inverse(transform.forward(y) * (1 - o))
    x = y + ts[0] * noise_like(y)
    for n, t in enumerate(ts):
        if n:
            x = x + math.sqrt(max(t * t - model.eps**2, 0.0)) * noise_like(x)
        tt = torch.full((x.shape[0],), t, device=x.device)
        x = transform.impose(model(x, tt, class_labels).float(), y)
    return x
