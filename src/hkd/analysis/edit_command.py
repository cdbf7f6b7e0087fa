"""``hkd edit``: Figure 5's frequency-aware editing for any two seeds or images of a
trained run, with a chosen band, region and ratios; writes one labelled PNG row."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from hkd.analysis.editing import MASKS, editing_grid, grid_rows, spatial_mask
from hkd.analysis.figures import band_names
from hkd.analysis.modes import mode_ranks
from hkd.analysis.plots import labelled_grid
from hkd.koopman.model import load_hkd
from hkd.teacher.sampler import one_hot, seeded_inputs


def read_image(path: str, channels: int, size: int) -> torch.Tensor:
    """An image file as [1, C, H, W] in [-1, 1]; its size must be the model's."""
    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        raise ValueError(f"{path}: image is {img.size[0]}x{img.size[1]}, the model generates {size}x{size}")
    a = np.asarray(img, dtype=np.float32)
    a = a[None] if channels == 1 else a.transpose(2, 0, 1)
    return torch.from_numpy(a / 127.5 - 1.0)[None]


def read_mask(spec: str, size: int) -> tuple[torch.Tensor, str]:
    """A named region (``editing.MASKS``) or a mask image (white = mixed) resized to ``size``."""
    if spec in MASKS:
        return spatial_mask(spec, size), spec
    try:
        img = Image.open(spec).convert("L").resize((size, size), Image.BILINEAR)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--mask {spec!r} is neither one of {MASKS} nor a readable image: {exc}") from exc
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0), f"mask image {spec}"


def edit_command(cfg: dict, paths: dict, args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    ecfg, edges = cfg["analysis"]["edit"], cfg["analysis"]["band_edges"]
    band = ecfg["band"] if args.band is None else args.band
    if not 0 <= band < len(edges) - 1:
        raise ValueError(
            f"--band {band}: analysis.band_edges has {len(edges) - 1} bands (0..{len(edges) - 2})"
        )
    ratios = ecfg["ratios"] if args.ratios is None else args.ratios
    if any(not 0.0 <= r <= 1.0 for r in ratios):
        raise ValueError(f"--ratios must lie in [0, 1], got {ratios}")
    model = load_hkd(paths["hkd"], cfg=cfg).float()
    res, ch = model.img_resolution, model.img_channels
    mask, mask_name = read_mask(args.mask or ecfg["mask"], res)
    labels = ref_labels = None
    if args.seeds:
        noise, drawn = seeded_inputs([args.seeds[0], args.seeds[1]], (ch, res, res), model.label_dim)
        gen, ref, names = {"noise": noise[:1]}, {"noise": noise[1:]}, [f"seed {s}" for s in args.seeds]
        if drawn is not None:  # each seed's own class label, as sampling draws it
            labels, ref_labels = drawn[:1], drawn[1:]
    else:
        gen = {"image": read_image(args.images[0], ch, res), "seed": args.noise_seed}
        ref = {"image": read_image(args.images[1], ch, res), "seed": args.noise_seed + 1}
        names = list(args.images)
    if model.label_dim:
        if args.label is not None:  # the class of the edited image (and of an image reference)
            labels = torch.tensor([args.label])
            ref_labels = ref_labels if args.seeds else labels
        if labels is None:
            raise ValueError("this HKD is class-conditional: give --label for image inputs")
        if not 0 <= int(labels[0]) < model.label_dim:
            raise ValueError(f"--label {int(labels[0])} is not a class (0..{model.label_dim - 1})")
    result = editing_grid(
        model,
        gen,
        ref,
        (edges[band], edges[band + 1]),
        mask,
        ratios,
        ecfg["agnostic_ratio"],
        one_hot(labels, model.label_dim),
        one_hot(ref_labels, model.label_dim),
        mode_ranks(model, cfg["analysis"]["band_by"]),
    )
    band_name = band_names(edges, cfg["analysis"]["band_by"])[band]
    cols = (
        ["generated", "reference"]
        + [f"{100 * r:.0f} %" for r in ratios]
        + [f"all modes {100 * ecfg['agnostic_ratio']:.0f} %"]
    )
    labelled_grid(
        grid_rows(result),
        cols,
        [f"{names[0]} <- {names[1]}"],
        f"{band_name} mixed into {mask_name} at t = {result['midpoint']:.3g}",
        args.out,
    )
    return {
        "out": args.out,
        "band": band_name,
        "mask": mask_name,
        "ratios": ratios,
        "ratio0_equals_unedited": result["ratio0_equals_unedited"],
        "full_mix_max_abs_diff_to_reference": result["full_mix_max_abs_diff_to_reference"],
    }
