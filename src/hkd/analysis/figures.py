"""The figures stage: the paper's Figures 2, 4, 5 and 6 for the run's HKD, the
trajectory viewer's frames, and each figure's numerical check (``figures.json``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hkd.analysis.editing import editing_grid, grid_rows, spatial_mask
from hkd.analysis.inpainting import Transform, restore
from hkd.analysis.modes import (
    apply_pair_masks,
    band_decodes,
    band_masks,
    bands_partition,
    cumulative_contribution,
    features_at,
    mode_ranks,
    noise_source,
)
from hkd.analysis.plots import curve_plot, labelled_grid, spectrum_bands_plot
from hkd.analysis.random_split import band_roles_control, edit_control
from hkd.analysis.trajectory import (
    consistency,
    consistency_check,
    latent_trajectory,
    predictions_along,
    teacher_states,
)
from hkd.data.dataset import load_dataset
from hkd.images import to_uint8
from hkd.io import save_json, save_npz
from hkd.runtime import teacher_dtype
from hkd.teacher.sampler import one_hot, seeded_inputs
from hkd.teacher.trajectories import make_denoiser

#: |ratio-1 full mix - reference| allowed (float rounding of the flow and the decoder)
FULL_MIX_TOLERANCE = 1e-3
#: |A x - A y| allowed on the known components of a transformed task (A^-1 A in float32)
KNOWN_TOLERANCE = 1e-5


def band_names(edges: list[float], by: str = "abs_alpha") -> list[str]:
    key = "|alpha|" if by == "abs_alpha" else "alpha"
    return [f"{key} quantile [{lo:.2f}, {hi:.2f})" for lo, hi in zip(edges[:-1], edges[1:])]


def display_state(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A noisy state scaled to unit variance for display (x_s / sqrt(0.25 + s^2))."""
    return x / (0.25 + sigma * sigma) ** 0.5


@dataclass(frozen=True)
class Draw:
    """The figures' noise seeds and what they draw (Figures 2 and 4 and the viewer)."""

    seeds: np.ndarray
    noise: torch.Tensor
    labels: torch.Tensor | None
    cond: torch.Tensor | None  # the labels one-hot, as the networks take them

    def row_labels(self) -> list[str]:
        return [f"seed {s}" for s in self.seeds]


def image_shape(model) -> tuple[int, int, int]:
    return (model.img_channels, model.img_resolution, model.img_resolution)


def make_figures(cfg: dict, paths: dict, teacher, model, device, dtype) -> dict:
    """Every figure of the stage (in this order), ``figures.json`` with each one's numbers,
    and the stage summary: whether each figure's exactness check holds."""
    seeds = np.arange(cfg["analysis"]["seeds"]) + cfg["sample"]["seed_offset"]
    noise, labels = seeded_inputs(seeds, image_shape(model), model.label_dim, device)
    draw = Draw(seeds, noise, labels, one_hot(labels, model.label_dim))
    model = model.float().eval()
    fig2, trajectory = figure2(cfg, paths, teacher, model, draw, device, dtype)
    write_viewer(paths, model, draw, *trajectory)
    sigmas = trajectory[0]
    result = {
        "seeds": seeds.tolist(),
        "figure2": fig2,
        "figure4": figure4(cfg, paths, model, draw, sigmas),
        "figure5": figure5(cfg, paths, model, device),
        "figure6": figure6(cfg, paths, model, device),
    }
    save_json(result, paths["figures"])
    return {
        "figure2": result["figure2"]["small_near_eps"],
        "figure4": result["figure4"]["all_bands_equal_unmasked"],
        "figure5": result["figure5"]["ratio0_equals_unedited"]
        and result["figure5"]["full_mix_gives_reference"],
        "figure6": {k: v["known_part_kept"] for k, v in result["figure6"]["checks"].items()},
    }


def figure2(cfg: dict, paths: dict, teacher, model, draw: Draw, device, dtype) -> tuple[dict, tuple]:
    """Figure 2: HKD's prediction from each state of the teacher's trajectory, and its
    distance to the teacher's final image. Returns the figure's numbers and (sigmas, states,
    predictions) for the viewer."""
    denoise = make_denoiser(teacher, device, teacher_dtype(cfg, device), compile=False)
    sigmas, states = teacher_states(denoise, draw.noise, cfg, draw.labels, teacher.label_dim)
    preds = predictions_along(lambda x, t: model(x, t, draw.cond), sigmas, states)
    final = states[-1]
    dist = consistency(preds, final)
    rows = torch.cat([preds, final[None]]).transpose(0, 1).cpu().numpy()
    labelled_grid(
        rows,
        [f"{float(s):.3g}" for s in sigmas[:-1]] + ["teacher x0"],
        draw.row_labels(),
        "Figure 2: HKD's one-step prediction from the teacher "
        "state x_t (columns: t from T to eps; last: the teacher's final image)",
        paths["fig2"],
    )
    curve_plot(
        sigmas[:-1].numpy(),
        {"RMS distance to the teacher's final image": dist},
        "t (sigma)",
        "RMS distance ([-1, 1] pixels)",
        "Figure 2: trajectory consistency",
        paths["fig2_consistency"],
        logx=True,
    )
    numbers = {"sigmas": sigmas[:-1].tolist(), "distance": dist.tolist(), **consistency_check(dist)}
    return numbers, (sigmas, states, preds)


def write_viewer(paths: dict, model, draw: Draw, sigmas, states, preds) -> None:
    """The viewer's frames, one per noisy state: the teacher's state, HKD's prediction from
    it, and HKD's own latent at that time decoded."""
    latent = latent_trajectory(model, draw.noise, sigmas[:-1].tolist(), draw.cond)
    frames = []
    for i, s in enumerate(sigmas[:-1].tolist()):
        strip = torch.stack([display_state(states[i], s), preds[i], latent[i]])  # [3, B, C, H, W]
        frames.append(to_uint8(strip.cpu().numpy()))
    save_npz(
        paths["viewer"],
        frames=np.stack(frames),
        sigmas=sigmas[:-1].numpy(),
        seeds=draw.seeds,
        rows=np.array(["teacher state x_t (scaled)", "HKD prediction from x_t", "HKD latent at t, decoded"]),
    )


def figure4(cfg: dict, paths: dict, model, draw: Draw, sigmas: torch.Tensor) -> dict:
    """Figure 4: spectral masking by alpha band, cumulative contribution of mode groups and
    the spectrum; its check: every band kept at once is the unmasked decode."""
    acfg = cfg["analysis"]
    edges, groups = acfg["band_edges"], acfg["mode_groups"]
    ranks = mode_ranks(model, acfg["band_by"])
    decodes = band_decodes(model, draw.noise, edges, draw.cond, ranks)
    names = band_names(edges, acfg["band_by"])
    bands = [decodes[f"band{i}"] for i in range(len(names))]
    labelled_grid(
        torch.stack([decodes["all"]] + bands).transpose(0, 1).cpu().numpy(),
        ["all modes"] + names,
        draw.row_labels(),
        "Figure 4 (b-d): decoded with one band of Koopman modes per level",
        paths["fig4"],
    )
    contrib = cumulative_contribution(
        model, draw.noise, groups, sigmas[:-1].tolist(), draw.cond, ranks
    ).numpy()
    curve_plot(
        sigmas[:-1].numpy(),
        {f"first {k} of {groups} groups": contrib[k] for k in range(1, groups)},
        "t (sigma)",
        "share of the decoded state explained",
        "Figure 4 (a): cumulative contribution of alpha-sorted mode groups",
        paths["fig4_modes"],
        logx=True,
    )
    spectrum = spectrum_bands_plot(model, edges, paths["fig4_spectrum"], acfg["band_by"])
    # every band kept at once (the sum of the bands' masks) must be the unmasked decode
    feats = features_at(model, draw.noise, model.eps, draw.cond)
    union = [
        sum(m) for m in zip(*[band_masks(model, lo, hi, ranks) for lo, hi in zip(edges[:-1], edges[1:])])
    ]
    all_bands = model.decode(apply_pair_masks(feats, union), draw.cond, noise_source(model, draw.noise))
    return {
        "band_edges": edges,
        "bands": names,
        "mode_groups": groups,
        "contribution": contrib.tolist(),
        "levels": spectrum,
        "band_by": acfg["band_by"],
        "bands_partition_modes": bands_partition(model, edges, ranks),
        "all_bands_equal_unmasked": bool(torch.equal(all_bands, decodes["all"])),
        "random_split": band_roles_control(model, draw.noise, edges, draw.cond, ranks, cfg["seed"]),
    }


def figure5(cfg: dict, paths: dict, model, device) -> dict:
    """Figure 5: frequency-aware editing at the trajectory's midpoint, with its checks (ratio
    0 leaves the image as it was; a full mix gives the reference)."""
    acfg, offset = cfg["analysis"], cfg["sample"]["seed_offset"]
    ecfg, edges = acfg["edit"], acfg["band_edges"]
    band_name = band_names(edges, acfg["band_by"])[ecfg["band"]]
    pairs = ecfg["pairs"]
    shape = image_shape(model)
    gen_noise, gen_labels = seeded_inputs([offset + g for g, _ in pairs], shape, model.label_dim, device)
    ref_noise, ref_labels = seeded_inputs([offset + r for _, r in pairs], shape, model.label_dim, device)
    ranks = mode_ranks(model, acfg["band_by"])
    band = (edges[ecfg["band"]], edges[ecfg["band"] + 1])
    mask = spatial_mask(ecfg["mask"], model.img_resolution)
    gen_cond, ref_cond = one_hot(gen_labels, model.label_dim), one_hot(ref_labels, model.label_dim)
    gen, ref = {"noise": gen_noise}, {"noise": ref_noise}
    edit = editing_grid(
        model, gen, ref, band, mask, ecfg["ratios"], ecfg["agnostic_ratio"], gen_cond, ref_cond, ranks
    )
    ratio = ecfg["agnostic_ratio"]
    random_split = edit_control(model, gen, ref, band, mask, ratio, gen_cond, ref_cond, ranks, cfg["seed"])
    labelled_grid(
        grid_rows(edit),
        ["generated", "reference"]
        + [f"{100 * r:.0f} %" for r in ecfg["ratios"]]
        + [f"all modes {100 * ecfg['agnostic_ratio']:.0f} %"],
        [f"seeds {offset + g} <- {offset + r}" for g, r in pairs],
        f"Figure 5: mixing the reference's modes of {band_name} into the {ecfg['mask']} region "
        f"at t = {edit['midpoint']:.3g}",
        paths["fig5"],
    )
    full_mix = edit["full_mix_max_abs_diff_to_reference"]
    return {
        "band": band_name,
        "mask": ecfg["mask"],
        "ratios": ecfg["ratios"],
        "agnostic_ratio": ecfg["agnostic_ratio"],
        "midpoint": edit["midpoint"],
        "ratio0_equals_unedited": edit["ratio0_equals_unedited"],
        "full_mix_max_abs_diff_to_reference": full_mix,
        "full_mix_gives_reference": full_mix < FULL_MIX_TOLERANCE,
        "midpoint_path_vs_one_step_max_abs_diff": edit["one_step_max_abs_diff"],
        "band_edit_rms_change": edit.get("band_edit_rms_change"),
        "agnostic_edit_rms_change": edit.get("agnostic_edit_rms_change"),
        "random_split": random_split,
    }


def figure6(cfg: dict, paths: dict, model, device) -> dict:
    """Figure 6: inpainting and colourisation (grey data: restoration from 2x2 block means)
    of seeded data images, with each task's check that the known part is kept."""
    icfg = cfg["analysis"]["inpaint"]
    data = load_dataset(paths["data"])
    split = "heldout" if len(data["heldout_images"]) else "train"
    # a seeded draw, not the first images: a split may be stored in class order
    pick = np.sort(
        np.random.default_rng(cfg["seed"]).choice(len(data[f"{split}_images"]), icfg["images"], replace=False)
    )
    refs = torch.from_numpy(data[f"{split}_images"][pick]).float().to(device)
    ref_labels = torch.from_numpy(data[f"{split}_labels"][pick]).to(device) if model.label_dim else None
    tasks = ["inpaint", "colourise" if model.img_channels == 3 else "upsample"]
    rows, cols, checks = [], [], {}
    for task in tasks:
        known, out, checks[task] = restoration(cfg, model, task, refs, one_hot(ref_labels, model.label_dim))
        rows += [known, out]
        cols += [f"{task}: input", f"{task}: HKD"]
    labelled_grid(
        torch.stack(rows + [refs]).transpose(0, 1).cpu().numpy(),
        cols + ["original"],
        [f"{split} image {i}" for i in pick],
        f"Figure 6: {' and '.join(tasks)} with HKD ({icfg['steps']} noise levels, consistency-model "
        "Algorithm 4)",
        paths["fig6"],
    )
    return {
        "tasks": tasks,
        "mask": icfg["mask"],
        "steps": icfg["steps"],
        "images": pick.tolist(),
        "split": split,
        "checks": checks,
    }


def restoration(cfg: dict, model, task: str, refs: torch.Tensor, cond) -> tuple:
    """(the known part shown as an image, HKD's restoration, the task's check) of one task."""
    icfg = cfg["analysis"]["inpaint"]
    tf = Transform(task, image_shape(model), icfg["mask"])
    known = tf.inverse(tf.forward(refs) * (1 - tf.omega.to(refs)))
    out = restore(model, refs, tf, icfg["steps"], cfg["edm"]["rho"], cfg["seed"], cond)
    err = tf.known_error(out, refs)
    check = {
        "known_max_abs_error": err,
        "rms_error_generated": float((out - refs).pow(2).mean().sqrt()),
        # pixels are copied; transformed components go through A^-1 A (rounding)
        "known_part_kept": err == 0.0 if task == "inpaint" else err < KNOWN_TOLERANCE,
    }
    return known, out, check
