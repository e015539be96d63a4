"""Where a backbone's weights come from: a pretrained tag, a local file or folder, or none.

Resolution never starts a download that could hang: the local caches are checked first, and
when the weights are not there an offline machine (``HF_HUB_OFFLINE=1``) or an unreachable
network fails at once with one :class:`WeightsError` that says how to pass a local file.
"""

from __future__ import annotations

import difflib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import open_clip
from open_clip.pretrained import download_pretrained, get_pretrained_cfg, list_pretrained_tags_by_model

from ..errors import ConfigError, WeightsError
from .archs import MICRO_ARCH

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
MICRO_WEIGHTS = ASSETS_DIR / "micro_clip.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz")
# open_clip's hub file names: the .safetensors variant is preferred when both exist.
HUB_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
PROBE_TIMEOUT_S = 3.0
LOCAL_FILE_HINT = (
    "pass a local copy instead: model.pretrained=/path/to/open_clip_pytorch_model.bin "
    "(or a .safetensors file, or an open_clip folder holding open_clip_config.json + weights)"
)

WeightKind = Literal["none", "file", "folder", "tag", "hf-hub"]


@dataclass(frozen=True)
class WeightSource:
    """A resolved weights request: what to hand to ``open_clip.create_model``."""

    kind: WeightKind
    model_name: str  # first argument of create_model (arch, or 'local-dir:<folder>')
    path: str | None = None  # checkpoint file given as create_model's `pretrained`
    tag_cfg: dict[str, Any] = field(default_factory=dict)  # open_clip pretrained cfg of a tag
    identity: str = ""  # stable name of these weights, for caches (text prototypes)

    def describe(self) -> str:
        return {"none": "random init", "tag": "pretrained tag"}.get(self.kind, self.kind) + (
            f" {self.path}" if self.path else ""
        )


def is_offline() -> bool:
    """True when the user said so (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    return False


def network_reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One short TCP connect (to the proxy if one is set), so a dead network fails in seconds."""
    proxy = next(
        (os.environ[v] for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if os.environ.get(v)),
        None,
    )
    if proxy:
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = parsed.hostname or host, parsed.port or 80
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _file_identity(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_mtime_ns}:{st.st_size}"


def _cached_tag_file(tag_cfg: dict[str, Any], cache_dir: Path | None) -> str | None:
    """The tag's checkpoint if it is already on disk (HF cache or open_clip's URL cache)."""
    if tag_cfg.get("file"):
        return tag_cfg["file"] if os.path.isfile(tag_cfg["file"]) else None
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub)
        names = HUB_WEIGHT_NAMES if not filename else (Path(filename).with_suffix(".safetensors").name, filename)
        for name in names:
            hit = try_to_load_from_cache(repo_id, name, cache_dir=str(cache_dir) if cache_dir else None)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    url = tag_cfg.get("url", "")
    if url:
        target = Path(cache_dir or Path("~/.cache/clip").expanduser()) / os.path.basename(url)
        if target.is_file():
            return str(target)
    return None


def _download_host(tag_cfg: dict[str, Any]) -> str:
    if tag_cfg.get("hf_hub"):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        return urlparse(endpoint).hostname or "huggingface.co"
    return urlparse(tag_cfg.get("url", "")).hostname or "huggingface.co"


def _resolve_tag(arch: str, tag: str, tag_cfg: dict[str, Any], cache_dir: Path | None) -> WeightSource:
    path = _cached_tag_file(tag_cfg, cache_dir)
    if path is None:
        where = tag_cfg.get("hf_hub") or tag_cfg.get("url") or "?"
        head = f"weights for model.arch={arch} model.pretrained={tag} are not in the local cache ({where})"
        if is_offline():
            raise WeightsError(f"{head} and downloads are off (HF_HUB_OFFLINE=1); {LOCAL_FILE_HINT}")
        host = _download_host(tag_cfg)
        if not network_reachable(host):
            raise WeightsError(f"{head} and {host} cannot be reached; {LOCAL_FILE_HINT}")
        try:
            path = download_pretrained(tag_cfg, cache_dir=str(cache_dir) if cache_dir else None)
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise WeightsError(f"{head} and the download failed ({first}); {LOCAL_FILE_HINT}") from e
        if not path:
            raise WeightsError(f"{head} and open_clip gives no download source; {LOCAL_FILE_HINT}")
    return WeightSource("tag", arch, path=str(path), tag_cfg=dict(tag_cfg), identity=f"tag:{arch}:{tag}")


def _resolve_folder(folder: Path) -> WeightSource:
    config = folder / "open_clip_config.json"
    if not config.is_file():
        raise WeightsError(
            f"model.pretrained={folder} is a folder without open_clip_config.json; pass the weights "
            f"file itself (model.pretrained={folder}/<weights>.safetensors) with the matching model.arch"
        )
    weights = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not weights:
        raise WeightsError(f"model.pretrained={folder} holds open_clip_config.json but no weights file")
    ident = ";".join(_file_identity(p) for p in [config, *weights])
    return WeightSource("folder", f"local-dir:{folder.resolve()}", identity=f"folder:{ident}")


def _resolve_hf_hub(arch: str, cache_dir: Path | None) -> WeightSource:
    """``hf-hub:org/repo`` archs: use the cached snapshot as a local folder, else download."""
    from huggingface_hub import try_to_load_from_cache

    repo_id = arch[len("hf-hub:"):]
    cfg = try_to_load_from_cache(repo_id, "open_clip_config.json", cache_dir=str(cache_dir) if cache_dir else None)
    if isinstance(cfg, str):
        snapshot = Path(cfg).parent
        if any((snapshot / n).is_file() for n in HUB_WEIGHT_NAMES):
            return WeightSource("folder", f"local-dir:{snapshot}", identity=f"hf-hub:{repo_id}:{snapshot.name}")
    head = f"model.arch={arch} is not in the local Hugging Face cache"
    if is_offline():
        raise WeightsError(f"{head} and downloads are off (HF_HUB_OFFLINE=1); {LOCAL_FILE_HINT}")
    host = _download_host({"hf_hub": repo_id})
    if not network_reachable(host):
        raise WeightsError(f"{head} and {host} cannot be reached; {LOCAL_FILE_HINT}")
    return WeightSource("hf-hub", arch, identity=f"hf-hub:{repo_id}")


def resolve_weights(arch: str, pretrained: str, cache_dir: Path | None = None) -> WeightSource:
    """Turn ``model.arch`` + ``model.pretrained`` into a :class:`WeightSource`, or fail clearly.

    ``pretrained`` is ``none`` (random weights, explicit only), ``micro`` (the shipped tiny
    weights), an open_clip tag, or a local file/folder. ``hf-hub:``/``local-dir:`` archs carry
    their own weights and ignore ``pretrained``.
    """
    if arch.startswith("local-dir:"):
        return _resolve_folder(Path(arch[len("local-dir:"):]).expanduser())
    if arch.startswith("hf-hub:"):
        return _resolve_hf_hub(arch, cache_dir)
    if arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see open_clip.list_models())"
        raise ConfigError(f"model.arch={arch} is not an open_clip architecture{hint}")
    spec = pretrained.strip()
    if spec.lower() == "none":
        return WeightSource("none", arch, identity=f"none:{arch}")
    if spec == "micro":
        if arch != MICRO_ARCH:
            raise ConfigError(f"model.pretrained=micro is for model.arch={MICRO_ARCH}, not {arch}")
        if not MICRO_WEIGHTS.is_file():
            raise WeightsError(
                f"the tiny model's weights {MICRO_WEIGHTS} are missing; make them with "
                "`ulfine pretrain-micro` (a few minutes on CPU)"
            )
        return WeightSource("file", arch, path=str(MICRO_WEIGHTS), identity=f"file:{_file_identity(MICRO_WEIGHTS)}")
    tag_cfg = get_pretrained_cfg(arch, spec)
    if tag_cfg:
        return _resolve_tag(arch, spec, tag_cfg, cache_dir)
    path = Path(spec).expanduser()
    if path.is_file():
        return WeightSource("file", arch, path=str(path), identity=f"file:{_file_identity(path)}")
    if path.is_dir():
        return _resolve_folder(path)
    if path.suffix in WEIGHT_SUFFIXES or os.sep in spec:
        raise WeightsError(f"model.pretrained={spec}: no such file or folder")
    tags = list_pretrained_tags_by_model(arch)
    raise ConfigError(
        f"model.pretrained={spec} is neither a pretrained tag of {arch} "
        f"({', '.join(tags) or 'it has none'}), a local file/folder, 'micro' nor 'none'"
    )
