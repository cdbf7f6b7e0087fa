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


def make_archive(path, seed=0, evil=False, smooth=False):
    """A tiny cifar-10-python.tar.gz: same folder, member names and pickled dicts as the
    official one, PER_BATCH images per batch. Returns the batches written. ``smooth``:
    images of slowly varying pixels, which deflate codes with Huffman tables (random
    pixels mostly end up in stored blocks, copied byte for byte)."""
    rng = np.random.default_rng(seed)
    batches = {f"data_batch_{i}": _batch(rng, PER_BATCH, f"training batch {i} of 5") for i in range(1, 6)}
    batches["test_batch"] = _batch(rng, PER_BATCH, "testing batch 1 of 1")
    if smooth:
        for b in batches.values():
            b["data"] = (np.cumsum(rng.integers(0, 2, b["data"].shape), axis=1) % 256).astype(np.uint8)
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


def _deflate_span(raw: bytes) -> tuple[int, int]:
    """Where the deflate data of a one-member gzip file lies: after the 10-byte header and
    the file name tarfile writes there, before the 8-byte CRC-32 and length trailer."""
    assert raw[:3] == b"\x1f\x8b\x08" and raw[3] & ~0x08 == 0, "only the FNAME flag is expected"
    start = raw.index(b"\x00", 10) + 1 if raw[3] & 0x08 else 10
    return start, len(raw) - 8


def _same_pixels(a: dict, b: dict) -> bool:
    keys = ("train_images", "train_labels", "test_images", "test_labels")
    return all(np.array_equal(a[k], b[k]) for k in keys) and a["label_names"] == b["label_names"]


@pytest.mark.parametrize("smooth", [False, True], ids=["random-pixels", "smooth-pixels"])
def test_changed_bytes_never_load_different_pixels(tmp_path, smooth):
    """Without an md5, a byte changed anywhere in the deflate data or the trailer is an
    error naming the file, or (a change deflate never reads) the same pixels: the gzip
    CRC-32 is checked even though tarfile stops reading at the tar's end blocks."""
    archive = tmp_path / "cifar-10-python.tar.gz"
    make_archive(archive, smooth=smooth)
    good = cifar10.read_archive(archive)
    raw = archive.read_bytes()
    start, end = _deflate_span(raw)
    positions = sorted({*np.linspace(start, end - 1, 64).astype(int).tolist(), *range(end, len(raw))})
    for pos in positions:
        changed = bytearray(raw)
        changed[pos] ^= 0x5A
        bad = tmp_path / f"flipped-at-{pos}.tar.gz"
        bad.write_bytes(changed)
        try:
            loaded = cifar10.read_archive(bad)
        except ValueError as exc:
            assert str(bad) in str(exc) and "corrupt" in str(exc), (pos, str(exc))
        else:
            assert _same_pixels(loaded, good), f"byte {pos} changed: different pixels loaded silently"


@pytest.mark.parametrize("cut", [1, 4, 8, 9, 47, 100, 1000, -1])
def test_cut_archive_is_an_error_naming_the_file(tmp_path, cut):
    """Bytes cut from the end (-1: all but the gzip header) are an error naming the file
    that says truncated, from one byte of the trailer on."""
    archive = tmp_path / "cifar-10-python.tar.gz"
    make_archive(archive)
    raw = archive.read_bytes()
    keep = _deflate_span(raw)[0] if cut == -1 else len(raw) - cut
    bad = tmp_path / "cut.tar.gz"
    bad.write_bytes(raw[:keep])
    with pytest.raises(ValueError, match=r"cut\.tar\.gz: truncated or corrupt CIFAR-10 archive"):
        cifar10.read_archive(bad)


def test_bytes_after_the_gzip_stream(tmp_path):
    """Zero padding after the stream (as tape and some copies leave) loads the same pixels;
    anything else after it is an error naming the file."""
    archive = tmp_path / "cifar-10-python.tar.gz"
    make_archive(archive)
    good = cifar10.read_archive(archive)
    padded = tmp_path / "padded.tar.gz"
    padded.write_bytes(archive.read_bytes() + bytes(512))
    assert _same_pixels(cifar10.read_archive(padded), good)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(archive.read_bytes() + b"appended junk")
    with pytest.raises(ValueError, match=r"junk\.tar\.gz: corrupt CIFAR-10 archive"):
        cifar10.read_archive(junk)


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
