"""Model folders on the Hugging Face Hub: :func:`push_model` (``ulfine push``) and
:func:`snapshot_folder` (``ulfine.load("hf-hub:org/name[@revision]")``, ``ulfine predict hf-hub:...``).

Why through ``huggingface_hub`` and nothing of our own: its cache (``HF_HUB_CACHE`` /
``HF_HOME``), revisions, tokens and offline mode are what users of timm, open_clip and
transformers already know. A downloaded snapshot is then an ordinary model folder: loaded by
:func:`ulfine.apps.model_io.load_model_dir`, backbone fingerprint and plugin consent included.

The environment is read when a function is called, not when ``huggingface_hub`` was imported
(its ``constants`` freeze ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` at import), so an offline
switch or a cache set by a script or a test just before the call is honoured.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import HubError
from ..models.weights import is_offline
from .model_io import CONFIG_FILE, MODEL_FILE, is_model_dir, read_spec

#: the prefix that names a model on the Hub, as open_clip's ``hf-hub:`` archs
HUB_PREFIX = "hf-hub:"
#: how to use a model that is not in the cache while downloads are off
OFFLINE_HINT = ("run the command once online (without HF_HUB_OFFLINE=1) to download it into the cache, "
                "or pass a local model folder")


def is_hub_name(name: str | Path) -> bool:
    """Whether ``name`` names a Hub model (``hf-hub:org/name[@revision]``), not a local folder."""
    return isinstance(name, str) and name.startswith(HUB_PREFIX)


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """``hf-hub:org/name@revision`` -> (``org/name``, ``revision`` or None), the repo id checked
    by huggingface_hub's own rule so a typo fails here in one line, not as an HTTP error."""
    repo_id, _, revision = name[len(HUB_PREFIX):].partition("@")
    _check_repo_id(repo_id, name)
    return repo_id, revision or None


def _check_repo_id(repo_id: str, shown: str) -> None:
    """huggingface_hub's repo-id rule, raised as ulfine's one-line error."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise HubError(f"{shown}: {repo_id!r} is not a Hub repository id (org/name): {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def hub_cache_dir() -> str | None:
    """The Hub cache as the environment says now (``HF_HUB_CACHE``, else ``HF_HOME/hub``); None
    leaves huggingface_hub's default (``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


# ------------------------------------------------------------------------------------ download
def snapshot_folder(name: str) -> Path:
    """The local snapshot folder of ``hf-hub:org/name[@revision]``: from the cache, downloaded
    first when online. Offline (``HF_HUB_OFFLINE=1``) only the cache is read (a branch or tag is
    resolved through its ``refs/`` file), and a missing snapshot is one line saying how to get it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, revision = parse_hub_name(name)
    offline = is_offline()
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=hub_cache_dir(), local_files_only=offline,
                                   library_name="ulfine", library_version=__version__)
    except LocalEntryNotFoundError:
        where = f"revision {revision or 'main'} of {HUB_PREFIX}{repo_id}"
        why = "downloads are off (HF_HUB_OFFLINE=1)" if offline else "the Hub could not be reached"
        cache = hub_cache_dir() or "~/.cache/huggingface/hub"
        raise HubError(f"{where} is not in the local Hugging Face cache ({cache}) and {why}; {OFFLINE_HINT}") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise HubError(f"{name} cannot be downloaded: {type(exc).__name__}: {_first_line(exc)}") from None
    folder_path = Path(folder)
    if not is_model_dir(folder_path):
        raise HubError(f"{name} is not an ulfine model folder (no {CONFIG_FILE} + {MODEL_FILE}); it is published "
                       "with `ulfine push MODEL_DIR REPO_ID`")
    return folder_path


# ------------------------------------------------------------------------------------ upload
def push_token(token: str | None) -> str:
    """The token to push with: ``--token``, else ``HF_TOKEN`` / the saved login
    (``huggingface_hub.get_token``). Pushing needs one; asked here so a missing one is one line
    before any request."""
    import huggingface_hub

    found = token or huggingface_hub.get_token()
    if not found:
        raise HubError("pushing to the Hub needs a token: pass --token TOKEN, set HF_TOKEN, or run `hf auth login`")
    return found


def commit_message(model_dir: Path, spec: dict[str, Any]) -> str:
    """The commit's title: names ulfine, the model and what it is, so the Hub's history says it."""
    return (f"Upload ulfine model {spec.get('name') or model_dir.name} ({spec.get('method')}, "
            f"{len(spec['class_names'])} classes; ulfine {spec.get('ulfine_version', __version__)})")


def push_model(model_dir: Path, repo_id: str, private: bool = False, revision: str | None = None,
               token: str | None = None) -> str:
    """Upload a model folder to ``repo_id`` as one commit (``HfApi.create_repo(exist_ok=True)``,
    then ``upload_folder``); returns the commit's URL.

    Why every check first: the folder must be a readable ulfine model folder
    (:func:`ulfine.apps.model_io.read_spec`), downloads must be on and a token known, so a bad
    push fails in one line before anything reaches the network. A ``revision`` other than
    ``main`` is a branch, created from ``main`` when new.
    """
    model_dir = Path(model_dir)
    if not is_model_dir(model_dir):
        raise HubError(f"{model_dir} is not a model folder ({CONFIG_FILE} + {MODEL_FILE}); write one with "
                       "`ulfine export RUN_DIR --out MODEL_DIR`")
    spec = read_spec(model_dir)
    _check_repo_id(repo_id, repo_id)
    if is_offline():
        raise HubError("cannot push while downloads are off (HF_HUB_OFFLINE=1); unset it to push to the Hub")
    token = push_token(token)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(library_name="ulfine", library_version=__version__)
    try:
        api.create_repo(repo_id, token=token, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(model_dir), token=token, revision=revision,
                                 commit_message=commit_message(model_dir, spec))
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise HubError(f"push of {model_dir} to {repo_id} failed: {type(exc).__name__}: {_first_line(exc)}") from None
    return str(getattr(info, "commit_url", info))


__all__ = ["HUB_PREFIX", "commit_message", "hub_cache_dir", "is_hub_name", "parse_hub_name", "push_model",
           "push_token", "snapshot_folder"]
