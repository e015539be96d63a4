"""A user's folder as it really is: odd image modes and sizes are converted correctly, and broken
files, empty class folders, unknown test classes and names CLIP cannot tell apart fail with a
message naming the file and the fix, or, with data.on_bad_image=skip, are left out and listed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from datafakes import images, write_png, write_png16
from PIL import Image

from ulfine.config import DataConfig, load_config
from ulfine.data import DATASETS, build_ssl_data
from ulfine.data.decode import decode_image
from ulfine.engine import train
from ulfine.errors import ConfigError, DataError


def load(root: Path, **kw):
    return DATASETS.get("folder").load(DataConfig(dataset="folder", root=root, **kw))


def one_line(exc: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


def _pixel(path: Path, size: int | None = None) -> list[int]:
    return decode_image(path, size)[0, 0].tolist()


def test_sixteen_bit_images_keep_their_grey_levels(tmp_path):
    grey = tmp_path / "grey16.png"
    Image.fromarray(np.full((4, 4), 0x4000, np.uint16)).save(grey)  # PIL writes mode I;16
    assert Image.open(grey).mode == "I;16"
    assert _pixel(grey) == [64, 64, 64]  # 16384 / 257; PIL's convert("RGB") gives 255 (near-white)
    write_png16(tmp_path / "rgb16.png", np.stack([np.full((3, 3), v, np.uint16) for v in (0x8000, 0xFFFF, 0x0101)], -1))
    assert _pixel(tmp_path / "rgb16.png") == [128, 255, 1]


@pytest.mark.parametrize("make, expected", [
    (lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 0)), [255, 255, 255]),      # transparent: background
    (lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 255)), [255, 0, 0]),        # opaque: itself
    (lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 128)), [255, 127, 127]),    # half: 255 - 128 * 255 / 255
    (lambda: Image.new("LA", (4, 4), (0, 64)), [191, 191, 191]),               # black at 1/4 over white
    (lambda: Image.new("L", (4, 4), 77), [77, 77, 77]),
    (lambda: Image.new("1", (4, 4), 1), [255, 255, 255]),
    (lambda: Image.new("RGB", (4, 4), (10, 20, 30)).convert("P", palette=Image.Palette.ADAPTIVE), [10, 20, 30]),
], ids=["rgba-clear", "rgba-opaque", "rgba-half", "la", "grey", "bilevel", "palette"])
def test_image_modes_become_the_rgb_a_viewer_shows(tmp_path, make, expected):
    path = tmp_path / "img.png"
    make().save(path)
    assert all(abs(a - b) <= 1 for a, b in zip(_pixel(path), expected)), (_pixel(path), expected)


def test_palette_transparency_cmyk_and_odd_sizes(tmp_path):
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([200, 0, 0] + [0, 0, 0] * 255)
    pal.save(tmp_path / "p.png", transparency=0)
    assert _pixel(tmp_path / "p.png") == [255, 255, 255]
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.tiff")
    assert _pixel(tmp_path / "c.tiff") == [255, 0, 0]
    for w, h in ((1, 1), (3, 200), (300, 2)):
        Image.new("RGB", (w, h), (5, 6, 7)).save(tmp_path / f"{w}x{h}.png")
        assert decode_image(tmp_path / f"{w}x{h}.png", 8).shape == (8, 8, 3)


def _tree(root: Path) -> dict[str, Path]:
    """labeled/{cat,dog}: 3 good images each; test/{cat,dog}: 1 each; plus two broken files."""
    imgs = images(8, 16, 0)
    for i, rel in enumerate(["labeled/cat/0.png", "labeled/cat/1.png", "labeled/cat/2.png",
                             "labeled/dog/0.png", "labeled/dog/1.png", "labeled/dog/2.png",
                             "test/cat/t.png", "test/dog/t.png"]):
        write_png(root / rel, imgs[i])
    truncated, fake = root / "labeled/cat/cut.png", root / "test/dog/fake.png"
    truncated.write_bytes((root / "labeled/cat/0.png").read_bytes()[:200])
    fake.write_text("this is not an image")
    return {"truncated": truncated, "fake": fake}


def test_unreadable_files_fail_naming_them_by_default(tmp_path):
    bad = _tree(tmp_path)
    with pytest.raises(DataError) as exc:
        load(tmp_path)
    msg = one_line(exc)
    assert "2 of 10 image files" in msg and str(bad["truncated"]) in msg and "data.on_bad_image=skip" in msg
    with pytest.raises(DataError, match="cannot read image .*fake.png"):
        decode_image(bad["fake"])  # a loader reading it later says the same, naming the file


def test_skip_leaves_unreadable_files_out_and_the_run_folder_lists_them(tmp_path):
    bad = _tree(tmp_path / "data")
    src = load(tmp_path / "data", on_bad_image="skip", image_size=16)
    assert len(src.train) == 6 and len(src.test) == 2
    assert {(s["path"], s["role"]) for s in src.skipped} == {(str(bad["truncated"]), "labeled"),
                                                             (str(bad["fake"]), "test")}
    cfg = load_config(None, [
        "data.dataset=folder", f"data.root={tmp_path / 'data'}", "data.on_bad_image=skip",
        "data.image_size=16", "data.num_labeled_head=3", "data.imbalance_labeled=1", "data.num_unlabeled_head=0",
        "data.num_workers=0", "model.arch=ulfine-micro-vit", "model.pretrained=none", "model.text_cache_dir=null",
        "method=supervised", "finetune=lp", "train.batch_size=2", "train.epochs=1", "train.steps_per_epoch=1",
        "train.progress=false", "train.device=cpu", f"output_dir={tmp_path / 'run'}",
        f"cache.dir={tmp_path / 'cache'}"])
    listed = json.loads((train(cfg) / "skipped_images.json").read_text())
    assert listed["count"] == 2
    assert sorted(f["path"] for f in listed["files"]) == sorted(str(p) for p in bad.values())
    assert all(f["problem"] for f in listed["files"])


def test_listed_files_that_do_not_exist_are_named(tmp_path):
    write_png(tmp_path / "img/a.png", images(1, 8, 0)[0])
    (tmp_path / "labeled.csv").write_text("\ufeffpath,label\nimg/a.png,cat\nimg/gone.png,cat\n")  # BOM header
    (tmp_path / "test.csv").write_text("img/a.png,cat\n")
    with pytest.raises(DataError) as exc:
        load(tmp_path)
    assert str(tmp_path / "img/gone.png") in one_line(exc) and "No such file" in str(exc.value)
    assert len(load(tmp_path, on_bad_image="skip").train) == 1


def test_empty_class_folders_and_unknown_test_classes_are_named(tmp_path):
    _tree(tmp_path)
    (tmp_path / "labeled/cat/cut.png").unlink()
    (tmp_path / "test/dog/fake.png").unlink()
    (tmp_path / "labeled/bird").mkdir()
    (tmp_path / "labeled/bird/photo.heic").write_bytes(b"x")
    with pytest.raises(DataError) as exc:
        load(tmp_path)
    assert "labeled/bird holds no image files (it holds 1 other file(s), e.g. photo.heic)" in one_line(exc)
    (tmp_path / "labeled/bird/photo.heic").unlink()
    (tmp_path / "labeled/bird").rmdir()
    write_png(tmp_path / "test/fox/f.png", images(1, 16, 1)[0])
    with pytest.raises(DataError) as exc:
        load(tmp_path)
    msg = one_line(exc)
    assert "test class 'fox'" in msg and "classes.txt" in msg and "f.png" in msg


def test_class_names_clip_cannot_tell_apart_are_refused(tmp_path):
    _tree(tmp_path)
    for p in ((tmp_path / "labeled/cat/cut.png"), (tmp_path / "test/dog/fake.png")):
        p.unlink()
    (tmp_path / "classes.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(DataError, match="'cat' appears twice in .*classes.txt"):
        load(tmp_path)
    (tmp_path / "classes.txt").unlink()
    write_png(tmp_path / "labeled/Golden_Retriever/a.png", images(1, 16, 2)[0])
    write_png(tmp_path / "labeled/golden retriever/a.png", images(1, 16, 3)[0])
    with pytest.raises(DataError, match="CLIP reads alike"):
        load(tmp_path)
    names = ["x", "x"] + [f"c{i}" for i in range(8)]
    with pytest.raises(ConfigError, match="data.class_names names 'x' twice"):
        build_ssl_data(DataConfig(dataset="synthetic10", class_names=names, num_labeled_head=10,
                                  num_unlabeled_head=10), 0)


def test_names_that_are_not_utf8_are_named(tmp_path):
    _tree(tmp_path)
    for p in ((tmp_path / "labeled/cat/cut.png"), (tmp_path / "test/dog/fake.png")):
        p.unlink()
    (tmp_path / "classes.txt").write_bytes("cat\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError) as exc:
        load(tmp_path)
    assert "classes.txt line 2 is not UTF-8" in one_line(exc)
    (tmp_path / "classes.txt").unlink()
    folder = os.path.join(os.fsencode(tmp_path / "labeled"), b"caf\xe9")
    os.mkdir(folder)
    write_png(Path(os.fsdecode(folder)) / "a.png", images(1, 16, 4)[0])
    with pytest.raises(DataError) as exc:
        load(tmp_path)
    assert "is not valid UTF-8" in one_line(exc) and "caf\\xe9" in str(exc.value)
