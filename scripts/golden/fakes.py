"""Stand-ins the golden generators (``scripts/golden/make_*.py``) share around a peer's executed code.

Why a module of its own: the peers' training loops keep their intermediate values (pseudo-labels,
masks, every loss term) in local variables, expect a GPU, an older PyTorch or libraries this
project does not install (yacs, sklearn, timm, open_clip). The pieces here let the peer's own
function run unchanged on the CPU and read what it computed, without copying any of its code:

- :class:`CfgNode` is a small stand-in for ``yacs.config.CfgNode`` (DASO's and LoFT's configs);
- :func:`caller_locals` and :func:`frame_locals` read the local variables of a running peer function;
- :class:`Bar`, :class:`UnlabeledViews` and :func:`in_process_loaders` stand in for what the
  MixMatch-style loops (ABC, CDMAD) import; :class:`USBArgs` and :func:`stub_usb_hooks` for USB's
  (and its forks') argument namespace and training hooks;
- :func:`legacy_torch` restores, for the length of a run, what the peers' PyTorch allowed
  (``DataLoader`` iterators with ``.next()``, ``detach_()`` on a view) and maps their
  unconditional ``.cuda()`` / ``.to('cuda')`` calls to the CPU;
- :func:`write_fixture` writes the tensors (safetensors) and the provenance (JSON).
"""

from __future__ import annotations

import argparse
import ast
import atexit
import contextlib
import copy
import importlib
import json
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from peer import PeerCheckout, checkout, stub_module
from torch import nn
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "golden" / "fixtures"
MAX_FIXTURE_BYTES = 100_000


# ------------------------------------------------------------------------------ networks
class FeatureHeads(nn.Module):
    """A peer's network on given features (ACR, ABC): ``forward`` passes them through, each named
    linear head holds the fixture's weights (created in ``names`` order, so the global RNG moves as
    the peer's own constructor would), ``classify`` is the head ``fc``, and moving the network to a
    GPU (``.cuda()``, ``.to('cuda')``) keeps it on the CPU. A peer's second classifier method is a
    one-line subclass."""

    def __init__(self, heads: dict[str, torch.Tensor], names: tuple[str, ...]) -> None:
        super().__init__()
        for name in names:
            k, d = heads[f"{name}.weight"].shape
            self.add_module(name, nn.Linear(d, k))
        with torch.no_grad():
            for name in names:
                getattr(self, name).weight.copy_(heads[f"{name}.weight"])
                getattr(self, name).bias.copy_(heads[f"{name}.bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def classify(self, out: torch.Tensor) -> torch.Tensor:
        return self.fc(out)

    def cuda(self, *args: Any, **kwargs: Any) -> FeatureHeads:
        return self

    def to(self, *args: Any, **kwargs: Any) -> FeatureHeads:
        return self


# ------------------------------------------------------------------------------ command line
def parse_args(description: str) -> argparse.Namespace:
    """``--peer-repo`` (a clone or bare mirror of the peer) and ``--out`` (the fixtures folder)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--peer-repo", type=Path, required=True, help="clone of the peer's repository")
    parser.add_argument("--out", type=Path, default=FIXTURES, help="folder for <name>.safetensors/.json")
    return parser.parse_args()


def open_peer(description: str, name: str, paths: list[str]) -> tuple[argparse.Namespace, PeerCheckout]:
    """The command line (:func:`parse_args`) and peer ``name``'s ``paths`` checked out from its
    ``--peer-repo`` (:func:`peer.checkout`), removed when the generator exits."""
    args = parse_args(description)
    peer = checkout(name, args.peer_repo, paths)
    remove_at_exit(peer.root)
    return args, peer


def command(script: str) -> str:
    """The command that regenerates a fixture, with the machine-specific clone path elided."""
    return f"python scripts/golden/{script} --peer-repo <clone>"


# ------------------------------------------------------------------------------ yacs stand-in
class CfgNode(dict):
    """The part of ``yacs.config.CfgNode`` the peers' configs use: attribute access, ``clone``,
    ``defrost``/``freeze``, ``merge_from_file`` and ``merge_from_list`` (string values are decoded
    with ``ast.literal_eval``, as yacs does)."""

    def __init__(self, init: dict[str, Any] | None = None) -> None:
        super().__init__()
        for key, value in (init or {}).items():
            self[key] = CfgNode(value) if isinstance(value, dict) else value

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def clone(self) -> CfgNode:
        return copy.deepcopy(self)

    def defrost(self) -> None:
        """Configs are never frozen here."""

    def freeze(self) -> None:
        """Configs are never frozen here."""

    def merge(self, other: dict[str, Any]) -> None:
        """Merge ``other`` (nested dicts) into this node; unknown keys are an error, as in yacs."""
        for key, value in other.items():
            if key not in self:
                raise KeyError(f"non-existent config key: {key}")
            if isinstance(self[key], CfgNode) and isinstance(value, dict):
                self[key].merge(value)
            else:
                self[key] = _decode(value)  # yacs decodes strings too: YAML reads 5e-4 as a string

    def merge_from_file(self, path: str | Path) -> None:
        self.merge(yaml.safe_load(Path(path).read_text()) or {})

    def merge_from_list(self, pairs: list[Any]) -> None:
        for dotted, raw in zip(pairs[0::2], pairs[1::2]):
            *parents, leaf = str(dotted).split(".")
            node = self
            for part in parents:
                node = node[part]
            if leaf not in node:
                raise KeyError(f"non-existent config key: {dotted}")
            node[leaf] = _decode(raw)


def _decode(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


# ------------------------------------------------------------------------------ observation
def caller_locals(depth: int = 2) -> dict[str, Any]:
    """The local variables of the frame ``depth`` levels up (1: the caller of the function that
    calls this). A spy passed to a peer's loop calls it to read what the loop computed."""
    return dict(sys._getframe(depth).f_locals)


def frame_locals(function: str) -> dict[str, Any]:
    """The local variables of the innermost running call of the peer's ``function`` (how many
    frames lie in between, ``nn.Module.__call__`` or PyTorch's wrapper of ``Optimizer.step``,
    depends on the PyTorch version)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_name != function:
        frame = frame.f_back
    if frame is None:
        raise RuntimeError(f"golden generator: no running {function}()")
    return dict(frame.f_locals)


def snapshot(values: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Detached copies of the tensors (and plain values) ``names`` among ``values``."""
    out: dict[str, Any] = {}
    for name in names:
        value = values[name]
        out[name] = value.detach().clone() if isinstance(value, torch.Tensor) else value
    return out


def stack_steps(steps: list[dict[str, Any]], skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Each recorded value (but ``skip``) stacked over the steps: (steps, ...)."""
    return {k: torch.stack([torch.as_tensor(s[k]) for s in steps]) for k in steps[0] if k not in skip}


# ------------------------------------------------------------------------------ peers' libraries
class Bar:
    """Stand-in for ``progress.bar.Bar`` (the attributes ABC's and CDMAD's loops touch)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.suffix, self.elapsed_td, self.eta_td = "", 0, 0

    def next(self) -> None:
        """One step done."""

    def finish(self) -> None:
        """The loop is done."""


class UnlabeledViews(Dataset):
    """((weak, strong, strong), unknown label -1, index): what ABC's and CDMAD's unlabeled
    loaders yield, from the rows of ``d[u_w]``, ``d[u_s]`` and ``d[u_s2]``."""

    def __init__(self, d: dict[str, torch.Tensor]) -> None:
        self.d = d

    def __len__(self) -> int:
        return len(self.d["u_w"])

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, ...], int, int]:
        return (self.d["u_w"][i], self.d["u_s"][i], self.d["u_s2"][i]), -1, i


def in_process_loaders() -> types.SimpleNamespace:
    """A stand-in for ``torch.utils.data`` whose ``DataLoader`` loads in the main process
    (the peers ask for worker processes)."""
    return types.SimpleNamespace(DataLoader=lambda *a, **kw: DataLoader(*a, **{**kw, "num_workers": 0}))


class USBArgs(argparse.Namespace):
    """USB's argument namespace; options the step never reads are None."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return None


#: the sklearn metrics USB's ``algorithmbase.py`` imports
USB_METRICS = ("accuracy_score", "balanced_accuracy_score", "precision_score", "recall_score", "f1_score",
               "confusion_matrix", "top_k_accuracy_score")


def stub_usb_hooks(**metrics: Any) -> None:
    """Register ``sklearn.metrics`` (``metrics`` given, the others stubs that fail) and USB's
    ``semilearn.core.hooks`` with its training hooks (checkpoints, logging, EMA, ...) as empty
    ``Hook`` subclasses: ``AlgorithmBase`` registers them, a ``train_step`` never calls them."""
    stub_module("sklearn.metrics", **{n: metrics.get(n, unused(n)) for n in USB_METRICS})
    hook = importlib.import_module("semilearn.core.hooks.hook")
    priority = importlib.import_module("semilearn.core.hooks.priority")
    training_hooks = {n: type(n, (hook.Hook,), {}) for n in (
        "CheckpointHook", "TimerHook", "LoggingHook", "DistSamplerSeedHook", "ParamUpdateHook",
        "EvaluationHook", "EMAHook", "WANDBHook", "AimHook")}
    stub_module("semilearn.core.hooks", Hook=hook.Hook, get_priority=priority.get_priority, **training_hooks)


# ------------------------------------------------------------------------------ legacy PyTorch
def _is_cuda(arg: Any) -> bool:
    if isinstance(arg, int) and not isinstance(arg, bool):  # a GPU index (DASO's cfg.GPU_ID)
        return True
    if isinstance(arg, torch.device):
        return arg.type == "cuda"
    return isinstance(arg, str) and arg.startswith("cuda")


@contextlib.contextmanager
def legacy_torch(cpu_for_cuda: bool = False, view_detach: bool = False,
                 loader_next: bool = False) -> Iterator[None]:
    """Run a peer's loop as its PyTorch did, on the CPU.

    ``cpu_for_cuda``: ``Tensor.cuda()`` and ``Tensor.to(<cuda device or GPU index>)`` leave the
    tensor where it is (ACR calls ``.cuda()`` unconditionally, DASO moves to ``cfg.GPU_ID``).
    ``view_detach``: ``detach_()`` on a view returns the detached values (PyTorch <= 1.4 allowed
    it; DASO's FixMatch calls it on a chunk of the logits and uses its result).
    ``loader_next``: ``DataLoader`` iterators get ``.next()`` (removed in PyTorch 1.13; ACR's loop
    calls it).
    """
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    saved: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, value: Any) -> None:
        saved.append((owner, name, owner.__dict__.get(name)))
        setattr(owner, name, value)

    if cpu_for_cuda:
        to = torch.Tensor.to

        def to_cpu(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            args = tuple(a for a in args if not _is_cuda(a))
            if _is_cuda(kwargs.get("device")):
                kwargs.pop("device")
            return to(self, *args, **kwargs) if args or kwargs else self

        patch(torch.Tensor, "to", to_cpu)
        patch(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    if view_detach:
        detach_ = torch.Tensor.detach_

        def detach_view(self: torch.Tensor) -> torch.Tensor:
            return self.detach() if self._is_view() else detach_(self)

        patch(torch.Tensor, "detach_", detach_view)
    if loader_next:
        patch(_BaseDataLoaderIter, "next", _BaseDataLoaderIter.__next__)
    try:
        yield
    finally:
        for owner, name, old in reversed(saved):
            if old is None:
                delattr(owner, name)
            else:
                setattr(owner, name, old)


# ------------------------------------------------------------------------------ output
def write_fixture(out: Path, name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """``out/name.safetensors`` (contiguous copies of ``tensors``) and ``out/name.json`` (``meta``);
    refuses a fixture over 100 KB, so the repository stays small."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    data = {k: v.detach().contiguous().clone() for k, v in sorted(tensors.items())}
    path = out / f"{name}.safetensors"
    save_file(data, str(path))
    path.chmod(0o644)
    meta_path = out / f"{name}.json"
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    size = path.stat().st_size + meta_path.stat().st_size
    if size > MAX_FIXTURE_BYTES:
        raise SystemExit(f"{name}: fixture is {size} bytes (> {MAX_FIXTURE_BYTES}); use fewer samples")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({size} bytes)")


def remove_at_exit(folder: Path) -> Path:
    """Delete a temporary folder (the peer's checkout, its run's outputs) when the generator exits."""
    atexit.register(shutil.rmtree, folder, True)
    return folder


def unused(name: str) -> Any:
    """A stand-in for a name a peer imports but the checked code never calls."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"golden generator: {name} is a stub and should not be called")

    fail.__name__ = name.rsplit(".", 1)[-1]
    return fail
