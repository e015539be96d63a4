"""Image files -> uint8 RGB arrays, whatever their mode, and the scan that finds unreadable ones.

Why one decoder: a user's folder holds grayscale, palette, RGBA, 16-bit and CMYK files, rotated
phone photos, truncated downloads and files that are not images at all. ``PIL.Image.convert
("RGB")`` alone reads a 16-bit PNG as near-white (it clips values above 255) and drops alpha
without compositing. :func:`decode_image` scales 16-bit and 32-bit integer images to 8 bits,
composites transparency over white, applies the EXIF orientation and raises a one-line
DataError naming the file; :func:`scan_images` runs it over a whole list before training so that
``data.on_bad_image`` (fail | skip) is decided once, up front, and not in a data-loader worker.

Decoding is bounded in memory: a 657 KB PNG of 13000 x 13000 pixels decodes to 4.6 GB. The
header gives the size before any pixel is decoded; a file over ``data.max_image_pixels``
(pixels x channels, counted as RGB at least: what decoding and the RGB conversion allocate) is
refused there, as a bad image naming the file and the bound.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from ..errors import DataError

#: background that transparent pixels are composited over (what a viewer shows on a white page)
BACKGROUND = (255, 255, 255)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
#: default of ``data.max_image_pixels`` (the config schema's default is this value)
DEFAULT_MAX_PIXELS = 64_000_000


class ImageTooLargeError(ValueError):
    """An image whose header announces more pixels than the decode bound allows."""


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def check_pixels(img: Image.Image, max_pixels: int | None = None) -> None:
    """Refuse, from the header alone, an image whose decoding would allocate more than
    ``max_pixels`` RGB pixels (width x height x channels, at least 3 channels as it becomes RGB).

    Why before decoding: PIL only warns up to 179 megapixels; by then the memory is spent.
    """
    bound = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    channels = max(len(img.getbands()), 3)
    if img.width * img.height * channels > bound * 3:
        raise ImageTooLargeError(f"{img.width}x{img.height} pixels x {channels} channels is over the decode bound "
                            f"data.max_image_pixels={bound} (RGB pixels); shrink the image or raise the bound")


def _wide_to_uint8(img: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer / float) single-channel images scaled to 8 bits, not clipped."""
    arr = np.asarray(img)
    if img.mode in _SIXTEEN_BIT or (img.mode == "I" and arr.max(initial=0) > 255):
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
            raise ValueError(f"{img.mode} image with values outside 0..65535 is not supported")
        arr = np.rint(arr.astype(np.float64) / 257.0)
    elif img.mode == "F":
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        arr = np.rint(np.clip(arr.astype(np.float64) / top, 0.0, 1.0) * 255.0)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: EXIF orientation applied, wide modes scaled, alpha composited."""
    img = ImageOps.exif_transpose(img)
    if img.mode in (*_SIXTEEN_BIT, "I", "F"):
        img = _wide_to_uint8(img)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def image_array(img: Image.Image, size: int | None = None) -> np.ndarray:
    """A PIL image as uint8 (H, W, 3) RGB (:func:`to_rgb`), squashed to ``size`` x ``size``
    (bicubic) when given.

    Why one function: file datasets, the evaluation set and ``ulfine predict`` must turn a file
    into pixels the same way, or a model sees other images at prediction than at evaluation.
    """
    img = to_rgb(img)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def _decode(path: Path | str, size: int | None, max_pixels: int | None = None) -> np.ndarray:
    with Image.open(path) as raw:
        check_pixels(raw, max_pixels)
        return image_array(raw, size)


def decode_image(path: Path | str, size: int | None = None, max_pixels: int | None = None) -> np.ndarray:
    """The image file at ``path`` as uint8 (H, W, 3) RGB, resized to ``size`` square if given.

    Raises a one-line DataError naming the file when it is missing, truncated, not an image, of
    an unsupported mode, or larger than ``max_pixels`` (:func:`check_pixels`; default
    :data:`DEFAULT_MAX_PIXELS`).
    """
    try:
        return _decode(path, size, max_pixels)
    except _DECODE_ERRORS as exc:
        raise DataError(f"cannot read image {path} ({_reason(exc)}); replace or delete the file, or set "
                        "data.on_bad_image=skip to leave such files out") from None


def _problem(path: Path, max_pixels: int | None = None) -> str | None:
    try:
        _decode(path, None, max_pixels)
    except _DECODE_ERRORS as exc:
        return _reason(exc)
    return None


def scan_images(paths: Sequence[Path], what: str = "images", max_pixels: int | None = None) -> dict[Path, str]:
    """Decode every file once (threads, a progress bar for long lists); ``{path: problem}`` of
    the files that cannot be read (or are over ``max_pixels``). Decoding a file is the same code
    the loaders run later."""
    if not paths:
        return {}
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = list(tqdm(pool.map(lambda p: _problem(p, max_pixels), paths), total=len(paths),
                            desc=f"checking {what}", disable=len(paths) < 2000, leave=False))
    return {p: r for p, r in zip(paths, results) if r is not None}


__all__ = ["BACKGROUND", "DEFAULT_MAX_PIXELS", "ImageTooLargeError", "check_pixels", "decode_image", "image_array",
           "scan_images", "to_rgb"]
