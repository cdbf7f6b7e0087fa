"""Building and (de)serialising the teacher denoiser from a run config."""

from __future__ import annotations

import torch

from hkd.io import load_torch, save_torch, sha256_file
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


def import_edm_pickle(source: str, md5: str | None, download_to: str, out_path: str) -> dict:
    """A released EDM snapshot (URL or local path; md5-checked when ``md5`` is given) as a
    teacher checkpoint in the format of ``hkd teacher``, so every later stage reads it the
    same way. The pickle's code is never run (``hkd.nn.edm_pickle``)."""
    from hkd.data.fetch import fetch_file
    from hkd.nn.edm_pickle import load_edm_pickle

    path = fetch_file(source, download_to, md5, "EDM network pickle")
    net = load_edm_pickle(path)
    if net.label_dim:
        raise ValueError(f"{path}: a class-conditional teacher (label_dim {net.label_dim}); the trajectory and "
                         "sample stages do not pass class labels yet, so it would run with zero labels")
    stats = {"source": source, "file_sha256": sha256_file(path),
             "parameters": sum(p.numel() for p in net.parameters())}
    save_torch({"kind": "edm_teacher", "network_kwargs": net.init_kwargs,
                "ema": {k: v.contiguous() for k, v in net.state_dict().items()}, "stats": stats}, out_path)
    return stats
