"""Sampler throughput, measured for several samplers in one process on the same batch."""

from __future__ import annotations

import statistics
import time

import torch

from hkd.runtime import synchronize


def measure(samplers: dict, noise: torch.Tensor, repeats: int, labels=None) -> dict:
    """images/s of each ``samplers[name](noise, labels)``, after one warm-up call each; median of repeats."""
    out = {}
    for name, fn in samplers.items():
        fn(noise, labels)  # warm-up: allocations, kernel selection
        times = []
        for _ in range(repeats):
            synchronize(noise.device)
            t0 = time.perf_counter()
            fn(noise, labels)
            synchronize(noise.device)
            times.append(time.perf_counter() - t0)
        sec = statistics.median(times)
        out[name] = {
            "seconds_per_batch": sec,
            "images_per_second": noise.shape[0] / sec,
            "batch": int(noise.shape[0]),
            "repeats": repeats,
        }
    return out
