"""Run a peer's own code from a local clone of its public repository at a pinned commit.

The golden-vector generators (``scripts/golden/make_*.py``) use this to execute the original
files of FineSSL, USB, DASO, ACR and LoFT: each file is read with ``git show COMMIT:PATH`` from
the clone the user names (``--peer-repo``; a normal clone or a bare mirror) into a temporary
folder outside this repository and imported from there. Nothing of the peer's code is copied
into ulfine; what the check does not need (datasets, loggers, CLIP loaders) is stubbed by the
generator with :func:`stub_module`.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

#: the peers' public repositories and the commits the golden vectors are pinned to
PINNED: dict[str, tuple[str, str]] = {
    "finessl": ("Gank0078/FineSSL", "76b6f48"),
    "usb": ("microsoft/Semi-supervised-learning", "1ef4cbe"),
    "daso": ("ytaek-oh/daso", "3541a6c"),
    "acr": ("Gank0078/ACR", "9a8f421"),
    "loft": ("games-liker/LoFT", "9e192fb"),
    "abc": ("LeeHyuck/ABC", "f70e926"),
    "cdmad": ("LeeHyuck/CDMAD", "7cd732b"),
    "simpro": ("LeapLabTHU/SimPro", "aa2425d"),
    "cpe": ("machengcheng2016/CPE-LTSSL", "dedd598"),
    "debiaspl": ("frank-xwang/debiased-pseudo-labeling", "3d68ccb"),
}

#: the files of USB's core that ``AlgorithmBase`` and a ``train_step`` run (USB's and its fork CPE-LTSSL's)
USB_CORE = [
    "semilearn/core/algorithmbase.py",
    "semilearn/core/criterions/__init__.py",
    "semilearn/core/criterions/cross_entropy.py",
    "semilearn/core/criterions/consistency.py",
    "semilearn/core/hooks/hook.py",
    "semilearn/core/hooks/priority.py",
    "semilearn/core/utils/registry.py",
    "semilearn/algorithms/hooks/__init__.py",
    "semilearn/algorithms/hooks/masking.py",
    "semilearn/algorithms/hooks/pseudo_label.py",
    "semilearn/algorithms/hooks/dist_align.py",
    "semilearn/algorithms/utils/__init__.py",
    "semilearn/algorithms/utils/misc.py",
    "semilearn/algorithms/utils/ops.py",
]
#: DASO's algorithm and trainer bases, and its loss package (built from the config)
DASO_BASES = ["lib/algorithm/base_ssl_algorithm.py", "lib/algorithm/base_algorithm.py", "lib/engine/base_trainer.py"]
DASO_LOSSES = [
    "lib/models/losses/__init__.py",
    "lib/models/losses/accuracy.py",
    "lib/models/losses/build.py",
    "lib/models/losses/cross_entropy.py",
    "lib/models/losses/ldam_loss.py",
    "lib/models/losses/mse_loss.py",
    "lib/models/losses/tmi_loss.py",
    "lib/models/losses/utils.py",
]


@dataclass
class PeerCheckout:
    """A peer's files at one commit, written to a temporary folder and importable from there."""

    name: str
    repo: str
    commit: str  # the full hash the short pin resolved to
    root: Path
    files: list[str]

    def load(self, path: str, module: str | None = None) -> types.ModuleType:
        """Import the peer's file ``path`` (relative to its repository root) as ``module``."""
        name = module or path.removesuffix(".py").replace("/", ".")
        sys.modules.pop(name, None)
        return importlib.import_module(name)


def _git(git_dir: Path, *args: str) -> str:
    cmd = ["git", f"--git-dir={git_dir}", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def _git_dir(clone: Path) -> Path:
    """The git directory of a clone (``clone/.git``) or of a bare mirror (``clone`` itself)."""
    return clone / ".git" if (clone / ".git").exists() else clone


def checkout(name: str, clone: Path, paths: list[str]) -> PeerCheckout:
    """Write ``paths`` of peer ``name`` at its pinned commit into a fresh temporary folder and put
    that folder first on ``sys.path``; fails when the clone lacks the pinned commit."""
    repo, short = PINNED[name]
    git_dir = _git_dir(Path(clone))
    try:
        full = _git(git_dir, "rev-parse", "--verify", f"{short}^{{commit}}").strip()
    except subprocess.CalledProcessError:
        raise SystemExit(f"{clone} has no commit {short} of {repo}: clone https://github.com/{repo}") from None
    root = Path(tempfile.mkdtemp(prefix=f"golden-{name}-"))
    for path in paths:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_git(git_dir, "show", f"{full}:{path}"))
        for parent in Path(path).parents:  # make every folder a package
            init = root / parent / "__init__.py"
            if parent != Path(".") and not init.exists():
                init.write_text("")
    sys.path.insert(0, str(root))
    return PeerCheckout(name, repo, full, root, list(paths))


def stub_module(name: str, **attrs: object) -> types.ModuleType:
    """Register an empty module ``name`` (and its parents) holding ``attrs``: the peer imports
    it, the checked code never uses it."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            sys.modules[sub] = types.ModuleType(sub)
            if i > 1:
                setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], sys.modules[sub])
    module = sys.modules[name]
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def provenance(peer: PeerCheckout, command: str, **extra: object) -> dict[str, object]:
    """The JSON metadata every fixture carries: whose code, which commit and files, how made."""
    import torch

    return {"peer": peer.name, "repository": f"https://github.com/{peer.repo}", "commit": peer.commit,
            "files": peer.files, "command": command, "torch": torch.__version__, **extra}
