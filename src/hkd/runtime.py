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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config 'device: cuda' but no CUDA device is available")
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
    """Autocast dtype for ``precision`` (auto|bf16|fp16|fp32); None means plain fp32."""
    if precision == "fp32":
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


def device_name(device: torch.device) -> str:
    """Human-readable name of the device that ran a measurement."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"CPU: {line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    import platform

    return f"CPU: {platform.processor() or platform.machine()}"


def say(message: str) -> None:
    """A line on the stage's log (stderr) that does not break a running progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)
    sys.stderr.flush()
