"""Teacher probability-flow ODE trajectories, written as a few large shard files.

Layout of the trajectories folder::

    shard-00000.npz   trajectories of seeds [seed_offset, seed_offset + shard_size)
    shard-00001.npz   ...
    manifest.json     counts, grid, per-shard sha256 and size: what later stages read

Each shard holds ``states`` fp16 [n, S, C, H, W] (the S stored grid states, T first and the
final state last), ``sigmas`` float64 [S] and ``grid_index`` [S] of those states, ``seeds``,
``labels`` (-1 when unconditional) and ``fingerprint``: a hash of everything that decides
the states (teacher weights, sampler grid, stored states, the teacher's autocast dtype from
``teacher_precision``). A shard whose file exists with the right seeds and fingerprint is
finished: an interrupted run keeps it and generates only the rest; a shard from another
teacher, grid or precision is regenerated. Shards are independent, so Snakemake runs one
job per shard (``hkd trajectories --shard K``), and under ``torchrun`` the processes split
the pending shards. Trajectory i uses noise seed ``seed_offset + i`` (and its class label
from the same generator), so it can be regenerated alone. Files are written by a background
thread while the next shard is generated.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hkd import distributed
from hkd.compile_guard import maybe_compile, non_finite_message
from hkd.io import load_json, load_npz, npz_memmap, save_json, save_npz, sha256_file, sha256_json
from hkd.pipeline import log_path, shard_count, shard_name
from hkd.runtime import autocast, teacher_dtype
from hkd.teacher.sampler import SAMPLER_CONVENTION, edm_sigmas, heun_sample, nfe, one_hot, seeded_inputs

MANIFEST = "manifest.json"
STATE_DTYPE = np.float16
#: the compile path of the teacher denoiser (compile_guard, logs, provenance)
DENOISER = "the teacher denoiser"


def make_denoiser(net, device, dtype, compile=False, what: str = DENOISER):
    """D(x; sigma[, class_labels]) in fp32 out, autocast inside, channels-last for CPU
    convolutions; ``compile`` (auto | true | false): through torch.compile, checked against
    eager (one graph per batch shape, sigma is a tensor input); ``what``: the path's name in
    logs and provenance."""
    net = maybe_compile(net, compile, what)

    def denoise(x, sigma, class_labels=None):
        with torch.no_grad(), autocast(device, dtype):
            out = net(x.contiguous(memory_format=torch.channels_last), sigma, class_labels)
        return out.float()

    return denoise


def shard_seeds(tcfg: dict, k: int) -> np.ndarray:
    start = tcfg["seed_offset"] + k * tcfg["shard_size"]
    stop = min(tcfg["seed_offset"] + tcfg["count"], start + tcfg["shard_size"])
    return np.arange(start, stop, dtype=np.int64)


def stored_indices(num_steps: int, store_every: int) -> np.ndarray:
    """Grid indices kept: every ``store_every``-th from T, plus the last noisy state (eps) and
    the final one, which training always needs."""
    return np.array(sorted(set(range(0, num_steps + 1, store_every)) | {num_steps - 1, num_steps}))


def fingerprint(cfg: dict, teacher_sha256: str, dtype) -> str:
    """Hash of what decides the states; ``dtype``: the teacher's autocast dtype (None: fp32)."""
    tcfg, edm = cfg["trajectories"], cfg["edm"]
    spec = {
        "teacher_sha256": teacher_sha256,
        "sigma_min": edm["sigma_min"],
        "sigma_max": edm["sigma_max"],
        "rho": edm["rho"],
        "num_steps": tcfg["num_steps"],
        "store_every": tcfg["store_every"],
        "autocast": str(dtype),
        "state_dtype": np.dtype(STATE_DTYPE).name,
        "sampler": SAMPLER_CONVENTION,
    }
    return sha256_json(spec)


def _shard_status(path: Path, seeds: np.ndarray, fp: str) -> str | None:
    """None when ``path`` is a finished shard for these seeds and fingerprint, else why not."""
    if not path.is_file():
        return "missing"
    try:
        with np.load(path, allow_pickle=False) as z:
            same_seeds = np.array_equal(z["seeds"], seeds)
            same_fp = str(z["fingerprint"]) == fp
    except Exception as exc:  # not a finished shard (files only appear complete: atomic rename)
        return f"unreadable ({exc})"
    if not same_seeds:
        return "made for other seeds"
    if not same_fp:
        return "made by another teacher, grid or precision"
    return None


def generate_batch(
    denoise, seeds, shape, label_dim, sigmas, keep, device, log: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """(states fp16 [B, len(keep), C, H, W], labels [B]) of the trajectories of ``seeds``;
    ``log``: the stage's log file, named in the error for non-finite states."""
    noise, labels = seeded_inputs(seeds, shape, label_dim, device)
    _, traj = heun_sample(denoise, noise, sigmas, keep_states=True, class_labels=one_hot(labels, label_dim))
    block = torch.stack([traj[i] for i in keep], dim=1).to(torch.float16).cpu().numpy()
    if not np.isfinite(block).all():
        raise FloatingPointError(
            non_finite_message(
                "teacher states", seeds, ~np.isfinite(block).reshape(len(seeds), -1).any(1), DENOISER, log
            )
        )
    labels = labels.cpu().numpy() if labels is not None else np.full(len(seeds), -1, np.int64)
    return block, labels


def _my_pending_shards(cfg: dict, out: Path, shards: list[int] | None, fp: str, write: bool) -> list[int]:
    """This process's share of the asked shards (all, or ``shards``) that are not finished
    for fingerprint ``fp`` (every one of its share when not ``write``: the benchmark)."""
    all_shards = range(shard_count(cfg))
    asked = list(all_shards) if shards is None else list(shards)
    bad = [k for k in asked if k not in all_shards]
    if bad:
        raise ValueError(
            f"shard {bad[0]} does not exist: trajectories.count / shard_size gives "
            f"{len(all_shards)} shards (0..{len(all_shards) - 1})"
        )
    # Each process takes a fixed share of the asked shards (not of the pending ones: another
    # process may finish a shard while this one is still looking) and skips its finished ones.
    rank, size, _ = distributed.world()
    mine = []
    for k in asked[rank::size]:
        why = (
            _shard_status(out / shard_name(k), shard_seeds(cfg["trajectories"], k), fp)
            if write
            else "benchmark"
        )
        if why is None:
            continue
        if why != "missing" and write:
            print(f"regenerating {out / shard_name(k)}: {why}")
        mine.append(k)
    return mine


def generate_trajectories(
    cfg: dict,
    teacher,
    teacher_path: str,
    out_dir: str,
    device,
    shards: list[int] | None = None,
    write: bool = True,
) -> dict:
    """Generate the pending shards (all, or ``shards``), then, when all were asked for, write
    the manifest. Under torchrun each process takes every world-th pending shard and rank 0
    writes the manifest. ``write=False`` generates without writing (the writer benchmark).
    The teacher runs under ``teacher_precision`` (:func:`hkd.runtime.teacher_dtype`)."""
    tcfg, edm = cfg["trajectories"], cfg["edm"]
    autocast_dtype = teacher_dtype(cfg, device)
    out = Path(out_dir)
    sigmas = edm_sigmas(tcfg["num_steps"], edm["sigma_min"], edm["sigma_max"], edm["rho"])
    keep = stored_indices(tcfg["num_steps"], tcfg["store_every"])
    shape = (teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
    fp = fingerprint(cfg, sha256_file(teacher_path), autocast_dtype)
    rank = distributed.world()[0]
    mine = _my_pending_shards(cfg, out, shards, fp, write)
    denoise = make_denoiser(teacher, device, autocast_dtype, compile=cfg["compile"])
    bs = tcfg["batch_size"]
    total = sum(len(shard_seeds(tcfg, k)) for k in mine)
    bar = tqdm(total=total, desc="trajectories", unit="traj", mininterval=2)
    with ThreadPoolExecutor(max_workers=1) as writer:
        writing = None
        for k in mine:
            seeds = shard_seeds(tcfg, k)
            states = np.empty((len(seeds), len(keep)) + shape, dtype=STATE_DTYPE)
            labels = np.empty(len(seeds), dtype=np.int64)
            for start in range(0, len(seeds), bs):
                batch = seeds[start : start + bs]
                states[start : start + len(batch)], labels[start : start + len(batch)] = generate_batch(
                    denoise,
                    batch,
                    shape,
                    teacher.label_dim,
                    sigmas,
                    keep,
                    device,
                    log_path(cfg, f"trajectories-{k:05d}"),
                )
                bar.update(len(batch))
            if writing is not None:
                writing.result()  # one shard in flight at a time; a failed write stops the run
            if write:
                writing = writer.submit(
                    save_npz,
                    out / shard_name(k),
                    states=states,
                    labels=labels,
                    seeds=seeds,
                    sigmas=sigmas.numpy()[keep],
                    grid_index=keep,
                    fingerprint=np.array(fp),
                )
        if writing is not None:
            writing.result()
    bar.close()
    distributed.barrier()
    summary = {"generated_shards": len(mine), "trajectories_generated": total, "process": rank}
    if shards is None and rank == 0 and write:
        summary.update(write_manifest(cfg, out, fp, teacher))
    return summary


def write_manifest(cfg: dict, out: Path, fp: str, teacher) -> dict:
    """Check that every shard is finished, remove files that are not part of this set (shards
    beyond the count, temporary files of killed writers), then record counts, grid and
    per-shard hashes."""
    tcfg = cfg["trajectories"]
    wanted = {shard_name(k) for k in range(shard_count(cfg))}
    for stale in [*out.glob("shard-*.npz"), *out.glob(".shard-*.tmp")]:
        if stale.name not in wanted:
            stale.unlink()
    entries = []
    for k in range(shard_count(cfg)):
        path, seeds = out / shard_name(k), shard_seeds(tcfg, k)
        why = _shard_status(path, seeds, fp)
        if why is not None:
            raise RuntimeError(f"cannot write the trajectory manifest: {path} is {why}")
        entries.append(
            {
                "file": path.name,
                "first_seed": int(seeds[0]),
                "count": int(len(seeds)),
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
            }
        )
    edm = cfg["edm"]
    sigmas = edm_sigmas(tcfg["num_steps"], edm["sigma_min"], edm["sigma_max"], edm["rho"])
    keep = stored_indices(tcfg["num_steps"], tcfg["store_every"])
    c, r = teacher.img_channels, teacher.img_resolution
    manifest = {
        "count": int(tcfg["count"]),
        "seed_offset": int(tcfg["seed_offset"]),
        "num_steps": int(tcfg["num_steps"]),
        "nfe": nfe(tcfg["num_steps"]),
        "grid_sigmas": sigmas.tolist(),
        "stored_grid_index": keep.tolist(),
        "shape": [c, r, r],
        "label_dim": int(teacher.label_dim),
        "state_dtype": np.dtype(STATE_DTYPE).name,
        "bytes_per_trajectory_states": int(len(keep) * c * r * r * np.dtype(STATE_DTYPE).itemsize),
        "bytes_total": int(sum(e["bytes"] for e in entries)),
        "fingerprint": fp,
        "shards": entries,
    }
    save_json(manifest, out / MANIFEST)
    return {
        "count": manifest["count"],
        "shards": len(entries),
        "grid_points_stored": len(keep),
        "nfe": manifest["nfe"],
        "bytes_total": manifest["bytes_total"],
    }


class ShardedStates:
    """The ``states`` of several shards as one [N, S, C, H, W] array, memory-mapped: rows are
    read from disk when taken, so training holds a batch in RAM, not the set (50 GB for
    FFHQ-64), and every torchrun process reads only its own slice of each batch."""

    def __init__(self, maps: list[np.ndarray], count: int | None = None):
        self.maps = maps
        self.starts = np.cumsum([0] + [len(m) for m in maps])
        total = int(self.starts[-1])
        n = total if count is None else min(int(count), total)
        self.shape = (n,) + tuple(maps[0].shape[1:])
        self.dtype = maps[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def head(self, count: int) -> ShardedStates:
        """The first ``count`` trajectories only."""
        return ShardedStates(self.maps, count)

    def take(self, rows) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) as an in-memory array; each shard is
        read in increasing file order."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"trajectory rows out of range [0, {len(self)})")
        out = np.empty((len(rows),) + self.shape[1:], dtype=self.dtype)
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        for k in np.unique(shard):
            at = np.nonzero(shard == k)[0]
            local = rows[at] - self.starts[k]
            order = np.argsort(local, kind="stable")
            out[at[order]] = self.maps[k][local[order]]
        return out


def load_trajectories(manifest_path: str, verify: bool = True, stream: bool = False) -> dict:
    """All shards of a manifest: ``states`` fp16 [N, S, C, H, W], ``sigmas`` of the S stored
    states, ``seeds``, ``labels``. ``verify`` checks each file's sha256, so a truncated or
    replaced shard is named instead of silently read. ``stream``: ``states`` is a
    :class:`ShardedStates` over memory-mapped shards instead of one array in RAM."""
    manifest_path = Path(manifest_path)
    try:
        m = load_json(manifest_path)
        entries, label_dim = m["shards"], int(m["label_dim"])
        n_states, shape = len(m["stored_grid_index"]), tuple(m["shape"])
        total = sum(int(e["count"]) for e in entries)
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(
            f"{manifest_path}: not a trajectory manifest ({exc!r}); rerun the trajectories stage"
        ) from exc
    if not entries:
        raise ValueError(f"{manifest_path}: lists no shards; rerun the trajectories stage")
    # in RAM: one array filled shard by shard, so the peak is the set plus one shard
    states = None if stream else np.empty((total, n_states) + shape, dtype=STATE_DTYPE)
    maps = []
    seeds = np.empty(total, dtype=np.int64)
    labels = np.empty(total, dtype=np.int64)
    sigmas, row = None, 0
    for e in entries:
        path = manifest_path.parent / e["file"]
        if not path.is_file():
            raise FileNotFoundError(f"trajectory shard listed in {manifest_path} not found: {path}")
        if verify and sha256_file(path) != e["sha256"]:
            raise ValueError(
                f"{path}: sha256 differs from {manifest_path} (truncated, corrupted or "
                "regenerated since); rerun the trajectories stage"
            )
        if stream:
            s = npz_memmap(path, "states")
            with np.load(path, allow_pickle=False) as z:  # reads only the named members
                d = {k: z[k] for k in ("sigmas", "seeds", "labels") if k in z.files}
            missing = {"sigmas", "seeds", "labels"} - set(d)
            if missing:
                raise KeyError(f"{path} lacks arrays {sorted(missing)}")
        else:
            d = load_npz(path, ("states", "sigmas", "seeds", "labels"))
            s = d["states"]
        n = int(e["count"])
        if (
            s.shape != (n, n_states) + shape
            or s.dtype != STATE_DTYPE
            or len(d["seeds"]) != n
            or len(d["labels"]) != n
        ):
            raise ValueError(
                f"{path}: 'states' is {s.dtype} {s.shape}, expected "
                f"{np.dtype(STATE_DTYPE).name} {(n, n_states) + shape}"
            )
        if stream:
            maps.append(s)
        else:
            states[row : row + n] = s
        seeds[row : row + n], labels[row : row + n] = d["seeds"], d["labels"]
        sigmas = d["sigmas"] if sigmas is None else sigmas
        row += n
        del d, s
    if stream:
        states = ShardedStates(maps)
    return {"states": states, "sigmas": sigmas, "seeds": seeds, "labels": labels, "label_dim": label_dim}
