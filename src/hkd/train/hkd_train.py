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
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from hkd import distributed
from hkd.compile_guard import hkd_compile, maybe_compile
from hkd.ema import EMA
from hkd.gradient_watch import GradientWatch
from hkd.io import save_torch, sha256_file, sha256_json, sha256_tensors
from hkd.koopman.diagnostics import koopman_exponents, log_koopman
from hkd.koopman.model import build_hkd, hkd_checkpoint
from hkd.runtime import autocast
from hkd.teacher.sampler import one_hot, seeded_inputs
from hkd.teacher.trajectories import load_trajectories
from hkd.train.objective import distance, prediction_times, sample_times, time_weights
from hkd.train.perceptual import build_perceptual
from hkd.train.resume import open_writer, restore_training_state, save_training_state

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


def parameter_groups(model, hcfg: dict) -> list[dict]:
    """Adam's parameter groups: one for everything (``hkd.operator_lr`` null, the paper's
    reading), or the Koopman operators in a group of their own with that lr (no weight decay
    in either group)."""
    trained = [p for p in model.parameters() if p.requires_grad]
    if hcfg["operator_lr"] is None:
        return [{"params": trained}]
    operators = {id(p) for p in model.koopman.parameters()}
    groups = [
        {"params": [p for p in trained if id(p) not in operators]},
        {"params": [p for p in trained if id(p) in operators], "lr": hcfg["operator_lr"]},
    ]
    return [g for g in groups if g["params"]]  # no Koopman evolution: no operators to train


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
    s: torch.Tensor | None = None,
):
    """(MSE, LPIPS or None) per (example, time point), each [B, K], for times ``t`` [B, K]:
    the prediction of the trajectory's end from each. With intermediate targets ``s`` [B, K]
    (``objective.prediction_times``), K more columns [B, 2K]: the predictions of the states at
    ``s`` from the same inputs, each input encoded once. ``class_labels``: one-hot
    [B, label_dim] of a conditional run."""
    b, k = t.shape
    shape = states.shape[2:]
    x_t = states_at(states, sigmas, t).reshape(b * k, *shape).to(device)
    target = states[:, -1].float().to(device)[:, None].expand(b, k, *shape)
    if class_labels is not None:
        class_labels = class_labels.repeat_interleave(k, dim=0).to(device)
    t_flat = t.reshape(-1).float().to(device)
    with autocast(device, dtype):
        if s is None:
            pred = model(x_t, t_flat, class_labels)
        else:
            ends = torch.stack(
                [torch.full_like(t_flat, float(sigmas[-2])), s.reshape(-1).float().to(device)], 1
            )
            pred = model(x_t, t_flat, class_labels, ends)  # [B K, 2, C, H, W]
    if s is None:
        pred = pred.float().reshape(b, k, *shape)
    else:
        pred = pred.float().reshape(b, k, 2, *shape).transpose(1, 2).reshape(b, 2 * k, *shape)
        target = torch.cat([target, states_at(states, sigmas, s).to(device)], dim=1)
    mse = (pred - target).square().flatten(2).mean(2)
    if perceptual is None:
        return mse, None
    with autocast(device, dtype):
        lp = perceptual(pred.flatten(0, 1), target.flatten(0, 1))
    return mse, lp.float().reshape(b, -1)


def hkd_loss(model, states, sigmas, t, device, dtype, class_labels=None) -> torch.Tensor:
    """Squared error per (example, time point), [B, K]."""
    return hkd_distances(model, states, sigmas, t, device, dtype, class_labels)[0]


def _fingerprint(cfg: dict, teacher, traj_path: str, max_trajectories, world: int) -> str:
    """What a resume state must have been made with: settings, teacher weights, trajectories."""
    return sha256_json(
        {
            "settings": {k: cfg[k] for k in ("seed", "precision", "compile", "edm", "hkd")},
            "max_trajectories": max_trajectories,
            "processes": world,
            "trajectories": sha256_file(traj_path),
            "teacher": sha256_tensors(teacher.state_dict().items()),
        }
    )


@dataclass
class _Trajectories:
    """The trajectories a run trains on and how its global batches are cut."""

    states: Any  # memory-mapped fp16 [N, S, C, H, W]; each step reads its rows
    sigmas: torch.Tensor  # of the stored states, T .. eps, 0
    onehot: torch.Tensor | None  # [N, label_dim] of a conditional run
    batch: int  # the global batch
    local: slice  # this process's part of each batch
    steps_per_epoch: int


def _load_trajectories(traj_path: str, teacher, batch_size: int, max_trajectories, rank: int, world: int):
    """The manifest's trajectories (the first ``max_trajectories`` when given), checked against
    the teacher and the process count."""
    traj = load_trajectories(traj_path, stream=True)
    states, labels = traj["states"], traj["labels"]
    if max_trajectories:
        states, labels = states.head(max_trajectories), labels[:max_trajectories]
    if traj["label_dim"] != teacher.label_dim:
        raise ValueError(
            f"{traj_path}: trajectories have label_dim {traj['label_dim']}, the teacher "
            f"{teacher.label_dim}; rerun the trajectories stage"
        )
    onehot = one_hot(torch.from_numpy(labels), teacher.label_dim) if teacher.label_dim else None
    batch = min(batch_size, states.shape[0])
    if batch % world:
        raise ValueError(
            f"hkd.batch_size {batch} is the global batch and must be divisible by the "
            f"{world} torchrun processes"
        )
    local = slice(rank * batch // world, (rank + 1) * batch // world)
    sigmas = torch.from_numpy(traj["sigmas"]).double()
    return _Trajectories(states, sigmas, onehot, batch, local, states.shape[0] // batch)


@dataclass
class _StepResult:
    """What one update measured, for the log: per (example, time point) d, MSE, LPIPS."""

    loss: torch.Tensor
    err: torch.Tensor
    mse: torch.Tensor
    lp: torch.Tensor | None
    grad_norm: torch.Tensor


#: the resume state's keys besides the parts and the random generators
_POSITION = ("step", "seen", "epoch", "pos", "order")


class _Trainer:
    """One HKD training: model, EMA, optimiser, schedule and the position in the epochs."""

    def __init__(self, cfg: dict, teacher, data: _Trajectories, device, dtype, rank: int, world: int):
        hcfg = self.hcfg = cfg["hkd"]
        self.cfg, self.teacher, self.data = cfg, teacher, data
        self.device, self.dtype, self.rank, self.world = device, dtype, rank, world
        self.total_steps = hcfg["epochs"] * data.steps_per_epoch
        self.k = hcfg["time_points"]
        self.micro = hcfg["micro_batch"] or data.batch  # examples per pass in each process
        self.weights = time_weights(self.k, hcfg["trajectory_weight"])  # t = T, then the others
        self.predicting = hcfg["prediction_weight"] > 0  # intermediate targets (objective.prediction_times)
        if self.predicting:
            self.weights = torch.cat(
                [self.weights, torch.full((self.k + 1,), float(hcfg["prediction_weight"]))]
            )
        self.weights = self.weights.to(device)
        self.pixels = math.prod(data.states.shape[2:])  # values per image, for the pseudo-Huber distance
        self.perceptual = build_perceptual(hcfg, device)
        torch.manual_seed(cfg["seed"] + 1)
        self.gen = torch.Generator().manual_seed(cfg["seed"] + 1)
        self.model = build_hkd(teacher, cfg).to(device)
        self.model.unet.to(memory_format=torch.channels_last)
        self.ema = (
            EMA(self.model, hcfg["ema_halflife_kimg"], hcfg["ema_rampup_ratio"])
            if hcfg["ema_halflife_kimg"] > 0
            else None
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(parameter_groups(self.model, hcfg), lr=hcfg["lr"])
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, self.total_steps, hcfg["lr_rampdown"])
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.step = self.seen = self.epoch0 = self.pos0 = 0
        self.order, self.resumed, self.last_saved = None, False, None
        self.resume, self.fingerprint = None, None
        self.net = self.forward = self.watch = None  # set by `prepare`

    def parts(self) -> dict:
        ema = self.ema.net if self.ema is not None else None
        return {
            "model": self.model,
            "ema": ema,
            "opt": self.opt,
            "schedule": self.schedule,
            "scaler": self.scaler,
        }

    def restore(self, resume: Path | None, fingerprint: str | None) -> dict | None:
        """Continue from the resume state at ``resume`` when there is a usable one."""
        self.resume, self.fingerprint = resume, fingerprint
        made_of = "settings, teacher or trajectories (or by an earlier version of the trainer)"
        state = restore_training_state(
            resume, fingerprint, "hkd-train", made_of, self.parts(), self.gen, _POSITION
        )
        if state is not None:
            self.step, self.seen, self.epoch0, self.pos0, self.order = (state[k] for k in _POSITION)
            self.resumed, self.last_saved = True, self.step
            print(f"hkd-train: resuming from step {self.step} of {self.total_steps} ({resume})")
        return state

    def prepare(self, state: dict | None) -> None:
        """DDP under torchrun, the compiled step and the gradient watch (its counts resumed)."""
        self.net = self.model
        if self.world > 1:
            device_ids = [self.device] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        # With `compile: true` the first step traces and builds kernels (1.5-2.5 minutes on 2 CPU
        # cores); later steps run the fused forward/backward, ~1.2x faster there (docs/faithful.md).
        self.forward = maybe_compile(self.net, hkd_compile(self.cfg), TRAINING_STEP)
        self.watch = GradientWatch(self.model.named_parameters(), TRAINING_STEP, self.forward)
        self.watch.restore(state.get("nonfinite") if state is not None else None)

    def batches(self, epoch: int, reader: ThreadPoolExecutor):
        """(start, this process's rows, their times, their states) of each step of ``epoch``;
        the next step's states are read in the background while a step computes."""
        data, batch, local = self.data, self.data.batch, self.data.local
        first = self.pos0
        if not (self.resumed and epoch == self.epoch0):  # a resumed epoch keeps its order and place
            self.order, first = torch.randperm(data.states.shape[0], generator=self.gen), 0
        order, end = self.order, data.steps_per_epoch * batch
        lognormal = (self.cfg["edm"]["P_mean"], self.cfg["edm"]["P_std"])

        def read(start: int):
            rows = order[start : start + batch][local]
            return reader.submit(lambda: torch.from_numpy(data.states.take(rows.numpy())))

        pending = read(first) if first < end else None
        for start in range(first, end, batch):
            # the global batch's times, the same in every process
            t = sample_times(batch, self.k, data.sigmas, self.gen, self.hcfg["time_sampling"], lognormal)
            if self.predicting:  # the targets s beside the times t: [B, 2 (1 + k)]
                t = torch.cat([t, prediction_times(t, data.sigmas, self.gen)], dim=1)
            my_states = pending.result()  # this process's rows, in the order of order[...][local]
            if start + batch < end:
                pending = read(start + batch)
            yield start, order[start : start + batch][local], t[local], my_states

    def where(self) -> str:
        """Where the last good state is, for a stopped run's message."""
        if self.last_saved is None:
            return "no resume state was saved yet"
        return f"the last good state (step {self.last_saved}) is in {self.resume}"

    def _backward(self, mine, my_states, t_mine, lam: float, epoch: int):
        """Gradients of the batch mean over this process's rows, accumulated over passes of
        ``micro`` examples; (d, MSE, LPIPS or None) per (example, time point)."""
        errs, n_local, onehot = [], len(mine), self.data.onehot
        parts = list(zip(mine.split(self.micro), my_states.split(self.micro), t_mine.split(self.micro)))
        for i, (part, part_states, t_part) in enumerate(parts):
            # gradients accumulate over the parts; DDP synchronises only after the last
            sync = self.world == 1 or i == len(parts) - 1
            with contextlib.nullcontext() if sync else self.net.no_sync():
                labels = onehot[part] if onehot is not None else None
                t_end, t_s = t_part.split(self.k + 1, dim=1) if self.predicting else (t_part, None)
                mse, lp = hkd_distances(
                    self.forward,
                    part_states,
                    self.data.sigmas,
                    t_end,
                    self.device,
                    self.dtype,
                    labels,
                    self.perceptual,
                    t_s,
                )
                dist = distance(mse, self.pixels, self.hcfg["distance"], self.hcfg["pseudo_huber_c"])
                err = lam * dist if lp is None else lam * dist + LAMBDA2 * lp  # d of the paper
                loss = (err * self.weights).sum(1).sum() / n_local  # the parts add up to the batch mean
                if not distributed.all_finite(loss):
                    raise FloatingPointError(
                        f"HKD loss is {loss.item()} at epoch {epoch}, step {self.step}; stopping ({self.where()})"
                    )
                self.scaler.scale(loss).backward()
            errs.append((err.detach(), mse.detach(), lp.detach() if lp is not None else None))
        lps = [e[2] for e in errs]
        lp = torch.cat(lps) if self.perceptual is not None else None
        return torch.cat([e[0] for e in errs]), torch.cat([e[1] for e in errs]), lp

    def train_step(self, mine, my_states, t_mine, lam: float, epoch: int) -> _StepResult:
        """One update from this process's share of a global batch (DDP averages the rest)."""
        self.opt.zero_grad(set_to_none=True)
        err, mse, lp = self._backward(mine, my_states, t_mine, lam, epoch)
        loss = (err * self.weights).sum(1).mean()
        self.scaler.unscale_(self.opt)
        skips = self.scaler.is_enabled()
        if self.watch.count(self.step, f"; {self.where()}", scaler_skips=skips) and not skips:
            self.opt.zero_grad(set_to_none=True)  # skip this update, as a loss scaler would
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, float("inf"))
        self.scaler.step(self.opt)
        self.scaler.update()
        self.seen += self.data.batch
        if self.ema is not None:
            self.ema.update(self.model, self.seen, self.data.batch)  # counts this batch (EDM: before it)
        self.step += 1
        return _StepResult(loss, err, mse, lp, grad_norm)

    def log(self, writer, out: _StepResult, lam: float) -> None:
        """Every loss term, lambda1, lr, gradient norm and the Koopman diagnostics."""
        step = self.step
        writer.add_scalar("hkd/loss_total", out.loss.item(), step)
        writer.add_scalar("hkd/loss_reconstruction_T", out.err[:, 0].mean().item(), step)
        if self.k:
            writer.add_scalar("hkd/loss_trajectory", out.err[:, 1 : self.k + 1].mean().item(), step)
        if self.predicting:
            writer.add_scalar("hkd/loss_prediction", out.err[:, self.k + 1 :].mean().item(), step)
        writer.add_scalar("hkd/mse", out.mse.mean().item(), step)
        if out.lp is not None:
            writer.add_scalar("hkd/lpips", out.lp.mean().item(), step)
        writer.add_scalar("hkd/lambda1", lam, step)
        writer.add_scalar("hkd/lr", self.opt.param_groups[0]["lr"], step)
        writer.add_scalar("hkd/grad_norm", out.grad_norm.item(), step)
        writer.add_scalar("hkd/nonfinite_grad_elements", self.watch.take_since_log(), step)
        log_koopman(writer, self.model, step)

    def shown(self):
        """The weights the run delivers: the EMA copy where EMA is on."""
        return self.ema.net if self.ema is not None else self.model

    def sample_grid(self, writer, grid_noise, grid_labels) -> None:
        """A one-step sample grid of the delivered weights."""
        with torch.no_grad(), autocast(self.device, self.dtype):
            imgs = self.shown().sample(grid_noise, one_hot(grid_labels, self.model.label_dim)).float()
        writer.add_images("samples/hkd_one_step", ((imgs + 1) / 2).clamp(0, 1).cpu(), self.step)

    def save_state(self, epoch: int, pos: int) -> None:
        """The resume state (rank 0 writes it), from which the next step is ``pos`` of ``epoch``."""
        if self.rank == 0:
            position = {"step": self.step, "seen": self.seen, "epoch": epoch, "pos": pos, "order": self.order}
            save_training_state(
                self.resume,
                self.fingerprint,
                self.parts(),
                self.gen,
                **position,
                nonfinite=self.watch.summary(),
            )
        self.last_saved = self.step

    def checkpoint(self, stats: dict) -> dict:
        return hkd_checkpoint(self.shown(), self.teacher.init_kwargs, stats, self.ema is not None)

    def after_step(self, writer, out: _StepResult, lam: float, epoch: int, start: int, grid) -> None:
        """Logs and samples on their steps, the next step's lr, the resume state on its steps."""
        hcfg, step = self.hcfg, self.step
        if writer is not None and step % hcfg["log_every"] == 0:
            self.log(writer, out, lam)
        if writer is not None and hcfg["sample_every"] and step % hcfg["sample_every"] == 0:
            self.sample_grid(writer, *grid)
        self.schedule.step()  # after logging, so hkd/lr is the rate this step used
        if self.resume and step % hcfg["checkpoint_every"] == 0:
            self.save_state(epoch, start + self.data.batch)

    def stats(self, step0: int, elapsed: float) -> dict:
        """The training's record in the checkpoint."""
        done, batch, k = self.step - step0, self.data.batch, self.k
        return {
            "epochs": self.hcfg["epochs"],
            "steps": self.step,
            "steps_this_run": done,
            "examples": self.seen,
            "lambda1": self.hcfg["lambda1"],
            "seconds": elapsed,
            "processes": self.world,
            "examples_per_second": done * batch / elapsed if done else None,
            "example_time_points_per_second": done * batch * (k + 1) / elapsed if done else None,
            "trajectories": int(self.data.states.shape[0]),
            "resumed_from_step": step0 if self.resumed else None,
            "koopman_T": koopman_exponents(self.shown()),
            **self.watch.summary(),
        }


def _partial_snapshots(snapshot_paths: dict[int, str], fresh: bool, rank: int) -> dict[int, Path]:
    """{epoch: path in the ``.partial`` folder} where the snapshots wait while training; a
    fresh start removes those of an earlier attempt, which are stale."""
    partial = {e: Path(p).parent / ".partial" / Path(p).name for e, p in snapshot_paths.items()}
    if fresh and rank == 0:
        for path in partial.values():
            path.unlink(missing_ok=True)
    return partial


def _sample_inputs(cfg: dict, model, device):
    """The noise and labels of the tensorboard sample grid: 16 evaluation seeds."""
    seeds = range(cfg["sample"]["seed_offset"], cfg["sample"]["seed_offset"] + 16)
    shape = (model.img_channels, model.img_resolution, model.img_resolution)
    return seeded_inputs(seeds, shape, model.label_dim, device)


def _finish(trainer: _Trainer, stats: dict, out_path: str, snapshot_paths: dict, partial: dict) -> None:
    """Rank 0 moves the snapshots into place, writes the checkpoint and drops the resume
    state (a later forced rerun trains afresh); every process waits for it."""
    if trainer.rank == 0:
        for e, path in snapshot_paths.items():
            if not partial[e].is_file():
                raise FileNotFoundError(
                    f"snapshot after epoch {e} missing: {partial[e]} (removed while training?)"
                )
            partial[e].replace(path)
        save_torch(trainer.checkpoint(stats), out_path)
        if trainer.resume and trainer.resume.is_file():
            trainer.resume.unlink()
    distributed.barrier()


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
    hcfg = cfg["hkd"]
    rank, world, _ = distributed.world()
    data = _load_trajectories(traj_path, teacher, hcfg["batch_size"], max_trajectories, rank, world)
    trainer = _Trainer(cfg, teacher, data, device, dtype, rank, world)
    resume = Path(resume_path) if resume_path else None
    fingerprint = _fingerprint(cfg, teacher, traj_path, max_trajectories, world) if resume else None
    state = trainer.restore(resume, fingerprint)
    snapshot_paths = snapshot_paths or {}
    partial = _partial_snapshots(snapshot_paths, state is None, rank)
    trainer.prepare(state)
    writer = open_writer(tb_dir, state is not None, trainer.step) if rank == 0 else None
    grid = _sample_inputs(cfg, trainer.model, device)
    reader = ThreadPoolExecutor(1, thread_name_prefix="hkd-trajectory-reader")
    t0, step0, t_first = time.time(), trainer.step, None
    quiet = {"disable": True} if rank != 0 else {}  # rank 0: TQDM_DISABLE decides
    bar = tqdm(
        total=trainer.total_steps, initial=step0, desc="hkd-train", unit="step", mininterval=2, **quiet
    )
    try:
        for epoch in range(trainer.epoch0, hcfg["epochs"]):
            lam = lambda1(epoch, hcfg["epochs"], hcfg["lambda1"])
            for start, mine, t_mine, my_states in trainer.batches(epoch, reader):
                out = trainer.train_step(mine, my_states, t_mine, lam, epoch)
                t_first = t_first or time.time()  # after the first (compiling) step
                bar.update(1)
                if writer is not None and trainer.step % hcfg["log_every"] == 0:
                    bar.set_postfix(loss=f"{out.err.mean().item():.4f}", epoch=epoch)
                trainer.after_step(writer, out, lam, epoch, start, grid)
                if stop_after is not None and trainer.step - step0 >= stop_after:
                    now = time.time()
                    seconds = {"seconds": now - t0, "seconds_after_first_step": now - t_first}
                    return {
                        "steps": trainer.step - step0,
                        "batch": data.batch,
                        "time_points": trainer.k + 1,
                        **seconds,
                    }
            if epoch in partial and rank == 0:  # the weights after this epoch (Table 5)
                record = {"epoch": epoch, "steps": trainer.step, "examples": trainer.seen}
                save_torch(trainer.checkpoint(record), partial[epoch])
    finally:
        reader.shutdown(cancel_futures=True)
        bar.close()
        if writer is not None:
            writer.close()
    stats = trainer.stats(step0, time.time() - t0)
    _finish(trainer, stats, out_path, snapshot_paths, partial)
    return stats
