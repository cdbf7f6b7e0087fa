"""Train HKD on teacher trajectories (paper Alg. 1).

Per example: ``time_points`` times on [eps, T) plus t = T itself (how they are drawn,
the distance and the terms' weights: ``hkd.train.objective``); every one is pushed
through encode -> evolve to eps -> decode and compared with the trajectory's end. A time
between two stored grid points takes the state on the straight line between them: Heun's
update moves x linearly in t across each step, so this is the solver's own piecewise-linear
trajectory. d = lambda1 * distance (+ lambda2 * perceptual when configured); the loss is d
at t = T plus ``hkd.trajectory_weight`` times the other times' d. ``hkd.lambda1: annealed`` is the
paper's lambda1 = 10^(-3 epoch / epochs), which moves weight from MSE to the perceptual term;
without a perceptual term it only rescales the whole loss, and under Adam, whose
second-moment average lags the falling gradients, that acts as a learning-rate decay of up
to ~100x (docs/faithful.md). ``constant`` keeps lambda1 = 1.
Every step uses a full batch (the remainder of a shuffled epoch is left for the next
shuffle), so a compiled forward pass sees one shape. Trajectory shards are memory-mapped,
not loaded: each step reads its rows (a background thread reads the next step's), so RAM
holds batches, not the set, and every torchrun process reads only its own rows.

Training state (weights, EMA, optimiser, schedule, random generators, position in the
epoch) is saved every ``hkd.checkpoint_every`` steps to a resume file beside the final
checkpoint, outside the files Snakemake and DVC declare, so a killed run continues where
it stopped and ends with the same weights. A non-finite loss stops the run and leaves that
last good state. Under torchrun every process draws the same global batch and times and
trains on its slice; DDP averages the gradients, so N processes match one at the same
global batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

from hkd import distributed
from hkd.compile_guard import maybe_compile
from hkd.ema import EMA
from hkd.gradient_watch import GradientWatch
from hkd.io import load_resume, save_torch, sha256_file
from hkd.koopman.diagnostics import koopman_exponents, log_koopman
from hkd.koopman.model import build_hkd, hkd_checkpoint
from hkd.runtime import autocast
from hkd.teacher.sampler import one_hot, seeded_inputs
from hkd.teacher.trajectories import load_trajectories
from hkd.train.objective import distance, sample_times, time_weights
from hkd.train.perceptual import build_perceptual

#: the path name of the compiled training step (compile_guard, logs, provenance)
TRAINING_STEP = "the HKD training step"

#: weight of the perceptual term (paper: lambda2 = 1)
LAMBDA2 = 1.0


def lambda1(epoch: int, epochs: int, schedule: str = "annealed") -> float:
    if schedule == "constant":
        return 1.0
    if schedule != "annealed":
        raise ValueError(f"unknown lambda1 schedule {schedule!r}")
    return 10.0 ** (-3.0 * epoch / epochs)


def lr_factor(step: int, total_steps: int, rampdown: float) -> float:
    """1 until the last ``rampdown`` fraction of the steps, then linearly down to 0 at the end
    (``rampdown = 0``: the paper's constant lr)."""
    if rampdown <= 0:
        return 1.0
    return min(1.0, (total_steps - step) / (rampdown * total_steps))


def states_at(states: torch.Tensor, sigmas: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """States [B, K, C, H, W] at times ``t`` [B, K] (within [sigmas[-2], sigmas[0]]) by
    linear interpolation in t between the bracketing grid states of each trajectory."""
    grid = sigmas[:-1].double()  # decreasing, T .. eps (the final sigma = 0 is the target)
    idx = torch.searchsorted(-grid, -t, right=True) - 1  # grid[idx] >= t > grid[idx + 1]
    idx = idx.clamp(0, len(grid) - 2)
    t0, t1 = grid[idx], grid[idx + 1]
    w = ((t0 - t) / (t0 - t1)).clamp(0, 1).float()[..., None, None, None]
    rows = torch.arange(states.shape[0])[:, None]
    return (1 - w) * states[rows, idx].float() + w * states[rows, idx + 1].float()


def hkd_distances(
    model,
    states: torch.Tensor,
    sigmas: torch.Tensor,
    t: torch.Tensor,
    device,
    dtype,
    class_labels: torch.Tensor | None = None,
    perceptual=None,
):
    """(MSE, LPIPS or None) per (example, time point), each [B, K], for times ``t`` [B, K];
    ``class_labels``: one-hot [B, label_dim] of a conditional run."""
    b, k = t.shape
    x_t = states_at(states, sigmas, t).reshape(b * k, *states.shape[2:]).to(device)
    target = states[:, -1].float().to(device)
    if class_labels is not None:
        class_labels = class_labels.repeat_interleave(k, dim=0).to(device)
    with autocast(device, dtype):
        pred = model(x_t, t.reshape(-1).float().to(device), class_labels)
    pred = pred.float().reshape(b, k, *pred.shape[1:])
    mse = (pred - target[:, None]).square().flatten(2).mean(2)
    if perceptual is None:
        return mse, None
    with autocast(device, dtype):
        lp = perceptual(pred.flatten(0, 1), target.repeat_interleave(k, dim=0))
    return mse, lp.float().reshape(b, k)


def hkd_loss(model, states, sigmas, t, device, dtype, class_labels=None) -> torch.Tensor:
    """Squared error per (example, time point), [B, K]."""
    return hkd_distances(model, states, sigmas, t, device, dtype, class_labels)[0]


def _fingerprint(cfg: dict, teacher, traj_path: str, max_trajectories, world: int) -> str:
    """What a resume state must have been made with: settings, teacher weights, trajectories."""
    h = hashlib.sha256(
        json.dumps(
            {k: cfg[k] for k in ("seed", "precision", "compile", "edm", "hkd")}, sort_keys=True
        ).encode()
    )
    h.update(json.dumps([max_trajectories, world, sha256_file(traj_path)]).encode())
    for name, v in teacher.state_dict().items():
        h.update(name.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_hkd(
    cfg: dict,
    teacher,
    traj_path: str,
    out_path: str,
    tb_dir: str,
    device: torch.device,
    dtype,
    max_trajectories: int | None = None,
    resume_path: str | None = None,
    stop_after: int | None = None,
    snapshot_paths: dict[int, str] | None = None,
) -> dict:
    """Train on the trajectories of ``traj_path`` (a manifest; the first ``max_trajectories``
    only when given) and write the checkpoint to ``out_path``. ``resume_path``: where the
    training state is saved every ``hkd.checkpoint_every`` steps and resumed from.
    ``stop_after``: return after that many steps without writing ``out_path`` (benchmarks).
    ``snapshot_paths``: {epoch: path} of checkpoints of the weights after those epochs
    (Table 5); kept in a ``.partial`` folder beside them while training, so a resumed run
    still has the earlier ones, and moved into place when training finishes."""
    hcfg, edm = cfg["hkd"], cfg["edm"]
    rank, world, _ = distributed.world()
    traj = load_trajectories(traj_path, stream=True)
    states = traj["states"]  # memory-mapped fp16 [N, S, C, H, W]; each step reads its rows
    if max_trajectories:
        states, traj["labels"] = states.head(max_trajectories), traj["labels"][:max_trajectories]
    sigmas = torch.from_numpy(traj["sigmas"]).double()  # of the stored states, T .. eps, 0
    if traj["label_dim"] != teacher.label_dim:
        raise ValueError(
            f"{traj_path}: trajectories have label_dim {traj['label_dim']}, the teacher "
            f"{teacher.label_dim}; rerun the trajectories stage"
        )
    onehot = one_hot(torch.from_numpy(traj["labels"]), teacher.label_dim) if teacher.label_dim else None
    n_traj = states.shape[0]
    batch = min(hcfg["batch_size"], n_traj)
    if batch % world:
        raise ValueError(
            f"hkd.batch_size {batch} is the global batch and must be divisible by the "
            f"{world} torchrun processes"
        )
    local = slice(rank * batch // world, (rank + 1) * batch // world)
    steps_per_epoch = n_traj // batch
    total_steps = hcfg["epochs"] * steps_per_epoch
    k = hcfg["time_points"]
    micro = hcfg["micro_batch"] or batch  # examples per forward/backward pass in each process
    weights = time_weights(k, hcfg["trajectory_weight"]).to(device)  # t = T, then the trajectory times
    pixels = math.prod(states.shape[2:])  # values per image, for the pseudo-Huber distance
    perceptual = build_perceptual(hcfg, device)

    torch.manual_seed(cfg["seed"] + 1)
    gen = torch.Generator().manual_seed(cfg["seed"] + 1)
    model = build_hkd(teacher, cfg).to(device)
    model.unet.to(memory_format=torch.channels_last)
    ema = (
        EMA(model, hcfg["ema_halflife_kimg"], hcfg["ema_rampup_ratio"])
        if hcfg["ema_halflife_kimg"] > 0
        else None
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=hcfg["lr"])
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, hcfg["lr_rampdown"])
    )
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    resume = Path(resume_path) if resume_path else None
    fingerprint = _fingerprint(cfg, teacher, traj_path, max_trajectories, world) if resume else None
    step, seen, epoch0, pos0, order = 0, 0, 0, 0, None
    last_saved = None
    state = (
        load_resume(resume, fingerprint, "hkd-train", "settings, teacher or trajectories") if resume else None
    )
    if state is not None:
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.net.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        step, seen, epoch0, pos0, order = (
            state["step"],
            state["seen"],
            state["epoch"],
            state["pos"],
            state["order"],
        )
        last_saved = step
        print(f"hkd-train: resuming from step {step} of {total_steps} ({resume})")

    snapshot_paths = snapshot_paths or {}
    partial = {e: Path(p).parent / ".partial" / Path(p).name for e, p in snapshot_paths.items()}
    if state is None and rank == 0:  # a fresh start: snapshots of an earlier attempt are stale
        for path in partial.values():
            path.unlink(missing_ok=True)

    def checkpoint(stats: dict) -> dict:
        return hkd_checkpoint(
            ema.net if ema is not None else model, teacher.init_kwargs, stats, ema is not None
        )

    def save_state(epoch: int, pos: int, order: torch.Tensor) -> None:
        if rank == 0:
            save_torch(
                {
                    "fingerprint": fingerprint,
                    "step": step,
                    "seen": seen,
                    "epoch": epoch,
                    "pos": pos,
                    "order": order,
                    "model": model.state_dict(),
                    "ema": ema.net.state_dict() if ema is not None else None,
                    "opt": opt.state_dict(),
                    "schedule": schedule.state_dict(),
                    "scaler": scaler.state_dict(),
                    "gen": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "nonfinite": watch.summary(),
                },
                resume,
            )

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    # With `compile: true` the first step traces and builds kernels (1.5-2.5 minutes on 2 CPU
    # cores); later steps run the fused forward/backward, ~1.2x faster there (docs/faithful.md).
    forward = maybe_compile(net, cfg["compile"], TRAINING_STEP)
    watch = GradientWatch(model.named_parameters(), TRAINING_STEP, forward)
    watch.restore(state.get("nonfinite") if state is not None else None)

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        if state is None:
            shutil.rmtree(tb_dir, ignore_errors=True)
        writer = SummaryWriter(tb_dir, purge_step=step if state is not None else None)
    grid_seeds = range(cfg["sample"]["seed_offset"], cfg["sample"]["seed_offset"] + 16)
    grid_noise, grid_labels = seeded_inputs(
        grid_seeds, (model.img_channels, model.img_resolution, model.img_resolution), model.label_dim, device
    )
    # the next step's rows are read from the shard files while this step computes
    reader = ThreadPoolExecutor(1, thread_name_prefix="hkd-trajectory-reader")

    def read_rows(rows: torch.Tensor):
        return reader.submit(lambda: torch.from_numpy(states.take(rows.numpy())))

    t0, step0, t_first = time.time(), step, None
    bar = tqdm(
        total=total_steps,
        initial=step,
        desc="hkd-train",
        unit="step",
        mininterval=2,
        **({"disable": True} if rank != 0 else {}),  # rank 0: TQDM_DISABLE decides
    )
    for epoch in range(epoch0, hcfg["epochs"]):
        lam = lambda1(epoch, hcfg["epochs"], hcfg["lambda1"])
        if not (state is not None and epoch == epoch0):
            order, pos0 = torch.randperm(n_traj, generator=gen), 0
        end = steps_per_epoch * batch
        pending = read_rows(order[pos0 : pos0 + batch][local]) if pos0 < end else None
        for start in range(pos0, end, batch):
            rows = order[start : start + batch]
            # the global batch's times, the same in every process
            t = sample_times(batch, k, sigmas, gen, hcfg["time_sampling"], (edm["P_mean"], edm["P_std"]))
            mine, t_mine = rows[local], t[local]
            my_states = pending.result()  # this process's rows of the batch, in the order of `mine`
            if start + batch < end:
                pending = read_rows(order[start + batch : start + 2 * batch][local])
            opt.zero_grad(set_to_none=True)
            errs, n_local = [], len(mine)
            parts = list(zip(mine.split(micro), my_states.split(micro), t_mine.split(micro)))
            for i, (part, part_states, t_part) in enumerate(parts):
                # gradients accumulate over the parts; DDP synchronises only after the last
                sync = world == 1 or i == len(parts) - 1
                with contextlib.nullcontext() if sync else net.no_sync():
                    mse, lp = hkd_distances(
                        forward,
                        part_states,
                        sigmas,
                        t_part,
                        device,
                        dtype,
                        onehot[part] if onehot is not None else None,
                        perceptual,
                    )
                    dist = distance(mse, pixels, hcfg["distance"], hcfg["pseudo_huber_c"])
                    err = lam * dist if lp is None else lam * dist + LAMBDA2 * lp  # d of the paper
                    loss = (err * weights).sum(1).sum() / n_local  # the parts add up to the batch mean
                    if not distributed.all_finite(loss):
                        where = (
                            f"the last good state (step {last_saved}) is in {resume}"
                            if last_saved is not None
                            else "no resume state was saved yet"
                        )
                        raise FloatingPointError(
                            f"HKD loss is {loss.item()} at epoch {epoch}, step {step}; stopping ({where})"
                        )
                    scaler.scale(loss).backward()
                errs.append((err.detach(), mse.detach(), lp.detach() if lp is not None else None))
            err = torch.cat([e[0] for e in errs])
            mse = torch.cat([e[1] for e in errs])
            lp = torch.cat([e[2] for e in errs]) if perceptual is not None else None
            loss = (err * weights).sum(1).mean()
            scaler.unscale_(opt)
            where = (
                f" (the last good state, step {last_saved}, is in {resume})"
                if last_saved is not None
                else " (no resume state was saved yet)"
            )
            if watch.count(step, where, scaler_skips=scaler.is_enabled()) and not scaler.is_enabled():
                opt.zero_grad(set_to_none=True)  # skip this update, as a loss scaler would
            grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
            scaler.step(opt)
            scaler.update()
            seen += batch
            if ema is not None:
                ema.update(model, seen, batch)
            step += 1
            if step == step0 + 1:
                t_first = time.time()  # after the first (compiling) step
            bar.update(1)
            if writer is not None and step % hcfg["log_every"] == 0:
                writer.add_scalar("hkd/loss_total", loss.item(), step)
                writer.add_scalar("hkd/loss_reconstruction_T", err[:, 0].mean().item(), step)
                if k:
                    writer.add_scalar("hkd/loss_trajectory", err[:, 1:].mean().item(), step)
                writer.add_scalar("hkd/mse", mse.mean().item(), step)
                if lp is not None:
                    writer.add_scalar("hkd/lpips", lp.mean().item(), step)
                writer.add_scalar("hkd/lambda1", lam, step)
                writer.add_scalar("hkd/lr", opt.param_groups[0]["lr"], step)
                writer.add_scalar("hkd/grad_norm", grad_norm.item(), step)
                writer.add_scalar("hkd/nonfinite_grad_elements", watch.take_since_log(), step)
                log_koopman(writer, model, step)
                bar.set_postfix(loss=f"{err.mean().item():.4f}", epoch=epoch)
            if writer is not None and hcfg["sample_every"] and step % hcfg["sample_every"] == 0:
                shown = ema.net if ema is not None else model
                with torch.no_grad(), autocast(device, dtype):
                    imgs = shown.sample(grid_noise, one_hot(grid_labels, model.label_dim)).float()
                writer.add_images("samples/hkd_one_step", ((imgs + 1) / 2).clamp(0, 1).cpu(), step)
            schedule.step()  # after logging, so hkd/lr is the rate this step used
            if resume and step % hcfg["checkpoint_every"] == 0:
                save_state(epoch, start + batch, order)
                last_saved = step
            if stop_after is not None and step - step0 >= stop_after:
                reader.shutdown(cancel_futures=True)
                bar.close()
                if writer is not None:
                    writer.close()
                return {
                    "steps": step - step0,
                    "batch": batch,
                    "time_points": k + 1,
                    "seconds": time.time() - t0,
                    "seconds_after_first_step": time.time() - t_first,
                }
        if epoch in partial and rank == 0:  # the weights after this epoch (Table 5)
            save_torch(checkpoint({"epoch": epoch, "steps": step, "examples": seen}), partial[epoch])
    reader.shutdown()
    bar.close()
    if writer is not None:
        writer.close()
    elapsed = time.time() - t0
    done = step - step0
    stats = {
        "epochs": hcfg["epochs"],
        "steps": step,
        "steps_this_run": done,
        "examples": seen,
        "lambda1": hcfg["lambda1"],
        "seconds": elapsed,
        "processes": world,
        "examples_per_second": done * batch / elapsed if done else None,
        "example_time_points_per_second": done * batch * (k + 1) / elapsed if done else None,
        "trajectories": int(n_traj),
        "resumed_from_step": step0 if state is not None else None,
        "koopman_T": koopman_exponents(ema.net if ema is not None else model),
        **watch.summary(),
    }
    if rank == 0:
        for e, path in snapshot_paths.items():
            if not partial[e].is_file():
                raise FileNotFoundError(
                    f"snapshot after epoch {e} missing: {partial[e]} (removed while training?)"
                )
            partial[e].replace(path)
        save_torch(checkpoint(stats), out_path)
        if resume and resume.is_file():
            resume.unlink()  # finished: a later forced rerun trains afresh
    distributed.barrier()
    return stats
