"""Each source reads its real on-disk format back exactly, and fails with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datafakes import images, write_cifar10, write_cifar100, write_fashion, write_png, write_stl10

from ulfine.config import DataConfig
from ulfine.data import DATASETS, UNKNOWN_LABEL, StoredArray, plan_counts
from ulfine.data.sources.fashion_mnist import DEBIAN_DIR
from ulfine.errors import DataError


def load(name: str, root: Path, **kw):
    return DATASETS.get(name).load(DataConfig(dataset=name, root=root, **kw))


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_registry_has_every_dataset_with_static_facts():
    names = DATASETS.names()
    for name in ["cifar10", "cifar100", "stl10", "imagenet127", "fashion_mnist", "folder", "synthetic10"]:
        assert name in names
    assert DATASETS.get("cifar100").num_classes == 100
    assert DATASETS.get("cifar100").class_names[:3] == ["apple", "aquarium_fish", "baby"]
    assert DATASETS.get("stl10").native_size == 96 and DATASETS.get("stl10").has_natural_unlabeled
    assert DATASETS.get("imagenet127").num_classes == 127


def test_cifar10_pixels_and_labels(tmp_path):
    ref = write_cifar10(tmp_path)
    src = load("cifar10", tmp_path)
    assert src.native_size == 32 and src.class_names[0] == "airplane" and src.unlabeled is None
    np.testing.assert_array_equal(src.train.images, ref["x"])
    np.testing.assert_array_equal(src.train.labels, ref["y"])
    np.testing.assert_array_equal(src.test.images, ref["xt"])
    np.testing.assert_array_equal(src.test.load(3), ref["xt"][3])
    assert src.train.labels.dtype == np.int64 and len(src.train) == 100


def test_cifar100_fine_labels_bytes_keys(tmp_path):
    ref = write_cifar100(tmp_path)
    src = load("cifar100", tmp_path)
    np.testing.assert_array_equal(src.train.images, ref["train"][0])
    np.testing.assert_array_equal(src.train.labels, ref["train"][1])
    np.testing.assert_array_equal(src.test.labels, ref["test"][1])
    assert src.class_names[-1] == "worm"


def test_cifar_truncated_batch_is_one_line_error(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DataError) as exc:
        load("cifar10", tmp_path)
    assert "data_batch_3" in one_line(exc) and "truncated" in str(exc.value)


def test_cifar_missing_names_path_and_download(tmp_path):
    with pytest.raises(DataError) as exc:
        load("cifar10", tmp_path)
    msg = one_line(exc)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "data.download=true" in msg
    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "test").unlink()
    with pytest.raises(DataError, match="batch test"):
        load("cifar100", tmp_path)


def test_stl10_column_major_and_memmapped_unlabeled(tmp_path):
    ref = write_stl10(tmp_path)
    src = load("stl10", tmp_path, num_unlabeled_head=None)
    np.testing.assert_array_equal(src.train.images, ref["train"])
    np.testing.assert_array_equal(src.train.labels, ref["train_y"])
    np.testing.assert_array_equal(src.test.images, ref["test"])
    assert isinstance(src.unlabeled.images, StoredArray) and src.unlabeled.images.shape == (7, 96, 96, 3)
    assert (src.unlabeled.labels == UNKNOWN_LABEL).all()
    for i in (0, 6):
        np.testing.assert_array_equal(src.unlabeled.load(i), ref["unlabeled"][i])
    import pickle
    clone = pickle.loads(pickle.dumps(src.unlabeled))  # workers reopen the file, no copy
    assert clone.images._map is None
    np.testing.assert_array_equal(clone.load(2), ref["unlabeled"][2])


def test_stl10_truncated_and_missing(tmp_path):
    write_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "unlabeled_X.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError) as exc:
        load("stl10", tmp_path, num_unlabeled_head=None)
    assert "unlabeled_X.bin" in one_line(exc) and "truncated" in str(exc.value)
    (tmp_path / "stl10_binary" / "test_y.bin").unlink()
    with pytest.raises(DataError, match="test_y.bin"):
        load("stl10", tmp_path)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx(tmp_path, gz):
    ref = write_fashion(tmp_path, gz)
    src = load("fashion_mnist", tmp_path)
    assert src.train.images.shape == (12, 28, 28, 3) and src.native_size == 28
    for c in range(3):
        np.testing.assert_array_equal(src.train.images[..., c], ref["x"])
    np.testing.assert_array_equal(src.test.labels, ref["yt"])


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_truncated(tmp_path, gz):
    write_fashion(tmp_path, gz)
    path = next((tmp_path / "fashion_mnist").glob("train-images*"))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError) as exc:
        load("fashion_mnist", tmp_path)
    assert "train-images" in one_line(exc)


@pytest.mark.skipif(not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_real_debian_files(tmp_path):
    src = load("fashion_mnist", tmp_path)  # nothing under tmp_path: falls back to /usr/share
    assert src.train.images.shape == (60000, 28, 28, 3) and len(src.test) == 10000
    assert np.bincount(src.train.labels).tolist() == [6000] * 10
    assert np.bincount(src.test.labels).tolist() == [1000] * 10


def _folder(root: Path) -> dict:
    imgs = images(9, 20, 3)
    layout = {"labeled/cat/a.png": 0, "labeled/cat/b.png": 1, "labeled/dog/c.png": 2,
              "labeled/ant/d.jpg_not_image.txt": None, "unlabeled/x.png": 3, "unlabeled/sub/y.png": 4,
              "test/cat/t1.png": 5, "test/dog/t2.png": 6, "test/ant/t3.png": 7, "labeled/ant/e.png": 8}
    for rel, i in layout.items():
        if i is None:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text("not an image")
        else:
            write_png(root / rel, imgs[i])
    return {"imgs": imgs}


def test_folder_layout(tmp_path):
    ref = _folder(tmp_path)
    src = load("folder", tmp_path, image_size=20)
    assert src.class_names == ["ant", "cat", "dog"] and src.native_size == 20
    assert src.train.labels.tolist() == [0, 1, 1, 2]
    np.testing.assert_array_equal(src.train.load(1), ref["imgs"][0])  # labeled/cat/a.png
    assert src.unlabeled.labels.tolist() == [-1, -1]
    np.testing.assert_array_equal(src.unlabeled.load(0), ref["imgs"][4])  # sub/y.png sorts first
    assert src.test.labels.tolist() == [0, 1, 2]
    resized = load("folder", tmp_path, image_size=8)
    assert resized.train.load(0).shape == (8, 8, 3)


def test_folder_csv_lists(tmp_path):
    imgs = images(4, 16, 1)
    for i in range(4):
        write_png(tmp_path / "img" / f"{i}.png", imgs[i])
    (tmp_path / "labeled.csv").write_text("path,label\nimg/0.png,zebra\nimg/1.png,apple\n")
    (tmp_path / "test.csv").write_text("img/2.png,apple\n")
    (tmp_path / "unlabeled.csv").write_text("img/3.png\n")
    src = load("folder", tmp_path, image_size=16)
    assert src.class_names == ["apple", "zebra"]
    assert src.train.labels.tolist() == [1, 0] and src.unlabeled.labels.tolist() == [-1]
    np.testing.assert_array_equal(src.train.load(0), imgs[0])
    (tmp_path / "test.csv").write_text("img/2.png,banana\n")
    with pytest.raises(DataError, match="banana"):
        load("folder", tmp_path)


def test_folder_missing(tmp_path):
    with pytest.raises(DataError) as exc:
        load("folder", tmp_path / "nope")
    assert str(tmp_path / "nope") in one_line(exc)
    write_png(tmp_path / "labeled" / "a" / "x.png", images(1, 8, 0)[0])
    with pytest.raises(DataError, match="no test/ folder or test.csv in"):
        load("folder", tmp_path)


def test_folder_without_test_holds_out_labeled_images(tmp_path):
    imgs = images(16, 12, 5)
    counts = {"cat": 10, "dog": 5, "eel": 1}
    i = 0
    for name, n in counts.items():
        for j in range(n):
            write_png(tmp_path / "labeled" / name / f"{j:02d}.png", imgs[i])
            i += 1
    src = load("folder", tmp_path, image_size=12, test_fraction=0.2)
    # 20% of each class (at least one of a class with two or more), none of a single-image class
    assert np.bincount(src.test.labels, minlength=3).tolist() == [2, 1, 0]
    assert np.bincount(src.train.labels, minlength=3).tolist() == [8, 4, 1]
    held, kept = set(map(str, src.test.images)), set(map(str, src.train.images))
    assert not held & kept and len(held | kept) == 16
    assert set(map(str, load("folder", tmp_path, image_size=12).test.images)) == held  # whatever the run


def test_synthetic10_deterministic_and_separable():
    a = load("synthetic10", Path("/nonexistent"))
    b = load("synthetic10", Path("/elsewhere"))
    assert a.train.images.shape == (2000, 32, 32, 3) and a.test.images.shape == (200, 32, 32, 3)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    assert np.bincount(a.train.labels).tolist() == [200] * 10
    assert all(name.isalpha() for name in a.class_names)
    # learnable: nearest class-mean colour classifies the test set well
    means = np.stack([a.train.images[a.train.labels == k].mean(axis=(0, 1, 2)) for k in range(10)])
    pred = np.argmin(((a.test.images.mean(axis=(1, 2))[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == a.test.labels).mean() > 0.9


def test_plan_counts_without_files(tmp_path):
    for name in ["cifar10", "cifar100", "stl10", "fashion_mnist", "synthetic10", "imagenet127"]:
        plan = plan_counts(DataConfig(dataset=name, root=tmp_path, num_labeled_head=10,
                                      num_unlabeled_head=20, imbalance_labeled=10, imbalance_unlabeled=10))
        K = DATASETS.get(name).num_classes
        assert len(plan.classes) == len(plan.labeled) == len(plan.unlabeled) == K
        assert plan.labeled[0] == 10 and plan.labeled[-1] == 1
    assert plan_counts(DataConfig(dataset="imagenet127", root=tmp_path)).classes[5] == "class_5"
    with pytest.raises(DataError, match="prepare_imagenet127"):
        plan_counts(DataConfig(dataset="imagenet127", root=tmp_path, labeled_fraction=0.1))


def test_missing_and_truncated_dataset_files_are_one_line_errors(tmp_path):
    def cli(*args):  # a fresh process in tmp_path: nothing is written into the working folder
        return subprocess.run([sys.executable, "-m", "ulfine.cli", *args], capture_output=True, cwd=tmp_path,
                              text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)

    args = ["train", "cifar10_n1500_m3000_g100_consistent", f"data.root={tmp_path}", "model.arch=ulfine-micro-vit",
            "model.pretrained=none", "model.text_cache_dir=null", "train.progress=false",
            f"output_dir={tmp_path / 'run'}", f"cache.dir={tmp_path / 'cache'}"]
    missing = cli(*args)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "cifar-10-batches-py" in missing.stderr and str(tmp_path) in missing.stderr
    write_cifar10(tmp_path)  # every file present; one of them cut short
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    batch.write_bytes(batch.read_bytes()[:1000])
    truncated = cli(*args)
    assert truncated.returncode == 2 and "Traceback" not in truncated.stderr
    assert truncated.stderr.startswith("error: ") and truncated.stderr.count("\n") == 1
    assert "data_batch_4" in truncated.stderr and "truncated" in truncated.stderr, truncated.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py"]  # no half run, no cache
