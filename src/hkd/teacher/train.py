"""Train the EDM teacher from scratch (Karras et al. 2022, EDM loss and preconditioning).

As EDM's training loop: the loss is summed over pixels and divided by the batch, Adam's lr
ramps up linearly over ``teacher.lr_rampup_kimg`` (from the images seen before each step),
non-finite gradient elements are replaced (NaN by 0, +-inf by +-1e5; no norm clipping), and
the EMA's ramp-up counts the images before each step's batch. Unlike EDM, the non-finite
elements are counted first and stop the run after a few such steps (``hkd.gradient_watch``).

The whole training state (weights, EMA, Adam, lr schedule, random generators, data order) is
saved every ``teacher.checkpoint_every`` steps to a resume file beside the checkpoint; a killed
run started again continues from it and ends with the weights an uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from hkd.compile_guard import maybe_compile
from hkd.data.dataset import load_dataset
from hkd.ema import EMA
from hkd.gradient_watch import GradientWatch
from hkd.io import sha256_file, sha256_json
from hkd.nn.precond import EDMPrecond
from hkd.runtime import autocast
from hkd.teacher.network import save_teacher, start_from_unconditional, teacher_kwargs
from hkd.teacher.sampler import one_hot
from hkd.train.resume import open_writer, restore_training_state, save_training_state

#: the path name of the compiled training step (compile_guard, logs, provenance)
TRAINING_STEP = "the teacher training step"

#: what replaces +-inf gradient elements (EDM's training loop); NaN becomes 0
GRAD_INF_VALUE = 1e5

#: the resume state's keys besides the parts and the random generators
_POSITION = ("step", "cursor", "nimg", "order")


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


def lr_ramp(step: int, batch: int, rampup_kimg: float) -> float:
    """EDM's lr factor at ``step``: linear in the images seen before it, 1 after the ramp-up."""
    return min(step * batch / max(rampup_kimg * 1000, 1e-8), 1.0)


def _fingerprint(cfg: dict, data_path: str, init_path: str | None) -> str:
    """What a resume state must have been made with: the teacher's settings, data and start."""
    keys = ("seed", "precision", "compile", "data", "network", "edm", "teacher")
    return sha256_json(
        {
            "settings": {k: cfg[k] for k in keys},
            "data": sha256_file(data_path),
            "init": sha256_file(init_path) if init_path else None,
        }
    )


@dataclass
class _Run:
    """The trainer's data, network, optimiser and position; ``nimg``: images seen."""

    images: torch.Tensor
    onehot: torch.Tensor | None
    net: EDMPrecond
    ema: EMA
    opt: torch.optim.Adam
    schedule: torch.optim.lr_scheduler.LambdaLR
    gen: torch.Generator
    batch: int
    total_steps: int
    order: torch.Tensor
    step: int = 0
    cursor: int = 0
    nimg: int = 0

    def parts(self) -> dict:
        return {"net": self.net, "ema": self.ema.net, "opt": self.opt, "schedule": self.schedule}

    def position(self) -> dict:
        return {k: getattr(self, k) for k in _POSITION}


def _build(cfg: dict, data_path: str, init_path: str | None, device: torch.device) -> _Run:
    """Data, network (from ``init_path`` when given), EMA, Adam and lr ramp at step 0, seeded."""
    tcfg = cfg["teacher"]
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
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_ramp(s, batch, tcfg["lr_rampup_kimg"]))
    total_steps = math.ceil(tcfg["kimg"] * 1000 / batch)
    order = torch.randperm(len(images), generator=gen)
    return _Run(images, onehot, net, ema, opt, schedule, gen, batch, total_steps, order)


def _restore(run: _Run, resume: Path | None, fingerprint: str | None) -> dict | None:
    """Continue from the resume state at ``resume`` when there is a usable one."""
    made_of = "settings or data (or by an earlier version of the trainer)"
    state = restore_training_state(resume, fingerprint, "teacher", made_of, run.parts(), run.gen, _POSITION)
    if state is not None:
        run.step, run.cursor, run.nimg, run.order = (state[k] for k in _POSITION)
        print(f"teacher: resuming from step {run.step} of {run.total_steps} ({resume})")
    return state


def _next_batch(run: _Run, device: torch.device):
    """The step's images and one-hot labels (None: unconditional); a new order per epoch."""
    if run.cursor + run.batch > len(run.order):
        run.order, run.cursor = torch.randperm(len(run.images), generator=run.gen), 0
    rows = run.order[run.cursor : run.cursor + run.batch]
    run.cursor += run.batch
    labels = run.onehot[rows].to(device) if run.onehot is not None else None
    return run.images[rows].to(device), labels


def _train_step(run: _Run, cfg: dict, forward, watch: GradientWatch, device, dtype, where: str) -> float:
    """One update of the network and its EMA; the loss per pixel (EDM's reported loss)."""
    edm = cfg["edm"]
    y, labels = _next_batch(run, device)
    per_pixel = edm_loss(
        forward, y, run.gen, edm["P_mean"], edm["P_std"], edm["sigma_data"], device, dtype, labels
    )
    loss = per_pixel.sum() / run.batch  # EDM: loss.sum() * loss_scaling / batch_gpu_total
    if not torch.isfinite(loss):
        raise FloatingPointError(f"teacher loss is {loss.item()} at step {run.step}; stopping ({where})")
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    watch.count(run.step, f" ({where})")
    for p in run.net.parameters():  # EDM's repair, for the few steps the watch tolerates
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0, posinf=GRAD_INF_VALUE, neginf=-GRAD_INF_VALUE, out=p.grad)
    run.opt.step()
    run.schedule.step()  # the lr of the next step, from the images seen before it
    run.ema.update(run.net, run.nimg, run.batch)  # EDM: the count before this batch
    run.nimg += run.batch
    run.step += 1
    return loss.item() / per_pixel[0].numel()


def _log(writer, bar, losses: list[float], lr: float, nimg: int, watch: GradientWatch) -> None:
    """Mean per-pixel loss of the steps since the last log, lr and non-finite gradient count."""
    mean = sum(losses) / len(losses)
    writer.add_scalar("teacher/loss", mean, nimg)
    writer.add_scalar("teacher/lr", lr, nimg)
    writer.add_scalar("teacher/nonfinite_grad_elements", watch.take_since_log(), nimg)
    bar.set_postfix(loss=f"{mean:.4f}", kimg=f"{nimg / 1000:.1f}")
    losses.clear()


def _where(resume: Path | None) -> str:
    """Where a stopped run's last saved state is, for its error message."""
    return f"the last saved state is in {resume}" if resume and resume.is_file() else "no state was saved"


def _finish(run: _Run, out_path: str, resume: Path | None, stats: dict) -> dict:
    """Write the EMA weights with ``stats`` and drop the resume state: a later forced rerun
    trains afresh."""
    save_teacher(run.ema.net, out_path, stats)  # ema.net.init_kwargs are teacher_kwargs(cfg)
    if resume and resume.is_file():
        resume.unlink()
    return stats


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
    tcfg = cfg["teacher"]
    run = _build(cfg, data_path, init_path, device)
    resume = Path(resume_path) if resume_path else None
    fingerprint = _fingerprint(cfg, data_path, init_path) if resume else None
    state = _restore(run, resume, fingerprint)
    step0 = run.step
    forward = maybe_compile(run.net, cfg["compile"], TRAINING_STEP)
    watch = GradientWatch(run.net.named_parameters(), TRAINING_STEP, forward)
    watch.restore(state.get("nonfinite") if state is not None else None)
    writer = open_writer(tb_dir, state is not None, run.nimg)
    t0, t_first, losses = time.time(), None, []
    steps = range(step0, run.total_steps)
    bar = tqdm(steps, desc="teacher", unit="step", mininterval=2, initial=step0, total=run.total_steps)
    for step in bar:
        if step == step0 + 1:
            t_first = time.time()  # after the first (compiling) step
        if stop_after is not None and step == stop_after:
            writer.close()
            return {"steps": step, "batch": run.batch, "seconds_after_first_step": time.time() - t_first}
        lr = run.opt.param_groups[0]["lr"]
        losses.append(_train_step(run, cfg, forward, watch, device, dtype, _where(resume)))
        if run.step % tcfg["log_every"] == 0 or run.step == run.total_steps:
            _log(writer, bar, losses, lr, run.nimg, watch)
        if resume and run.step % tcfg["checkpoint_every"] == 0 and run.step < run.total_steps:
            nonfinite = watch.summary()
            save_training_state(
                resume, fingerprint, run.parts(), run.gen, **run.position(), nonfinite=nonfinite
            )
    writer.close()
    elapsed = time.time() - t0
    stats = {
        "kimg": run.nimg / 1000,
        "steps": run.total_steps,
        "seconds": elapsed,
        "images_per_second": (run.nimg - step0 * run.batch) / elapsed,
        "parameters": sum(p.numel() for p in run.net.parameters()),
        "resumed_from_step": step0 if state is not None else None,
        "started_from": init_path,
        **watch.summary(),
    }
    return _finish(run, out_path, resume, stats)
