"""CIFAR-10 archive reader and verified fetching, on small archives in the official layout."""

import io
import pickle
import tarfile

import numpy as np
import pytest
from torchvision.datasets.utils import calculate_md5

from hkd.data import cifar10
from hkd.data.fetch import fetch_file, verify_md5

PER_BATCH = 6


def _batch(rng, n, label):
    return {
        "batch_label": label,
        "labels": rng.integers(0, 10, n).tolist(),
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }


def make_archive(path, seed=0, evil=False):
    """A tiny cifar-10-python.tar.gz: same folder, member names and pickled dicts as the
    official one, PER_BATCH images per batch. Returns the batches written."""
    rng = np.random.default_rng(seed)
    batches = {f"data_batch_{i}": _batch(rng, PER_BATCH, f"training batch {i} of 5") for i in range(1, 6)}
    batches["test_batch"] = _batch(rng, PER_BATCH, "testing batch 1 of 1")
    meta = {
        "num_cases_per_batch": PER_BATCH,
        "num_vis": 3072,
        "label_names": [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ],
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in [*batches.items(), ("batches.meta", meta), ("readme.html", None)]:
            raw = b"<html></html>" if obj is None else pickle.dumps(obj, protocol=2)
            if evil and name == "test_batch":
                raw = pickle.dumps(_Evil(), protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return batches


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_reader_matches_torchvision(tmp_path):
    from torchvision.datasets import CIFAR10

    archive = tmp_path / "cifar-10-python.tar.gz"
    batches = make_archive(archive)
    d = cifar10.read_archive(archive)
    assert d["train_images"].shape == (5 * PER_BATCH, 3, 32, 32) and d["train_images"].dtype == np.uint8
    assert d["test_images"].shape == (PER_BATCH, 3, 32, 32)
    assert d["label_names"][0] == "airplane" and len(d["label_names"]) == 10
    np.testing.assert_array_equal(d["test_labels"], batches["test_batch"]["labels"])

    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    folder = tmp_path / cifar10.FOLDER

    class LocalCIFAR10(CIFAR10):  # the same reader, with the md5s of this tiny archive
        train_list = [
            [f"data_batch_{i}", calculate_md5(str(folder / f"data_batch_{i}"))] for i in range(1, 6)
        ]
        test_list = [["test_batch", calculate_md5(str(folder / "test_batch"))]]
        meta = {
            "filename": "batches.meta",
            "key": "label_names",
            "md5": calculate_md5(str(folder / "batches.meta")),
        }

    for train, key in ((True, "train"), (False, "test")):
        ref = LocalCIFAR10(str(tmp_path), train=train, download=False)
        # torchvision keeps HWC; ours is CHW
        np.testing.assert_array_equal(d[f"{key}_images"].transpose(0, 2, 3, 1), ref.data)
        np.testing.assert_array_equal(d[f"{key}_labels"], np.asarray(ref.targets))
    assert LocalCIFAR10(str(tmp_path), train=False).classes == d["label_names"]


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.tar.gz"):
        cifar10.read_archive(tmp_path / "missing.tar.gz")
    archive = tmp_path / "cifar-10-python.tar.gz"
    make_archive(archive)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.tar.gz"):
        cifar10.read_archive(truncated)
    evil = tmp_path / "evil.tar.gz"
    make_archive(evil, evil=True)
    with pytest.raises(
        ValueError,
        match=r"evil.tar.gz:cifar-10-batches-py/test_batch: .*unexpected object (posix|os)\.system",
    ):
        cifar10.read_archive(evil)
    partial = tmp_path / "partial.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(partial, "w:gz") as dst:
        for m in src:
            if not m.name.endswith("data_batch_3"):
                dst.addfile(m, src.extractfile(m))
    with pytest.raises(ValueError, match="partial.tar.gz.*data_batch_3"):
        cifar10.read_archive(partial)


@pytest.fixture
def http_root(tmp_path):
    """A folder served over HTTP on localhost: the download path without the internet."""
    import functools
    import http.server
    import threading

    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetch_verifies_and_downloads_atomically(tmp_path, http_root):
    root, base = http_root
    archive = root / "cifar-10-python.tar.gz"
    make_archive(archive)
    md5 = calculate_md5(str(archive))
    assert fetch_file(str(archive), tmp_path / "unused", md5) == archive  # local path: used in place
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz has md5"):
        verify_md5(archive, "0" * 32, "CIFAR-10 archive")
    dest = tmp_path / "cache" / "cifar-10-python.tar.gz"
    url = f"{base}/cifar-10-python.tar.gz"
    got = fetch_file(url, dest, md5, "CIFAR-10 archive")  # a URL: downloaded
    assert got == dest and calculate_md5(str(dest)) == md5
    assert fetch_file(url, dest, md5) == dest  # already there: reused
    archive.write_bytes(b"changed on the server")
    assert calculate_md5(str(fetch_file(url, dest, None))) == md5  # no md5 given: reused as it is
    with pytest.raises(
        ValueError,
        match=r"downloaded from http://127.0.0.1:\d+/cifar-10-python.tar.gz \(for .*x.tar.gz\) has md5",
    ):
        fetch_file(url, tmp_path / "cache2" / "x.tar.gz", "0" * 32, "CIFAR-10 archive")
    assert list((tmp_path / "cache2").iterdir()) == []  # nothing half-written is left
    with pytest.raises(FileNotFoundError, match="nowhere.tar.gz"):
        fetch_file(str(tmp_path / "nowhere.tar.gz"), dest, md5, "CIFAR-10 archive")
    with pytest.raises(RuntimeError, match="cannot download.*absent.tar.gz"):
        fetch_file(f"{base}/absent.tar.gz", tmp_path / "cache3" / "absent.tar.gz", md5)
