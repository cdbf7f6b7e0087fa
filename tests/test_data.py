import numpy as np
import pytest

from hkd.data.mnist import build_dataset, load_dataset
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


def test_nan_in_data_rejected(tmp_path):
    from hkd.io import save_npz

    x = np.zeros((2, 1, 32, 32), np.float32)
    x[0, 0, 0, 0] = np.nan
    save_npz(tmp_path / "d.npz", train_images=x, train_labels=np.zeros(2), heldout_images=x,
             heldout_labels=np.zeros(2))
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
            1 / 0
    assert (tmp_path / "x.json").read_text().strip().startswith("{")  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left
