"""Long-tailed labeled/unlabeled/validation splits: the count formula, the seeded draw, and the
record (split.json) that lets a run be reproduced exactly.

Counts (benchmarks.md), classes head to tail, k = 1..K::

    N_k = floor(N_1 * gamma^(-(k-1)/(K-1)))     (last class pinned to floor(N_1/gamma) if pin_last)

computed as ACR/USB do (``mu = (1/gamma)^(1/(K-1))``, ``int(N_1 * mu**(k-1))``) so the numbers
match the public code bases. Drawing, per class c (train-pool indices of class c in file order):

1. ``selection="shuffle"``: a permutation seeded by (seed, c); ``"first"``: file order (ACR).
2. validation = the *last* ``val_per_class`` of that order (so switching validation on does not
   move the labeled/unlabeled draw), labeled = the first N_c, unlabeled = the next M_c
   (disjoint, DASO/USB/SimPro) or the first N_c + M_c (``labeled_in_unlabeled``, ACR/FineSSL:
   the unlabeled set holds the labeled images plus M_c more).
3. ``num_unlabeled_head=None``: the dataset's natural unlabeled set if it has one (STL-10's 100k,
   a folder's ``unlabeled/``), else the rest of the class after labeled and validation.

The test set is never touched.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig
from ..errors import ConfigError, DataError
from ..safefiles import atomic_write_text
from .base import DATASETS, UNKNOWN_LABEL, ImageSet, SourceData

SPLIT_FILE = "split.json"
SKIPPED_FILE = "skipped_images.json"
SPLIT_VERSION = 1
ROLES = ("labeled", "unlabeled", "val")


# ------------------------------------------------------------------------------------ counts
def class_counts(head: int, num_classes: int, imbalance: float, *, reverse: bool = False,
                 pin_last: bool = True) -> list[int]:
    """Per-class counts N_1 >= ... >= N_K of an exponential long tail (reversed if asked).

    ``pin_last`` sets N_K = floor(N_1 / gamma) exactly (ACR/USB/FineSSL/SimPro); without it the
    float power may round N_K one below (DASO/LIFT): CIFAR-100 N_1=150, gamma=10 gives 15 vs 14.
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1 (got {num_classes})")
    if imbalance < 1:
        raise ConfigError(f"imbalance ratio must be >= 1 (got {imbalance})")
    if num_classes == 1:
        return [int(head)]
    mu = np.power(1.0 / imbalance, 1.0 / (num_classes - 1))
    counts = [int(head * np.power(mu, k)) for k in range(num_classes)]
    if pin_last:
        counts[-1] = int(head / imbalance)
    return counts[::-1] if reverse else counts


def order_unlabeled(counts: list[int], order: str) -> list[int]:
    """Arrange head-first counts in an unlabeled ``order`` (ACR's flags, documented).

    consistent: as is; reversed: tail classes get the most; middle (ACR "centric"): class k gets
    the count of rank ``[K-2 or K-1, ..., 2, 0, 1, 3, ...][k]`` (even ranks descending, then odd
    ranks ascending), so the largest counts sit in the middle classes; headtail (ACR
    "off-centric"): ranks ``[1, 3, 5, ..., 4, 2, 0]``, so the largest counts sit at both ends.
    ``uniform`` is handled by the caller (gamma_u = 1).
    """
    K = len(counts)
    if order in ("consistent", "uniform"):
        return list(counts)
    if order == "reversed":
        return counts[::-1]
    evens, odds = list(range(0, K, 2)), list(range(1, K, 2))
    if order == "middle":
        ranks = evens[::-1] + odds
    elif order == "headtail":
        ranks = odds + evens[::-1]
    else:
        raise ConfigError(f"unknown data.unlabeled_order {order!r}")
    return [counts[r] for r in ranks]


def unlabeled_counts_for(cfg: DataConfig, num_classes: int) -> list[int] | None:
    """M_k per class from the config (None = natural set / the rest, decided by the data)."""
    if cfg.num_unlabeled_head is None:
        return None
    if cfg.unlabeled_order == "uniform":
        return [cfg.num_unlabeled_head] * num_classes
    base = class_counts(cfg.num_unlabeled_head, num_classes, cfg.imbalance_unlabeled,
                        pin_last=cfg.pin_last)
    return order_unlabeled(base, cfg.unlabeled_order)


def fraction_count(available: int, fraction: float) -> int:
    """Labeled count of a class under ``labeled_fraction``: round(n * f) (ACR), at least 1."""
    if available <= 0:
        return 0
    return max(1, int(np.around(available * fraction)))


@dataclass
class SplitPlan:
    """Per-class counts of a config, computed without reading images."""

    classes: list[str]
    labeled: list[int]
    unlabeled: list[int] | None  # None: the dataset's natural unlabeled set (unknown counts)


def _class_names(cfg: DataConfig, num_classes: int, known: list[str] | None) -> list[str]:
    if cfg.class_names is not None:
        if len(cfg.class_names) != num_classes:
            raise ConfigError(f"data.class_names has {len(cfg.class_names)} names but {cfg.dataset} "
                              f"has {num_classes} classes")
        dupes = sorted({n for n in cfg.class_names if cfg.class_names.count(n) > 1})
        if dupes:
            raise ConfigError(f"data.class_names names {dupes[0]!r} twice; each class needs its own name "
                              "(CLIP tells classes apart by name)")
        return list(cfg.class_names)
    return list(known) if known else [f"class_{k}" for k in range(num_classes)]


def _labeled_counts(cfg: DataConfig, pool_counts: list[int] | None, K: int) -> list[int]:
    if cfg.labeled_fraction is not None or cfg.num_labeled_head is None:
        if pool_counts is None:
            raise DataError("need pool counts")  # handled by plan_counts (reads the data)
        avail = [max(0, n - cfg.val_per_class) for n in pool_counts]
        if cfg.labeled_fraction is not None:
            return [fraction_count(n, cfg.labeled_fraction) for n in avail]
        return avail
    return class_counts(cfg.num_labeled_head, K, cfg.imbalance_labeled, pin_last=cfg.pin_last)


def _rest_counts(cfg: DataConfig, pool_counts: list[int], labeled: list[int]) -> list[int]:
    used = [n if cfg.labeled_in_unlabeled else 0 for n in labeled]
    return [n - cfg.val_per_class - lab + u for n, lab, u in zip(pool_counts, labeled, used)]


def plan_counts(cfg: DataConfig) -> SplitPlan:
    """Planned per-class labeled/unlabeled counts of ``cfg``.

    Needs no files whenever the counts follow from the config and the dataset's static facts;
    counts that depend on the files (``labeled_fraction`` on ImageNet-127, user folders) read
    the dataset's labels and fail with its DataError when it is absent.
    """
    spec = DATASETS.get(cfg.dataset)
    pool_counts = spec.train_counts
    natural = spec.has_natural_unlabeled
    needs_pool = (cfg.labeled_fraction is not None or cfg.num_labeled_head is None
                  or (cfg.num_unlabeled_head is None and not natural))
    K, known = spec.num_classes, spec.class_names
    if (needs_pool and pool_counts is None) or K == 0:
        source = spec.load(cfg)
        K, known = source.num_classes, source.class_names
        pool_counts = np.bincount(source.train.labels[source.train.labels >= 0], minlength=K).tolist()
        natural = source.unlabeled is not None
    labeled = _labeled_counts(cfg, pool_counts, K)
    unlabeled = unlabeled_counts_for(cfg, K)
    if unlabeled is None and not natural:
        assert pool_counts is not None
        unlabeled = _rest_counts(cfg, pool_counts, labeled)
    elif unlabeled is not None and cfg.labeled_in_unlabeled:
        unlabeled = [m + n for m, n in zip(unlabeled, labeled)]
    return SplitPlan(_class_names(cfg, K, known), labeled, unlabeled)


# ------------------------------------------------------------------------------------- draw
@dataclass
class RoleIndices:
    """Indices of one role into a pool of the source: ``train`` or ``natural`` (unlabeled)."""

    pool: str
    indices: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return {"pool": self.pool, "indices": [int(i) for i in self.indices]}


def split_hash(indices: dict[str, RoleIndices]) -> str:
    """sha256 of the roles' pools and indices (canonical JSON): equal hash, equal split."""
    canon = {role: indices[role].to_json() for role in sorted(indices)}
    return hashlib.sha256(json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _class_order(members: np.ndarray, cfg: DataConfig, seed: int, c: int) -> np.ndarray:
    if cfg.selection == "first":
        return members
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(c)]))
    return members[rng.permutation(len(members))]


def draw_indices(cfg: DataConfig, source: SourceData, seed: int) -> dict[str, RoleIndices]:
    """The seeded per-class draw described in the module docstring."""
    K = source.num_classes
    train_labels = np.asarray(source.train.labels)
    pool_counts = np.bincount(train_labels[train_labels >= 0], minlength=K).tolist()
    labeled_counts = _labeled_counts(cfg, pool_counts, K)
    planned_u = unlabeled_counts_for(cfg, K)
    use_natural = planned_u is None and source.unlabeled is not None
    if use_natural and cfg.labeled_in_unlabeled:
        raise ConfigError("data.labeled_in_unlabeled=true needs a drawn unlabeled set; with the "
                          "natural unlabeled set (num_unlabeled_head=null) set it to false")
    names = source.class_names
    lab, unl, val = [], [], []
    for c in range(K):
        order = _class_order(np.flatnonzero(train_labels == c), cfg, seed, c)
        n_l, v = labeled_counts[c], cfg.val_per_class
        if planned_u is not None:
            n_u = planned_u[c]
        elif use_natural:
            n_u = 0
        else:
            n_u = max(0, len(order) - n_l - v)
        asked = n_l + n_u + v
        if asked > len(order):
            raise DataError(
                f"{source.name}: class {c} ({names[c]!r}) has {len(order)} training images but the "
                f"split asks for {asked} ({n_l} labeled + {n_u} unlabeled + {v} validation); lower "
                "data.num_labeled_head / num_unlabeled_head / val_per_class")
        if v:
            val.append(order[len(order) - v:])
        lab.append(order[:n_l])
        unl.append(order[:n_l + n_u] if cfg.labeled_in_unlabeled else order[n_l:n_l + n_u])
    cat = lambda parts: np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)
    roles = {"labeled": RoleIndices("train", cat(lab))}
    if use_natural:
        roles["unlabeled"] = RoleIndices("natural", np.arange(len(source.unlabeled), dtype=np.int64))  # type: ignore[arg-type]
    else:
        roles["unlabeled"] = RoleIndices("train", cat(unl))
    roles["val"] = RoleIndices("train", cat(val))
    return roles


# ------------------------------------------------------------------------------------ SSLData
@dataclass
class SSLData:
    """Everything a run needs from the data layer; ``save_split`` records how it was drawn."""

    name: str
    class_names: list[str]
    labeled: ImageSet
    unlabeled: ImageSet | None
    val: ImageSet | None
    test: ImageSet
    labeled_counts: list[int]
    unlabeled_counts: list[int] | None  # ground truth per class (diagnostics), None if unknown
    native_size: int
    split_hash: str
    indices: dict[str, RoleIndices] = field(repr=False, default_factory=dict)
    config: dict[str, Any] = field(repr=False, default_factory=dict)
    seed: int = 0
    skipped: list[dict[str, str]] = field(repr=False, default_factory=list)  # data.on_bad_image=skip

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def save_skipped(self, run_dir: Path) -> Path | None:
        """Write ``run_dir/skipped_images.json`` (count and list of the files left out), if any."""
        if not self.skipped:
            return None
        path = Path(run_dir) / SKIPPED_FILE
        atomic_write_text(path, json.dumps({"count": len(self.skipped), "files": self.skipped}, indent=1))
        return path

    def save_split(self, run_dir: Path) -> Path:
        """Write ``run_dir/split.json`` (indices per role, counts, config, hash); returns its path."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "version": SPLIT_VERSION,
            "dataset": self.name,
            "seed": self.seed,
            "hash": self.split_hash,
            "class_names": self.class_names,
            "counts": {"labeled": self.labeled_counts, "unlabeled": self.unlabeled_counts,
                       "val": _counts(self.val, self.num_classes) if self.val is not None else None},
            "config": self.config,
            "roles": {role: ri.to_json() for role, ri in self.indices.items()},
        }
        path = run_dir / SPLIT_FILE
        atomic_write_text(path, json.dumps(record, indent=1))
        return path


def _counts(images: ImageSet, K: int) -> list[int]:
    labels = np.asarray(images.labels)
    return np.bincount(labels[labels >= 0], minlength=K).tolist()


def _known_counts(images: ImageSet | None, K: int) -> list[int] | None:
    if images is None or len(images) == 0 or (np.asarray(images.labels) == UNKNOWN_LABEL).any():
        return None
    return _counts(images, K)


def load_split(path: Path) -> dict[str, Any]:
    """Read a split.json (a file or a run folder), checking its hash; a DataError if tampered."""
    path = Path(path)
    if path.is_dir():
        path = path / SPLIT_FILE
    if not path.is_file():
        raise DataError(f"no saved split at {path}; it is written by SSLData.save_split at the run start")
    try:
        record = json.loads(path.read_text())
        roles = {r: RoleIndices(v["pool"], np.asarray(v["indices"], dtype=np.int64))
                 for r, v in record["roles"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path} is not a valid split file ({exc}); delete it to draw a new split") from None
    if split_hash(roles) != record.get("hash"):
        raise DataError(f"{path}: the indices do not match the recorded hash (file edited or "
                        "damaged); restore it or start a new run")
    record["indices"] = roles
    return record


def check_split(data: SSLData, path: Path) -> None:
    """Fail with a DataError unless ``data`` is the split saved at ``path`` (resume safety)."""
    record = load_split(path)
    if record["hash"] != data.split_hash:
        raise DataError(f"the split drawn now ({data.split_hash[:12]}) differs from the saved one "
                        f"({record['hash'][:12]}) at {path}; the data or split options changed "
                        "(point data.root at the run's data)")


def _assemble(cfg: DataConfig, source: SourceData, roles: dict[str, RoleIndices], seed: int) -> SSLData:
    K = source.num_classes
    pools = {"train": source.train, "natural": source.unlabeled}

    def take(role: str) -> ImageSet | None:
        ri = roles.get(role)
        if ri is None or len(ri.indices) == 0:
            return None
        pool = pools.get(ri.pool)
        if pool is None:
            raise DataError(f"{source.name}: the split needs the {ri.pool} pool, which this dataset "
                            "copy does not have")
        if ri.indices.max() >= len(pool):
            raise DataError(f"{source.name}: split index {int(ri.indices.max())} is beyond the "
                            f"{len(pool)} images of the {ri.pool} pool; the dataset changed")
        if ri.pool == "natural" and len(ri.indices) == len(pool) and (ri.indices == np.arange(len(pool))).all():
            return pool  # the whole natural set: keep it lazy (memory-mapped)
        out = pool.subset(ri.indices)
        out.image_size = pool.image_size
        return out

    labeled, unlabeled, val = take("labeled"), take("unlabeled"), take("val")
    if labeled is None:
        raise DataError(f"{source.name}: the split has no labeled images; raise data.num_labeled_head")
    names = _class_names(cfg, K, source.class_names)
    return SSLData(
        name=source.name, class_names=names, labeled=labeled, unlabeled=unlabeled, val=val,
        test=source.test, labeled_counts=_counts(labeled, K),
        unlabeled_counts=_known_counts(unlabeled, K) if unlabeled is not None else [0] * K,
        native_size=source.native_size, split_hash=split_hash(roles), indices=roles,
        config=cfg.model_dump(mode="json"), seed=int(seed), skipped=list(source.skipped),
    )


def build_ssl_data(cfg: DataConfig, seed: int, split_file: Path | None = None) -> SSLData:
    """Read the dataset and draw (or, given ``split_file``, re-apply) the long-tailed split.

    Re-applying a saved split reproduces a run exactly even if the drawing code changes later;
    the saved labeled counts are checked against the data so a changed dataset is caught.
    """
    source = DATASETS.get(cfg.dataset).load(cfg)
    if split_file is not None:
        record = load_split(split_file)
        data = _assemble(cfg, source, record["indices"], seed)
        if data.labeled_counts != record["counts"]["labeled"]:
            raise DataError(f"{cfg.dataset}: the saved split's labeled counts no longer match the "
                            f"labels on disk ({split_file}); the dataset changed")
        return data
    return _assemble(cfg, source, draw_indices(cfg, source, seed), seed)


def realised_counts(data: SSLData) -> dict[str, list[int] | list[None]]:
    """Per-class labeled and unlabeled counts of a built split (``ulfine splits``).

    Unlabeled counts use ground truth where the dataset knows it (a diagnostic, never training
    input); where it does not (STL-10's natural set), each entry is None.
    """
    K = data.num_classes
    unl: list[int] | list[None]
    if data.unlabeled is None:
        unl = [0] * K
    else:
        known = _known_counts(data.unlabeled, K)
        unl = known if known is not None else [None] * K
    return {"labeled": list(data.labeled_counts), "unlabeled": unl}
