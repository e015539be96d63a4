"""The ImageNet-127 preparation script turns an ImageNet-style tree into what the source reads."""

from __future__ import annotations

import numpy as np
import pytest
from datafakes import images, write_png

from ulfine.config import DataConfig
from ulfine.data import DATASETS, build_ssl_data, plan_counts
from ulfine.data.prepare_imagenet127 import main, parse_mapping
from ulfine.errors import DataError

WNIDS = [f"n{i:08d}" for i in range(1000)]


def mapping_file(path, classes=127):
    # wnid i -> super-class i % classes, "index name" form, with a comment line
    lines = ["# wnid  index  name"] + [f"{w} {i % classes} thing_{i % classes}" for i, w in enumerate(WNIDS)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_mapping_validation(tmp_path):
    m = parse_mapping(mapping_file(tmp_path / "m.txt"))
    assert len(m) == 1000 and m["n00000128"] == "thing_1"
    with pytest.raises(DataError, match="126 classes"):
        parse_mapping(mapping_file(tmp_path / "bad.txt", classes=126))
    (tmp_path / "dup.txt").write_text((tmp_path / "m.txt").read_text() + "n00000001 3 thing_3\n")
    with pytest.raises(DataError, match="twice"):
        parse_mapping(tmp_path / "dup.txt")


def test_prepare_and_read(tmp_path):
    src_imgs = images(12, 40, 7)
    # wnids 0 and 127 -> thing_0 (4+2 train images), wnid 1 -> thing_1 (3), wnid 2 -> thing_2 (3)
    plan = {WNIDS[0]: 4, WNIDS[127]: 2, WNIDS[1]: 3, WNIDS[2]: 3}
    k = 0
    for wnid, n in plan.items():
        for j in range(n):
            write_png(tmp_path / "in" / "train" / wnid / f"{wnid}_{j}.JPEG.png", src_imgs[k])
            k += 1
        write_png(tmp_path / "in" / "val" / wnid / f"v_{wnid}.png", src_imgs[0])
    args = ["--train", str(tmp_path / "in/train"), "--val", str(tmp_path / "in/val"), "--mapping",
            str(mapping_file(tmp_path / "m.txt")), "--out", str(tmp_path / "out"), "--size", "8",
            "--workers", "1", "--allow-missing"]
    assert main(args) == 0
    out = tmp_path / "out" / "imagenet127_8"
    names = (out / "classes.txt").read_text().split("\n")[:-1]
    assert len(names) == 127 and names[:3] == ["thing_0", "thing_1", "thing_2"]  # head first
    cfg = DataConfig(dataset="imagenet127", root=tmp_path / "out", image_size=8, labeled_fraction=0.5,
                     num_labeled_head=None, num_unlabeled_head=None)
    src = DATASETS.get("imagenet127").load(cfg)
    assert np.bincount(src.train.labels).tolist() == [6, 3, 3]
    assert src.train.load(0).shape == (8, 8, 3) and src.native_size == 8
    # box downsampling of a 40px image by 5: each output pixel is the mean of a 5x5 block
    first = sorted((out / "train" / "thing_0").glob("*.png"))[0]
    from PIL import Image
    got = np.asarray(Image.open(first))
    want = src_imgs[0].reshape(8, 5, 8, 5, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(got - want).max() <= 1
    plan_ = plan_counts(cfg)
    assert plan_.labeled[:3] == [3, 2, 2] and plan_.unlabeled[:3] == [3, 1, 1]  # round(1.5) = 2
    data = build_ssl_data(cfg, seed=0)
    assert data.labeled_counts[:3] == [3, 2, 2] and data.unlabeled_counts[:3] == [3, 1, 1]
    assert main(args[:-1]) == 2  # missing wnid folders are an error unless allowed
