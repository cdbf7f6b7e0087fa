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

from hkd.config import is_url


def _md5_mismatch(path: Path, md5: str | None) -> str | None:
    """None when ``md5`` is None or matches the file; else 'md5 <actual>, expected <md5>'."""
    if md5 is None:
        return None
    actual, expected = calculate_md5(str(path)), md5.strip().lower()
    return None if actual == expected else f"md5 {actual}, expected {expected}"


def verify_md5(
    path: str | os.PathLike, md5: str | None, what: str = "file", label: str | None = None
) -> None:
    """Raise naming ``path`` (or ``label``) when it is missing or its md5 differs from ``md5``
    (None: skip the checksum)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    mismatch = _md5_mismatch(path, md5)
    if mismatch:
        raise ValueError(f"{what} {label or path} has {mismatch} (wrong, truncated or corrupted file)")


def fetch_file(source: str, dest: str | os.PathLike, md5: str | None, what: str = "file") -> Path:
    """The verified file for ``source``: a local path is checked where it lies; a URL is
    downloaded to ``dest``. A ``dest`` already there is reused when it has this md5 (or, with
    ``md5=None``, as it is: downloads only ever appear there complete)."""
    if not is_url(source):
        verify_md5(source, md5, what)
        return Path(source)
    dest = Path(dest)
    if dest.is_file() and _md5_mismatch(dest, md5) is None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
        try:
            download_url(source, tmp, filename=dest.name)
        except Exception as exc:
            raise RuntimeError(f"cannot download {what} from {source}: {exc}") from exc
        part = Path(tmp) / dest.name
        # the message names the URL and the destination, not the temporary file
        verify_md5(part, md5, what, label=f"downloaded from {source} (for {dest})")
        os.replace(part, dest)
    return dest
