"""A user's own images: class folders or CSV lists under ``data.root`` (the folder itself).

Layout (each role is either a folder or a CSV list; the CSV wins when both exist)::

    ROOT/labeled/<class>/*.png     or  ROOT/labeled.csv    (path,label)
    ROOT/unlabeled/**/*.png        or  ROOT/unlabeled.csv  (path[,label])   optional
    ROOT/test/<class>/*.png        or  ROOT/test.csv       (path,label)     optional
    ROOT/classes.txt               optional: one class name per line, line order = index

CSV paths are relative to ROOT (or absolute); labels are class names (or indices when
classes.txt exists); a header line ``path,label`` is allowed. Without classes.txt the classes
are the sorted folder names of ``labeled/`` (or the sorted labels of labeled.csv). Unlabeled
images get label -1 unless the CSV gives one (diagnostics only). Without a test set,
``data.test_fraction`` of every labeled class (at least one image of a class that has two) is
held out as the evaluation set, the same images whatever the run's seed. Images are decoded
lazily and resized to ``data.image_size`` square (the engine sets it to the backbone's input
size when it is null; 64 when this reader is called without it).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from ...config import DataConfig
from ...errors import DataError
from ..base import DATASETS, UNKNOWN_LABEL, DatasetSpec, ImageSet, SourceData
from ._common import list_images

DEFAULT_SIZE = 64
HOW = "see docs/datasets.md (folder layout: labeled/<class>/, unlabeled/, test/<class>/)"
HOLDOUT_SEED = 20250512  # fixes which labeled images a folder without test/ holds out
log = logging.getLogger("ulfine.data")


def _read_csv(path: Path, root: Path, allow_unlabeled: bool) -> list[tuple[Path, str | None]]:
    rows: list[tuple[Path, str | None]] = []
    with path.open(newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if lineno == 1 and row[0].strip().lower() == "path":
                continue
            label = row[1].strip() if len(row) > 1 and row[1].strip() else None
            if label is None and not allow_unlabeled:
                raise DataError(f"folder: {path} line {lineno} has no label; write `path,label`")
            img = Path(row[0].strip())
            rows.append((img if img.is_absolute() else root / img, label))
    return rows


def _folder_rows(folder: Path) -> list[tuple[Path, str | None]]:
    rows: list[tuple[Path, str | None]] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        rows += [(img, sub.name) for img in list_images(sub)]
    return rows


def _role(root: Path, role: str, required: bool) -> list[tuple[Path, str | None]] | None:
    csv_path, folder = root / f"{role}.csv", root / role
    if csv_path.is_file():
        return _read_csv(csv_path, root, allow_unlabeled=role == "unlabeled")
    if folder.is_dir():
        if role == "unlabeled":
            return [(img, None) for img in list_images(folder)]
        return _folder_rows(folder)
    if required:
        raise DataError(f"folder: no {role}/ folder or {role}.csv in {root}; {HOW}")
    return None


def _class_names(root: Path, labeled: list[tuple[Path, str | None]]) -> list[str]:
    listed = root / "classes.txt"
    if listed.is_file():
        return [ln.strip() for ln in listed.read_text().splitlines() if ln.strip()]
    return sorted({label for _, label in labeled if label is not None})


def _to_set(rows: list[tuple[Path, str | None]], names: list[str], role: str, size: int) -> ImageSet:
    index = {name: k for k, name in enumerate(names)}
    labels = np.empty(len(rows), dtype=np.int64)
    for i, (path, label) in enumerate(rows):
        if label is None:
            labels[i] = UNKNOWN_LABEL
        elif label in index:
            labels[i] = index[label]
        elif label.lstrip("-").isdigit() and -1 <= int(label) < len(names):
            labels[i] = int(label)
        else:
            raise DataError(f"folder: {role} image {path} has label {label!r}, which is not one of "
                            f"the {len(names)} classes ({', '.join(names[:5])}, ...)")
    return ImageSet([p for p, _ in rows], labels, size)


def hold_out(rows: list[tuple[Path, str | None]], fraction: float) -> tuple[list, list]:
    """(kept, held out): per class a fixed seeded ``fraction`` of the rows (at least one of a
    class with two or more images), so a folder without test/ still has an evaluation set."""
    rng = np.random.default_rng(HOLDOUT_SEED)
    kept, held = [], []
    for label in sorted({lab for _, lab in rows}, key=str):
        members = [r for r in rows if r[1] == label]
        n = max(1, round(fraction * len(members))) if len(members) > 1 else 0
        chosen = set(rng.permutation(len(members))[:n].tolist())
        held += [r for i, r in enumerate(members) if i in chosen]
        kept += [r for i, r in enumerate(members) if i not in chosen]
    return kept, held


def read_folder(cfg: DataConfig) -> SourceData:
    """The user's folder: labeled/ is the train pool, unlabeled/ the natural unlabeled set,
    test/ (or a held-out part of labeled/) the evaluation set."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"folder: data.root={root} is not a folder; point data.root at the folder "
                        f"holding labeled/ ({HOW})")
    size = cfg.image_size or DEFAULT_SIZE
    labeled = _role(root, "labeled", required=True)
    test = _role(root, "test", required=False)
    unlabeled = _role(root, "unlabeled", required=False)
    assert labeled is not None
    names = _class_names(root, labeled)
    if not labeled or not names:
        raise DataError(f"folder: no labeled images found under {root}; {HOW}")
    if test is None:
        labeled, test = hold_out(labeled, cfg.test_fraction)
        log.info("folder: no test/ in %s; %d labeled images (data.test_fraction=%g per class) held out "
                 "as the evaluation set", root, len(test), cfg.test_fraction)
    missing_files = [p for p, _ in labeled[:1] + test[:1] + (unlabeled or [])[:1] if not p.is_file()]
    if missing_files:
        raise DataError(f"folder: listed image {missing_files[0]} does not exist; fix the CSV paths "
                        "(relative to data.root)")
    return SourceData(
        "folder", names,
        _to_set(labeled, names, "labeled", size),
        _to_set(test, names, "test", size),
        _to_set(unlabeled, names, "unlabeled", size) if unlabeled else None,
        size,
    )


DATASETS.register("folder")(DatasetSpec(
    name="folder", num_classes=0, class_names=None, native_size=None, has_natural_unlabeled=True,
    description="your own images: data.root/{labeled/<class>/, unlabeled/, test/<class>/} or CSVs "
    "(preset `folder`)",
    reader=read_folder,
))
