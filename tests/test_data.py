import numpy as np
import pytest

from hkd.data.dataset import build_dataset, load_dataset
from hkd.io import load_json, sha256_file


def test_split_is_fixed_and_disjoint(tmp_path, smoke_cfg):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    m = build_dataset(smoke_cfg, a, tmp_path / "a.json")
    build_dataset(smoke_cfg, b, tmp_path / "b.json")
    da, db = load_dataset(a), load_dataset(b)
    for k in da:
        np.testing.assert_array_equal(da[k], db[k])
    assert not set(da["train_index"]) & set(da["heldout_index"])
    assert da["train_images"].shape == (300, 1, 32, 32)
    raw = np.load(a)
    assert raw["train_images"].dtype == np.uint8  # stored as uint8; loaded in the model range
    assert da["heldout_images"].shape == (100, 1, 32, 32)
    assert da["train_images"].min() == -1.0 and da["train_images"].max() == 1.0
    assert m["counts"] == {"train": 300, "heldout": 100}
    assert load_json(tmp_path / "a.json")["file_sha256"] == sha256_file(a)


def test_corrupt_file_is_named(tmp_path):
    bad = tmp_path / "digits.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(RuntimeError, match="digits.npz"):
        load_dataset(bad)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_dataset(tmp_path / "missing.npz")


def test_float_or_nan_data_rejected(tmp_path):
    from hkd.io import save_npz

    x = np.zeros((2, 1, 32, 32), np.float32)
    x[0, 0, 0, 0] = np.nan
    save_npz(
        tmp_path / "d.npz",
        train_images=x,
        train_labels=np.zeros(2),
        heldout_images=x,
        heldout_labels=np.zeros(2),
    )
    with pytest.raises(ValueError, match="d.npz"):
        load_dataset(tmp_path / "d.npz")


def test_outputs_are_written_atomically_with_normal_permissions(tmp_path):
    import os
    import stat

    from hkd.io import atomic_path, save_json

    save_json({"a": 1}, tmp_path / "x.json")
    mode = stat.S_IMODE(os.stat(tmp_path / "x.json").st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH  # readable by others (umask 022)
    with pytest.raises(ZeroDivisionError):
        with atomic_path(tmp_path / "x.json") as tmp:
            tmp.write_text("half-written")
            raise ZeroDivisionError("interrupted mid-write")
    assert (tmp_path / "x.json").read_text().strip().startswith("{")  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left


def _cfg(smoke_cfg, tmp_path, **data):
    import copy

    cfg = copy.deepcopy(smoke_cfg)
    cfg["downloads"] = str(tmp_path / "downloads")
    cfg["data"].update(data)
    return cfg


def test_cifar10_source_through_the_data_stage(tmp_path, smoke_cfg):
    """data.source cifar10: a local archive in the official layout, md5-checked, labels kept."""
    from test_cifar10 import PER_BATCH, make_archive
    from torchvision.datasets.utils import calculate_md5

    archive = tmp_path / "cifar-10-python.tar.gz"
    batches = make_archive(archive)
    n = 5 * PER_BATCH
    cfg = _cfg(
        smoke_cfg,
        tmp_path,
        source="cifar10",
        path=str(archive),
        md5=calculate_md5(str(archive)),
        count=n,
        heldout=6,
    )
    cfg["network"]["label_dim"] = 10
    m = build_dataset(cfg, tmp_path / "d.npz", tmp_path / "d.json")
    d = load_dataset(tmp_path / "d.npz")
    assert d["train_images"].shape == (n - 6, 3, 32, 32) and m["channels"] == 3
    labels = np.concatenate([b["labels"] for k, b in batches.items() if k != "test_batch"])
    idx = np.concatenate([d["train_index"], d["heldout_index"]])
    np.testing.assert_array_equal(np.concatenate([d["train_labels"], d["heldout_labels"]]), labels[idx])
    first = np.concatenate([b["data"] for k, b in batches.items() if k != "test_batch"])[idx[0]]
    np.testing.assert_array_equal(
        ((d["train_images"][0] + 1) * 127.5).round().astype(np.uint8).ravel(), first
    )
    bad = _cfg(smoke_cfg, tmp_path, source="cifar10", path=str(archive), md5="0" * 32, count=n, heldout=6)
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz has md5"):
        build_dataset(bad, tmp_path / "e.npz", tmp_path / "e.json")
    too_many = _cfg(
        smoke_cfg, tmp_path, source="cifar10", path=str(archive), md5=None, count=n + 1, heldout=6
    )
    with pytest.raises(ValueError, match="holds 30 images"):
        build_dataset(too_many, tmp_path / "e.npz", tmp_path / "e.json")
    assert not (tmp_path / "e.npz").exists()


def test_image_folder_source_and_labels(tmp_path, smoke_cfg):
    """data.source image_folder: an EDM dataset_tool zip at 64x64, conditional needs labels."""
    from test_images import make_folder, zip_folder

    root = tmp_path / "imgs"
    root.mkdir()
    make_folder(root, n=6, size=80)
    zip_folder(root, tmp_path / "ffhq.zip")
    cfg = _cfg(
        smoke_cfg,
        tmp_path,
        source="image_folder",
        path=str(tmp_path / "ffhq.zip"),
        count=6,
        heldout=1,
        resolution=64,
    )
    cfg["network"]["label_dim"] = 10
    build_dataset(cfg, tmp_path / "d.npz", tmp_path / "d.json")
    d = load_dataset(tmp_path / "d.npz")
    assert d["train_images"].shape == (5, 3, 64, 64)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([d["train_labels"], d["heldout_labels"]])), np.arange(6)
    )
    (root / "dataset.json").unlink()
    cfg["data"]["path"] = str(root)
    with pytest.raises(ValueError, match="has no labels"):
        build_dataset(cfg, tmp_path / "e.npz", tmp_path / "e.json")
    cfg["network"]["label_dim"] = 0
    build_dataset(cfg, tmp_path / "e.npz", tmp_path / "e.json")
    assert (load_dataset(tmp_path / "e.npz")["train_labels"] == -1).all()
