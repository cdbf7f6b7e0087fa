"""EDM preconditioning (Karras et al. 2022, Table 1): D(x; s) = c_skip x + c_out F(c_in x; c_noise)."""

from __future__ import annotations

import torch
from torch import nn

from hkd.nn.unet import SongUNet


def edm_coefficients(sigma: torch.Tensor, sigma_data: float):
    """(c_skip, c_out, c_in, c_noise) for noise levels ``sigma`` (any shape)."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma_data**2 + sigma**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class EDMPrecond(nn.Module):
    """Denoiser D(x; sigma) wrapping a SongUNet ``model`` (attribute name as in EDM)."""

    def __init__(
        self,
        img_resolution,
        img_channels,
        label_dim=0,
        sigma_min=0.0,
        sigma_max=float("inf"),
        sigma_data=0.5,
        **model_kwargs,
    ):
        super().__init__()
        #: constructor arguments, stored in checkpoints so the network can be rebuilt
        self.init_kwargs = dict(
            img_resolution=img_resolution,
            img_channels=img_channels,
            label_dim=label_dim,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            sigma_data=sigma_data,
            **model_kwargs,
        )
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model = SongUNet(
            img_resolution=img_resolution,
            in_channels=img_channels,
            out_channels=img_channels,
            label_dim=label_dim,
            **model_kwargs,
        )

    def forward(self, x, sigma, class_labels=None):
        """D(x; sigma) called as EDM's own EDMPrecond: ``sigma`` per sample [B], or one for the
        whole batch (a scalar, as EDM's generate.py passes it: the noise embedding then runs at
        batch 1 and broadcasts); without labels a conditional network gets zeros [1, label_dim]."""
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        if self.label_dim:
            class_labels = (
                torch.zeros([1, self.label_dim], device=x.device)
                if class_labels is None
                else class_labels.to(torch.float32).reshape(-1, self.label_dim)
            )
        else:
            class_labels = None
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        F_x = self.model(c_in * x, c_noise.flatten(), class_labels=class_labels)
        return c_skip * x + c_out * F_x.to(torch.float32)


def with_unet_defaults(kwargs: dict) -> dict:
    """``kwargs`` with SongUNet's defaults for the arguments it leaves out (EDM pickles and
    ``init_kwargs`` store only the arguments that were passed)."""
    import inspect

    defaults = {
        k: p.default
        for k, p in inspect.signature(SongUNet).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    return {**defaults, **kwargs}
