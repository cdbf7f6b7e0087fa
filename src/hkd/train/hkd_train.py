"""Train HKD on teacher trajectories (paper Alg. 1).

Per example: ``time_points`` times drawn uniformly on [eps, T) as in the paper, plus
t = T itself; every one is pushed through encode -> evolve to eps -> decode and compared
with the trajectory's end. A time between two stored grid points takes the state on the
straight line between them: Heun's update moves x linearly in t across each step, so
this is the solver's own piecewise-linear trajectory.
d = lambda1 * MSE (+ lambda2 * perceptual when configured). ``hkd.lambda1: annealed`` is the
paper's lambda1 = 10^(-3 epoch / epochs), which moves weight from MSE to the perceptual term;
without a perceptual term it only rescales the whole loss, and under Adam, whose
second-moment average lags the falling gradients, that acts as a learning-rate decay of up
to ~100x (README). ``constant`` keeps lambda1 = 1.
Every step uses a full batch (the remainder of a shuffled epoch is left for the next
shuffle), so a compiled forward pass sees one shape.
"""

from __future__ import annotations

import shutil
import time

import torch
from tqdm import tqdm

from hkd.ema import EMA
from hkd.io import save_torch
from hkd.koopman.model import HKD
from hkd.runtime import autocast, maybe_compile, progress_enabled
from hkd.teacher.trajectories import load_trajectories


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


def sample_times(b: int, k: int, sigmas: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """[B, 1 + k] times: column 0 is T = sigmas[0], the rest uniform on [eps, T)."""
    eps, T = float(sigmas[-2]), float(sigmas[0])
    mid = eps + (T - eps) * torch.rand(b, k, generator=gen, dtype=torch.float64)
    return torch.cat([torch.full((b, 1), T, dtype=torch.float64), mid], dim=1)


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


def hkd_loss(model, states: torch.Tensor, sigmas: torch.Tensor, t: torch.Tensor,
             device, dtype, class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Squared error per (example, time point): [B, K] for times ``t`` [B, K];
    ``class_labels``: one-hot [B, label_dim] of a conditional run."""
    b, k = t.shape
    x_t = states_at(states, sigmas, t).reshape(b * k, *states.shape[2:]).to(device)
    target = states[:, -1].float().to(device)
    if class_labels is not None:
        class_labels = class_labels.repeat_interleave(k, dim=0).to(device)
    with autocast(device, dtype):
        pred = model(x_t, t.reshape(-1).float().to(device), class_labels)
    err = (pred.float().reshape(b, k, *pred.shape[1:]) - target[:, None]).square()
    return err.flatten(2).mean(2)


def train_hkd(cfg: dict, teacher, traj_path: str, out_path: str, tb_dir: str,
              device: torch.device, dtype, max_trajectories: int | None = None) -> dict:
    """Train on the trajectories of ``traj_path`` (a manifest; the first ``max_trajectories``
    only when given) and write the checkpoint to ``out_path``."""
    hcfg, edm = cfg["hkd"], cfg["edm"]
    gen = torch.Generator().manual_seed(cfg["seed"] + 1)
    torch.manual_seed(cfg["seed"] + 1)
    traj = load_trajectories(traj_path)
    if max_trajectories:
        traj.update(states=traj["states"][:max_trajectories], labels=traj["labels"][:max_trajectories])
    states = torch.from_numpy(traj["states"])  # fp16 [N, S, C, H, W], converted per batch
    sigmas = torch.from_numpy(traj["sigmas"]).double()  # of the stored states, T .. eps, 0
    if traj["label_dim"] != teacher.label_dim:
        raise ValueError(f"{traj_path}: trajectories have label_dim {traj['label_dim']}, the teacher "
                         f"{teacher.label_dim}; rerun the trajectories stage")
    onehot = (torch.nn.functional.one_hot(torch.from_numpy(traj["labels"]), teacher.label_dim).float()
              if teacher.label_dim else None)
    n_traj = states.shape[0]
    model = HKD(teacher, eps=edm["sigma_min"], sigma_max=edm["sigma_max"],
                time_unit=hcfg["koopman_time_unit"]).to(device)
    model.unet.to(memory_format=torch.channels_last)
    ema = (EMA(model, hcfg["ema_halflife_kimg"], hcfg["ema_rampup_ratio"])
           if hcfg["ema_halflife_kimg"] > 0 else None)
    opt = torch.optim.Adam(model.parameters(), lr=hcfg["lr"])
    # With `compile: true` the first step traces and builds kernels (1.5-2.5 minutes on 2 CPU
    # cores); later steps run the fused forward/backward, ~1.2x faster there (README).
    forward = maybe_compile(model, cfg["compile"], "the HKD training step")
    batch = min(hcfg["batch_size"], n_traj)
    steps_per_epoch = n_traj // batch
    k = hcfg["time_points"]

    from torch.utils.tensorboard import SummaryWriter
    shutil.rmtree(tb_dir, ignore_errors=True)
    writer = SummaryWriter(tb_dir)
    t0, step, seen = time.time(), 0, 0
    total_steps = hcfg["epochs"] * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, hcfg["lr_rampdown"]))
    bar = tqdm(total=total_steps, desc="hkd-train", unit="step", mininterval=2,
               disable=not progress_enabled())
    for epoch in range(hcfg["epochs"]):
        lam = lambda1(epoch, hcfg["epochs"], hcfg["lambda1"])
        order = torch.randperm(n_traj, generator=gen)
        for start in range(0, steps_per_epoch * batch, batch):
            rows = order[start:start + batch]
            b = len(rows)
            t = sample_times(b, k, sigmas, gen)
            err = hkd_loss(forward, states[rows], sigmas, t, device, dtype,
                           onehot[rows] if onehot is not None else None)
            loss = lam * err.sum(1).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"HKD loss is {loss.item()} at epoch {epoch}, step {step}; stopping")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
            opt.step()
            seen += b
            if ema is not None:
                ema.update(model, seen, b)
            step += 1
            bar.update(1)
            if step % hcfg["log_every"] == 0:
                writer.add_scalar("hkd/loss_total", loss.item(), step)
                writer.add_scalar("hkd/loss_reconstruction_T", err[:, 0].mean().item(), step)
                if k:
                    writer.add_scalar("hkd/loss_trajectory", err[:, 1:].mean().item(), step)
                writer.add_scalar("hkd/lambda1", lam, step)
                writer.add_scalar("hkd/lr", opt.param_groups[0]["lr"], step)
                writer.add_scalar("hkd/grad_norm", grad_norm.item(), step)
                for l, (a, be) in enumerate(model.koopman.eigenvalues()):
                    writer.add_scalar(f"koopman/alpha_mean_level{l}", a.mean().item(), step)
                    writer.add_scalar(f"koopman/abs_beta_mean_level{l}", be.abs().mean().item(), step)
                bar.set_postfix(loss=f"{err.mean().item():.4f}", epoch=epoch)
            schedule.step()  # after logging, so hkd/lr is the rate this step used
    bar.close()
    writer.close()
    elapsed = time.time() - t0
    final = ema.net if ema is not None else model
    state = {k_: v.contiguous() for k_, v in final.state_dict().items()}
    stats = {"epochs": hcfg["epochs"], "steps": step, "examples": seen, "lambda1": hcfg["lambda1"],
             "seconds": elapsed,
             "examples_per_second": seen / elapsed,
             "example_time_points_per_second": seen * (k + 1) / elapsed,
             "trajectories": int(n_traj)}
    save_torch({"kind": "hkd", "teacher_kwargs": teacher.init_kwargs,
                "hkd_kwargs": model.init_kwargs,
                "state": state, "ema": ema is not None, "stats": stats}, out_path)
    return stats

