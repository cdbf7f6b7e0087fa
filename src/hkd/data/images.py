"""Image datasets from a folder or a zip of images (FFHQ-64 and the like), including the
zip layout of EDM's ``dataset_tool.py``: images anywhere inside, and an optional
``dataset.json`` at the top, ``{"labels": [["00000/img00000000.png", 3], ...]}`` or
``{"labels": null}``.

Images must be square. Other sizes are resized with PIL's Lanczos filter (antialiased),
the filter EDM's ``dataset_tool.py`` uses for its ``--resolution`` option, so FFHQ
1024x1024 read here at 64 matches EDM's prepared ``ffhq-64x64.zip`` up to encoding.
"""

from __future__ import annotations

import io
import json
import lzma
import zipfile
import zlib
from pathlib import Path

import numpy as np

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
#: decoders PIL may use: a member named .png holding e.g. EPS would otherwise reach Ghostscript
FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
#: what reading a damaged zip member raises: a CRC mismatch (BadZipFile), a broken deflate,
#: bzip2 or LZMA stream (zlib.error, OSError, LZMAError), data that ends early (EOFError), an
#: encrypted member (RuntimeError) or an unknown compression method (NotImplementedError)
_ZIP_MEMBER_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    OSError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    KeyError,
)


def _is_image(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)


class _Source:
    """Uniform read access to a folder or a zip; names are '/'-separated and relative."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"image dataset not found: {self.path}")
        self.zip = None
        if self.path.is_file():
            try:
                self.zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise ValueError(f"{self.path}: not a readable zip archive ({exc})") from exc

    def names(self) -> list[str]:
        if self.zip is not None:
            return sorted(n for n in self.zip.namelist() if not n.endswith("/"))
        return sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())

    def read(self, name: str) -> bytes:
        if self.zip is None:
            try:
                return (self.path / name).read_bytes()
            except OSError as exc:
                raise ValueError(f"{self.path}: cannot read {name} ({exc})") from exc
        try:
            return self.zip.read(name)  # checks the member's CRC-32
        except _ZIP_MEMBER_ERRORS as exc:
            raise ValueError(
                f"{self.path}: cannot read zip member {name}: corrupt, truncated or unsupported "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    def close(self):
        if self.zip is not None:
            self.zip.close()


def _decode(raw: bytes, where: str, resolution: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw), formats=FORMATS) as img:
            img.load()
            img = img.convert("RGB")
    except Exception as exc:
        raise ValueError(f"{where}: not a readable image ({exc})") from exc
    if img.width != img.height:
        raise ValueError(
            f"{where}: image is {img.width}x{img.height}; only square images are read "
            "(crop them first, e.g. with EDM's dataset_tool.py --transform=center-crop)"
        )
    if img.width != resolution:
        img = img.resize((resolution, resolution), Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def read_image_dataset(path: str | Path, resolution: int, max_images: int | None = None) -> dict:
    """uint8 images [N, 3, resolution, resolution] in name order, their names, and int64
    labels from ``dataset.json`` (None when it is absent or says ``"labels": null``)."""
    src = _Source(path)
    try:
        all_names = src.names()
        names = [n for n in all_names if _is_image(n)]
        if not names:
            raise ValueError(f"{src.path}: no images ({', '.join(EXTENSIONS)}) found")
        if max_images is not None:
            names = names[:max_images]
        labels = None
        if "dataset.json" in all_names:
            try:
                meta = json.loads(src.read("dataset.json"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{src.path}: dataset.json is not valid JSON ({exc})") from exc
            if not isinstance(meta, dict) or "labels" not in meta:
                raise ValueError(f"{src.path}: dataset.json has no 'labels' entry")
            if meta["labels"] is not None:
                try:
                    table = {str(n): int(v) for n, v in meta["labels"]}
                except (TypeError, ValueError) as exc:
                    raise ValueError(
                        f"{src.path}: dataset.json 'labels' must be [name, integer] pairs ({exc})"
                    ) from exc
                missing = [n for n in names if n not in table]
                if missing:
                    raise ValueError(
                        f"{src.path}: dataset.json has no label for {missing[0]}"
                        f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}"
                    )
                labels = np.asarray([table[n] for n in names], dtype=np.int64)
        images = np.stack([_decode(src.read(n), f"{src.path}:{n}", resolution) for n in names])
    finally:
        src.close()
    return {"images": images, "names": names, "labels": labels}
