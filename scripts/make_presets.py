#!/usr/bin/env python
"""Write configs/presets/*.yaml for every benchmark setting of docs/benchmarks.md.

Each setting is spelled out in full here (the one table to read), but a preset file only keeps
the keys that differ from the schema defaults (``ulfine.config.schema``), so presets stay tiny
and defaults live in one place. Run ``python scripts/make_presets.py`` after changing a setting
or a schema default; ``--check`` exits 1 if a file is missing or out of date (used by the tests).
The micro-world helper's ``microworld_*.yaml`` presets are not written or checked here.

Every standard setting also gets a ``<setting>_scratch`` preset: the same data split, a backbone
trained from scratch (WRN-28-2 at 32 px; ResNet-50 for ImageNet-127) and the field's budget,
taken from ACR's released code (``SCRATCH_RECIPE``; docs/method.md section 5 says where each
value comes from). Choose the method on the command line (``method=acr``, ``fixmatch``, ...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from ulfine.config import Config, config_to_dict

ROOT = Path(__file__).resolve().parents[1]
PRESET_DIR = ROOT / "configs" / "presets"

ORDERS = ("consistent", "uniform", "reversed")
DATASET_TITLES = {"cifar10": "CIFAR-10-LT", "cifar100": "CIFAR-100-LT", "stl10": "STL-10-LT"}
# (dataset, N_1, M_1, gamma_l values) from the benchmark table
CIFAR_GRID: list[tuple[str, int, int, tuple[int, ...]]] = [
    ("cifar10", 1500, 3000, (100, 150)),
    ("cifar10", 500, 4000, (100, 150)),
    ("cifar100", 150, 300, (10, 15)),
    ("cifar100", 50, 400, (10, 20)),
]
STL_GRID: list[tuple[int, int]] = [(150, 10), (150, 20), (450, 10), (450, 20)]
IMAGENET_SIZES = (32, 64)

# The scratch LTSSL budget of ACR's train.py (Wei & Gan 2023) and its README commands: 250k
# steps as 500 "epochs" of 500 steps (--total-steps, --eval-step), labeled batch 64, mu 1 (its
# --mu default; two strong views per unlabeled image come with method=acr), threshold 0.95, SGD
# lr 0.03 with Nesterov momentum 0.9 and weight decay 5e-4 (not on biases/BN), FixMatch's
# cos(7 pi t / 16) schedule without warm-up, EMA 0.999 evaluated, and the mean of the last 20
# evaluations (the "Mean top-1 acc" its log prints).
SCRATCH_RECIPE: dict[str, Any] = {
    "head": "linear",
    "finetune": "fft",
    "ssl": {"tau": 0.95, "mu": 1, "lambda_u": 1.0},
    "optim": {"name": "sgd", "lr": 0.03, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
              "warmup_steps": 0, "schedule": "cosine_7_16"},
    "train": {"epochs": 500, "steps_per_epoch": 500, "batch_size": 64, "ema": 0.999},
    "eval": {"last_k": 20},
}


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def cifar_presets() -> dict[str, tuple[str, dict[str, Any]]]:
    """CIFAR-10/100-LT: every (N_1, M_1, gamma_l) with consistent, uniform and reversed unlabeled sets."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for dataset, n1, m1, gammas in CIFAR_GRID:
        for g in gammas:
            for order in ORDERS:
                gamma_u = 1 if order == "uniform" else g
                name = f"{dataset}_n{n1}_m{m1}_g{g}_{order}"
                desc = (
                    f"{DATASET_TITLES[dataset]}: N1={n1}, M1={m1}, gamma_l={g}, unlabeled {order} "
                    f"(gamma_u={gamma_u}{', tail-heavy' if order == 'reversed' else ''})"
                )
                data = {
                    "dataset": dataset,
                    "num_labeled_head": n1,
                    "num_unlabeled_head": m1,
                    "imbalance_labeled": float(g),
                    "imbalance_unlabeled": float(gamma_u),
                    "unlabeled_order": order,
                    "labeled_fraction": None,
                }
                out[name] = (desc, {"data": data})
    return out


def stl_presets() -> dict[str, tuple[str, dict[str, Any]]]:
    """STL-10-LT: long-tailed labeled set, the whole natural 100k unlabeled split (distribution unknown)."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for n1, g in STL_GRID:
        name = f"stl10_n{n1}_g{g}"
        desc = f"STL-10-LT: N1={n1}, gamma_l={g}, unlabeled = the natural 100k split (unknown distribution)"
        data = {
            "dataset": "stl10",
            "num_labeled_head": n1,
            "num_unlabeled_head": None,
            "imbalance_labeled": float(g),
            "labeled_fraction": None,
        }
        out[name] = (desc, {"data": data})
    return out


def imagenet_presets() -> dict[str, tuple[str, dict[str, Any]]]:
    """ImageNet-127: 10% of every class labeled, the rest unlabeled; natural long tail (gamma ~286)."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for size in IMAGENET_SIZES:
        name = f"imagenet127_{size}px"
        desc = (
            f"ImageNet-127 at {size}x{size}: 10% of each class labeled, the rest unlabeled "
            "(natural long tail, gamma about 286)"
        )
        data = {
            "dataset": "imagenet127",
            "labeled_fraction": 0.1,
            "num_labeled_head": None,
            "num_unlabeled_head": None,
            "image_size": size,
        }
        out[name] = (desc, {"data": data})
    return out


def smoke_presets() -> dict[str, tuple[str, dict[str, Any]]]:
    """An offline seconds-long run on the synthetic dataset and the tiny CLIP (tests, CI)."""
    desc = "offline smoke test: synthetic10 + ulfine-micro-vit with random weights, a few CPU steps"
    cfg = {
        "data": {
            "dataset": "synthetic10",
            "num_labeled_head": 20,
            "num_unlabeled_head": 40,
            "imbalance_labeled": 10.0,
            "imbalance_unlabeled": 10.0,
            "num_workers": 0,
        },
        "model": {"arch": "ulfine-micro-vit", "pretrained": "none", "text_cache_dir": None},
        "adaptformer": {"bottleneck": 8},
        "train": {
            "epochs": 1,
            "steps_per_epoch": 4,
            "batch_size": 8,
            "device": "cpu",
            "progress": False,
            "log_every": 1,
        },
        "eval": {"batch_size": 64, "last_k": 1, "pseudo_label_max": 200},
        "cache": {"features": False},
    }
    return {"synthetic_smoke": (desc, cfg)}


def scratch_model(setting: dict[str, Any]) -> dict[str, Any]:
    """The scratch backbone of a setting: ResNet-50 at the images' size for ImageNet-127 (ACR's
    choice), WRN-28-2 at 32 px otherwise (STL-10's 96 px images are resized to 32, as ACR does)."""
    data = setting["data"]
    if data["dataset"] == "imagenet127":
        return {"arch": "resnet50", "pretrained": "none", "image_size": data["image_size"]}
    return {"arch": "wrn-28-2", "pretrained": "none"}


def scratch_presets(standard: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, tuple[str, dict[str, Any]]]:
    """``<name>_scratch`` for every standard setting: its data, a scratch backbone, ACR's budget."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, (desc, setting) in standard.items():
        model = scratch_model(setting)
        full = {**setting, **SCRATCH_RECIPE, "model": model}
        out[f"{name}_scratch"] = (f"{desc}; from scratch: {model['arch']}, 250k steps of batch 64 (ACR's budget)", full)
    return out


def all_presets() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every preset this script owns: name -> (one-line description, full setting)."""
    standard: dict[str, tuple[str, dict[str, Any]]] = {}
    for part in (cifar_presets(), stl_presets(), imagenet_presets()):
        standard.update(part)
    return {**standard, **scratch_presets(standard), **smoke_presets()}


def diff_from_defaults(setting: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Keep only the keys whose value differs from the schema default (recursively)."""
    out: dict[str, Any] = {}
    for key, value in setting.items():
        if key not in defaults:
            raise KeyError(f"{key!r} is not a config key")
        default = defaults[key]
        if isinstance(value, dict):
            sub = diff_from_defaults(value, default)
            if sub:
                out[key] = sub
        elif _normal(value) != _normal(default):
            out[key] = value
    return out


def _normal(value: Any) -> Any:
    # the JSON dump of defaults turns Paths into strings and keeps floats; compare like with like
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def render(desc: str, setting: dict[str, Any]) -> str:
    """The YAML text of one preset: a ``# `` description line, then only non-default keys."""
    defaults = config_to_dict(Config())
    body = diff_from_defaults(setting, defaults)
    text = f"# {desc}\n"
    if body:
        text += yaml.safe_dump(body, sort_keys=False, default_flow_style=False)
    else:
        text += "# (this setting is the schema default: no key differs)\n"
    return text


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, verify) the preset files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify the files are up to date")
    parser.add_argument("--out", type=Path, default=PRESET_DIR, help="preset folder")
    args = parser.parse_args(argv)
    stale: list[str] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (desc, setting) in all_presets().items():
        path = args.out / f"{name}.yaml"
        text = render(desc, setting)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        elif not path.is_file() or path.read_text() != text:
            path.write_text(text)
    if stale:
        print("out of date (run python scripts/make_presets.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
