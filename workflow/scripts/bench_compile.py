"""Benchmark: eager against torch.compile for every network workload of a run, measured
in one process on this machine, printed as times and ratios.

    python workflow/scripts/bench_compile.py --config configs/default.yaml --threads 2

Needs the run's teacher checkpoint (`snakemake --cores 2 teacher` or a finished run) and
its trajectories. Workloads: teacher training step (the config's teacher batch), teacher
denoiser inference (the config's trajectory batch, as in the trajectories and sample
stages), HKD training step (the config's HKD batch x (time points + 1)). Each line gives
the one-off compile (warm-up) time, so the break-even number of steps can be read off;
compiles start from an empty inductor cache, as on a fresh machine.
"""

import argparse
import functools
import json
import os
import tempfile
import time

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="hkd-bench-inductor-"))

import numpy as np
import torch

from hkd.config import load_config
from hkd.koopman.model import build_hkd
from hkd.pipeline import run_paths
from hkd.runtime import torch_setup
from hkd.teacher.network import load_teacher
from hkd.teacher.sampler import edm_sigmas, heun_sample, seeded_noise
from hkd.teacher.train import edm_loss
from hkd.teacher.trajectories import load_trajectories, make_denoiser
from hkd.train.hkd_train import hkd_loss
from hkd.train.objective import sample_times


def timed(step, warmup: int, repeats: int) -> tuple[float, float]:
    """(seconds of the warm-up calls, seconds per call after them)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    t1 = time.perf_counter()
    for _ in range(repeats):
        step()
    return t1 - t0, (time.perf_counter() - t1) / repeats


def compare(make_step, repeats: int) -> dict:
    """Eager against compiled for one workload (``make_step(use_compile)`` builds its step)."""
    eager = timed(make_step(False), 2, repeats)
    compiled = timed(make_step(True), 2, repeats)
    return {
        "eager_s": round(eager[1], 4),
        "compiled_s": round(compiled[1], 4),
        "compile_warmup_s": round(compiled[0], 1),
        "speedup": round(eager[1] / compiled[1], 2),
    }


def teacher_train_step(cfg: dict, paths: dict, device, dtype, use_compile: bool):
    """One EDM training step of the teacher at the config's teacher batch."""
    res = cfg["data"]["resolution"]
    net = load_teacher(paths["teacher"], device).to(memory_format=torch.channels_last)
    net.train().requires_grad_(True)
    fwd = torch.compile(net) if use_compile else net
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(cfg["teacher"]["batch_size"], 1, res, res, generator=gen).to(device)
    edm = cfg["edm"]

    def step():
        per_pixel = edm_loss(fwd, y, gen, edm["P_mean"], edm["P_std"], edm["sigma_data"], device, dtype)
        loss = per_pixel.sum() / len(y)  # the teacher trainer's reduction (EDM's)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def teacher_inference_step(cfg: dict, paths: dict, device, dtype, use_compile: bool):
    """Two Heun steps (3 NFE) of the teacher denoiser at the config's trajectory batch."""
    res = cfg["data"]["resolution"]
    net = load_teacher(paths["teacher"], device).to(memory_format=torch.channels_last)
    denoise = make_denoiser(torch.compile(net) if use_compile else net, device, dtype)
    noise = seeded_noise(np.arange(cfg["trajectories"]["batch_size"]), (1, res, res), device)
    sigmas = edm_sigmas(2, cfg["edm"]["sigma_min"], cfg["edm"]["sigma_max"], cfg["edm"]["rho"])
    return lambda: heun_sample(denoise, noise, sigmas)  # 3 NFE per call


def hkd_train_step(cfg: dict, paths: dict, device, dtype, use_compile: bool):
    """One HKD training step at the config's HKD batch, from the run's trajectories."""
    teacher = load_teacher(paths["teacher"], device)
    model = build_hkd(teacher, cfg).to(device)
    model.unet.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if use_compile else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    traj = load_trajectories(paths["trajectories"])
    b = cfg["hkd"]["batch_size"]
    states = torch.from_numpy(traj["states"][:b])
    sigmas = torch.from_numpy(traj["sigmas"]).double()
    gen = torch.Generator().manual_seed(0)

    def step():
        t = sample_times(b, cfg["hkd"]["time_points"], sigmas, gen)
        loss = hkd_loss(fwd, states, sigmas, t, device, dtype).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


#: the workloads, in the order they are measured and printed
WORKLOADS = {
    "teacher_train_step": teacher_train_step,
    "teacher_inference_3nfe": teacher_inference_step,
    "hkd_train_step": hkd_train_step,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    cfg = load_config(args.config)
    paths = run_paths(cfg)
    device, dtype = torch_setup(cfg, args.threads)
    results = {}
    for name, make in WORKLOADS.items():
        results[name] = compare(functools.partial(make, cfg, paths, device, dtype), args.repeats)
        print(json.dumps({name: results[name]}), flush=True)
    print(json.dumps({"device": str(device), "precision": str(dtype), "results": results}))


if __name__ == "__main__":
    main()
