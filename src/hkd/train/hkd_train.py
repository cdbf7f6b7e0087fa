"""Train HKD on teacher trajectories (paper Alg. 1).

Per example: ``time_points`` grid indices drawn uniformly from the stored states with
sigma in [eps, T) (indices 1 .. N-1 of the Heun grid), plus t = T itself; every one is
pushed through encode -> evolve to eps -> decode and compared with the trajectory's end.
Only stored grid points are used (no interpolation between them).
d = lambda1 * MSE (+ lambda2 * perceptual when configured), lambda1 = 10^(-3 epoch / epochs).
"""

from __future__ import annotations

import math
import shutil
import time

import numpy as np
import torch
from tqdm import tqdm

from hkd.ema import EMA
from hkd.io import save_torch
from hkd.koopman.model import HKD, hkd_kwargs
from hkd.runtime import autocast, progress_enabled
from hkd.teacher.trajectories import load_trajectories


def lambda1(epoch: int, epochs: int) -> float:
    return 10.0 ** (-3.0 * epoch / epochs)


def hkd_loss(model: HKD, states: torch.Tensor, sigmas: torch.Tensor, idx: torch.Tensor,
             device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared error per (example, time point): [B, K]. ``idx`` [B, K] are grid indices."""
    b, k = idx.shape
    x_t = states[torch.arange(b)[:, None], idx].reshape(b * k, *states.shape[2:]).to(device)
    target = states[:, -1].to(device)
    t = sigmas[idx].reshape(-1).to(device)
    with autocast(device, dtype):
        pred = model(x_t, t)
    err = (pred.float().reshape(b, k, *pred.shape[1:]) - target[:, None]).square()
    return err.flatten(2).mean(2), pred


def train_hkd(cfg: dict, teacher, traj_path: str, out_path: str, tb_dir: str,
              device: torch.device, dtype) -> dict:
    hcfg, edm = cfg["hkd"], cfg["edm"]
    gen = torch.Generator().manual_seed(cfg["seed"] + 1)
    torch.manual_seed(cfg["seed"] + 1)
    traj = load_trajectories(traj_path)
    states = torch.from_numpy(traj["states"])  # fp16 [N, S+1, C, H, W], converted per batch
    sigmas = torch.from_numpy(traj["sigmas"]).float()
    n_traj, n_grid = states.shape[0], states.shape[1]
    model = HKD(teacher, eps=edm["sigma_min"], sigma_max=edm["sigma_max"]).to(device)
    model.unet.to(memory_format=torch.channels_last)
    ema = EMA(model, hcfg["ema_halflife_kimg"], None) if hcfg["ema_halflife_kimg"] > 0 else None
    opt = torch.optim.Adam(model.parameters(), lr=hcfg["lr"])
    batch = min(hcfg["batch_size"], n_traj)
    steps_per_epoch = math.ceil(n_traj / batch)
    k = hcfg["time_points"]

    from torch.utils.tensorboard import SummaryWriter
    shutil.rmtree(tb_dir, ignore_errors=True)
    writer = SummaryWriter(tb_dir)
    t0, step, seen = time.time(), 0, 0
    bar = tqdm(total=hcfg["epochs"] * steps_per_epoch, desc="hkd-train", unit="step", mininterval=2,
               disable=not progress_enabled())
    for epoch in range(hcfg["epochs"]):
        lam = lambda1(epoch, hcfg["epochs"])
        order = torch.randperm(n_traj, generator=gen)
        for start in range(0, n_traj, batch):
            rows = order[start:start + batch]
            b = len(rows)
            mid = torch.randint(1, n_grid - 1, (b, k), generator=gen)
            idx = torch.cat([torch.zeros(b, 1, dtype=torch.long), mid], dim=1)  # column 0: t = T
            err, _ = hkd_loss(model, states[rows].float(), sigmas, idx, device, dtype)
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
                writer.add_scalar("hkd/grad_norm", grad_norm.item(), step)
                for l, (a, be) in enumerate(model.koopman.eigenvalues()):
                    writer.add_scalar(f"koopman/alpha_mean_level{l}", a.mean().item(), step)
                    writer.add_scalar(f"koopman/abs_beta_mean_level{l}", be.abs().mean().item(), step)
                bar.set_postfix(loss=f"{err.mean().item():.4f}", epoch=epoch)
    bar.close()
    writer.close()
    elapsed = time.time() - t0
    final = ema.net if ema is not None else model
    state = {k_: v.contiguous() for k_, v in final.state_dict().items()}
    stats = {"epochs": hcfg["epochs"], "steps": step, "seconds": elapsed,
             "examples_per_second": seen / elapsed,
             "example_time_points_per_second": seen * (k + 1) / elapsed,
             "trajectories": int(n_traj)}
    save_torch({"kind": "hkd", "teacher_kwargs": teacher.init_kwargs,
                "hkd_kwargs": hkd_kwargs(edm["sigma_min"], edm["sigma_max"]),
                "state": state, "ema": ema is not None, "stats": stats}, out_path)
    return stats

