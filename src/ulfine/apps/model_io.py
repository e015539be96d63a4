"""From a finished run to a self-contained model folder and back: :func:`export_model`, :func:`load`.

A model folder (timm / Hugging Face convention)::

    MODEL_DIR/model.safetensors     fine-tuned tensors, heads, method state, text prototypes (fp32)
    MODEL_DIR/config.json           class names, preprocessing, backbone reference + fingerprint,
                                    the run's resolved configuration
    MODEL_DIR/README.md             model card (data, metrics, the command that trained it)
    MODEL_DIR/backbone.safetensors  the frozen CLIP weights (``--include-backbone`` only)
    MODEL_DIR/model.onnx            image tower + decision head (``--onnx`` only)

Why this shape: the frozen CLIP weights are hundreds of MB and already named by a tag or a file,
so they are referenced and checked by fingerprint, not copied. A run folder is loaded through
:func:`ulfine.engine.load_run` (the assembly that trained it, which re-reads its data); a model
folder needs no data and is rebuilt by the same :func:`ulfine.engine.assemble.assemble_model`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from .. import __version__
from ..config import Config, build_config, config_to_dict, deep_merge, parse_overrides
from ..data import load_split
from ..engine import load_run
from ..engine.assemble import ModelParts, RunParts, assemble_model
from ..engine.checkpoint import load_state, weight_state
from ..engine.runtime import Runtime, make_runtime
from ..engine.seeding import seed_everything
from ..errors import DataError, WeightsError
from ..methods import MethodContext
from ..models import CLIPBackbone, build_backbone
from ..models.fingerprint import weights_fingerprint
from .classifier import Classifier, DecisionModule
from .model_card import model_card, training_command

log = logging.getLogger("ulfine.apps")

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
BACKBONE_FILE = "backbone.safetensors"
ONNX_FILE = "model.onnx"
FORMAT = "ulfine-model"
FORMAT_VERSION = 1
PROTOTYPES_KEY = "context.text_prototypes"


def is_model_dir(path: Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file() and (Path(path) / MODEL_FILE).is_file()


def is_run_dir(path: Path) -> bool:
    return (Path(path) / "config.yaml").is_file()


# ------------------------------------------------------------------------------------ loading
def load(path: str | Path, device: str = "auto", precision: str | None = None) -> Classifier:
    """A :class:`Classifier` from a run folder (``ulfine train``'s output) or a model folder
    (``ulfine export``'s). ``device``: auto | cpu | cuda; ``precision`` defaults to the run's.

    >>> clf = ulfine.load("runs/my_run")
    >>> clf.class_names, clf.predict(["photo.jpg"], topk=3)
    """
    path = Path(path)
    if is_model_dir(path):
        return load_model_dir(path, device, precision)
    if is_run_dir(path):
        return load_run_dir(path, device, precision)
    raise DataError(f"{path} is neither a model folder ({CONFIG_FILE} + {MODEL_FILE}, written by `ulfine export`) "
                    "nor a run folder (config.yaml, written by `ulfine train`)")


def _where(device: str, precision: str | None) -> list[str]:
    return [f"train.device={device}"] + ([f"train.precision={precision}"] if precision else [])


def _classifier(parts: RunParts | ModelParts, rt: Runtime, class_names: list[str], input_size: int,
                info: dict[str, Any]) -> Classifier:
    module = DecisionModule(parts.backbone, parts.method, parts.normalizer, parts.feature_mode)
    return Classifier(module, class_names, input_size, rt, info)


def load_run_dir(run_dir: Path, device: str = "auto", precision: str | None = None,
                 overrides: list[str] | None = None) -> Classifier:
    """A finished run, assembled as it was trained (its data is re-read and its split checked)."""
    parts, rt, weights = load_run(run_dir, _where(device, precision) + list(overrides or []))
    cfg = parts.cfg
    info = {"source": str(run_dir), "method": cfg.method, "arch": cfg.model.arch, "weights": weights}
    return _classifier(parts, rt, list(parts.data.class_names), parts.data.native_size, info)


def read_spec(model_dir: Path) -> dict[str, Any]:
    """``MODEL_DIR/config.json``, checked to be a model folder this version can read."""
    try:
        spec = json.loads((model_dir / CONFIG_FILE).read_text())
    except ValueError as exc:
        raise DataError(f"{model_dir / CONFIG_FILE} is not valid JSON ({exc})") from None
    if spec.get("format") != FORMAT or int(spec.get("version", 0)) > FORMAT_VERSION:
        raise DataError(f"{model_dir} is not an ulfine model folder of version <= {FORMAT_VERSION} "
                        f"(format {spec.get('format')!r}, version {spec.get('version')!r})")
    return spec


def model_config(spec: dict[str, Any], model_dir: Path, device: str, precision: str | None) -> Config:
    """The run's configuration, to run on ``device``, with the backbone from the model folder
    when it carries one."""
    data = spec["run_config"]
    if spec["backbone"]["included"]:
        data = deep_merge(data, {"model": {"pretrained": str(model_dir / BACKBONE_FILE)}})
    return build_config(deep_merge(data, parse_overrides(_where(device, precision))))


def check_fingerprint(backbone: CLIPBackbone, spec: dict[str, Any]) -> None:
    """The rebuilt backbone must hold the very weights the model was trained on."""
    expected = spec["backbone"]["fingerprint"]
    found = weights_fingerprint(backbone.clip)
    if found != expected:
        bb = spec["backbone"]
        raise WeightsError(f"model.arch={bb['arch']} model.pretrained={bb['pretrained']} gives other weights "
                           f"(fingerprint {found[:12]}) than this model was trained on ({expected[:12]}); export "
                           "it with --include-backbone or provide the original weights")


def _prototypes(tensors: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor | None:
    """The text prototypes stored with the model (None for a backbone without a text tower)."""
    protos = tensors.pop(PROTOTYPES_KEY, None)
    return None if protos is None else protos.to(device)


def load_model_dir(model_dir: Path, device: str = "auto", precision: str | None = None) -> Classifier:
    """An exported model folder: backbone from its reference (fingerprint checked), fine-tuning and
    method from the registries, tensors from ``model.safetensors``; no data needed."""
    spec = read_spec(model_dir)
    cfg = model_config(spec, model_dir, device, precision)
    rt = make_runtime(cfg.train.device, cfg.train.precision)
    backbone = build_backbone(cfg.model, device=rt.device)
    check_fingerprint(backbone, spec)
    tensors = load_file(str(model_dir / MODEL_FILE))
    ctx = MethodContext.from_facts(backbone, spec["class_names"], spec["labeled_counts"],
                                   _prototypes(tensors, rt.device), spec["num_unlabeled"], rt.collectives())
    parts = assemble_model(cfg, rt, backbone, ctx, feature_mode=False)  # the real tower, even for feature-mode runs
    load_state(parts.method, tensors, model_dir / MODEL_FILE)
    info = {"source": str(model_dir), "method": cfg.method, "arch": cfg.model.arch, "weights": MODEL_FILE}
    return _classifier(parts, rt, list(spec["class_names"]), spec["preprocessing"]["input_size"], info)


# ------------------------------------------------------------------------------------ export
@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    model_dir: Path
    files: list[str]
    onnx_max_abs_diff: float | None = None


def _model_tensors(parts: RunParts) -> dict[str, torch.Tensor]:
    """The method's trained tensors and state (float ones as fp32) plus the text prototypes."""
    state = weight_state(parts.method)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    if parts.method.ctx.text_prototypes is not None:  # scratch backbones have no text tower
        state[PROTOTYPES_KEY] = parts.method.ctx.text_prototypes.detach().float().cpu().contiguous()
    return state


def reference_backbone(cfg: Config) -> CLIPBackbone:
    """The frozen backbone as the run first built it (before fine-tuning), on the CPU."""
    seed_everything(cfg.seed)
    return build_backbone(cfg.model, device="cpu")


def _spec(parts: RunParts, run_dir: Path, out: Path, fingerprint: str, included: bool) -> dict[str, Any]:
    cfg, bb, data = parts.cfg, parts.backbone, parts.data
    pp = bb.preprocess
    run_config = config_to_dict(cfg)
    run_config["train"].update({"device": "auto", "precision": "auto"})  # where it runs is the loader's choice
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "ulfine_version": __version__, "name": out.name,
        "source_run": str(run_dir), "class_names": list(data.class_names),
        "labeled_counts": [int(c) for c in data.labeled_counts],
        "num_unlabeled": len(data.unlabeled) if data.unlabeled is not None else 0,
        "method": cfg.method, "finetune": bb.finetune, "trained_on_cached_features": parts.feature_mode,
        "backbone": {"arch": cfg.model.arch, "pretrained": cfg.model.pretrained, "weights_id": bb.weights_id,
                     "fingerprint": fingerprint, "included": included, "logit_scale": bb.logit_scale,
                     "embed_dim": bb.embed_dim},
        "preprocessing": {"input_size": int(data.native_size), "size": parts.normalizer.size, "mean": list(pp.mean),
                          "std": list(pp.std), "interpolation": pp.interpolation},
        "output": "the method's decision logits; probabilities are their softmax",
        "command": training_command(yaml.safe_load((run_dir / "config.yaml").read_text())),
        "run_config": run_config,
    }


def export_model(run_dir: Path, out: Path, include_backbone: bool = False, overrides: list[str] | None = None,
                 onnx: bool = False) -> ExportResult:
    """Write the model folder of a finished run (see the module docstring); CPU, fp32.

    Random backbone weights (``model.pretrained=none``) are no reference, so they are always copied.
    """
    run_dir, out = Path(run_dir), Path(out)
    parts, rt, _ = load_run(run_dir, ["train.device=cpu", "train.precision=fp32", *(overrides or [])])
    reference = reference_backbone(parts.cfg)
    include = include_backbone or parts.cfg.model.pretrained.strip().lower() == "none"
    out.mkdir(parents=True, exist_ok=True)
    files = [MODEL_FILE, CONFIG_FILE, CARD_FILE]
    save_file(_model_tensors(parts), str(out / MODEL_FILE), metadata={"format": "pt", "ulfine": FORMAT})
    if include:
        state = {k: v.detach().float().contiguous() for k, v in reference.clip.state_dict().items()}
        save_file(state, str(out / BACKBONE_FILE), metadata={"format": "pt"})
        files.append(BACKBONE_FILE)
    spec = _spec(parts, run_dir, out, weights_fingerprint(reference.clip), include)
    result = ExportResult(out, files)
    if onnx:
        from .onnx_export import export_onnx  # optional extra: onnx, onnxruntime

        classifier = _classifier(parts, rt, list(parts.data.class_names), parts.data.native_size, {})
        samples = classifier.pixels([parts.data.test.load(i) for i in range(min(8, len(parts.data.test)))])
        result.onnx_max_abs_diff = export_onnx(classifier, out / ONNX_FILE, samples)
        spec["onnx"] = {"file": ONNX_FILE, "input": "uint8 (B, 3, size, size) RGB", "output": "logits (B, K)",
                        "max_abs_logit_diff": result.onnx_max_abs_diff}
        files.append(ONNX_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(spec, indent=1) + "\n")
    metrics = json.loads((run_dir / "final_metrics.json").read_text())
    (out / CARD_FILE).write_text(model_card(spec, load_split(run_dir), metrics))
    return result


__all__ = ["BACKBONE_FILE", "CARD_FILE", "CONFIG_FILE", "ExportResult", "MODEL_FILE", "ONNX_FILE", "export_model",
           "is_model_dir", "is_run_dir", "load", "load_model_dir", "load_run_dir", "read_spec"]
