"""The Fashion-MNIST-LT scratch presets: their split counts, a budget a CPU can run with every
step-counted method option scaled to it, and a split built from real-format IDX files (and from
Debian's package with no data.root, where it is installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from datafakes import write_idx

from ulfine.config import load_config
from ulfine.data import build_ssl_data, class_counts, plan_counts
from ulfine.data.sources.fashion_mnist import DEBIAN_DIR
from ulfine.data.views import strong_view
from ulfine.registry import BACKBONES

SETTINGS = ("consistent", "uniform", "reversed")
LABELED = class_counts(500, 10, 100)
UNLABELED = {"consistent": class_counts(4000, 10, 100), "uniform": [4000] * 10,
             "reversed": class_counts(4000, 10, 100)[::-1]}


def preset(setting: str) -> str:
    return f"fashion_mnist_n500_m4000_g100_{setting}_scratch"


@pytest.mark.parametrize("setting", SETTINGS)
def test_presets_plan_the_long_tailed_counts(setting):
    cfg = load_config(preset(setting), ["method=fixmatch"])
    plan = plan_counts(cfg.data)
    assert cfg.data.dataset == "fashion_mnist" and cfg.preset == preset(setting)
    assert plan.labeled == LABELED == [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    assert plan.unlabeled == UNLABELED[setting]


@pytest.mark.parametrize("setting", SETTINGS)
def test_presets_share_one_cpu_budget_and_evaluate_once(setting):
    cfg = load_config(preset(setting), ["method=acr"])
    t = cfg.train
    assert (t.epochs * t.steps_per_epoch, t.batch_size, cfg.ssl.mu) == (2000, 16, 2)
    assert cfg.eval.every_epochs >= t.epochs and cfg.eval.last_k == 1  # the final model only
    assert (cfg.model.arch, cfg.model.pretrained, cfg.finetune, cfg.head) == ("wrn-28-2", "none", "fft", "linear")
    # the EMA and the BatchNorm running statistics must forget the random start within the run:
    # 0.999 (and the WRN's BN momentum 0.001) would keep 14% of it after 2000 steps
    steps = t.epochs * t.steps_per_epoch
    assert t.ema ** steps < 1e-3
    backbone = BACKBONES.get(cfg.model.arch).create(cfg.model, "meta")
    momenta = {m.momentum for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert len(momenta) == 1 and (1 - momenta.pop()) ** steps < 1e-3


def test_step_counted_method_options_scale_with_the_budget():
    """Schedules the methods count in epochs or steps of a 500 x 500-step run keep their share of
    this one: ABC's mask schedule spans the run, CDMAD debiases from about 20% on, DASO pre-trains
    2%, ACR starts estimating after its first epoch."""
    cfg = load_config(preset("consistent"), ["method=abc"])
    epochs, steps = cfg.train.epochs, cfg.train.epochs * cfg.train.steps_per_epoch
    assert cfg.options_for("abc").schedule_epochs == epochs
    assert cfg.options_for("cdmad").debias_from_epoch / epochs == pytest.approx(101 / 500, abs=0.5 / epochs)
    assert cfg.options_for("daso").pretrain_steps / steps == pytest.approx(5000 / 250_000)
    assert cfg.options_for("acr").estimate_from_epoch == 1


def test_images_stay_at_native_28_px_and_gray_through_the_strong_view():
    """The WRN is fully convolutional: the preset feeds it 28 px (no resample); Fashion-MNIST is
    gray repeated to RGB, and no RandAugment op can give it a hue (so the default op set stays)."""
    cfg = load_config(preset("consistent"), ["method=fixmatch"])
    backbone = BACKBONES.get(cfg.model.arch).create(cfg.model, "meta")
    assert backbone.preprocess.size == 28
    assert cfg.data.strong_ops == "all"
    torch.manual_seed(0)
    gray = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8).repeat(3, 1, 1)
    view = strong_view(28)
    for _ in range(60):
        out = view(gray)
        assert out.shape == (3, 28, 28) and torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def write_fashion_for(root: Path, per_class: list[int], test_per_class: int = 3) -> None:
    """Real-format IDX files (gzip) with ``per_class[k]`` training images of class k; pixel
    values encode the image's index, so the split can be traced back to the files."""
    folder = root / "fashion_mnist"
    y = np.repeat(np.arange(10), per_class).astype(np.uint8)
    x = (np.arange(len(y))[:, None, None] % 251 + np.zeros((1, 28, 28), dtype=np.int64)).astype(np.uint8)
    yt = np.repeat(np.arange(10), test_per_class).astype(np.uint8)
    write_idx(folder, "train-images-idx3-ubyte", x, gz=True)
    write_idx(folder, "train-labels-idx1-ubyte", y, gz=True)
    write_idx(folder, "t10k-images-idx3-ubyte", np.zeros((len(yt), 28, 28), dtype=np.uint8), gz=True)
    write_idx(folder, "t10k-labels-idx1-ubyte", yt, gz=True)


def test_preset_data_section_builds_its_split_from_idx_files(tmp_path):
    need = [n + m for n, m in zip(LABELED, UNLABELED["consistent"])]
    write_fashion_for(tmp_path, [k + 2 for k in need])  # two spare images a class
    data_cfg = load_config(preset("consistent"), [f"data.root={tmp_path}"]).data
    data = build_ssl_data(data_cfg, seed=0)
    assert data.labeled_counts == LABELED and data.unlabeled_counts == UNLABELED["consistent"]
    assert data.native_size == 28 and len(data.test) == 30
    assert np.bincount(data.labeled.labels, minlength=10).tolist() == LABELED
    role = data.indices["labeled"]
    assert role.pool == "train"
    # pixel value = file index mod 251, in all three channels: the images are the files' own
    images = np.asarray(data.labeled.images)
    assert images.shape == (sum(LABELED), 28, 28, 3)
    for c in range(3):
        assert (images[:, 5, 7, c] == role.indices % 251).all()


@pytest.mark.skipif(not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_preset_finds_debian_files_without_data_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data here: the preset's default root falls back to /usr/share
    cfg = load_config(preset("reversed"), ["method=fixmatch"])
    assert cfg.data.root == tmp_path / "data" and not cfg.data.root.exists()  # the default root, resolved
    data = build_ssl_data(cfg.data, seed=1)
    assert data.labeled_counts == LABELED and data.unlabeled_counts == UNLABELED["reversed"]
    assert len(data.test) == 10_000 and np.bincount(data.test.labels).tolist() == [1000] * 10
