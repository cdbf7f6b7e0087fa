"""Building and (de)serialising the teacher denoiser from a run config."""

from __future__ import annotations

import torch

from hkd.io import load_torch
from hkd.nn.precond import EDMPrecond


def teacher_kwargs(cfg: dict) -> dict:
    """Constructor arguments of the teacher's EDMPrecond (stored in its checkpoint)."""
    net, edm = cfg["network"], cfg["edm"]
    return dict(
        img_resolution=cfg["data"]["resolution"], img_channels=1, label_dim=0,
        sigma_min=edm["sigma_min"], sigma_max=edm["sigma_max"], sigma_data=edm["sigma_data"],
        model_channels=net["model_channels"], channel_mult=list(net["channel_mult"]),
        channel_mult_emb=net["channel_mult_emb"], num_blocks=net["num_blocks"],
        attn_resolutions=list(net["attn_resolutions"]), dropout=net["dropout"],
        embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
        decoder_type="standard", resample_filter=[1, 1],
    )


def load_teacher(path: str, device: torch.device | str = "cpu") -> EDMPrecond:
    """EMA weights of a teacher written by ``hkd teacher``; shapes checked strictly."""
    ckpt = load_torch(path, "teacher checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "edm_teacher":
        raise ValueError(f"{path} is not a teacher checkpoint written by 'hkd teacher'")
    net = EDMPrecond(**ckpt["network_kwargs"])
    try:
        net.load_state_dict(ckpt["ema"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match the stored network arguments: {exc}") from exc
    return net.eval().requires_grad_(False).to(device)
