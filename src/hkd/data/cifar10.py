"""CIFAR-10 from the official python archive (``cifar-10-python.tar.gz``).

The archive holds pickled batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
``batches.meta``) inside ``cifar-10-batches-py/``. They are read straight from the tar
stream with an unpickler that accepts only the builtin containers and numpy arrays, so
a tampered archive cannot run code. The gzip stream is always read to its end, so its
CRC-32 and length are checked even when no md5 is given (a local ``data.path`` with
``data.md5: null``): a corrupt or cut archive is an error naming the file, never
different pixels.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"

#: the only globals a CIFAR-10 batch pickle refers to (numpy array reconstruction, and
#: ``_codecs.encode``, with which protocol-2 pickles written by Python 3 store bytes)
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR-10 batch")


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        obj = _BatchUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as exc:
        raise ValueError(f"{where}: not a CIFAR-10 batch pickle ({exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a dict, found {type(obj).__name__}")
    # latin1 decoding turns Python 2's str keys into str; bytes keys (Python-3 writers) are decoded too
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _batch_arrays(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    for key in ("data", "labels"):
        if key not in batch:
            raise ValueError(f"{where}: batch lacks '{key}'")
    data = np.asarray(batch["data"])
    try:
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: 'labels' are not integers ({exc})") from exc
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{where}: 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    if labels.shape != (len(data),) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError(f"{where}: 'labels' must be N = {len(data)} integers in 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _read_members(path: Path, wanted: set[str]) -> dict[str, bytes]:
    """The ``wanted`` members' bytes. The gzip stream is read to its end, past the tar's
    end-of-archive blocks where tarfile stops, so that its CRC-32 and length trailer is
    checked: a changed or cut archive is an error here, whether or not an md5 was given."""
    members: dict[str, bytes] = {}
    try:
        with gzip.open(path, "rb") as stream:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for m in tar:
                    if m.name in wanted and m.isfile():
                        members[m.name] = tar.extractfile(m).read()
            while stream.read(1 << 20):
                pass
    except EOFError as exc:
        # a cut file, or a changed byte that made deflate expect more data
        raise ValueError(
            f"{path}: truncated or corrupt CIFAR-10 archive: its gzip stream ends before the end marker"
        ) from exc
    except (tarfile.TarError, OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: corrupt CIFAR-10 archive ({type(exc).__name__}: {exc})") from exc
    return members


def read_archive(path: str | Path) -> dict[str, np.ndarray | list[str]]:
    """Images uint8 [N, 3, 32, 32] (channel-first, rows top to bottom) and int64 labels of the
    train (50,000 in the official archive) and test (10,000) splits, plus the class names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 archive not found: {path}")
    wanted = {f"{FOLDER}/{n}" for n in (*TRAIN_BATCHES, TEST_BATCH, META)}
    members = _read_members(path, wanted)
    missing = sorted(wanted - members.keys())
    if missing:
        raise ValueError(f"{path}: archive lacks {', '.join(missing)}")

    def batch(name):
        where = f"{path}:{FOLDER}/{name}"
        return _batch_arrays(_unpickle(members[f"{FOLDER}/{name}"], where), where)

    train = [batch(n) for n in TRAIN_BATCHES]
    test_images, test_labels = batch(TEST_BATCH)
    meta = _unpickle(members[f"{FOLDER}/{META}"], f"{path}:{FOLDER}/{META}")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", [])]
    if len(names) != 10:
        raise ValueError(f"{path}:{FOLDER}/{META}: expected 10 label_names, found {len(names)}")
    return {
        "train_images": np.concatenate([x for x, _ in train]),
        "train_labels": np.concatenate([y for _, y in train]),
        "test_images": test_images,
        "test_labels": test_labels,
        "label_names": names,
    }
