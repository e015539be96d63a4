"""Build the ImageNet-127 tree that the ``imagenet127`` source reads (see docs/datasets.md).

Input: an ImageNet-1k train tree (``train/<wnid>/*.JPEG``), a val tree (``val/<wnid>/*.JPEG``,
or flat with a labels file), and the 127-class mapping of Huh et al. (2016) as used by
CReST/DASO/ACR: one line per wnid, ``wnid<sep>class`` or ``wnid<sep>index<sep>name``
(``sep`` = whitespace, comma, tab or ``->``; ``#`` starts a comment). Output:
``OUT/imagenet127_<S>/`` with S x S PNGs, classes.txt (head first), train.txt and val.txt.

Images are squashed to S x S (no crop), like the downsampled ImageNet of Chrabaszcz et al.
(2017), with PIL's antialiasing box (default) or bicubic filter.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import DataError
from .sources._common import list_images
from .sources.imagenet127 import class_dir_name, dataset_dir

WNID = re.compile(r"^n\d{8}$")
_SEP = re.compile(r"\s*(?:->|,|\t|\s)\s*")


def parse_mapping(path: Path, expect_wnids: int = 1000, expect_classes: int = 127) -> dict[str, str]:
    """wnid -> super-class name, validated (``expect_wnids`` unique wnids, ``expect_classes`` classes)."""
    if not Path(path).is_file():
        raise DataError(f"mapping file {path} not found; pass the 127-class mapping (docs/datasets.md)")
    mapping: dict[str, str] = {}
    for lineno, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = _SEP.split(line, maxsplit=2)
        if len(parts) < 2 or not WNID.match(parts[0]):
            raise DataError(f"mapping {path} line {lineno}: expected 'wnid class' (e.g. "
                            f"'n01440764 fish'), got {raw!r}")
        wnid = parts[0]
        if parts[1].isdigit():
            name = parts[2].strip() if len(parts) == 3 else f"class_{int(parts[1]):03d}"
        else:
            name = " ".join(parts[1:]).strip()
        if wnid in mapping:
            raise DataError(f"mapping {path} line {lineno}: wnid {wnid} appears twice")
        mapping[wnid] = name
    classes = set(mapping.values())
    if len(mapping) != expect_wnids or len(classes) != expect_classes:
        raise DataError(f"mapping {path} has {len(mapping)} wnids and {len(classes)} classes; "
                        f"expected {expect_wnids} wnids and {expect_classes} classes")
    return mapping


def _val_labels(path: Path) -> dict[str, str]:
    """file stem -> wnid from 'file wnid' lines or Kaggle's LOC_val_solution.csv."""
    out: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        tokens = [t for t in re.split(r"[,\s]+", line.strip()) if t]
        wnids = [t for t in tokens[1:] if WNID.match(t)]
        if tokens and wnids:
            out[Path(tokens[0]).stem] = wnids[0]
    return out


def collect(train_dir: Path, val_dir: Path, mapping: dict[str, str], val_labels: Path | None,
            allow_missing: bool) -> tuple[list[tuple[Path, str, str]], list[tuple[Path, str, str]]]:
    """(source image, wnid, class name) for the train and val images."""
    missing = [w for w in sorted(mapping) if not (train_dir / w).is_dir()]
    if missing and not allow_missing:
        raise DataError(f"{len(missing)} of {len(mapping)} wnid folders are missing under {train_dir} "
                        f"(first: {missing[0]}); point --train at ImageNet's train/ folder")
    train = [(p, w, mapping[w]) for w in sorted(mapping) for p in list_images(train_dir / w, False)]
    if val_labels is not None:
        labels = _val_labels(val_labels)
        val = [(p, labels[p.stem], mapping[labels[p.stem]]) for p in list_images(val_dir, False)
               if p.stem in labels and labels[p.stem] in mapping]
    else:
        val = [(p, w, mapping[w]) for w in sorted(mapping) if (val_dir / w).is_dir()
               for p in list_images(val_dir / w, False)]
    if not train or not val:
        raise DataError(f"no images found (train: {len(train)} under {train_dir}, val: {len(val)} "
                        f"under {val_dir}); val needs <wnid>/ folders or --val-labels")
    return train, val


def class_order(train: Sequence[tuple[Path, str, str]]) -> list[str]:
    """Class names head first: by train count descending, ties by name."""
    counts = Counter(name for _, _, name in train)
    return sorted(counts, key=lambda n: (-counts[n], n))


def balanced_subset(items: list[tuple[Path, str, str]], per_class: int, seed: int) -> list[tuple[Path, str, str]]:
    """A seeded subset with ``per_class`` items of every class (all of a smaller class)."""
    if per_class <= 0:
        return items
    by_class: dict[str, list[int]] = {}
    for i, (_, _, name) in enumerate(items):
        by_class.setdefault(name, []).append(i)
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for name in sorted(by_class):
        idx = by_class[name]
        keep += sorted(rng.permutation(idx)[:per_class].tolist()) if len(idx) > per_class else idx
    return [items[i] for i in sorted(keep)]


def _convert(job: tuple[str, str, int, str]) -> None:
    from PIL import Image

    src, dst, size, resample = job
    dst_path = Path(dst)
    if dst_path.is_file():
        return  # resumable
    filt = Image.BOX if resample == "box" else Image.BICUBIC
    with Image.open(src) as img:
        small = img.convert("RGB").resize((size, size), filt)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst_path.with_suffix(".tmp.png")
    small.save(tmp, format="PNG")
    tmp.replace(dst_path)


def prepare(train_dir: Path, val_dir: Path, mapping_file: Path, out_root: Path, size: int = 32,
            resample: str = "box", test_per_class: int = 50, seed: int = 0, workers: int = 4,
            val_labels: Path | None = None, allow_missing: bool = False,
            expect_wnids: int = 1000, expect_classes: int = 127, progress: bool = True) -> Path:
    """Convert ImageNet-1k into ``out_root/imagenet127_<size>/``; returns that folder."""
    from tqdm import tqdm

    mapping = parse_mapping(mapping_file, expect_wnids, expect_classes)
    train, val = collect(Path(train_dir), Path(val_dir), mapping, val_labels, allow_missing)
    val = balanced_subset(val, test_per_class, seed)
    names = class_order(train)
    names += sorted(set(mapping.values()) - set(names))  # classes with no train images (partial runs)
    index = {n: k for k, n in enumerate(names)}
    out = dataset_dir(Path(out_root), size)
    jobs, lists = [], {"train": [], "val": []}
    for role, items in (("train", train), ("val", val)):
        for src, wnid, name in items:
            rel = f"{role}/{class_dir_name(name)}/{wnid}_{src.stem}.png"
            jobs.append((str(src), str(out / rel), size, resample))
            lists[role].append(f"{rel}\t{index[name]}")
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(jobs), desc=f"imagenet127 {size}px", unit="img", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_convert, jobs, chunksize=256):
                bar.update()
    else:
        for job in jobs:
            _convert(job)
            bar.update()
    bar.close()
    for role, lines in lists.items():
        (out / f"{role}.txt").write_text("\n".join(lines) + "\n")
    (out / "classes.txt").write_text("\n".join(names) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of scripts/prepare_imagenet127.py."""
    p = argparse.ArgumentParser(description="Prepare downsampled ImageNet-127 for ulfine.")
    p.add_argument("--train", type=Path, required=True, help="ImageNet-1k train/ (train/<wnid>/*.JPEG)")
    p.add_argument("--val", type=Path, required=True, help="ImageNet-1k val/ (<wnid>/ folders or flat)")
    p.add_argument("--val-labels", type=Path, default=None,
                   help="for a flat val/: 'file wnid' lines or Kaggle's LOC_val_solution.csv")
    p.add_argument("--mapping", type=Path, required=True, help="wnid -> 127-class mapping file")
    p.add_argument("--out", type=Path, required=True, help="data.root to write imagenet127_<S>/ into")
    p.add_argument("--size", type=int, default=32, help="side in pixels (32 or 64)")
    p.add_argument("--resample", choices=["box", "bicubic"], default="box")
    p.add_argument("--test-per-class", type=int, default=50,
                   help="balanced test images per class drawn from val (0 = keep all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--allow-missing", action="store_true", help="tolerate missing wnid folders")
    args = p.parse_args(argv)
    try:
        out = prepare(args.train, args.val, args.mapping, args.out, args.size, args.resample,
                      args.test_per_class, args.seed, args.workers, args.val_labels, args.allow_missing)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}; train with data.dataset=imagenet127 data.root={args.out} "
          f"data.image_size={args.size}")
    return 0
