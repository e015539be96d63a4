"""Split counts are pinned to the public benchmark numbers; the draw is seeded, disjoint when
asked, never touches the test set, and is recorded so a run can be reproduced exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datafakes import write_cifar10

from ulfine.config import DataConfig
from ulfine.data import (
    build_ssl_data,
    check_split,
    class_counts,
    load_split,
    plan_counts,
    realised_counts,
)
from ulfine.data.splits import order_unlabeled
from ulfine.errors import DataError

CIFAR10_L = [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
CIFAR10_U = [3000, 1798, 1078, 646, 387, 232, 139, 83, 50, 30]


def test_cifar10_lt_counts():
    assert class_counts(1500, 10, 100) == CIFAR10_L
    assert class_counts(3000, 10, 100) == CIFAR10_U
    assert class_counts(3000, 10, 100, reverse=True) == CIFAR10_U[::-1]
    assert class_counts(3000, 10, 1) == [3000] * 10
    assert class_counts(500, 10, 100) == [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]


def test_cifar100_lt_counts_and_pin_last():
    c = class_counts(150, 100, 10)
    assert c[:6] == [150, 146, 143, 139, 136, 133] and c[-4:] == [16, 15, 15, 15]
    assert sum(c) == 5835 and sum(class_counts(150, 100, 10, pin_last=False)) == 5834
    unpinned = class_counts(150, 100, 10, pin_last=False)
    assert unpinned[:-1] == c[:-1] and unpinned[-1] == 14  # float round-down DASO/LIFT keep
    assert class_counts(300, 100, 10)[-1] == 30 and class_counts(300, 100, 10, pin_last=False)[-1] == 29
    assert class_counts(7, 1, 10) == [7]


def test_unlabeled_orders_from_config():
    plans = {o: plan_counts(DataConfig(unlabeled_order=o)).unlabeled
             for o in ["consistent", "uniform", "reversed", "middle", "headtail"]}
    assert plans["consistent"] == CIFAR10_U
    assert plans["uniform"] == [3000] * 10
    assert plans["reversed"] == CIFAR10_U[::-1]
    assert plans["middle"] == [50, 139, 387, 1078, 3000, 1798, 646, 232, 83, 30]
    assert plans["headtail"] == [1798, 646, 232, 83, 30, 50, 139, 387, 1078, 3000]
    assert order_unlabeled([5, 4, 3], "middle") == [3, 5, 4]
    cfg100 = DataConfig(dataset="cifar100", num_labeled_head=150, num_unlabeled_head=300,
                        imbalance_labeled=10, imbalance_unlabeled=10)
    plan = plan_counts(cfg100)
    assert plan.labeled == class_counts(150, 100, 10) and plan.unlabeled == class_counts(300, 100, 10)
    assert plan.classes[0] == "apple"


def test_plan_rest_and_labeled_in_unlabeled():
    rest = plan_counts(DataConfig(num_unlabeled_head=None, val_per_class=100))
    assert rest.unlabeled == [5000 - 100 - n for n in CIFAR10_L]
    inside = plan_counts(DataConfig(labeled_in_unlabeled=True))
    assert inside.unlabeled == [m + n for m, n in zip(CIFAR10_U, CIFAR10_L)]
    frac = plan_counts(DataConfig(labeled_fraction=0.1, num_unlabeled_head=None))
    assert frac.labeled == [500] * 10 and frac.unlabeled == [4500] * 10


def synth(**kw):
    base = dict(dataset="synthetic10", num_labeled_head=40, num_unlabeled_head=80,
                imbalance_labeled=10, imbalance_unlabeled=10)
    base.update(kw)
    return DataConfig(**base)


def test_split_counts_disjoint_and_seeded():
    d0 = build_ssl_data(synth(val_per_class=5), seed=0)
    assert d0.labeled_counts == class_counts(40, 10, 10) and d0.unlabeled_counts == class_counts(80, 10, 10)
    lab, unl, val = (d0.indices[r].indices for r in ("labeled", "unlabeled", "val"))
    assert not set(lab) & set(unl) and not set(val) & (set(lab) | set(unl))
    assert np.bincount(d0.val.labels).tolist() == [5] * 10  # balanced validation
    assert len(d0.test) == 200  # test untouched: drawn only from the train pool
    again = build_ssl_data(synth(val_per_class=5), seed=0)
    assert again.split_hash == d0.split_hash
    np.testing.assert_array_equal(again.labeled.images, d0.labeled.images)
    other = build_ssl_data(synth(val_per_class=5), seed=1)
    assert other.split_hash != d0.split_hash and other.labeled_counts == d0.labeled_counts
    # switching validation on does not move the labeled draw
    no_val = build_ssl_data(synth(), seed=0)
    np.testing.assert_array_equal(no_val.indices["labeled"].indices, lab)
    assert no_val.val is None and no_val.split_hash != d0.split_hash


def test_labeled_inside_unlabeled_and_first_n():
    d = build_ssl_data(synth(labeled_in_unlabeled=True), seed=3)
    lab, unl = set(d.indices["labeled"].indices), set(d.indices["unlabeled"].indices)
    assert lab <= unl and len(unl) == sum(class_counts(40, 10, 10)) + sum(class_counts(80, 10, 10))
    first = build_ssl_data(synth(selection="first"), seed=3)
    # synthetic10's train pool is class-sorted, 200 per class: first-N = the first indices
    assert first.indices["labeled"].indices[:40].tolist() == list(range(40))
    assert first.indices["unlabeled"].indices[:80].tolist() == list(range(40, 120))
    assert build_ssl_data(synth(selection="first"), seed=9).split_hash == first.split_hash


def test_too_few_images_names_class_and_counts():
    with pytest.raises(DataError) as exc:
        build_ssl_data(synth(num_labeled_head=150, num_unlabeled_head=60), seed=0)
    msg = str(exc.value)
    assert "\n" not in msg and "'red'" in msg and "200 training images" in msg and "210" in msg


def test_all_labeled_and_rest_unlabeled():
    d = build_ssl_data(synth(num_labeled_head=None, num_unlabeled_head=0, val_per_class=20), seed=0)
    assert d.labeled_counts == [180] * 10 and d.unlabeled is None and len(d.val) == 200
    rest = build_ssl_data(synth(num_unlabeled_head=None), seed=0)
    assert rest.unlabeled_counts == [200 - n for n in class_counts(40, 10, 10)]
    assert realised_counts(rest) == {"labeled": rest.labeled_counts, "unlabeled": rest.unlabeled_counts}


def test_save_reload_and_hash(tmp_path):
    d = build_ssl_data(synth(val_per_class=2), seed=4)
    path = d.save_split(tmp_path)
    record = json.loads(path.read_text())
    assert record["hash"] == d.split_hash and len(record["hash"]) == 64
    assert record["counts"]["labeled"] == d.labeled_counts and record["config"]["num_labeled_head"] == 40
    assert record["roles"]["labeled"]["indices"] == d.indices["labeled"].indices.tolist()
    check_split(d, tmp_path)
    # re-applying the saved indices gives the same data even if the draw options changed
    again = build_ssl_data(synth(val_per_class=2, selection="first"), seed=99, split_file=tmp_path)
    assert again.split_hash == d.split_hash
    np.testing.assert_array_equal(again.unlabeled.images, d.unlabeled.images)
    with pytest.raises(DataError, match="differs"):
        check_split(build_ssl_data(synth(val_per_class=2), seed=5), tmp_path)
    record["roles"]["labeled"]["indices"][0] += 1  # tamper
    path.write_text(json.dumps(record))
    with pytest.raises(DataError, match="hash"):
        load_split(tmp_path)
    with pytest.raises(DataError, match="no saved split"):
        load_split(tmp_path / "nowhere")


def test_cifar_split_from_disk(tmp_path):
    write_cifar10(tmp_path, per_batch=40)  # 200 images, 20 per class
    cfg = DataConfig(root=tmp_path, num_labeled_head=8, num_unlabeled_head=10, imbalance_labeled=4,
                     imbalance_unlabeled=5, val_per_class=2)
    d = build_ssl_data(cfg, seed=0)
    assert d.labeled_counts == class_counts(8, 10, 4) and d.unlabeled_counts == class_counts(10, 10, 5)
    assert np.bincount(d.val.labels).tolist() == [2] * 10
