"""Files that come from a URL or a local path, checked against a known md5.

Downloads go through torchvision's ``download_url`` into a temporary folder beside the
destination and are renamed into place only after their checksum matched, so an
interrupted or corrupted download never leaves a file that looks finished.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from torchvision.datasets.utils import calculate_md5, download_url

_URL_SCHEMES = ("http://", "https://", "ftp://", "file://")


def is_url(source: str) -> bool:
    return str(source).lower().startswith(_URL_SCHEMES)


def verify_md5(path: str | os.PathLike, md5: str | None, what: str = "file") -> None:
    """Raise naming ``path`` when it is missing or its md5 differs from ``md5`` (None: skip)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if md5 is None:
        return
    actual, expected = calculate_md5(str(path)), md5.strip().lower()
    if actual != expected:
        raise ValueError(f"{what} {path} has md5 {actual}, expected {expected} "
                         "(wrong, truncated or corrupted file)")


def fetch_file(source: str, dest: str | os.PathLike, md5: str | None, what: str = "file") -> Path:
    """The verified file for ``source``: a local path is checked where it lies; a URL is
    downloaded to ``dest``. A ``dest`` already there is reused when it has this md5 (or, with
    ``md5=None``, as it is: downloads only ever appear there complete)."""
    if not is_url(source):
        verify_md5(source, md5, what)
        return Path(source)
    dest = Path(dest)
    if dest.is_file() and (md5 is None or calculate_md5(str(dest)) == md5.strip().lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
        try:
            download_url(source, tmp, filename=dest.name)
        except Exception as exc:
            raise RuntimeError(f"cannot download {what} from {source}: {exc}") from exc
        part = Path(tmp) / dest.name
        if md5 is not None:  # the message names the URL and the destination, not the temporary file
            actual, expected = calculate_md5(str(part)), md5.strip().lower()
            if actual != expected:
                raise ValueError(f"{what} downloaded from {source} (for {dest}) has md5 {actual}, expected "
                                 f"{expected} (wrong, truncated or corrupted file)")
        os.replace(part, dest)
    return dest
