"""Benchmark presets: every one loads and validates, is up to date, and plans the right counts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ulfine.config import list_presets, load_config
from ulfine.data import plan_counts

ROOT = Path(__file__).resolve().parents[2]


def _load_script(rel: str):
    spec = importlib.util.spec_from_file_location(Path(rel).stem, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_presets = _load_script("scripts/make_presets.py")
OURS = sorted(make_presets.all_presets())


def test_every_benchmark_setting_has_a_preset():
    expected = {
        f"{d}_n{n}_m{m}_g{g}_{o}"
        for d, n, m, gs in [("cifar10", 1500, 3000, (100, 150)), ("cifar10", 500, 4000, (100, 150)),
                            ("cifar100", 150, 300, (10, 15)), ("cifar100", 50, 400, (10, 20))]
        for g in gs for o in ("consistent", "uniform", "reversed")
    }
    expected |= {"stl10_n150_g10", "stl10_n150_g20", "stl10_n450_g10", "stl10_n450_g20"}
    expected |= {"imagenet127_32px", "imagenet127_64px"}
    expected |= {f"{name}_scratch" for name in expected}  # the same settings from scratch
    expected |= {"synthetic_smoke"}
    assert set(OURS) == expected and len(OURS) == 61
    assert set(OURS) <= set(list_presets())


def test_preset_files_are_up_to_date(tmp_path):
    assert make_presets.main(["--check"]) == 0
    # and --check really fails on a stale file
    for name in OURS[:2]:
        (tmp_path / f"{name}.yaml").write_text("# stale\n")
    assert make_presets.main(["--check", "--out", str(tmp_path)]) == 1


@pytest.mark.parametrize("name", OURS)
def test_preset_loads_with_a_description(name):
    method = "acr" if name.endswith("_scratch") else "ulfine"  # ULFine needs CLIP's text tower
    cfg = load_config(name, [f"method={method}"])
    assert cfg.preset == name and cfg.method == method
    desc = list_presets()[name]
    assert len(desc) > 20
    text = (ROOT / "configs" / "presets" / f"{name}.yaml").read_text()
    assert text.startswith("# ") and len(text.splitlines()) <= 30  # tiny: only what differs


def test_cifar10_reversed_counts():
    # N_k = int(N_1 * gamma^(-(k-1)/(K-1))), last pinned to floor(N_1/gamma); M reversed
    plan = plan_counts(load_config("cifar10_n1500_m3000_g100_reversed").data)
    assert plan.labeled == [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    assert plan.unlabeled == [30, 50, 83, 139, 232, 387, 646, 1078, 1798, 3000]


def test_cifar10_alt_gamma_and_default_setting():
    plan = plan_counts(load_config("cifar10_n500_m4000_g150_consistent").data)
    assert plan.labeled[0] == 500 and plan.labeled[-1] == 3  # floor(500/150)
    assert plan.unlabeled[0] == 4000 and plan.unlabeled[-1] == 26  # floor(4000/150)
    default = plan_counts(load_config("cifar10_n1500_m3000_g100_consistent").data)
    assert default.labeled[-1] == 15 and default.unlabeled == [
        3000, 1798, 1078, 646, 387, 232, 139, 83, 50, 30
    ]


def test_cifar100_uniform_counts():
    plan = plan_counts(load_config("cifar100_n150_m300_g10_uniform").data)
    assert len(plan.labeled) == 100 and plan.labeled[0] == 150 and plan.labeled[-1] == 15
    assert plan.unlabeled == [300] * 100
    plan = plan_counts(load_config("cifar100_n50_m400_g20_reversed").data)
    assert plan.labeled[-1] == 2 and plan.unlabeled[0] == 20 and plan.unlabeled[-1] == 400


def test_stl10_uses_the_natural_unlabeled_set():
    plan = plan_counts(load_config("stl10_n450_g20").data)
    assert plan.unlabeled is None
    assert plan.labeled == [450, 322, 231, 165, 118, 85, 61, 43, 31, 22]


def test_imagenet127_presets():
    for size in (32, 64):
        data = load_config(f"imagenet127_{size}px").data
        assert data.dataset == "imagenet127" and data.labeled_fraction == 0.1
        assert data.image_size == size and data.num_unlabeled_head is None


def test_smoke_preset_is_offline_and_tiny():
    cfg = load_config("synthetic_smoke")
    assert cfg.model.arch == "ulfine-micro-vit" and cfg.model.pretrained == "none"
    assert cfg.train.epochs * cfg.train.steps_per_epoch <= 8
    plan = plan_counts(cfg.data)
    assert plan.labeled == [20, 15, 11, 9, 7, 5, 4, 3, 2, 2]
