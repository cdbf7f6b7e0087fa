"""Model-range images as pixels: [-1, 1] floats to uint8 the way EDM saves them, and
several images laid out as one grid (torchvision's ``make_grid``)."""

from __future__ import annotations

import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8, rounded as EDM saves images."""
    return np.clip(images * 127.5 + 128, 0, 255).astype(np.uint8)


def grid(images: np.ndarray, cols: int, pad: int, pad_value: float) -> np.ndarray:
    """Images [N, C, H, W] (any dtype) -> one [rows * (H + pad) + pad, min(N, cols) * (W + pad)
    + pad, C] array, filled row by row; padding and empty cells hold ``pad_value``."""
    import torch  # here: to_uint8 alone needs neither torch nor torchvision (seconds to import)
    from torchvision.utils import make_grid

    if images.ndim != 4:
        raise ValueError(f"grid: images must be [N, C, H, W], got shape {images.shape}")
    channels = images.shape[1]
    if len(images) == 1:  # make_grid returns a lone image unpadded
        side = ((pad, pad), (pad, pad), (0, 0))
        return np.pad(images[0].transpose(1, 2, 0), side, constant_values=pad_value)
    out = make_grid(
        torch.from_numpy(np.ascontiguousarray(images)), nrow=cols, padding=pad, pad_value=pad_value
    )
    # make_grid repeats a single channel three times; keep the images' own channels
    return out[:channels].permute(1, 2, 0).numpy()
