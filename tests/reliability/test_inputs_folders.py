"""A user's image folder as it really is: hidden entries (``.ipynb_checkpoints/``, macOS's ``._x.png``)
are not data; skipping unreadable files never silently leaves a class without images; a
decompression bomb is refused from its header, before any pixel is decoded, naming the file and
the bound."""

from __future__ import annotations

import logging
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ulfine.apps.classifier import to_pixels
from ulfine.config import DataConfig
from ulfine.data import DATASETS
from ulfine.data.decode import decode_image
from ulfine.errors import DataError

SRC = Path(__file__).resolve().parents[2] / "src"


def load(root: Path, **kw):
    return DATASETS.get("folder").load(DataConfig(dataset="folder", root=root, image_size=8, **kw))


def _png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, np.uint8)).save(path)
    return path


def _classes(root: Path, per_class: int = 2) -> None:
    for role in ("labeled", "test"):
        for name in ("cat", "dog"):
            for i in range(per_class):
                _png(root / role / name / f"{i}.png", 40 * i)


def bomb_header(path: Path, width: int = 13000, height: int = 13000) -> Path:
    """A PNG whose header announces ``width`` x ``height`` RGB pixels (the pixel data is a few
    bytes: decoding it would allocate width x height x 3 bytes before finding out)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_hidden_folders_and_files_are_not_data(tmp_path):
    _classes(tmp_path)
    _png(tmp_path / "labeled" / ".ipynb_checkpoints" / "0-checkpoint.png")  # a real image, in a hidden folder
    (tmp_path / "labeled" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    (tmp_path / "test" / "dog" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    _png(tmp_path / "unlabeled" / ".thumbs" / "t.png")
    _png(tmp_path / "unlabeled" / "u.png")
    data = load(tmp_path)
    assert data.class_names == ["cat", "dog"]
    files = [Path(p).name for s in (data.train, data.test, data.unlabeled) for p in s.images]
    assert sorted(files) == ["0.png"] * 4 + ["1.png"] * 4 + ["u.png"]


@pytest.mark.parametrize("role", ["labeled", "test"])
def test_skipping_every_image_of_a_class_fails_naming_the_class(tmp_path, role):
    _classes(tmp_path)
    for f in (tmp_path / role / "dog").iterdir():
        f.write_bytes(b"not an image")
    with pytest.raises(DataError) as exc:
        load(tmp_path, on_bad_image="skip")
    msg = str(exc.value)
    assert "'dog'" in msg and role in msg and "\n" not in msg
    (tmp_path / role / "dog" / "0.png").unlink()
    _png(tmp_path / role / "dog" / "0.png")  # one readable image left: the class stays, the rest is skipped
    assert load(tmp_path, on_bad_image="skip").class_names == ["cat", "dog"]


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    bomb = bomb_header(tmp_path / "huge.png")
    with pytest.raises(DataError) as exc:
        decode_image(bomb)
    msg = str(exc.value)
    assert "huge.png" in msg and "13000x13000" in msg and "data.max_image_pixels" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="data.max_image_pixels"):  # what predict turns into a row's error
        to_pixels(bomb, 32)
    from ulfine.data.decode import DEFAULT_MAX_PIXELS

    assert DataConfig().max_image_pixels == DEFAULT_MAX_PIXELS


def test_the_bound_is_a_config_key_read_by_the_folder_scan(tmp_path, caplog):
    _classes(tmp_path)
    _png(tmp_path / "unlabeled" / "small.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "unlabeled" / "big.png")
    with pytest.raises(DataError) as exc:
        load(tmp_path, max_image_pixels=1000)
    assert "big.png" in str(exc.value) and "max_image_pixels=1000" in str(exc.value)
    with caplog.at_level(logging.WARNING, logger="ulfine"):
        data = load(tmp_path, max_image_pixels=1000, on_bad_image="skip")
    assert [Path(p).name for p in data.unlabeled.images] == ["small.png"]
    assert data.unlabeled.max_pixels == 1000 and data.unlabeled.load(0).shape == (8, 8, 3)


@pytest.mark.slow
def test_decoding_a_bomb_allocates_nothing(tmp_path):
    """The refusal happens before decoding: the process's peak memory stays far below 4.6 GB."""
    bomb = bomb_header(tmp_path / "huge.png")
    code = ("import resource, sys\nfrom ulfine.data.decode import decode_image\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"try:\n    decode_image({str(bomb)!r})\nexcept Exception as e:\n    print(type(e).__name__)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(SRC)}).stdout.split()
    # KiB above the peak the imports reached: decoding would need 13000 x 13000 x 3 bytes (507 MB)
    assert out[0] == "DataError" and int(out[1]) < 100_000
