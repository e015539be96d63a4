"""`ulfine export` replaces a model folder whole or not at all, and never writes over a folder it
did not write: a kill while re-exporting (while writing, at the swap, between the two renames)
leaves the old model folder intact and loadable; what a killed export left is tidied next time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ulfine
import ulfine.apps.model_io
import ulfine.safefiles
from ulfine.apps.model_io import export_model
from ulfine.cli import main


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no ``except Exception`` handles it."""


def _kill(*args, **kwargs):
    raise Killed


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _dead_pid() -> int:
    """The id of a process that has exited (its leftovers belong to nobody)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def model_a(lp_runs: tuple[Path, Path], tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """Run A exported, and its files' bytes."""
    out = tmp_path / "models" / "model"
    export_model(lp_runs[0], out)
    return out, _files(out)


@pytest.mark.parametrize("where", ["while writing", "at the swap", "between the renames"])
def test_a_kill_during_a_re_export_leaves_the_old_model_folder_whole(where, model_a, lp_runs, monkeypatch):
    """Run B exported over run A's model folder, killed: A's folder is there, byte for byte."""
    out, before = model_a
    if where == "while writing":  # the card is written last: the tensors of B would be in place already
        monkeypatch.setattr(ulfine.apps.model_io, "model_card", _kill)
    elif where == "at the swap":
        monkeypatch.setattr(ulfine.safefiles, "_exchange", _kill, raising=False)
    else:  # a system without an atomic exchange: rename A aside, then B in (killed here)
        renames, real = [], getattr(ulfine.safefiles, "_rename", None)

        def second_rename_killed(src, dst):
            renames.append((src, dst))
            if len(renames) == 2:
                raise Killed
            real(src, dst)

        monkeypatch.setattr(ulfine.safefiles, "_exchange", lambda a, b: False, raising=False)
        monkeypatch.setattr(ulfine.safefiles, "_rename", second_rename_killed, raising=False)
    with pytest.raises(Killed):
        export_model(lp_runs[1], out)
    assert _files(out) == before
    assert [p.name for p in out.parent.iterdir()] == ["model"]  # nothing half-written left beside it
    classifier = ulfine.load(out, device="cpu")
    assert len(classifier.predict([np.zeros((8, 8, 3), np.uint8)])) == 1


def test_what_a_killed_export_left_is_tidied_next_time(model_a, lp_runs):
    """A SIGKILL runs no handler: between the two renames it leaves the old folder set aside and
    the new one staged; the next export (or :func:`recover_folder`) puts the old one back and
    removes the staging folder of the dead process."""
    out, before = model_a
    dead = _dead_pid()
    out.rename(out.parent / f".model.ulfine-old-{dead}-0123abcd")
    staged = out.parent / f".model.ulfine-new-{dead}-89abcdef"
    staged.mkdir()
    (staged / "model.safetensors").write_bytes(b"half")
    assert ulfine.safefiles.recover_folder(out) == [staged]
    assert _files(out) == before and [p.name for p in out.parent.iterdir()] == ["model"]
    out.rename(out.parent / f".model.ulfine-old-{dead}-0123abcd")
    staged.mkdir()
    result = export_model(lp_runs[1], out)
    assert result.model_dir == out and [p.name for p in out.parent.iterdir()] == ["model"]
    assert _files(out)["model.safetensors"] != before["model.safetensors"]


@pytest.mark.parametrize("case", ["a folder of the user's", "a model folder holding notes", "a file"])
def test_export_refuses_an_out_it_did_not_write(case, lp_runs, tmp_path, capsys):
    """Before: `ulfine export RUN --out DIR` replaced DIR's own README.md and config.json."""
    out = tmp_path / "out"
    if case == "a file":
        out.write_text("mine")
    elif case == "a folder of the user's":
        out.mkdir()
        (out / "README.md").write_text("my readme")
        (out / "config.json").write_text('{"mine": true}')
    else:
        export_model(lp_runs[0], out)
        (out / "notes.md").write_text("my notes")
    before = out.read_bytes() if out.is_file() else _files(out)
    code = main(["export", str(lp_runs[1]), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: --out {out} "), err
    assert (out.read_bytes() if out.is_file() else _files(out)) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_empty_out_folder_is_used(lp_runs, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    export_model(lp_runs[0], out)
    assert {"model.safetensors", "config.json", "README.md"} <= set(_files(out))
