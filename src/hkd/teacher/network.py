"""Building and (de)serialising the teacher denoiser from a run config."""

from __future__ import annotations

import torch

from hkd.config import SOURCE_CHANNELS
from hkd.io import load_torch
from hkd.nn.precond import EDMPrecond, with_unet_defaults

#: EDMPrecond arguments that the config's ``network`` / ``data`` sections fix: the architecture,
#: and dropout, which HKD training inherits with the teacher's U-Net
_ARCHITECTURE = (
    "img_resolution",
    "img_channels",
    "label_dim",
    "augment_dim",
    "model_channels",
    "channel_mult",
    "channel_mult_emb",
    "num_blocks",
    "attn_resolutions",
    "dropout",
    "embedding_type",
    "channel_mult_noise",
    "encoder_type",
    "decoder_type",
    "resample_filter",
)


def teacher_kwargs(cfg: dict) -> dict:
    """Constructor arguments of the teacher's EDMPrecond (stored in its checkpoint): EDM's
    DDPM++ settings with the widths of ``network``."""
    net, edm = cfg["network"], cfg["edm"]
    return dict(
        img_resolution=cfg["data"]["resolution"],
        img_channels=SOURCE_CHANNELS[cfg["data"]["source"]],
        label_dim=net["label_dim"],
        augment_dim=net["augment_dim"],
        sigma_min=edm["sigma_min"],
        sigma_max=edm["sigma_max"],
        sigma_data=edm["sigma_data"],
        model_channels=net["model_channels"],
        channel_mult=list(net["channel_mult"]),
        channel_mult_emb=net["channel_mult_emb"],
        num_blocks=net["num_blocks"],
        attn_resolutions=list(net["attn_resolutions"]),
        dropout=net["dropout"],
        embedding_type="positional",
        channel_mult_noise=1,
        encoder_type="standard",
        decoder_type="standard",
        resample_filter=[1, 1],
    )


def check_matches_config(kwargs: dict, cfg: dict, where: str) -> None:
    """A network read by a stage (an imported EDM pickle, a checkpoint in the run's folder) must
    be the one the config describes (the HKD model, the data and the report all follow the
    config); name every differing argument."""
    want, kwargs = teacher_kwargs(cfg), with_unet_defaults(kwargs)
    diff = [
        f"{k}: {kwargs.get(k)!r} in the network, {want[k]!r} from the config"
        for k in _ARCHITECTURE
        if _plain(kwargs.get(k)) != _plain(want[k])
    ]
    if diff:
        raise ValueError(
            f"{where} does not match the config's 'network' / 'data' sections:\n  " + "\n  ".join(diff)
        )


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def save_teacher(net: EDMPrecond, path, stats: dict | None = None) -> None:
    """The teacher checkpoint every later stage reads with ``load_teacher`` (written atomically)."""
    from hkd.io import save_torch

    save_torch(
        {
            "kind": "edm_teacher",
            "network_kwargs": net.init_kwargs,
            "ema": {k: v.contiguous() for k, v in net.state_dict().items()},
            "stats": stats or {},
        },
        path,
    )


def teacher_stats(path: str) -> dict:
    """What the stage that wrote a teacher checkpoint recorded of it (training or import:
    for an imported EDM pickle, its source file and what its stored network source is); the
    weights are mapped, not read (evaluate has loaded them already)."""
    ckpt = load_torch(path, "teacher checkpoint", mmap=True)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "edm_teacher":
        raise ValueError(f"{path} is not a teacher checkpoint written by 'hkd teacher'")
    return dict(ckpt.get("stats") or {})


def describe_origin(stats: dict) -> str:
    """One line for the report's provenance: where the teacher came from."""
    if "file_sha256" not in stats:
        return "trained by this suite (teacher.source: train)"
    origin = f"EDM network pickle {stats['source']} (sha256 {stats['file_sha256']})"
    if str(stats.get("stored_source", "")).startswith("modified"):
        classes = ", ".join(stats.get("modified_classes", []))
        return f"{origin}, built from MODIFIED network source ({classes}; teacher.allow_modified_edm_source: true)"
    if "stored_source" not in stats:
        return f"{origin}, imported before stored sources were checked"
    return f"{origin}, stored network source: " + "; ".join(
        sorted(set(stats["stored_source_origins"].values()))
    )


def load_teacher(path: str, device: torch.device | str = "cpu", cfg: dict | None = None) -> EDMPrecond:
    """EMA weights of a teacher written by ``hkd teacher``; shapes checked strictly. With ``cfg``,
    a checkpoint left by a run with another architecture is refused, naming the keys."""
    ckpt = load_torch(path, "teacher checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "edm_teacher":
        raise ValueError(f"{path} is not a teacher checkpoint written by 'hkd teacher'")
    if cfg is not None:
        check_matches_config(ckpt["network_kwargs"], cfg, f"teacher checkpoint {path}")
    net = EDMPrecond(**ckpt["network_kwargs"])
    try:
        net.load_state_dict(ckpt["ema"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match the stored network arguments: {exc}") from exc
    return net.eval().requires_grad_(False).to(device)


def start_from_unconditional(net: EDMPrecond, path: str) -> None:
    """Load the unconditional teacher of ``path`` into the class-conditional ``net``: every
    weight copied, the label embedding zero, so that the start is exactly that teacher for
    every label (EDM adds the label embedding to the noise embedding)."""
    source = load_teacher(path)
    own = net.state_dict()
    label_keys = {k for k in own if ".map_label." in k or k.startswith("map_label.")}
    theirs = source.state_dict()
    if set(own) - label_keys != set(theirs) or any(own[k].shape != v.shape for k, v in theirs.items()):
        raise ValueError(
            f"{path}: the unconditional teacher's network differs from the conditional one beyond "
            "the label embedding; rerun its teacher stage with the same network settings"
        )
    net.load_state_dict({**theirs, **{k: torch.zeros_like(own[k]) for k in label_keys}}, strict=True)
