"""Class prototypes from the frozen text tower: encoded once, cached on disk."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..statefiles import atomic_save_tensors
from .backbone import CLIPBackbone
from .fingerprint import weights_fingerprint

log = logging.getLogger(__name__)
DEFAULT_TEMPLATES = ("a photo of a {}.",)


def prompts_for(class_name: str, templates: Sequence[str]) -> list[str]:
    """``air_plane`` -> ``a photo of a air plane.`` for every template."""
    name = class_name.replace("_", " ")
    return [t.format(name) for t in templates]


def _weights_identity(backbone: CLIPBackbone) -> str:
    """Random ('none') weights differ per seed, so they are named by their text-tower content."""
    if not backbone.weights_id.startswith("none:"):
        return backbone.weights_id
    return f"{backbone.weights_id}:{weights_fingerprint(backbone.clip, skip_prefix='visual.')[:16]}"


def prototype_cache_key(backbone: CLIPBackbone, class_names: Sequence[str], templates: Sequence[str]) -> str:
    """Hash of everything the prototypes depend on: arch, weights, class names, templates."""
    blob = json.dumps(
        {"arch": backbone.arch, "weights": _weights_identity(backbone), "classes": list(class_names),
         "templates": list(templates)},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _cached_prototypes(path: Path, shape: tuple[int, int]) -> torch.Tensor | None:
    """A cache entry's prototypes, or None (recompute) when it is absent or damaged: unreadable,
    cut short, of another shape, or not finite. Why not trust it: a kill or a full disk of an
    older version, or another process, may have left it torn; recomputing costs one text pass."""
    if not path.is_file():
        return None
    try:
        protos = load_file(str(path))["prototypes"]
    except Exception as exc:  # SafetensorError, OSError, KeyError: any damage means recompute
        log.warning("text prototype cache %s is damaged (%s); recomputing it", path, type(exc).__name__)
        return None
    if tuple(protos.shape) != shape or not protos.is_floating_point() or not bool(protos.isfinite().all()):
        log.warning("text prototype cache %s holds %s %s, not %s finite numbers; recomputing it", path,
                    tuple(protos.shape), protos.dtype, shape)
        return None
    return protos


def text_prototypes(
    backbone: CLIPBackbone,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    cache_dir: str | Path | None = None,
) -> torch.Tensor:
    """(K,D) L2-normalised class prototypes: per class, the renormalised mean of the normalised
    features of every template (CLIP's prompt ensemble). Cached as safetensors in ``cache_dir``
    so repeated runs do not re-encode; the result is float32 on the backbone's device."""
    if not class_names or not templates:
        raise ValueError("text_prototypes needs at least one class name and one template")
    device = next(backbone.visual.parameters()).device
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{prototype_cache_key(backbone, class_names, templates)}.safetensors"
        cached = _cached_prototypes(path, (len(class_names), int(backbone.embed_dim)))
        if cached is not None:
            log.info("text prototypes from cache %s", path)
            return cached.to(device)
    with torch.no_grad():
        texts = [p for name in class_names for p in prompts_for(name, templates)]
        feats = backbone.encode_text(texts).float().view(len(class_names), len(templates), -1)
        protos = F.normalize(F.normalize(feats, dim=-1).mean(dim=1), dim=-1)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"arch": backbone.arch, "classes": json.dumps(list(class_names))}
        atomic_save_tensors({"prototypes": protos}, path, metadata=meta)  # readable by others, link-proof
    return protos.to(device)
