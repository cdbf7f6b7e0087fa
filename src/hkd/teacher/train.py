"""Train the EDM teacher from scratch (Karras et al. 2022, EDM loss and preconditioning).

The whole training state (weights, EMA, Adam, random generators, data order) is saved every
``teacher.checkpoint_every`` steps to a resume file beside the checkpoint; a killed run
started again continues from it and ends with the weights an uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from hkd.compile_guard import maybe_compile
from hkd.data.dataset import load_dataset
from hkd.ema import EMA
from hkd.gradient_watch import GradientWatch
from hkd.io import load_resume, save_torch, sha256_file
from hkd.nn.precond import EDMPrecond
from hkd.runtime import autocast
from hkd.teacher.network import save_teacher, start_from_unconditional, teacher_kwargs
from hkd.teacher.sampler import one_hot

#: the path name of the compiled training step (compile_guard, logs, provenance)
TRAINING_STEP = "the teacher training step"


def edm_loss(
    net: EDMPrecond,
    images: torch.Tensor,
    gen: torch.Generator,
    P_mean: float,
    P_std: float,
    sigma_data: float,
    device,
    dtype,
    class_labels=None,
) -> torch.Tensor:
    """Per-pixel weighted denoising loss with log-normal noise levels (``class_labels``:
    one-hot [B, label_dim] for a conditional network)."""
    b = images.shape[0]
    rnd = torch.randn([b, 1, 1, 1], generator=gen).to(device)
    sigma = (rnd * P_std + P_mean).exp()
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    noise = torch.randn(images.shape, generator=gen).to(device) * sigma
    with autocast(device, dtype):
        denoised = net((images + noise).contiguous(memory_format=torch.channels_last), sigma, class_labels)
    return weight * (denoised.float() - images) ** 2


def _fingerprint(cfg: dict, data_path: str, init_path: str | None) -> str:
    """What a resume state must have been made with: the teacher's settings, data and start."""
    keys = ("seed", "precision", "compile", "data", "network", "edm", "teacher")
    h = hashlib.sha256(json.dumps({k: cfg[k] for k in keys}, sort_keys=True).encode())
    h.update(sha256_file(data_path).encode())
    if init_path:
        h.update(sha256_file(init_path).encode())
    return h.hexdigest()


def train_teacher(
    cfg: dict,
    data_path: str,
    out_path: str,
    tb_dir: str,
    device: torch.device,
    dtype,
    stop_after: int | None = None,
    resume_path: str | None = None,
    init_path: str | None = None,
) -> dict:
    """Train the teacher and write its checkpoint. ``stop_after``: return after that many
    steps without writing anything (throughput benchmarks). ``resume_path``: where the
    training state is saved every ``teacher.checkpoint_every`` steps and resumed from.
    ``init_path``: an unconditional teacher this class-conditional one starts from."""
    tcfg, edm = cfg["teacher"], cfg["edm"]
    gen = torch.Generator().manual_seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    data = load_dataset(data_path)
    images = torch.from_numpy(data["train_images"]).float()
    kwargs = teacher_kwargs(cfg)
    label_dim = kwargs["label_dim"]
    onehot = one_hot(torch.from_numpy(data["train_labels"]), label_dim) if label_dim else None
    net = EDMPrecond(**kwargs)
    if init_path:
        start_from_unconditional(net, init_path)
    net = net.to(device).to(memory_format=torch.channels_last).train()
    ema = EMA(net, tcfg["ema_halflife_kimg"], tcfg["ema_rampup_ratio"])
    opt = torch.optim.Adam(net.parameters(), lr=tcfg["lr"], betas=(0.9, 0.999), eps=1e-8)
    batch = tcfg["batch_size"]
    total_steps = math.ceil(tcfg["kimg"] * 1000 / batch)
    order = torch.randperm(len(images), generator=gen)
    step0, cursor, nimg = 0, 0, 0

    resume = Path(resume_path) if resume_path else None
    fingerprint = _fingerprint(cfg, data_path, init_path) if resume else None
    state = load_resume(resume, fingerprint, "teacher", "settings or data") if resume else None
    if state is not None:
        net.load_state_dict(state["net"])
        ema.net.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        step0, cursor, nimg, order = state["step"], state["cursor"], state["nimg"], state["order"]
        print(f"teacher: resuming from step {step0} of {total_steps} ({resume})")
    forward = maybe_compile(net, cfg["compile"], TRAINING_STEP)
    watch = GradientWatch(net.named_parameters(), TRAINING_STEP, forward)
    watch.restore(state.get("nonfinite") if state is not None else None)

    from torch.utils.tensorboard import SummaryWriter

    if state is None:
        shutil.rmtree(tb_dir, ignore_errors=True)
    writer = SummaryWriter(tb_dir, purge_step=nimg if state is not None else None)
    t0 = time.time()
    running = 0.0
    bar = tqdm(
        range(step0, total_steps),
        desc="teacher",
        unit="step",
        mininterval=2,
        initial=step0,
        total=total_steps,
    )
    t_first = None
    for step in bar:
        if step == step0 + 1:
            t_first = time.time()  # after the first (compiling) step
        if stop_after is not None and step == stop_after:
            writer.close()
            return {"steps": step, "batch": batch, "seconds_after_first_step": time.time() - t_first}
        if cursor + batch > len(order):
            order, cursor = torch.randperm(len(images), generator=gen), 0
        rows = order[cursor : cursor + batch]
        y = images[rows].to(device)
        labels = onehot[rows].to(device) if onehot is not None else None
        cursor += batch
        lr = tcfg["lr"] * min(nimg / max(tcfg["lr_rampup_kimg"] * 1000, 1e-8), 1.0)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = edm_loss(
            forward, y, gen, edm["P_mean"], edm["P_std"], edm["sigma_data"], device, dtype, labels
        ).mean()
        where = (
            f"the last saved state is in {resume}" if resume and resume.is_file() else "no state was saved"
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(f"teacher loss is {loss.item()} at step {step}; stopping ({where})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        watch.count(step, f" ({where})")
        for p in net.parameters():  # EDM's repair, for the few steps the watch tolerates
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
            writer.add_scalar("teacher/nonfinite_grad_elements", watch.take_since_log(), nimg)
            bar.set_postfix(loss=f"{running / n:.4f}", kimg=f"{nimg / 1000:.1f}")
            running = 0.0
        if resume and (step + 1) % tcfg["checkpoint_every"] == 0 and step + 1 < total_steps:
            save_torch(
                {
                    "fingerprint": fingerprint,
                    "step": step + 1,
                    "cursor": cursor,
                    "nimg": nimg,
                    "order": order,
                    "net": net.state_dict(),
                    "ema": ema.net.state_dict(),
                    "opt": opt.state_dict(),
                    "gen": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "nonfinite": watch.summary(),
                },
                resume,
            )
    writer.close()
    elapsed = time.time() - t0
    stats = {
        "kimg": nimg / 1000,
        "steps": total_steps,
        "seconds": elapsed,
        "images_per_second": (nimg - step0 * batch) / elapsed,
        "parameters": sum(p.numel() for p in net.parameters()),
        "resumed_from_step": step0 if state is not None else None,
        "started_from": init_path,
        **watch.summary(),
    }
    save_teacher(ema.net, out_path, stats)  # ema.net.init_kwargs are teacher_kwargs(cfg)
    if resume and resume.is_file():
        resume.unlink()  # finished: a later forced rerun trains afresh
    return stats
