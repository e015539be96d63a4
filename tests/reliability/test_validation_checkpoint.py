"""A checkpoint is checked before it is trusted: a damaged one is called damaged (never "missing",
which sent users round in a loop), a step beyond the budget or different from the manifest's is
refused, and tampered state (types, optimiser shapes, RNG) is one line naming the part and what
to do, never a traceback and never a run that "finishes" with exit 0."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from tiny import tiny_config, tiny_overrides

from ulfine.cli import main
from ulfine.engine import train

#: SGD with momentum (per-parameter optimiser state), stopped after its first of 2 steps
ARGS = ("method=supervised", "finetune=lft", "adaptformer.bottleneck=4")


_BASE: list[Path] = []  # where the stopped run's tiny config points its caches


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped by train.max_steps=1 with its step-1 checkpoint (resumable to step 2)."""
    _BASE[:] = [tmp_path_factory.mktemp("stopped")]
    return train(tiny_config(_BASE[0], *ARGS, "train.max_steps=1"))


@pytest.fixture()
def run(stopped: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(stopped, copy)
    return copy


def _resume(run: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    """``ulfine train ... resume=true`` with the config the run was started with (its cache.dir)."""
    code = main(["train", *tiny_overrides(_BASE[0], *ARGS, "resume=true", f"output_dir={run}", *extra)])
    return code, capsys.readouterr().err.strip()


def _refused(code: int, err: str, *expected: str) -> None:
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert all(e in err for e in expected), err


def _resize_manifest(folder: Path, **changes: Any) -> None:
    """The manifest as a careful tamperer leaves it: every size right (and ``changes`` applied)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = {name: (folder / name).stat().st_size for name in manifest["files"]}
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _edit_state(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    state = json.loads((folder / "state.json").read_text())
    edit(state)
    (folder / "state.json").write_text(json.dumps(state))
    _resize_manifest(folder)


def test_a_damaged_checkpoint_is_called_damaged_not_missing(run, capsys):
    (run / "checkpoint" / "manifest.json").write_text("{ torn")
    code, err = _resume(run, capsys)
    _refused(code, err, "damaged", "manifest.json", "delete")
    assert "before its first save" not in err


def test_a_file_cut_short_is_named(run, capsys):
    path = run / "checkpoint" / "state.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    _refused(*_resume(run, capsys), "state.safetensors", "damaged")


def test_a_step_beyond_the_budget_is_refused_not_finished(run, capsys):
    def far(state: dict[str, Any]) -> None:
        state["step"] = 10**12
    _edit_state(run / "checkpoint", far)
    _resize_manifest(run / "checkpoint", step=10**12)
    code, err = _resume(run, capsys)
    _refused(code, err, "step", "1000000000000", "2 steps")


def test_the_manifest_step_must_equal_the_state_step(run, capsys):
    _resize_manifest(run / "checkpoint", step=2)
    _refused(*_resume(run, capsys), "step", "manifest.json says 2")


TAMPERING: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("step-text", lambda s: s.update(step="one"), "step"),
    ("history-text", lambda s: s.update(history="none"), "history"),
    ("seconds-nan", lambda s: s.update(train_seconds=float("nan")), "train_seconds"),
    ("no-param-groups", lambda s: s["optimizer"].pop("param_groups"), "optimizer.param_groups"),
    ("extra-param-group", lambda s: s["optimizer"]["param_groups"].append(s["optimizer"]["param_groups"][0]),
     "optimizer.param_groups"),
    ("rng-number", lambda s: s["rng"].update(torch=5), "rng"),
    ("no-rng", lambda s: s.pop("rng"), "rng"),
    ("scheduler-list", lambda s: s.update(scheduler=[1]), "scheduler"),
]


@pytest.mark.parametrize(("name", "edit", "named"), TAMPERING, ids=[t[0] for t in TAMPERING])
def test_tampered_state_is_one_line_naming_the_part(run, capsys, name, edit, named):
    _edit_state(run / "checkpoint", edit)
    _refused(*_resume(run, capsys), named, "state.json")


def test_an_optimizer_tensor_of_another_shape_is_refused(run, capsys):
    folder = run / "checkpoint"
    state = json.loads((folder / "state.json").read_text())
    entries = state["optimizer"]["state"]["__items__"]
    key = entries[0][1]["momentum_buffer"]["__tensor__"]
    tensors = load_file(str(folder / "state.safetensors"))
    tensors[key] = torch.zeros(3)
    save_file(tensors, str(folder / "state.safetensors"))
    _resize_manifest(folder)
    _refused(*_resume(run, capsys), "momentum_buffer", "shape")


def test_weights_lacking_a_tensor_are_refused(run, capsys):
    folder = run / "checkpoint"
    tensors = load_file(str(folder / "weights.safetensors"))
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(folder / "weights.safetensors"))
    _resize_manifest(folder)
    _refused(*_resume(run, capsys), "weights.safetensors", "lacks")


def test_an_intact_checkpoint_still_resumes(run, capsys):
    code, err = _resume(run, capsys)
    assert code == 0, err
    assert json.loads((run / "final_metrics.json").read_text())["steps"] == 2
