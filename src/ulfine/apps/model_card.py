"""The ``README.md`` model card of an exported model folder, and the command that trained a run.

Why a card: a model handed to someone else must say what it was trained on (classes, labeled and
unlabeled counts per class), how well it does where it matters (overall, head, medium and tail
accuracy of the final model on the test set, never a best-on-test pick) and how to re-make it.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from ..config import config_to_dict, load_config
from ..errors import ConfigError
from ..jsonable import flatten

#: keys that only say where and how a run was computed; left out of the re-made command
_LOCAL_KEYS = ("preset", "output_dir", "resume", "train.progress", "data.num_workers", "cache.", "model.cache_dir",
               "model.text_cache_dir")


def _value(v: Any) -> str:
    """A config value as the command line reads it (YAML: lists as JSON, null as null)."""
    if isinstance(v, bool):
        return str(v).lower()
    return shlex.quote(json.dumps(v) if isinstance(v, (list, dict)) or v is None else str(v))


def training_command(config: Mapping[str, Any]) -> str:
    """``ulfine train PRESET key=value ...``: the preset plus every key that differs from it today.

    Why computed, not recorded: runs started from Python (the demo, benchmarks) have no command
    line; the saved ``config.yaml`` holds every key, so the difference to the preset is exact.
    """
    preset = config.get("preset")
    try:
        base = flatten(config_to_dict(load_config(preset))) if preset else {}
    except ConfigError:  # the preset is gone: the saved config itself is the recipe
        preset, base = None, {}
    keys = [k for k, v in flatten(dict(config)).items() if not k.startswith(_LOCAL_KEYS) and base.get(k, object()) != v]
    overrides = " ".join(f"{k}={_value(flatten(dict(config))[k])}" for k in keys)
    head = f"ulfine train {preset}" if preset else "ulfine train RUN_DIR/config.yaml"
    return f"{head} {overrides}".strip()


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _metrics_table(metrics: Mapping[str, Any]) -> list[str]:
    groups = metrics.get("group_acc") or {}
    last = metrics.get("last_k_mean") or {}
    last_groups = last.get("group_acc") or {}
    rows = [("final model", metrics.get("overall_acc"), metrics.get("balanced_acc"), groups),
            (f"mean of last {last.get('k', '-')} evaluations", last.get("overall_acc"), last.get("balanced_acc"),
             last_groups)]
    lines = ["| | overall | balanced | head | medium | tail |", "|---|---:|---:|---:|---:|---:|"]
    for name, overall, balanced, g in rows:
        lines.append(f"| {name} | {_pct(overall)} | {_pct(balanced)} | {_pct(g.get('head'))} | "
                     f"{_pct(g.get('medium'))} | {_pct(g.get('tail'))} |")
    return lines


def _counts_table(class_names: Sequence[str], labeled: Sequence[int], unlabeled: Sequence[int] | None) -> list[str]:
    lines = ["| k | class | labeled | unlabeled |", "|---:|---|---:|---:|"]
    for k, name in enumerate(class_names):
        unl = "-" if unlabeled is None else str(unlabeled[k])
        lines.append(f"| {k} | {name} | {labeled[k]} | {unl} |")
    return lines


def _head(spec: Mapping[str, Any]) -> list[str]:
    cfg, bb, pp = spec["run_config"], spec["backbone"], spec["preprocessing"]
    kept = "copied into backbone.safetensors" if bb["included"] else "referenced"
    return [
        f"# {spec['name']}: an ulfine classifier of {len(spec['class_names'])} classes", "",
        f"Method `{cfg['method']}` with fine-tuning `{spec['finetune']}` on the CLIP image tower `{bb['arch']}` "
        f"(weights `{bb['pretrained']}`, {kept}; fingerprint `{bb['fingerprint']}`). Exported by ulfine "
        f"{spec['ulfine_version']} from `{spec['source_run']}`.", "",
        "## Use", "", "```bash", "ulfine predict MODEL_DIR path/to/images --topk 5 --out predictions.csv",
        "```", "", "```python", "import ulfine", 'clf = ulfine.load("MODEL_DIR")',
        'clf.predict(["image.jpg"], topk=5)   # [Prediction(labels=[...], indices=[...], probs=[...])]', "```", "",
        f"Images are read as RGB, squashed to {pp['input_size']} px (bicubic, as the training data was), then "
        f"resized to {pp['size']} px and normalised with the backbone's mean and std.", "",
    ]


def _data(spec: Mapping[str, Any], split: Mapping[str, Any]) -> list[str]:
    counts = split.get("counts") or {}
    labeled = counts.get("labeled") or spec["labeled_counts"]
    return [
        "## Training data", "",
        f"Dataset `{spec['run_config']['data']['dataset']}`, split seed {split.get('seed', '-')} (hash "
        f"`{str(split.get('hash', ''))[:12]}`): {sum(labeled)} labeled and {spec.get('num_unlabeled', 0)} unlabeled "
        "images; per class, in index order (unlabeled per-class counts are ground truth, shown where known):", "",
        *_counts_table(spec["class_names"], labeled, counts.get("unlabeled")), "",
    ]


def _files(spec: Mapping[str, Any]) -> list[str]:
    return [
        "## Files", "",
        "- `model.safetensors`: every tensor the prediction needs beyond the frozen backbone (fine-tuned "
        "parameters, heads, prototypes, the method's state), float32; `context.text_prototypes`: the text prototypes.",
        "- `config.json`: class names in index order, preprocessing, backbone reference and fingerprint, and the "
        "run's resolved configuration (`run_config`).",
        *(["- `backbone.safetensors`: the frozen CLIP weights."] if spec["backbone"]["included"] else []),
        *(["- `model.onnx`: image tower + decision head, uint8 input (docs/predict.md)."] if spec.get("onnx") else []),
        "",
    ]


#: the Hub's license value when the exporter named none (its own word for "see the card")
NO_LICENSE = "other"
#: tags every ulfine model carries (the method's name is added)
HUB_TAGS = ("image-classification", "long-tailed", "semi-supervised", "clip", "ulfine")


def base_model(arch: str, pretrained: str) -> str | None:
    """The Hub repository of the frozen CLIP weights, when there is one: the repo of an
    ``hf-hub:`` arch or of an open_clip tag hosted on the Hub; None for ``micro``, a local file or
    random weights (no Hub id to link to)."""
    if arch.startswith("hf-hub:"):
        return arch[len("hf-hub:"):]
    try:
        from open_clip.pretrained import get_pretrained_cfg

        hub = (get_pretrained_cfg(arch, pretrained) or {}).get("hf_hub", "")
    except Exception:  # an arch open_clip does not list (micro, a local config): no Hub id
        return None
    repo_id = os.path.split(hub)[0] if hub else ""
    return repo_id or None


def _metric(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _model_index(spec: Mapping[str, Any], metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Hub's ``model-index``: the final model's overall and balanced test accuracy (fractions,
    exactly final_metrics.json's top-level figures), never a best-on-test pick."""
    dataset = spec["run_config"]["data"]["dataset"]
    figures = [("accuracy", "overall accuracy (final model)", _metric(metrics.get("overall_acc"))),
               ("balanced_accuracy", "balanced accuracy (final model)", _metric(metrics.get("balanced_acc")))]
    scores = [{"type": t, "name": n, "value": v} for t, n, v in figures if v is not None]
    if not scores:
        return []
    return [{"name": spec["name"], "results": [{
        "task": {"type": "image-classification", "name": "Image Classification"},
        "dataset": {"type": dataset, "name": dataset, "split": "test"},
        "metrics": scores}]}]


def front_matter(spec: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The Hub's YAML metadata of the card: what the Hub indexes and shows (library, license,
    tags, base model, dataset, the honest test figures)."""
    bb, dataset = spec["backbone"], spec["run_config"]["data"]["dataset"]
    meta: dict[str, Any] = {"library_name": "ulfine", "license": spec.get("license") or NO_LICENSE,
                            "pipeline_tag": "image-classification",
                            "tags": [*HUB_TAGS, *([spec["method"]] if spec["method"] not in HUB_TAGS else [])],
                            "datasets": [dataset]}
    base = base_model(bb["arch"], bb["pretrained"])
    if base:
        meta["base_model"] = base
    index = _model_index(spec, metrics)
    if index:
        meta["model-index"] = index
    return meta


def _license_note(spec: Mapping[str, Any]) -> list[str]:
    if (spec.get("license") or NO_LICENSE) != NO_LICENSE:
        return []
    return ["## License", "",
            "No license was chosen at export (`license: other`; `ulfine export --license SPDX-ID` sets one). The "
            "terms of the CLIP weights and of the training data apply to this model too.", ""]


def model_card(spec: Mapping[str, Any], split: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """Markdown for ``MODEL_DIR/README.md`` from its ``config.json``, the run's ``split.json`` and
    ``final_metrics.json``, headed by the Hub's YAML front matter (:func:`front_matter`)."""
    rule = (metrics.get("group_rule") or {}).get("text", "-")
    meta = yaml.safe_dump(front_matter(spec, metrics), sort_keys=False, allow_unicode=True)
    return "\n".join([
        "---", meta.rstrip("\n"), "---", "",
        *_head(spec), *_data(spec, split),
        "## Test metrics (%)", "",
        f"On {metrics.get('num_images', '?')} test images after {metrics.get('steps', '?')} optimiser steps; ECE "
        f"{_pct(metrics.get('ece'))}%. Groups: {rule}.", "",
        *_metrics_table(metrics), "",
        "## How it was trained", "", "```bash", spec["command"], "```", "",
        *_files(spec), *_license_note(spec),
    ])


__all__ = ["NO_LICENSE", "base_model", "front_matter", "model_card", "training_command"]
