"""Folder / zip image datasets (FFHQ-64 path), EDM dataset_tool layout with dataset.json."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from hkd.data.images import read_image_dataset


def make_folder(root, n=5, size=96, labels=True):
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        name = f"{i // 3:05d}/img{i:08d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name)
        names.append(name)
    if labels:
        (root / "dataset.json").write_text(json.dumps({"labels": [[n, i % 10] for i, n in enumerate(names)]}))
    return names


def zip_folder(root, out, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(out, "w", compression=compression) as z:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(root).as_posix())


def test_folder_and_zip_read_the_same_lanczos_resized_images(tmp_path):
    root = tmp_path / "ffhq"
    names = make_folder(root)
    zip_folder(root, tmp_path / "ffhq.zip")
    a = read_image_dataset(root, 64)
    b = read_image_dataset(tmp_path / "ffhq.zip", 64)
    assert a["images"].shape == (5, 3, 64, 64) and a["images"].dtype == np.uint8
    assert a["names"] == names == b["names"]
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["labels"], [0, 1, 2, 3, 4])
    with Image.open(root / names[2]) as img:
        ref = np.asarray(img.convert("RGB").resize((64, 64), Image.LANCZOS)).transpose(2, 0, 1)
    np.testing.assert_array_equal(a["images"][2], ref)
    assert read_image_dataset(root, 96, max_images=2)["images"].shape == (2, 3, 96, 96)


def test_unlabelled_and_null_labels(tmp_path):
    make_folder(tmp_path / "a", labels=False)
    assert read_image_dataset(tmp_path / "a", 32)["labels"] is None
    (tmp_path / "a" / "dataset.json").write_text(json.dumps({"labels": None}))
    assert read_image_dataset(tmp_path / "a", 32)["labels"] is None


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        read_image_dataset(tmp_path / "nothing-here", 64)
    root = tmp_path / "d"
    names = make_folder(root)
    (root / names[1]).write_bytes(b"not a png")
    with pytest.raises(ValueError, match=names[1]):
        read_image_dataset(root, 64)
    make_folder(root, labels=False)
    (root / "dataset.json").unlink()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(root / "wide.png")
    with pytest.raises(ValueError, match="wide.png.*60x40"):
        read_image_dataset(root, 64)
    (root / "wide.png").unlink()
    (root / "dataset.json").write_text(json.dumps({"labels": [[names[0], 1]]}))
    with pytest.raises(ValueError, match=f"no label for {names[1]}"):
        read_image_dataset(root, 64)
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="broken.zip"):
        read_image_dataset(tmp_path / "broken.zip", 64)


def test_only_plain_image_decoders(tmp_path):
    """A member named .png holding another format (EPS would run Ghostscript) is refused."""
    root = tmp_path / "d"
    root.mkdir()
    (root / "a.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n")
    with pytest.raises(ValueError, match="a.png: not a readable image"):
        read_image_dataset(root, 8)
    make_folder(root, n=2, size=8, labels=False)
    (root / "a.png").unlink()
    (root / "dataset.json").write_text(json.dumps({"labels": [["00000/img00000000.png", "x"]]}))
    with pytest.raises(ValueError, match="dataset.json 'labels' must be"):
        read_image_dataset(root, 8)


@pytest.mark.parametrize(
    "compression",
    [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA],
    ids=["stored", "deflated", "bzip2", "lzma"],
)
def test_changed_zip_member_is_an_error_naming_it(tmp_path, compression):
    """A byte changed inside a member's compressed data is an error naming the zip and the
    member (each method fails its own way: CRC, zlib, bzip2, LZMA), or (a byte the
    decompressor never uses) the same images; never different images silently."""
    root = tmp_path / "d"
    names = make_folder(root, n=3, size=16)
    archive = tmp_path / "images.zip"
    zip_folder(root, archive, compression)
    good = read_image_dataset(archive, 16)
    raw = archive.read_bytes()
    with zipfile.ZipFile(archive) as z:
        members = [i for i in z.infolist() if i.filename in names]
    for info in members:
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        for pos in np.linspace(start, start + info.compress_size - 1, 12).astype(int):
            changed = bytearray(raw)
            changed[pos] ^= 0x5A
            bad = tmp_path / "changed.zip"
            bad.write_bytes(changed)
            try:
                loaded = read_image_dataset(bad, 16)
            except ValueError as exc:
                assert f"{bad}: cannot read zip member {info.filename}: corrupt" in str(exc), (pos, str(exc))
            else:
                np.testing.assert_array_equal(loaded["images"], good["images"], err_msg=f"byte {pos}")
