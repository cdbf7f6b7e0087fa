"""Process-level settings shared by every stage: threads, device, precision, seeding."""

from __future__ import annotations

import contextlib
import functools
import os
import random
import sys

import numpy as np
import torch


def setup_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads (Snakemake passes its ``threads`` value)."""
    if threads:
        torch.set_num_threads(int(threads))


def mps_available() -> bool:
    """Apple's Metal GPU (MPS) is usable: Apple silicon, macOS 12.3+, a torch built with it."""
    return torch.backends.mps.is_available()


def pick_device(name: str) -> torch.device:
    """The config's ``device``: auto = cuda, then mps, then cpu; an absent GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config 'device: cuda' but no CUDA device is available")
    if name == "mps" and not mps_available():
        raise RuntimeError(
            "config 'device: mps' but Apple MPS is not available (it needs Apple silicon, "
            "macOS 12.3 or later and a torch built with MPS); use 'device: auto' or 'device: cpu'"
        )
    return torch.device(name)


@functools.cache
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 instructions (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` (auto|bf16|fp16|fp32); None means plain fp32. Apple
    MPS always runs fp32: its autocast covers fewer ops, and no reduced-precision result of
    this project has been checked there."""
    if precision == "fp32" or device.type == "mps":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else None
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16


def teacher_dtype(cfg: dict, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of the teacher's ODE (trajectories, teacher samples), from the config key
    ``teacher_precision``: EDM samples its CIFAR-10 / FFHQ networks in fp32, while HKD training
    runs under ``precision``."""
    return resolve_precision(cfg["teacher_precision"], device)


def dtype_name(dtype: torch.dtype | None) -> str:
    """How metrics files name an autocast dtype (None: plain fp32): ``bfloat16``, ``float32``."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def torch_setup(cfg: dict, threads: int | None) -> tuple[torch.device, torch.dtype | None]:
    """Threads, device and autocast dtype of a run config: what every torch stage starts with."""
    setup_threads(threads)
    device = pick_device(cfg["device"])
    return device, resolve_precision(cfg["precision"], device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for explicit sampling."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def widest_float(device: torch.device) -> torch.dtype:
    """float64 where ``device`` has it (the teacher's ODE state); float32 on MPS, which has none."""
    return torch.float32 if device.type == "mps" else torch.float64


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (CUDA or MPS) before reading a clock; nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    """Human-readable name of the device that ran a measurement."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS GPU ({cpu_name()})"
    return f"CPU: {cpu_name()}"


def cpu_name() -> str:
    """The processor's model name and logical cores (Linux), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    import platform

    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"


def say(message: str) -> None:
    """A line on the stage's log (stderr) that does not break a running progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)
    sys.stderr.flush()
