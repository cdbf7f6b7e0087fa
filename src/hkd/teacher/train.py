"""Train the EDM teacher from scratch (Karras et al. 2022, EDM loss and preconditioning)."""

from __future__ import annotations

import math
import shutil
import time

import torch
from tqdm import tqdm

from hkd.data.dataset import load_dataset
from hkd.ema import EMA
from hkd.nn.precond import EDMPrecond
from hkd.runtime import autocast, maybe_compile, progress_enabled
from hkd.teacher.network import save_teacher, teacher_kwargs
from hkd.teacher.sampler import one_hot


def edm_loss(net: EDMPrecond, images: torch.Tensor, gen: torch.Generator, P_mean: float,
             P_std: float, sigma_data: float, device, dtype, class_labels=None) -> torch.Tensor:
    """Per-pixel weighted denoising loss with log-normal noise levels (``class_labels``:
    one-hot [B, label_dim] for a conditional network)."""
    b = images.shape[0]
    rnd = torch.randn([b, 1, 1, 1], generator=gen).to(device)
    sigma = (rnd * P_std + P_mean).exp()
    weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
    noise = torch.randn(images.shape, generator=gen).to(device) * sigma
    with autocast(device, dtype):
        denoised = net((images + noise).contiguous(memory_format=torch.channels_last), sigma, class_labels)
    return weight * (denoised.float() - images) ** 2


def train_teacher(cfg: dict, data_path: str, out_path: str, tb_dir: str,
                  device: torch.device, dtype, stop_after: int | None = None) -> dict:
    """Train the teacher and write its checkpoint. ``stop_after``: return after that many
    steps without writing anything (throughput benchmarks)."""
    tcfg, edm = cfg["teacher"], cfg["edm"]
    gen = torch.Generator().manual_seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    data = load_dataset(data_path)
    images = torch.from_numpy(data["train_images"]).float()
    kwargs = teacher_kwargs(cfg)
    label_dim = kwargs["label_dim"]
    onehot = one_hot(torch.from_numpy(data["train_labels"]), label_dim) if label_dim else None
    net = EDMPrecond(**kwargs).to(device).to(memory_format=torch.channels_last).train()
    ema = EMA(net, tcfg["ema_halflife_kimg"], tcfg["ema_rampup_ratio"])
    opt = torch.optim.Adam(net.parameters(), lr=tcfg["lr"], betas=(0.9, 0.999), eps=1e-8)
    forward = maybe_compile(net, cfg["compile"], "the teacher training step")
    batch = tcfg["batch_size"]
    total_steps = math.ceil(tcfg["kimg"] * 1000 / batch)

    from torch.utils.tensorboard import SummaryWriter
    shutil.rmtree(tb_dir, ignore_errors=True)
    writer = SummaryWriter(tb_dir)
    order = torch.randperm(len(images), generator=gen)
    cursor, nimg, t0 = 0, 0, time.time()
    running = 0.0
    bar = tqdm(range(total_steps), desc="teacher", unit="step", mininterval=2,
               disable=not progress_enabled())
    t_first = None
    for step in bar:
        if step == 1:
            t_first = time.time()  # after the first (compiling) step
        if stop_after is not None and step == stop_after:
            writer.close()
            return {"steps": step, "batch": batch, "seconds_after_first_step": time.time() - t_first}
        if cursor + batch > len(order):
            order, cursor = torch.randperm(len(images), generator=gen), 0
        rows = order[cursor:cursor + batch]
        y = images[rows].to(device)
        labels = onehot[rows].to(device) if onehot is not None else None
        cursor += batch
        lr = tcfg["lr"] * min(nimg / max(tcfg["lr_rampup_kimg"] * 1000, 1e-8), 1.0)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = edm_loss(forward, y, gen, edm["P_mean"], edm["P_std"], edm["sigma_data"], device, dtype,
                        labels).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"teacher loss is {loss.item()} at step {step}; stopping")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in net.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        opt.step()
        nimg += batch
        ema.update(net, nimg, batch)
        running += loss.item()
        if (step + 1) % tcfg["log_every"] == 0 or step + 1 == total_steps:
            n = (step % tcfg["log_every"]) + 1
            writer.add_scalar("teacher/loss", running / n, nimg)
            writer.add_scalar("teacher/lr", lr, nimg)
            bar.set_postfix(loss=f"{running / n:.4f}", kimg=f"{nimg / 1000:.1f}")
            running = 0.0
    writer.close()
    elapsed = time.time() - t0
    stats = {"kimg": nimg / 1000, "steps": total_steps, "seconds": elapsed,
             "images_per_second": nimg / elapsed,
             "parameters": sum(p.numel() for p in net.parameters())}
    save_teacher(ema.net, out_path, stats)  # ema.net.init_kwargs are teacher_kwargs(cfg)
    return stats
