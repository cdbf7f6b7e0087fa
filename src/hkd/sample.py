"""Evaluation samples: the teacher's (Heun, 35 NFE and each extra NFE; stage teacher_sample)
and HKD's (1 NFE; stage sample), from fresh noise seeds disjoint from the training
trajectories, except that ``sample.teacher_seeds: trajectories`` starts the teacher's 35-NFE
row with the trajectories' own endpoints.

Each sampler's finished batches are kept under ``samples/.partial/<sampler>/`` (not a
declared output) until its file is written, so a killed stage started again reuses them.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hkd.compile_guard import non_finite_message
from hkd.io import load_npz, save_npz, sha256_file, sha256_json
from hkd.pipeline import log_path
from hkd.runtime import autocast, teacher_dtype
from hkd.teacher.sampler import SAMPLER_CONVENTION, edm_sigmas, heun_sample, one_hot, seeded_inputs
from hkd.teacher.trajectories import DENOISER, make_denoiser


def evaluation_seeds(cfg: dict) -> np.ndarray:
    """Seeds disjoint from the training trajectories (checked by the config validator)."""
    start = cfg["sample"]["seed_offset"]
    return np.arange(start, start + cfg["sample"]["count"], dtype=np.int64)


def teacher_row_seeds(cfg: dict) -> np.ndarray:
    """The seeds of the teacher's row at the trajectories' NFE: the evaluation seeds, or with
    ``sample.teacher_seeds: trajectories`` the trajectories' own seeds continued past them
    (``trajectories.seed_offset`` + i), so that the ODE the trajectories already solved is not
    solved again (kept apart from the evaluation seeds by the config validator)."""
    if cfg["sample"]["teacher_seeds"] == "evaluation":
        return evaluation_seeds(cfg)
    start = cfg["trajectories"]["seed_offset"]
    return np.arange(start, start + cfg["sample"]["count"], dtype=np.int64)


def trajectory_endpoints(manifest: str, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images float32 [n, C, H, W], labels, seeds) of the first n = min(count, stored) stored
    trajectories' final states (sigma = 0: the teacher's sample of that seed, after the
    states' float16 round trip), read from the memory-mapped shards, the final state only."""
    from hkd.teacher.trajectories import load_trajectories

    t = load_trajectories(manifest, stream=True)
    n = min(count, len(t["states"]))
    finals = np.concatenate([states[:, -1] for states in t["states"].maps])[:n]
    return finals.astype(np.float32), t["labels"][:n], t["seeds"][:n]


def teacher_sampler(cfg: dict, teacher, device, compile=False, nfe: int | None = None):
    """EDM's Heun sampler on the EDM grid: the trajectories' step count, or ``nfe`` (odd), under
    the config's ``teacher_precision`` (``runtime.teacher_dtype``); ``compile``: auto | true |
    false (compile_guard)."""
    edm = cfg["edm"]
    steps = cfg["trajectories"]["num_steps"] if nfe is None else (nfe + 1) // 2
    sigmas = edm_sigmas(steps, edm["sigma_min"], edm["sigma_max"], edm["rho"])
    dtype = teacher_dtype(cfg, device)
    denoise = make_denoiser(teacher, device, dtype, compile=compile, what=teacher_path_name(nfe))

    def sample(noise, labels=None):
        return heun_sample(denoise, noise, sigmas, class_labels=one_hot(labels, teacher.label_dim)).float()

    return sample


def teacher_path_name(nfe: int | None) -> str:
    """The compile path of a teacher sampler (the trajectories' NFE when ``nfe`` is None)."""
    return DENOISER + (f" ({nfe} NFE)" if nfe is not None else "")


def hkd_sampler(model, device, dtype):
    def sample(noise, labels=None):
        with torch.no_grad(), autocast(device, dtype):
            return model.sample(noise, one_hot(labels, model.label_dim)).float()

    return sample


def draw(
    sampler,
    seeds: np.ndarray,
    shape,
    label_dim: int,
    batch_size: int,
    device,
    desc: str,
    partial_dir: str | Path | None = None,
    fingerprint: str = "",
    path_name: str = "",
    log: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [N, C, H, W], labels int64 [N], -1 when unconditional) of ``seeds``.
    ``partial_dir``: each finished batch is saved there and reused by a later call with the
    same ``fingerprint`` and seeds. A batch with non-finite images stops the stage, naming its
    seeds, how ``path_name`` (the sampler's compile path) ran and the stage's ``log``."""
    out, labels, reused = [], [], 0
    for k, start in enumerate(
        tqdm(
            range(0, len(seeds), batch_size),
            desc=desc,
            unit="batch",
            mininterval=2,
        )
    ):
        batch = seeds[start : start + batch_size]
        kept = Path(partial_dir) / f"batch-{k:05d}.npz" if partial_dir else None
        if kept is not None and kept.is_file():
            d = load_npz(kept)
            if str(d.get("fingerprint")) == fingerprint and np.array_equal(d.get("seeds"), batch):
                if not np.isfinite(d["images"]).all():  # kept by an earlier attempt
                    raise FloatingPointError(
                        f"{desc}: non-finite samples in {kept}; delete {partial_dir} and rerun"
                    )
                out.append(d["images"])
                labels.append(d["labels"])
                reused += 1
                continue
        noise, lab = seeded_inputs(batch, shape, label_dim, device)
        out.append(sampler(noise, lab).cpu().numpy().astype(np.float32))
        finite = np.isfinite(out[-1]).reshape(len(batch), -1).all(1)
        if not finite.all():
            raise FloatingPointError(
                f"{desc}: " + non_finite_message("samples", batch, ~finite, path_name, log)
            )
        labels.append(lab.cpu().numpy() if lab is not None else np.full(len(batch), -1, np.int64))
        if kept is not None:
            save_npz(kept, images=out[-1], labels=labels[-1], seeds=batch, fingerprint=np.array(fingerprint))
    if reused:
        print(f"{desc}: reused {reused} finished batches from {partial_dir}")
    if not out:  # every seed was drawn already (the trajectories' endpoints)
        return np.empty((0, *shape), np.float32), np.empty(0, np.int64)
    return np.concatenate(out), np.concatenate(labels)


def write_teacher_samples(cfg: dict, teacher, paths: dict, device) -> dict:
    """Teacher samples at the trajectories' NFE (on :func:`teacher_row_seeds`) and at each
    ``sample.extra_teacher_nfe`` (on the evaluation seeds), under ``teacher_precision``, to the
    files named in ``paths``. Its own stage (teacher_sample), so that it needs no HKD training
    and can run beside one."""
    # The teacher dominates sampling, so it runs compiled when the config says so.
    jobs = [
        ("teacher", teacher_sampler(cfg, teacher, device, cfg["compile"]), paths["samples_teacher"], None)
    ]
    for n in cfg["sample"]["extra_teacher_nfe"]:
        path = paths["samples_teacher_nfe"].replace("{nfe}", str(n))
        jobs.append(
            (f"teacher_nfe{n}", teacher_sampler(cfg, teacher, device, cfg["compile"], nfe=n), path, n)
        )
    net = {"net": sha256_file(paths["teacher"]), "precision": str(teacher_dtype(cfg, device))}
    times = {}
    for name, sampler, path, nfe in jobs:
        seeds, known = evaluation_seeds(cfg), None
        if nfe is None and cfg["sample"]["teacher_seeds"] == "trajectories":
            seeds = teacher_row_seeds(cfg)
            known = trajectory_endpoints(paths["trajectories"], len(seeds))
        names = (name, teacher_path_name(nfe))
        times[name] = _draw_to_file(
            cfg, teacher, device, sampler, path, names, net, "teacher_sample", seeds, known
        )
    return times


def write_hkd_samples(cfg: dict, model, paths: dict, device, dtype) -> dict:
    """HKD's one-step samples (under ``dtype``, the run's ``precision``; eager, as they are cheap)
    from the evaluation seeds (the teacher's rows but, with ``sample.teacher_seeds:
    trajectories``, its row at the trajectories' NFE), to ``paths["samples_hkd"]``."""
    net = {"net": sha256_file(paths["hkd"]), "precision": str(dtype)}
    sampler = hkd_sampler(model, device, dtype)
    path = paths["samples_hkd"]
    names = ("hkd", "the HKD one-step sampler")
    return {
        "hkd": _draw_to_file(cfg, model, device, sampler, path, names, net, "sample", evaluation_seeds(cfg))
    }


def _draw_to_file(
    cfg, net_module, device, sampler, path, names: tuple, net: dict, stage: str, seeds, known=None
):
    """Draw ``seeds`` with ``sampler`` into ``path`` (finished batches kept under
    ``.partial/<name>`` until the file is written); the seconds it took. ``names``: the
    sampler's name and its compile path's; ``net``: the network's hash and precision;
    ``known``: (images, labels, seeds) already drawn for the first seeds (the trajectories'
    endpoints), taken as they are."""
    t0, (name, path_name) = time.time(), names
    partial = Path(path).parent / ".partial" / name
    spec = {
        "sampler": name,
        **net,
        "compile": cfg["compile"],
        "edm": cfg["edm"],
        "convention": SAMPLER_CONVENTION,
    }
    spec["steps"] = cfg["trajectories"]["num_steps"]
    shape = (net_module.img_channels, net_module.img_resolution, net_module.img_resolution)
    done = 0 if known is None else len(known[2])
    if known is not None and not np.array_equal(known[2], seeds[:done]):
        raise ValueError(f"sample {name}: the trajectories' seeds are not the first seeds of this row")
    images, labels = draw(
        sampler,
        seeds[done:],
        shape,
        net_module.label_dim,
        cfg["sample"]["batch_size"],
        device,
        f"sample {name}",
        partial,
        sha256_json(spec),
        path_name,
        log_path(cfg, stage),
    )
    if done:
        images, labels = np.concatenate([known[0], images]), np.concatenate([known[1], labels])
        print(f"sample {name}: the first {done} of {len(seeds)} images are the trajectories' endpoints")
    save_npz(path, images=images, seeds=seeds, labels=labels)
    shutil.rmtree(partial, ignore_errors=True)
    with contextlib.suppress(OSError):  # the .partial folder, once no sampler has batches left
        partial.parent.rmdir()
    return time.time() - t0
