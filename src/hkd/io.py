"""Atomic file writing: every output is written to a temporary name, then renamed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get normal permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_torch(obj, path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path, what: str = "checkpoint", mmap: bool = False):
    """``torch.load`` of a checkpoint, weights only, on CPU; ``mmap``: tensors are mapped, not
    read, for a caller that needs only the other entries."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # corrupt or truncated file, or not a checkpoint at all
        raise RuntimeError(
            f"cannot read {what} {path}: corrupt, truncated or not a checkpoint ({torch_load_problem(exc)})"
        ) from exc


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: the lines of torch's weights-only refusal that advise loading unsafely or point to its docs
_ADVICE = (
    "weights_only",
    "weights only load failed",
    "check the documentation",
    "https://",
    "trusted source",
)


def torch_load_problem(exc: Exception) -> str:
    """One line saying what a failed ``torch.load`` found wrong with the file: the global or
    type it refused where it names one. Never torch's advice to retry with
    ``weights_only=False`` (no remedy for a bad file, and unsafe for a hostile one), no ANSI codes."""
    text = _ANSI.sub("", str(exc))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "unsupported" in line.lower()]
    plain = [line for line in lines if not any(a in line.lower() for a in _ADVICE)]
    line = (named or plain or ["no details"])[0]
    return f"{type(exc).__name__}: {line}"


def append_text(path, text: str) -> None:
    """Append ``text`` to a log. Logs grow line by line (Snakemake's rules ``tee -a`` them), so
    they are appended to, not replaced: an append cut short leaves every earlier line."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def save_json(obj, path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_json(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    return json.loads(path.read_text())


def save_npz(path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_npz(path, keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Load an .npz fully; a missing file, corrupt archive or missing key is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except Exception as exc:
        raise RuntimeError(f"cannot read {path}: {exc}") from exc
    missing = [k for k in keys if k not in out]
    if missing:
        raise KeyError(f"{path} lacks arrays {missing}")
    return out


def npz_memmap(path, key: str) -> np.memmap:
    """Array ``key`` of an uncompressed .npz (``np.savez``) memory-mapped, read-only: its
    bytes are read from disk only where indexed. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(f"{key}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"'{key}' is compressed; only np.savez (stored) files can be mapped")
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)  # the zip local file header; name and extra field follow
            if local[:4] != b"PK\x03\x04":
                raise ValueError("bad zip local header")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
        if offset + int(np.prod(shape)) * dtype.itemsize > path.stat().st_size:
            raise ValueError(f"'{key}' runs past the end of the file (truncated)")
    except KeyError as exc:
        raise KeyError(f"{path} lacks array '{key}'") from exc
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise RuntimeError(f"cannot map {path}: {exc}") from exc
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_array(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def sha256_json(obj) -> str:
    """Hash of a JSON-able value, independent of key order (settings fingerprints)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def load_resume(path: Path | None, fingerprint: str, stage: str, made_of: str) -> dict | None:
    """A training stage's resume state at ``path``, or None (and why, printed) when there is
    none, it is unreadable, or it was made from other inputs (``made_of`` names them)."""
    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # written atomically, so only a foreign file gets here
        print(f"{stage}: ignoring unreadable resume state {path} ({exc})")
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        print(f"{stage}: ignoring {path}: made with other {made_of}")
        return None
    return state


def sha256_tensors(named) -> str:
    """Hash of ``(name, tensor)`` pairs (a state dict's items): names, dtypes, shapes and bytes,
    in the order given (the fingerprint of a network's weights)."""
    h = hashlib.sha256()
    for name, v in named:
        v = v.detach().cpu().contiguous()
        h.update(f"{name}:{v.dtype}:{tuple(v.shape)}".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
