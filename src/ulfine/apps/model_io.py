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
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from .. import __version__
from ..config import Config, build_config, config_to_dict, deep_merge, parse_overrides, saved_config_data
from ..config.schema import MAX_IMAGE_SIDE
from ..data import load_split
from ..engine import load_run
from ..engine.assemble import ModelParts, RunParts, assemble_model
from ..engine.checkpoint import load_state, read_tensors, weight_state
from ..engine.runtime import Runtime, make_runtime
from ..engine.seeding import seed_everything
from ..errors import ConfigError, DataError, WeightsError
from ..methods import MethodContext
from ..models import CLIPBackbone, build_backbone
from ..models.fingerprint import weights_fingerprint
from ..models.weights import WEIGHT_SUFFIXES
from ..safefiles import atomic_write_text, publish_files, recover_folder, refuse_pickles, replace_folder, staging_folder
from ..validation import damaged, need_bool, need_int, need_list, need_mapping, need_str
from .classifier import Classifier, DecisionModule
from .model_card import NO_LICENSE, model_card, training_command

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
def load(path: str | Path, device: str = "auto", precision: str | None = None, trust_plugins: bool = False,
         data_root: str | Path | None = None) -> Classifier:
    """A :class:`Classifier` from a run folder (``ulfine train``'s output) or a model folder
    (``ulfine export``'s). ``device``: auto | cpu | cuda; ``precision`` defaults to the run's.

    ``trust_plugins``: import the plugins the folder's config names (code that runs on import;
    like ``trust_remote_code``, only for folders you trust); without it such a folder is refused
    in one line. ``data_root``: where a run folder's data is now (a model folder needs none).

    ``path`` may also name a model folder on the Hugging Face Hub, ``"hf-hub:org/name[@revision]"``:
    its snapshot is taken from the Hub cache (downloaded first when online,
    :func:`ulfine.apps.hub.snapshot_folder`) and loaded as a local model folder.

    >>> clf = ulfine.load("runs/my_run")
    >>> clf.class_names, clf.predict(["photo.jpg"], topk=3)
    """
    if isinstance(path, str) and path.startswith("hf-hub:"):
        from .hub import snapshot_folder  # hub imports this module: resolved on use

        return load_model_dir(snapshot_folder(path), device, precision, trust_plugins)
    path = Path(path)
    if is_model_dir(path):
        return load_model_dir(path, device, precision, trust_plugins)
    if is_run_dir(path):
        overrides = [f"data.root={data_root}"] if data_root is not None else []
        return load_run_dir(path, device, precision, overrides, trust_plugins)
    raise DataError(f"{path} is neither a model folder ({CONFIG_FILE} + {MODEL_FILE}, written by `ulfine export`) "
                    "nor a run folder (config.yaml, written by `ulfine train`)")


def _where(device: str, precision: str | None) -> list[str]:
    return [f"train.device={device}"] + ([f"train.precision={precision}"] if precision else [])


def _classifier(parts: RunParts | ModelParts, rt: Runtime, class_names: list[str], input_size: int,
                info: dict[str, Any]) -> Classifier:
    module = DecisionModule(parts.backbone, parts.method, parts.normalizer, parts.feature_mode)
    return Classifier(module, class_names, input_size, rt, info)


def load_run_dir(run_dir: Path, device: str = "auto", precision: str | None = None,
                 overrides: list[str] | None = None, trust_plugins: bool = False) -> Classifier:
    """A finished run, assembled as it was trained (its data is re-read and its split checked)."""
    parts, rt, weights = load_run(run_dir, _where(device, precision) + list(overrides or []), trust_plugins)
    cfg = parts.cfg
    info = {"source": str(run_dir), "method": cfg.method, "arch": cfg.model.arch, "weights": weights}
    return _classifier(parts, rt, list(parts.data.class_names), parts.data.native_size, info)


#: largest ``preprocessing.input_size`` a model folder may ask for (an image is squashed to it
#: before anything else: 100000 would allocate 30 GB per image)
MAX_INPUT_SIZE = MAX_IMAGE_SIDE
#: what to do about a damaged model folder
REEXPORT = "export the model again (`ulfine export RUN_DIR --out MODEL_DIR`)"


def read_spec(model_dir: Path) -> dict[str, Any]:
    """``MODEL_DIR/config.json``, checked to be a model folder this version can read, every field
    that loading uses of the right type and range (:func:`check_spec`)."""
    source = model_dir / CONFIG_FILE
    try:
        spec = json.loads(source.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{source} is not valid JSON ({type(exc).__name__}); {REEXPORT}") from None
    spec = dict(need_mapping(spec, source, "the file", REEXPORT))
    version = spec.get("version", 0)
    if spec.get("format") != FORMAT or isinstance(version, bool) or not isinstance(version, int) \
            or version > FORMAT_VERSION:
        raise DataError(f"{model_dir} is not an ulfine model folder of version <= {FORMAT_VERSION} "
                        f"(format {spec.get('format')!r}, version {version!r})")
    check_spec(spec, source)
    return spec


def check_spec(spec: dict[str, Any], source: Path) -> None:
    """Every field of a model folder's ``config.json`` that loading reads: types, ranges and
    agreement (one count per class), so a damaged file fails here in one line, not in the
    middle of building the model."""
    names = need_list(spec, "class_names", source, REEXPORT, str)
    if not names or len(set(names)) != len(names):
        raise damaged(source, "class_names", "must be distinct class names (at least one)", REEXPORT)
    counts = need_list(spec, "labeled_counts", source, REEXPORT, int, length=len(names))
    if any(c < 0 for c in counts):
        raise damaged(source, "labeled_counts", "must not be negative", REEXPORT)
    need_int(spec, "num_unlabeled", source, REEXPORT)
    pre = need_mapping(spec.get("preprocessing"), source, "preprocessing", REEXPORT)
    need_int(pre, "input_size", source, REEXPORT, low=8, high=MAX_INPUT_SIZE, prefix="preprocessing.")
    bb = need_mapping(spec.get("backbone"), source, "backbone", REEXPORT)
    for key in ("arch", "pretrained", "fingerprint"):
        need_str(bb, key, source, REEXPORT, prefix="backbone.")
    need_bool(bb, "included", source, REEXPORT, prefix="backbone.")
    run_config = need_mapping(spec.get("run_config"), source, "run_config", REEXPORT)
    model = need_mapping(run_config.get("model", {}), source, "run_config.model", REEXPORT)
    pretrained = model.get("pretrained", "")
    if not bb["included"] and isinstance(pretrained, str) and Path(pretrained).expanduser().is_file() \
            and Path(pretrained).suffix not in WEIGHT_SUFFIXES:
        raise damaged(source, "run_config.model.pretrained", f"names {pretrained}, not a weights file "
                      f"({' '.join(WEIGHT_SUFFIXES)})", REEXPORT)


def model_config(spec: dict[str, Any], model_dir: Path, device: str, precision: str | None,
                 trust_plugins: bool = False) -> Config:
    """The run's configuration, to run on ``device``, with the backbone from the model folder
    when it carries one; the plugins it names are imported only with ``trust_plugins``."""
    source = model_dir / CONFIG_FILE
    data = saved_config_data(dict(spec["run_config"]), model_dir, f"{source} (run_config)", trust_plugins)
    if spec["backbone"]["included"]:
        data = deep_merge(data, {"model": {"pretrained": str(model_dir / BACKBONE_FILE)}})
    try:
        return build_config(deep_merge(data, parse_overrides(_where(device, precision))))
    except ConfigError as exc:
        raise ConfigError(f"{source} run_config: {exc}; {REEXPORT}") from None


def check_fingerprint(backbone: CLIPBackbone, spec: dict[str, Any]) -> None:
    """The rebuilt backbone must hold the very weights the model was trained on."""
    expected = spec["backbone"]["fingerprint"]
    found = weights_fingerprint(backbone.clip)
    if found != expected:
        bb = spec["backbone"]
        raise WeightsError(f"model.arch={bb['arch']} model.pretrained={bb['pretrained']} gives other weights "
                           f"(fingerprint {found[:12]}) than this model was trained on ({expected[:12]}); export "
                           "it with --include-backbone or provide the original weights")


def _prototypes(tensors: dict[str, torch.Tensor], device: torch.device, num_classes: int, dim: int,
                source: Path) -> torch.Tensor | None:
    """The text prototypes stored with the model (None for a backbone without a text tower),
    checked to be one finite row per class of the backbone's feature width."""
    protos = tensors.pop(PROTOTYPES_KEY, None)
    if protos is None:
        return None
    if tuple(protos.shape) != (num_classes, dim) or not protos.is_floating_point() or not bool(protos.isfinite().all()):
        raise damaged(source, PROTOTYPES_KEY, f"must be {num_classes} x {dim} finite numbers (got "
                      f"{tuple(protos.shape)} {protos.dtype})", REEXPORT)
    return protos.to(device)


def load_model_dir(model_dir: Path, device: str = "auto", precision: str | None = None,
                   trust_plugins: bool = False) -> Classifier:
    """An exported model folder: backbone from its reference (fingerprint checked), fine-tuning and
    method from the registries, tensors from ``model.safetensors``; no data needed. Every field
    and tensor is checked before use (:func:`check_spec`); nothing in the folder runs without
    ``trust_plugins``."""
    model_dir = Path(model_dir)
    refuse_pickles(model_dir, "model folder")
    spec = read_spec(model_dir)
    cfg = model_config(spec, model_dir, device, precision, trust_plugins)
    tensors = read_tensors(model_dir / MODEL_FILE)  # a damaged file fails before the backbone is built
    rt = make_runtime(cfg.train.device, cfg.train.precision)
    backbone = build_backbone(cfg.model, device=rt.device)
    check_fingerprint(backbone, spec)
    protos = _prototypes(tensors, rt.device, len(spec["class_names"]), int(backbone.embed_dim), model_dir / MODEL_FILE)
    ctx = MethodContext.from_facts(backbone, spec["class_names"], spec["labeled_counts"],
                                   protos, spec["num_unlabeled"], rt.collectives())
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


def _spec(parts: RunParts, run_dir: Path, out: Path, fingerprint: str, included: bool,
          license: str | None = None) -> dict[str, Any]:
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
        "license": license or NO_LICENSE,
        "run_config": run_config,
    }


#: what an export writes into a model folder (``model.onnx`` may come with external-data files)
EXPORT_FILES = frozenset({MODEL_FILE, CONFIG_FILE, CARD_FILE, BACKBONE_FILE})


def is_ulfine_model_dir(path: Path) -> bool:
    """Whether ``path`` is a model folder an export wrote (its config.json says ``ulfine-model``)."""
    if not is_model_dir(path):
        return False
    try:
        return json.loads((Path(path) / CONFIG_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _foreign_entries(folder: Path) -> list[str]:
    """The entries of ``folder`` that no export writes (a user's own files)."""
    return sorted(e.name for e in folder.iterdir() if e.name not in EXPORT_FILES and not e.name.startswith(ONNX_FILE))


def export_target(out: Path) -> Path:
    """The folder an export may replace, checked before any work (one-line ConfigError otherwise).

    Why: an export replaces ``--out`` as a whole, so ``--out`` must be new, empty, or a model
    folder an export wrote that holds nothing else; a user's folder (its own README.md or
    config.json) is never overwritten. A symlink to a folder stands for that folder.
    """
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise ConfigError(f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose a new folder")
    if out.is_symlink():
        out = out.resolve()
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if not is_ulfine_model_dir(out):
        raise ConfigError(f"--out {out} is not empty and is not an ulfine model folder; export writes a new "
                          "folder or replaces one it wrote: choose another --out")
    foreign = _foreign_entries(out)
    if foreign:
        raise ConfigError(f"--out {out} is an ulfine model folder that also holds {', '.join(foreign[:3])}, which "
                          "re-exporting would delete: move them, or choose another --out")
    return out


def _write_model_folder(folder: Path, parts: RunParts, rt: Runtime, run_dir: Path, out: Path,
                        include: bool, onnx: bool, license: str | None = None) -> ExportResult:
    """Write every file of the model folder into ``folder`` (private staging, so plain writes are
    safe); ``out`` is the name it will have."""
    reference = reference_backbone(parts.cfg)
    files = [MODEL_FILE, CONFIG_FILE, CARD_FILE]
    save_file(_model_tensors(parts), str(folder / MODEL_FILE), metadata={"format": "pt", "ulfine": FORMAT})
    if include:
        state = {k: v.detach().float().contiguous() for k, v in reference.clip.state_dict().items()}
        save_file(state, str(folder / BACKBONE_FILE), metadata={"format": "pt"})
        files.append(BACKBONE_FILE)
    spec = _spec(parts, run_dir, out, weights_fingerprint(reference.clip), include, license)
    result = ExportResult(out, files)
    if onnx:
        from .onnx_export import export_onnx  # optional extra: onnx, onnxruntime

        classifier = _classifier(parts, rt, list(parts.data.class_names), parts.data.native_size, {})
        samples = classifier.pixels([parts.data.test.load(i) for i in range(min(8, len(parts.data.test)))])
        result.onnx_max_abs_diff = export_onnx(classifier, folder / ONNX_FILE, samples)
        spec["onnx"] = {"file": ONNX_FILE, "input": "uint8 (B, 3, size, size) RGB", "output": "logits (B, K)",
                        "max_abs_logit_diff": result.onnx_max_abs_diff}
        files.append(ONNX_FILE)
    atomic_write_text(folder / CONFIG_FILE, json.dumps(spec, indent=1) + "\n")
    metrics = json.loads((run_dir / "final_metrics.json").read_text())
    atomic_write_text(folder / CARD_FILE, model_card(spec, load_split(run_dir), metrics))
    return result


def export_model(run_dir: Path, out: Path, include_backbone: bool = False, overrides: list[str] | None = None,
                 onnx: bool = False, license: str | None = None) -> ExportResult:
    """Write the model folder of a finished run (see the module docstring); CPU, fp32.

    ``license``: the model's license for the card's Hub metadata (an SPDX id such as
    ``apache-2.0``); None writes ``other`` and a note that the weights' and data's terms apply.

    The folder is built next to ``out`` and swapped in whole at the end
    (:func:`ulfine.safefiles.replace_folder`): a kill at any instant leaves the previous model
    folder or the new one, never a mix, and what a killed export left is tidied first. Random
    backbone weights (``model.pretrained=none``) are no reference, so they are always copied.
    """
    run_dir = Path(run_dir)
    recover_folder(Path(out))
    out = export_target(Path(out))
    parts, rt, _ = load_run(run_dir, ["train.device=cpu", "train.precision=fp32", *(overrides or [])])
    include = include_backbone or parts.cfg.model.pretrained.strip().lower() == "none"
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(out)
    try:
        result = _write_model_folder(staging, parts, rt, run_dir, out, include, onnx, license)
        publish_files(staging)
        replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


__all__ = ["BACKBONE_FILE", "CARD_FILE", "CONFIG_FILE", "EXPORT_FILES", "ExportResult", "MODEL_FILE", "ONNX_FILE",
           "export_model", "export_target", "is_ulfine_model_dir",
           "is_model_dir", "is_run_dir", "load", "load_model_dir", "load_run_dir", "read_spec"]
