"""The teacher denoiser D(x; sigma) in bf16 autocast, fp32 and fp64, measured in one run.

    python workflow/scripts/bench_teacher_precision.py --threads 2
    python workflow/scripts/bench_teacher_precision.py --threads 2 --compile   # timings compiled

Accuracy: the CIFAR-10 network (``configs/cifar10.yaml``'s ``network`` block, full size) with
random weights at unit gain (EDM's zero-initialised output layers redrawn, so every layer,
attention included, moves D), a few images at a few noise levels; D through the code the
trajectories run (``make_denoiser``: channels-last, autocast inside) in bf16 autocast and
fp32, against D in fp64 (the same weights in float64, EDM's preconditioning in float64).
Prints max |D_bf16 - D_fp32| and max |D_fp32 - D_fp64|.

Speed: seconds per denoiser call, fp32 against bf16 autocast, alternated after a warm-up,
medians, for the embedded default's network (``configs/default.yaml``, the trajectory batch
unless ``--default-batch``) and the CIFAR-10 network (``--cifar-batch`` images). Eager, or
with ``--compile`` the default's network through the guarded ``torch.compile`` as its
``compile: auto`` runs it (each graph compiled from an empty inductor cache and checked
before timing: minutes on 2 cores); the CIFAR-10 network is always timed eagerly (its config
runs on a GPU; compiling it on 2 CPU cores takes longer than the timing). Prints one JSON
object whose ``ratio_fp32_over_bf16`` above 1 means bf16 is faster.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="hkd-bench-inductor-"))

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from hkd.config import load_config  # noqa: E402
from hkd.nn.precond import EDMPrecond, edm_coefficients  # noqa: E402
from hkd.runtime import device_name, setup_threads  # noqa: E402
from hkd.teacher.network import teacher_kwargs  # noqa: E402
from hkd.teacher.trajectories import make_denoiser  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
SIGMAS = (0.02, 0.5, 2.0, 10.0, 80.0)


def unit_gain_teacher(cfg: dict, seed: int = 0) -> EDMPrecond:
    """The config's teacher with every weight drawn N(0, 1 / fan_in) and biases N(0, 0.1^2):
    EDM's initialisation scales output and attention projections by 1e-5, which would leave D
    close to c_skip x whatever the precision of the layers."""
    torch.manual_seed(seed)
    net = EDMPrecond(**teacher_kwargs(cfg)).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    for name, p in net.named_parameters():
        if p.dim() > 1:
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
        elif name.endswith("bias"):
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return net


def reference_fp64(net: EDMPrecond, x: torch.Tensor, sigma: torch.Tensor, labels=None) -> torch.Tensor:
    """D(x; sigma) with the same weights in float64: EDM's preconditioning, U-Net in fp64."""
    unet = copy.deepcopy(net.model).double()
    x, sigma = x.double(), sigma.double().reshape(-1, 1, 1, 1)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, net.sigma_data)
    with torch.no_grad():
        f = unet(c_in * x, c_noise.flatten(), None if labels is None else labels.double())
    return c_skip * x + c_out * f


def noisy_batch(shape, images: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, sigma): ``images`` clean-ish images at each of SIGMAS, x = y + sigma n."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.rand((images,) + shape, generator=gen) * 2 - 1
    sigma = torch.tensor(SIGMAS).repeat_interleave(images)
    x = y.repeat(len(SIGMAS), 1, 1, 1) + sigma.reshape(-1, 1, 1, 1) * torch.randn(
        (len(sigma),) + shape, generator=gen
    )
    return x, sigma


def accuracy(cfg: dict, images: int) -> dict:
    net = unit_gain_teacher(cfg)
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    x, sigma = noisy_batch(shape, images)
    d64 = reference_fp64(net, x, sigma)
    d32 = make_denoiser(net, CPU, None)(x, sigma)
    d16 = make_denoiser(net, CPU, torch.bfloat16)(x, sigma)
    return {
        "images": len(x),
        "sigmas": list(SIGMAS),
        "max_abs_D": float(d64.abs().max()),
        "max_abs_bf16_minus_fp32": float((d16.double() - d32.double()).abs().max()),
        "max_abs_fp32_minus_fp64": float((d32.double() - d64).abs().max()),
    }


def speed(cfg: dict, batch: int, repeats: int, compile_mode) -> dict:
    """Seconds per denoiser call in fp32 and bf16 autocast, alternated, medians."""
    net = unit_gain_teacher(cfg).to(memory_format=torch.channels_last)
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    x = torch.randn((batch,) + shape, generator=torch.Generator().manual_seed(2)) * 2.0
    sigma = torch.full((batch,), 2.0, dtype=torch.float64)
    paths = {
        name: make_denoiser(net, CPU, dtype, compile=compile_mode, what=f"teacher denoiser ({name})")
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))
    }
    first = {}
    for name, denoise in paths.items():  # warm-up: compile and check, or one eager call
        t0 = time.perf_counter()
        denoise(x, sigma)
        first[name] = time.perf_counter() - t0
    times = {name: [] for name in paths}
    for _ in range(repeats):
        for name, denoise in paths.items():
            t0 = time.perf_counter()
            denoise(x, sigma)
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "batch": batch,
        "repeats": repeats,
        "first_call_s": {k: round(v, 2) for k, v in first.items()},
        "fp32_s": round(med["fp32"], 4),
        "bf16_s": round(med["bf16"], 4),
        "ratio_fp32_over_bf16": round(med["fp32"] / med["bf16"], 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--images", type=int, default=2, help="images per noise level in the accuracy check")
    ap.add_argument("--default-batch", type=int, default=None, help="default: the trajectory batch")
    ap.add_argument("--cifar-batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="time the default's network compiled")
    args = ap.parse_args()
    setup_threads(args.threads)
    default, cifar = load_config(ROOT / "configs/default.yaml"), load_config(ROOT / "configs/cifar10.yaml")
    mode = "auto" if args.compile else False
    result = {
        "device": device_name(CPU),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timing": "default network compiled (compile: auto), CIFAR-10 eager" if args.compile else "eager",
        "cifar10_accuracy": accuracy(cifar, args.images),
    }
    print(json.dumps({"cifar10_accuracy": result["cifar10_accuracy"]}), flush=True)
    batch = args.default_batch or default["trajectories"]["batch_size"]
    result["default_speed"] = speed(default, batch, args.repeats, mode)
    print(json.dumps({"default_speed": result["default_speed"]}), flush=True)
    result["cifar10_speed"] = speed(cifar, args.cifar_batch, args.repeats, False)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
