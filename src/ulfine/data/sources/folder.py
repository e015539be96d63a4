"""A user's own images: class folders or CSV lists under ``data.root`` (the folder itself).

Layout (each role is either a folder or a CSV list; the CSV wins when both exist)::

    ROOT/labeled/<class>/*.png     or  ROOT/labeled.csv    (path,label)
    ROOT/unlabeled/**/*.png        or  ROOT/unlabeled.csv  (path[,label])   optional
    ROOT/test/<class>/*.png        or  ROOT/test.csv       (path,label)     optional
    ROOT/classes.txt               optional: one class name per line, line order = index

CSV paths are relative to ROOT (or absolute); labels are class names (or indices when
classes.txt exists); a header line ``path,label`` is allowed; text files are UTF-8 (a BOM is
accepted). Without classes.txt the classes are the sorted folder names of ``labeled/`` (or the
sorted labels of labeled.csv). Unlabeled images get label -1 unless the CSV gives one
(diagnostics only). Without a test set, ``data.test_fraction`` of every labeled class (at least
one image of a class that has two) is held out as the evaluation set, the same images whatever the
run's seed. Images are resized to ``data.image_size`` square (the engine sets it to the backbone's
input size when it is null; 64 when this reader is called without it).

Every file is decoded once when the dataset is read (:func:`~ulfine.data.decode.scan_images`):
with ``data.on_bad_image=fail`` an unreadable file stops the run naming it, with ``skip`` it is
left out and listed (``SourceData.skipped``, written to the run folder). Empty class folders,
test classes that the labeled set lacks, class names that CLIP could not tell apart and names
that are not UTF-8 fail with a message naming the folder or file and the fix.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

import numpy as np

from ...config import DataConfig
from ...errors import DataError
from ..base import DATASETS, UNKNOWN_LABEL, DatasetSpec, ImageSet, SourceData
from ..decode import scan_images
from ._common import IMAGE_SUFFIXES, is_hidden, list_images

log = logging.getLogger("ulfine.data")

DEFAULT_SIZE = 64
HOW = "see docs/datasets.md (folder layout: labeled/<class>/, unlabeled/, test/<class>/)"
Rows = list[tuple[Path, str | None]]
HOLDOUT_SEED = 20250512  # fixes which labeled images a folder without test/ holds out


def _read_text(path: Path) -> str:
    """A UTF-8 text file (BOM accepted), or a DataError naming the line that is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DataError(f"folder: {path} line {line} is not UTF-8 text; save the file as UTF-8") from None


def _read_csv(path: Path, root: Path, allow_unlabeled: bool) -> Rows:
    rows: Rows = []
    for lineno, row in enumerate(csv.reader(io.StringIO(_read_text(path), newline="")), start=1):
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


def _utf8_name(folder: Path) -> str:
    """The folder's name; a DataError when it is not valid UTF-8 (CLIP's tokenizer reads it)."""
    try:
        folder.name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"folder: the name of class folder {os.fsencode(folder)!r} is not valid UTF-8; "
                        "rename the folder (class names are read by CLIP)") from None
    return folder.name


def _folder_rows(folder: Path) -> Rows:
    rows: Rows = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = _utf8_name(sub)
        images = list_images(sub)
        if not images:
            others = [p.name for p in sub.rglob("*") if p.is_file() and not is_hidden(p, sub)]
            found = f" (it holds {len(others)} other file(s), e.g. {others[0]})" if others else ""
            raise DataError(f"folder: class folder {sub} holds no image files{found}; add images "
                            f"({' '.join(sorted(IMAGE_SUFFIXES))}) or remove the folder")
        rows += [(img, name) for img in images]
    return rows


def _role(root: Path, role: str, required: bool) -> Rows | None:
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


def _check_names(names: list[str], source: Path) -> list[str]:
    """Class names must differ for CLIP: not repeated, nor equal up to case, spaces or underscores."""
    seen: dict[str, str] = {}
    for name in names:
        key = " ".join(name.replace("_", " ").split()).casefold()
        if key in seen:
            how = "twice" if seen[key] == name else f"as {seen[key]!r} and {name!r}, which CLIP reads alike"
            raise DataError(f"folder: class {name!r} appears {how} in {source}; rename or merge the classes")
        seen[key] = name
    return names


def _class_names(root: Path, labeled: Rows) -> list[str]:
    listed = root / "classes.txt"
    if listed.is_file():
        names = [ln.strip() for ln in _read_text(listed).splitlines() if ln.strip()]
        return _check_names(names, listed)
    return _check_names(sorted({label for _, label in labeled if label is not None}), root / "labeled")


def _label(label: str, index: dict[str, int], k: int) -> int | None:
    if label in index:
        return index[label]
    if label.lstrip("-").isdigit() and -1 <= int(label) < k:
        return int(label)
    return None


def _to_set(rows: Rows, names: list[str], role: str, size: int, max_pixels: int | None = None) -> ImageSet:
    index = {name: k for k, name in enumerate(names)}
    labels = np.full(len(rows), UNKNOWN_LABEL, dtype=np.int64)
    unknown: dict[str, list[Path]] = {}
    for i, (path, label) in enumerate(rows):
        k = UNKNOWN_LABEL if label is None else _label(label, index, len(names))
        if k is None:
            unknown.setdefault(str(label), []).append(path)
        else:
            labels[i] = k
    if unknown:
        label, paths = next(iter(unknown.items()))
        raise DataError(f"folder: {role} class {label!r} ({len(paths)} image(s), e.g. {paths[0]}) is not one "
                        f"of the {len(names)} labeled classes ({', '.join(names[:5])}, ...); add labeled "
                        "images of it, list it in classes.txt, or remove it from the " + role + " set")
    return ImageSet([p for p, _ in rows], labels, size, max_pixels)


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


def _screen(roles: dict[str, Rows], cfg: DataConfig) -> tuple[dict[str, Rows], list[dict[str, str]]]:
    """Decode every file once; fail on unreadable ones or leave them out (``data.on_bad_image``)."""
    paths = list(dict.fromkeys(p for rows in roles.values() for p, _ in rows))
    bad = scan_images(paths, "folder images", cfg.max_image_pixels)
    if not bad:
        return roles, []
    if cfg.on_bad_image == "fail":
        first = next(iter(bad))
        raise DataError(f"folder: {len(bad)} of {len(paths)} image files under {cfg.root} cannot be read, "
                        f"e.g. {first} ({bad[first]}); replace or delete them, or set data.on_bad_image=skip "
                        "to leave them out (they are then listed in the run folder's skipped_images.json)")
    skipped = [{"path": str(p), "role": role, "problem": bad[p]}
               for role, rows in roles.items() for p, _ in rows if p in bad]
    log.warning("folder: left out %d unreadable image file(s) under %s (data.on_bad_image=skip), e.g. %s",
                len(skipped), cfg.root, skipped[0]["path"])
    kept = {role: [r for r in rows if r[0] not in bad] for role, rows in roles.items()}
    for role in ("labeled", "test"):
        _check_not_emptied(roles.get(role) or [], kept.get(role) or [], role, cfg)
    return kept, skipped


def _check_not_emptied(before: Rows, after: Rows, role: str, cfg: DataConfig) -> None:
    """A class that had images of ``role`` and lost them all to ``data.on_bad_image=skip`` fails,
    naming the class. Why: training on a class without labeled images, or reporting a class's
    accuracy on no test image, is silently wrong (a NaN or a 0 in the table)."""
    lost = sorted({label for _, label in before} - {label for _, label in after}, key=str)
    if lost:
        raise DataError(f"folder: every {role} image of class {lost[0]!r} under {cfg.root} is unreadable and "
                        f"data.on_bad_image=skip left the class with none; replace the files or remove the class")


def read_folder(cfg: DataConfig) -> SourceData:
    """The user's folder: labeled/ is the train pool, unlabeled/ the natural unlabeled set,
    test/ (or a held-out part of labeled/) the evaluation set."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"folder: data.root={root} is not a folder; point data.root at the folder "
                        f"holding labeled/ ({HOW})")
    size = cfg.image_size or DEFAULT_SIZE
    roles = {role: _role(root, role, required=role == "labeled") for role in ("labeled", "test", "unlabeled")}
    listed = {role: rows for role, rows in roles.items() if rows}
    if "labeled" not in listed:
        raise DataError(f"folder: no labeled images found under {root}; {HOW}")
    names = _class_names(root, listed["labeled"])
    if "test" not in listed:
        listed["labeled"], listed["test"] = hold_out(listed["labeled"], cfg.test_fraction)
        if not listed["test"]:
            raise DataError(f"folder: no test/ folder or test.csv in {root}, and no labeled class has the two "
                            f"images needed to hold one out as the evaluation set; add test/<class>/ images "
                            f"or more labeled ones ({HOW})")
        log.info("folder: no test/ in %s; %d labeled images (data.test_fraction=%g per class) held out "
                 "as the evaluation set", root, len(listed["test"]), cfg.test_fraction)
    kept, skipped = _screen(listed, cfg)
    sets = {role: _to_set(rows, names, role, size, cfg.max_image_pixels) for role, rows in kept.items()}
    return SourceData("folder", names, sets["labeled"], sets["test"], sets.get("unlabeled"), size,
                      skipped=skipped)


DATASETS.register("folder")(DatasetSpec(
    name="folder", num_classes=0, class_names=None, native_size=None, has_natural_unlabeled=True,
    description="your own images: data.root/{labeled/<class>/, unlabeled/, test/<class>/} or CSVs "
    "(preset `folder`)",
    reader=read_folder,
))
