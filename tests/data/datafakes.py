"""Writers of small fake datasets in each real on-disk format (shared by tests/data)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np


def images(n: int, side: int, seed: int) -> np.ndarray:
    """Random uint8 (n, side, side, 3) images."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)


def write_cifar10(root: Path, per_batch: int = 20, test: int = 10) -> dict[str, np.ndarray]:
    """cifar-10-batches-py with 5 train batches + test_batch + batches.meta; returns the arrays."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    xs, ys = [], []
    for b in range(1, 6):
        x = images(per_batch, 32, b)
        y = (np.arange(per_batch) + b) % 10
        with (base / f"data_batch_{b}").open("wb") as fh:
            pickle.dump({"batch_label": f"training batch {b} of 5", "labels": y.tolist(),
                         "data": x.transpose(0, 3, 1, 2).reshape(per_batch, -1),
                         "filenames": [f"img{i}.png" for i in range(per_batch)]}, fh, protocol=2)
        xs.append(x)
        ys.append(y)
    xt, yt = images(test, 32, 99), np.arange(test) % 10
    with (base / "test_batch").open("wb") as fh:
        pickle.dump({"labels": yt.tolist(), "data": xt.transpose(0, 3, 1, 2).reshape(test, -1)}, fh, protocol=2)
    with (base / "batches.meta").open("wb") as fh:
        pickle.dump({"label_names": ["airplane"] * 10, "num_cases_per_batch": per_batch}, fh, protocol=2)
    return {"x": np.concatenate(xs), "y": np.concatenate(ys), "xt": xt, "yt": yt}


def write_cifar100(root: Path, n: int = 30, test: int = 10) -> dict[str, np.ndarray]:
    """cifar-100-python/{train,test,meta} with bytes keys as the real files have."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    out = {}
    for name, count, seed in (("train", n, 1), ("test", test, 2)):
        x = images(count, 32, seed)
        fine = (np.arange(count) * 7) % 100
        with (base / name).open("wb") as fh:
            pickle.dump({b"data": x.transpose(0, 3, 1, 2).reshape(count, -1),
                         b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist()}, fh, protocol=2)
        out[name] = (x, fine)
    with (base / "meta").open("wb") as fh:
        pickle.dump({b"fine_label_names": [b"apple"] * 100}, fh, protocol=2)
    return out


def write_stl10(root: Path, n_train: int = 20, n_test: int = 10, n_unl: int = 7) -> dict[str, np.ndarray]:
    """stl10_binary with column-major (N, 3, W, H) images and labels 1..10."""
    base = root / "stl10_binary"
    base.mkdir(parents=True)
    out = {}
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2), ("unlabeled", n_unl, 3)):
        x = images(n, 96, seed)
        x.transpose(0, 3, 2, 1).tofile(base / f"{split}_X.bin")  # HWC -> C, W, H (column-major)
        out[split] = x
        if split != "unlabeled":
            y = np.arange(n) % 10
            (y + 1).astype(np.uint8).tofile(base / f"{split}_y.bin")
            out[split + "_y"] = y
    (base / "class_names.txt").write_text("\n".join(
        ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n")
    return out


def idx_bytes(arr: np.ndarray) -> bytes:
    """An unsigned-byte IDX file."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_idx(folder: Path, name: str, arr: np.ndarray, gz: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name + (".gz" if gz else ""))
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_fashion(root: Path, gz: bool, n: int = 12, test: int = 6) -> dict[str, np.ndarray]:
    folder = root / "fashion_mnist"
    rng = np.random.default_rng(5)
    x, xt = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 256, (test, 28, 28), dtype=np.uint8)
    y, yt = np.arange(n) % 10, np.arange(test) % 10
    write_idx(folder, "train-images-idx3-ubyte", x, gz)
    write_idx(folder, "train-labels-idx1-ubyte", y, gz)
    write_idx(folder, "t10k-images-idx3-ubyte", xt, gz)
    write_idx(folder, "t10k-labels-idx1-ubyte", yt, gz)
    return {"x": x, "y": y, "xt": xt, "yt": yt}


def write_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def write_png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit PNG written by hand (PIL cannot write 16-bit colour): (H, W) grey, (H, W, 2) grey +
    alpha, (H, W, 3) RGB or (H, W, 4) RGBA of uint16."""
    import struct
    import zlib

    arr = np.asarray(arr, dtype=">u2")
    h, w = arr.shape[:2]
    colour = {2: 0, 3: {2: 4, 3: 2, 4: 6}.get(arr.shape[-1])}[arr.ndim] if arr.ndim == 3 else 0
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
