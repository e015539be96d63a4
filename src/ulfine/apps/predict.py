"""``ulfine predict MODEL PATH...``: top-k classes of image files, as CSV (timm's columns) or JSON.

Every file under the given folders (recursively; hidden files skipped) and every file named is
predicted or reported: a file that cannot be decoded as an image (truncated, not an image) gets a
one-line warning and a row with an ``error`` and no labels, so the output always has one row per
input file and never a traceback. The output file is checked before any prediction (an existing
folder, a missing parent folder) and written whole or not at all; a file name that is not UTF-8
is written with its odd bytes escaped (``\\xff``), never lost.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..errors import DataError
from ..safefiles import atomic_write_text
from .classifier import Classifier, Prediction, to_pixels


@dataclass
class FileResult:
    """One input file: its prediction, or why it has none."""

    filename: str
    prediction: Prediction | None = None
    error: str | None = None


def printable_name(name: str) -> str:
    """``name`` as UTF-8 text: bytes of a file name that is not UTF-8 (Python keeps them as lone
    surrogates) become ``\\xNN`` escapes.

    Why: writing such a name as it is raises ``UnicodeEncodeError`` after every image was
    predicted; escaping keeps one row per file and the name recognisable.
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def check_out(out: Path) -> Path:
    """The output file of ``ulfine predict``, checked before any work: not a folder, and in a
    folder that exists (so a long prediction never dies at its last step)."""
    if out.is_dir():
        raise DataError(f"--out {out} is a folder; name a file in it, e.g. {out / 'predictions.csv'}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise DataError(f"--out {out}: the folder {parent} does not exist; create it first or name another file")
    return out


def write_results(results: Sequence[FileResult], out: Path, fmt: str, topk: int) -> None:
    """The CSV or JSON of ``results`` written whole or not at all (never an empty or torn file)."""
    text = to_json(results) if fmt == "json" else to_csv(results, topk)
    try:
        atomic_write_text(out, text)
    except OSError as exc:
        raise DataError(f"cannot write {out} ({exc.strerror or exc}); choose another --out") from None


def list_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files named and every non-hidden file under the folders named (sorted per folder)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file()
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.exists():
            files.append(p)
        else:
            raise DataError(f"{p} does not exist")
    if not files:
        raise DataError(f"no files under {', '.join(map(str, paths))}")
    return files


def _decode(path: Path, size: int) -> np.ndarray | str:
    """The file's pixels, or a one-line reason why it cannot be read as an image."""
    try:
        return to_pixels(path, size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"


def _chunks(files: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(files), size):
        yield files[start : start + size]


def predict_files(classifier: Classifier, files: Sequence[Path], topk: int = 5, batch_size: int = 64,
                  progress: bool = True, warn: bool = True) -> list[FileResult]:
    """One :class:`FileResult` per file, in order; unreadable files are warned about on stderr
    (one line each)."""
    results: list[FileResult] = []
    # the bar only on a terminal (disable=None), so logs and CI output stay clean
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=None if progress else True, file=sys.stderr)
    for chunk in _chunks(files, batch_size):
        decoded = [(f, _decode(f, classifier.input_size)) for f in chunk]
        good = [(f, px) for f, px in decoded if isinstance(px, np.ndarray)]
        preds: dict[Path, Prediction] = {}
        if good:
            pixels = torch.from_numpy(np.stack([px for _, px in good])).permute(0, 3, 1, 2).contiguous()
            preds = dict(zip([f for f, _ in good], classifier.top_k(classifier.logits_of_pixels(pixels), topk)))
        for f, px in decoded:
            if isinstance(px, str):
                if warn:
                    tqdm.write(f"warning: cannot read {printable_name(str(f))}: {px}", file=sys.stderr)
                results.append(FileResult(str(f), error=px))
            else:
                results.append(FileResult(str(f), prediction=preds[f]))
        bar.update(len(chunk))
    bar.close()
    return results


def to_csv(results: Sequence[FileResult], topk: int) -> str:
    """timm's columns: ``filename``, ``label_1..k``, ``prob_1..k``, then ``error`` (empty when read)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["filename", *[f"label_{i}" for i in range(1, topk + 1)],
                     *[f"prob_{i}" for i in range(1, topk + 1)], "error"])
    for r in results:
        labels = r.prediction.labels if r.prediction else []
        probs = [f"{p:.6f}" for p in r.prediction.probs] if r.prediction else []
        pad = lambda xs: list(xs) + [""] * (topk - len(xs))
        writer.writerow([printable_name(r.filename), *pad(labels), *pad(probs), printable_name(r.error or "")])
    return buf.getvalue()


def to_json(results: Sequence[FileResult]) -> str:
    """A list of ``{filename, labels, indices, probs, error}``."""
    rows: list[dict[str, Any]] = []
    for r in results:
        p = r.prediction
        rows.append({"filename": printable_name(r.filename), "labels": p.labels if p else None,
                     "indices": p.indices if p else None, "probs": p.probs if p else None,
                     "error": None if r.error is None else printable_name(r.error)})
    return json.dumps(rows, indent=1) + "\n"


__all__ = ["FileResult", "check_out", "list_files", "predict_files", "printable_name", "to_csv", "to_json",
           "write_results"]
