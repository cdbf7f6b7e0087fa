"""Frequency-aware one-step editing (Figure 5 of the paper).

Two latent trajectories, the generated image's and a reference's, are taken to the
midpoint s of the Koopman trajectory; inside a spatial mask and a band of Koopman modes
(``modes.band_masks``) the generated features move towards the reference's by a ratio r:

    z = z_gen + r * mask * band * (z_ref - z_gen),

then z is evolved to eps and decoded. r = 0 returns the unedited features bit for bit. The
flow is elementwise per pair and position, so it commutes with this mask: mixing at s and
at eps give the same image up to rounding (the paper mixes at the midpoint; so do we).

A reference given as an image (not a seed) enters at time s as image + s * noise.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hkd.analysis.modes import apply_pair_masks, band_masks, features_at, noise_source, to_eps

#: spatial masks by name: 1 where the reference is mixed in (image coordinates, row 0 at the top)
MASKS = ("lower_left", "lower_half", "upper_half", "left_half", "centre", "all")


def spatial_mask(name: str, size: int) -> torch.Tensor:
    """[size, size] 0/1 mask."""
    m = torch.zeros(size, size)
    h = size // 2
    if name == "lower_left":
        m[h:, :h] = 1
    elif name == "lower_half":
        m[h:, :] = 1
    elif name == "upper_half":
        m[:h, :] = 1
    elif name == "left_half":
        m[:, :h] = 1
    elif name == "centre":
        q = size // 4
        m[q : size - q, q : size - q] = 1
    elif name == "all":
        m[:] = 1
    else:
        raise ValueError(f"unknown mask {name!r}; one of {MASKS}")
    return m


def level_masks(model, band: tuple[float, float], mask: torch.Tensor, ranks=None) -> list[torch.Tensor]:
    """Per level, band mask x the spatial mask pooled to the level's resolution (a position
    is mixed by the share of its footprint inside the mask)."""
    out = []
    for b in band_masks(model, *band, ranks):
        r = b.shape[-1]
        pooled = F.adaptive_avg_pool2d(mask[None, None].float(), r)[0, 0]
        out.append(b * pooled)
    return out


def midpoint(model) -> float:
    """The middle of the Koopman trajectory's time span [eps, T]."""
    return 0.5 * (model.sigma_max + model.eps)


@torch.no_grad()
def edit(
    model,
    gen_feats: list[torch.Tensor],
    ref_feats: list[torch.Tensor],
    s: float,
    band: tuple[float, float],
    mask: torch.Tensor,
    ratios: list[float],
    class_labels=None,
    source=None,
    ranks=None,
) -> torch.Tensor:
    """[len(ratios), B, C, H, W] edited images: features at time ``s`` mixed at each ratio;
    ``source``: the input the decoded features count as encoded from (``HKD.decode``);
    ``ranks``: the mode order the band is cut from (``modes.band_masks``)."""
    masks = level_masks(model, band, mask, ranks)
    delta = apply_pair_masks([r - g for g, r in zip(gen_feats, ref_feats)], masks)
    out = []
    for ratio in ratios:
        mixed = [g + ratio * d for g, d in zip(gen_feats, delta)]
        out.append(model.decode(to_eps(model, mixed, s), class_labels, source))
    return torch.stack(out)


def noised_image(image: torch.Tensor, s: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image + s * noise, s) of a given image ([-1, 1], [B, C, H, W]), the noise seeded."""
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(image.shape, generator=gen).to(image.device)
    return image + s * noise, torch.full((image.shape[0],), float(s), device=image.device)


def reference_features(
    model, image: torch.Tensor, s: float, seed: int, class_labels=None
) -> list[torch.Tensor]:
    """Features at time ``s`` of a given image: encode image + s * noise."""
    return model.encode(*noised_image(image, s, seed), class_labels)


def start_features(model, source: dict, s: float, class_labels=None) -> list[torch.Tensor]:
    """Features at time ``s`` of {"noise": [B, C, H, W]} (HKD's trajectory from x_T) or
    {"image": [B, C, H, W] in [-1, 1], "seed": int} (the image noised to s)."""
    if "noise" in source:
        return features_at(model, source["noise"], s, class_labels)
    return reference_features(model, source["image"], s, source["seed"], class_labels)


def start_input(model, source: dict, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The input (x, sigma) that ``start_features`` encodes."""
    if "noise" in source:
        return noise_source(model, source["noise"])
    return noised_image(source["image"], s, source["seed"])


@torch.no_grad()
def editing_grid(
    model,
    gen: dict,
    ref: dict,
    band: tuple[float, float],
    mask: torch.Tensor,
    ratios: list[float],
    agnostic_ratio: float,
    class_labels=None,
    ref_class_labels=None,
    ranks=None,
) -> dict:
    """Figure 5 for a batch of pairs: generated, reference, band edits at ``ratios`` and
    the frequency-agnostic edit (every mode) at ``agnostic_ratio``; ``gen`` / ``ref`` as
    ``start_features`` takes them, ``mask`` [H, W] in [0, 1]; a conditional model encodes
    each with its own labels and decodes the edits with the generated image's. Returns
    arrays in [-1, 1] and two checks: ratio 0 gives the unedited image bit for bit, and
    mixing every mode everywhere at ratio 1 gives the reference (up to rounding)."""
    s = midpoint(model)
    ref_labels = class_labels if ref_class_labels is None else ref_class_labels
    gen_feats = start_features(model, gen, s, class_labels)
    ref_feats = start_features(model, ref, s, ref_labels)
    gen_in, ref_in = start_input(model, gen, s), start_input(model, ref, s)
    unedited = model.decode(to_eps(model, gen_feats, s), class_labels, gen_in)
    reference = model.decode(to_eps(model, ref_feats, s), ref_labels, ref_in)
    edits = edit(
        model, gen_feats, ref_feats, s, band, mask, [0.0] + list(ratios), class_labels, gen_in, ranks
    )
    agnostic = edit(model, gen_feats, ref_feats, s, (0.0, 1.0), mask, [agnostic_ratio], class_labels, gen_in)[
        0
    ]
    full = edit(model, gen_feats, ref_feats, s, (0.0, 1.0), torch.ones_like(mask), [1.0], ref_labels, ref_in)[
        0
    ]
    out = {
        "midpoint": s,
        "generated": unedited.cpu().numpy(),
        "reference": reference.cpu().numpy(),
        "edits": edits[1:].cpu().numpy(),
        "agnostic": agnostic.cpu().numpy(),
        "ratio0_equals_unedited": bool(torch.equal(edits[0], unedited)),
        "full_mix_max_abs_diff_to_reference": float((full - reference).abs().max()),
    }
    if agnostic_ratio in ratios:  # Figure 5's claim: the band edit keeps the generated image's structure
        band_edit = edits[1 + list(ratios).index(agnostic_ratio)]
        out["band_edit_rms_change"] = rms_per_image(band_edit - unedited)
        out["agnostic_edit_rms_change"] = rms_per_image(agnostic - unedited)
    if "noise" in gen:  # the midpoint path against the direct one-step sample T -> eps
        out["one_step_max_abs_diff"] = float(
            (unedited - model.sample(gen["noise"], class_labels)).abs().max()
        )
    return out


def rms_per_image(diff: torch.Tensor) -> list[float]:
    return diff.float().pow(2).flatten(1).mean(1).sqrt().tolist()


def grid_rows(result: dict) -> np.ndarray:
    """[rows, cols, C, H, W]: one row per pair: generated, reference, edits..., agnostic."""
    parts = [
        result["generated"][:, None],
        result["reference"][:, None],
        result["edits"].transpose(1, 0, 2, 3, 4),
        result["agnostic"][:, None],
    ]
    return np.concatenate(parts, axis=1)
