"""The figures stage: the paper's Figures 2, 4, 5 and 6 for the run's HKD, the
trajectory viewer's frames, and each figure's numerical check (``figures.json``)."""

from __future__ import annotations

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
    noise_source,
)
from hkd.analysis.plots import curve_plot, labelled_grid, spectrum_bands_plot
from hkd.analysis.trajectory import (
    consistency,
    consistency_check,
    latent_trajectory,
    predictions_along,
    teacher_states,
)
from hkd.data.dataset import load_dataset
from hkd.io import save_json, save_npz
from hkd.teacher.sampler import one_hot, seeded_inputs
from hkd.teacher.trajectories import make_denoiser

#: |ratio-1 full mix - reference| allowed (float rounding of the flow and the decoder)
FULL_MIX_TOLERANCE = 1e-3
#: |A x - A y| allowed on the known components of a transformed task (A^-1 A in float32)
KNOWN_TOLERANCE = 1e-5


def band_names(edges: list[float]) -> list[str]:
    return [f"alpha quantile [{lo:.2f}, {hi:.2f})" for lo, hi in zip(edges[:-1], edges[1:])]


def display_state(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A noisy state scaled to unit variance for display (x_s / sqrt(0.25 + s^2))."""
    return x / (0.25 + sigma * sigma) ** 0.5


def make_figures(cfg: dict, paths: dict, teacher, model, device, dtype) -> dict:
    acfg = cfg["analysis"]
    offset = cfg["sample"]["seed_offset"]
    seeds = np.arange(acfg["seeds"]) + offset
    shape = (model.img_channels, model.img_resolution, model.img_resolution)
    noise, labels = seeded_inputs(seeds, shape, model.label_dim, device)
    cl = one_hot(labels, model.label_dim)
    model = model.float().eval()
    result = {"seeds": seeds.tolist()}

    # Figure 2: HKD's prediction from each state of the teacher's trajectory
    denoise = make_denoiser(teacher, device, dtype, compile=False)
    sigmas, states = teacher_states(denoise, noise, cfg, labels, teacher.label_dim)
    preds = predictions_along(lambda x, t: model(x, t, cl), sigmas, states)
    final = states[-1]
    dist = consistency(preds, final)
    cols = [f"{float(s):.3g}" for s in sigmas[:-1]] + ["teacher x0"]
    rows = torch.cat([preds, final[None]]).transpose(0, 1).cpu().numpy()
    labelled_grid(
        rows,
        cols,
        [f"seed {s}" for s in seeds],
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
    result["figure2"] = {"sigmas": sigmas[:-1].tolist(), "distance": dist.tolist(), **consistency_check(dist)}

    # Viewer: teacher state, HKD's prediction from it, HKD's latent trajectory decoded
    latent = latent_trajectory(model, noise, sigmas[:-1].tolist(), cl)
    frames = []
    for i, s in enumerate(sigmas[:-1].tolist()):
        strip = torch.stack([display_state(states[i], s), preds[i], latent[i]])  # [3, B, C, H, W]
        frames.append(_to_uint8(strip.cpu().numpy()))
    save_npz(
        paths["viewer"],
        frames=np.stack(frames),
        sigmas=sigmas[:-1].numpy(),
        seeds=seeds,
        rows=np.array(["teacher state x_t (scaled)", "HKD prediction from x_t", "HKD latent at t, decoded"]),
    )

    # Figure 4: spectral masking by alpha band, cumulative contribution of mode groups, spectrum
    edges = acfg["band_edges"]
    decodes = band_decodes(model, noise, edges, cl)
    names = band_names(edges)
    keys = [f"band{i}" for i in range(len(names))]
    grid = torch.stack([decodes["all"]] + [decodes[k] for k in keys]).transpose(0, 1).cpu().numpy()
    labelled_grid(
        grid,
        ["all modes"] + names,
        [f"seed {s}" for s in seeds],
        "Figure 4 (b-d): decoded with one band of Koopman modes per level",
        paths["fig4"],
    )
    groups = acfg["mode_groups"]
    contrib = cumulative_contribution(model, noise, groups, sigmas[:-1].tolist(), cl).numpy()
    curve_plot(
        sigmas[:-1].numpy(),
        {f"first {k} of {groups} groups": contrib[k] for k in range(1, groups)},
        "t (sigma)",
        "share of the decoded state explained",
        "Figure 4 (a): cumulative contribution of alpha-sorted mode groups",
        paths["fig4_modes"],
        logx=True,
    )
    spectrum = spectrum_bands_plot(model, edges, paths["fig4_spectrum"])
    # every band kept at once (the sum of the bands' masks) must be the unmasked decode
    feats = features_at(model, noise, model.eps, cl)
    union = [sum(m) for m in zip(*[band_masks(model, lo, hi) for lo, hi in zip(edges[:-1], edges[1:])])]
    all_bands = model.decode(apply_pair_masks(feats, union), cl, noise_source(model, noise))
    result["figure4"] = {
        "band_edges": edges,
        "bands": names,
        "mode_groups": groups,
        "contribution": contrib.tolist(),
        "levels": spectrum,
        "bands_partition_modes": bands_partition(model, edges),
        "all_bands_equal_unmasked": bool(torch.equal(all_bands, decodes["all"])),
    }

    # Figure 5: frequency-aware editing at the trajectory's midpoint
    ecfg = acfg["edit"]
    band = (edges[ecfg["band"]], edges[ecfg["band"] + 1])
    pairs = ecfg["pairs"]
    gen_noise, gen_labels = seeded_inputs([offset + g for g, _ in pairs], shape, model.label_dim, device)
    ref_noise, ref_labels = seeded_inputs([offset + r for _, r in pairs], shape, model.label_dim, device)
    edit = editing_grid(
        model,
        {"noise": gen_noise},
        {"noise": ref_noise},
        band,
        spatial_mask(ecfg["mask"], model.img_resolution),
        ecfg["ratios"],
        ecfg["agnostic_ratio"],
        one_hot(gen_labels, model.label_dim),
        one_hot(ref_labels, model.label_dim),
    )
    cols = (
        ["generated", "reference"]
        + [f"{100 * r:.0f} %" for r in ecfg["ratios"]]
        + [f"all modes {100 * ecfg['agnostic_ratio']:.0f} %"]
    )
    labelled_grid(
        grid_rows(edit),
        cols,
        [f"seeds {offset + g} <- {offset + r}" for g, r in pairs],
        f"Figure 5: mixing the reference's modes of {names[ecfg['band']]} into the {ecfg['mask']} region "
        f"at t = {edit['midpoint']:.3g}",
        paths["fig5"],
    )
    result["figure5"] = {
        "band": names[ecfg["band"]],
        "mask": ecfg["mask"],
        "ratios": ecfg["ratios"],
        "agnostic_ratio": ecfg["agnostic_ratio"],
        "midpoint": edit["midpoint"],
        "ratio0_equals_unedited": edit["ratio0_equals_unedited"],
        "full_mix_max_abs_diff_to_reference": edit["full_mix_max_abs_diff_to_reference"],
        "full_mix_gives_reference": edit["full_mix_max_abs_diff_to_reference"] < FULL_MIX_TOLERANCE,
        "midpoint_path_vs_one_step_max_abs_diff": edit["one_step_max_abs_diff"],
        "band_edit_rms_change": edit.get("band_edit_rms_change"),
        "agnostic_edit_rms_change": edit.get("agnostic_edit_rms_change"),
    }

    # Figure 6: inpainting and colourisation (grey data: restoration from 2x2 block means)
    icfg = acfg["inpaint"]
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
        tf = Transform(task, shape, icfg["mask"])
        known = tf.inverse(tf.forward(refs) * (1 - tf.omega.to(refs)))
        out = restore(
            model,
            refs,
            tf,
            icfg["steps"],
            cfg["edm"]["rho"],
            cfg["seed"],
            one_hot(ref_labels, model.label_dim),
        )
        rows += [known, out]
        cols += [f"{task}: input", f"{task}: HKD"]
        err = tf.known_error(out, refs)
        checks[task] = {
            "known_max_abs_error": err,
            "rms_error_generated": float((out - refs).pow(2).mean().sqrt()),
            # pixels are copied; transformed components go through A^-1 A (rounding)
            "known_part_kept": err == 0.0 if task == "inpaint" else err < KNOWN_TOLERANCE,
        }
    grid = torch.stack(rows + [refs]).transpose(0, 1).cpu().numpy()
    labelled_grid(
        grid,
        cols + ["original"],
        [f"{split} image {i}" for i in pick],
        f"Figure 6: {' and '.join(tasks)} with HKD ({icfg['steps']} noise levels, consistency-model "
        "Algorithm 4)",
        paths["fig6"],
    )
    result["figure6"] = {
        "tasks": tasks,
        "mask": icfg["mask"],
        "steps": icfg["steps"],
        "images": pick.tolist(),
        "split": split,
        "checks": checks,
    }
    save_json(result, paths["figures"])
    return {
        "figure2": result["figure2"]["small_near_eps"],
        "figure4": result["figure4"]["all_bands_equal_unmasked"],
        "figure5": result["figure5"]["ratio0_equals_unedited"]
        and result["figure5"]["full_mix_gives_reference"],
        "figure6": {k: v["known_part_kept"] for k, v in checks.items()},
    }


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 127.5 + 128, 0, 255).astype(np.uint8)
