"""Run folders are never shared or taken from the user: runs started together get folders of
their own, a fresh run refuses a folder that is not an ulfine run (and the root, the home folder,
a file, a dangling link) before writing anything, and a failed run removes only what it wrote."""

from __future__ import annotations

import itertools
import os
import threading
import time
import types
from pathlib import Path

import pytest
import yaml
from tiny import tiny_config, tiny_overrides

import ulfine.engine.run
import ulfine.engine.rundir
from ulfine.cli import main
from ulfine.engine import train
from ulfine.engine.rundir import prepare_run_dir
from ulfine.safefiles import remove_temporaries

RUNS = 8


class OneProcess:
    """The part of a Runtime that prepare_run_dir uses, for one process (safe to share by threads)."""

    is_main = True

    @staticmethod
    def broadcast_object(obj):
        return obj

    @staticmethod
    def barrier() -> None:
        return None


def _prepare_together(configs) -> list[Path]:
    """prepare_run_dir for every config in its own thread, all released at the same instant."""
    start, folders, errors = threading.Barrier(len(configs)), [None] * len(configs), []

    def one(i, cfg):
        start.wait()
        try:
            folders[i] = prepare_run_dir(cfg, OneProcess())[1].path
        except Exception as exc:  # collected: an exception in a thread would not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i, cfg)) for i, cfg in enumerate(configs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return folders


@pytest.fixture
def same_second(monkeypatch, tmp_path):
    """Every run starts in the same second, in a working folder of the test's own."""
    frozen = time.localtime(1_800_000_000)
    monkeypatch.setattr(time, "localtime", lambda *a: frozen)
    monkeypatch.chdir(tmp_path)


def test_runs_started_together_get_folders_of_their_own(same_second, tmp_path):
    """`ulfine train P seed=1 &` / `seed=2 &` ... without output_dir: one folder each, never shared."""
    configs = [tiny_config(tmp_path, "output_dir=null", f"seed={seed}") for seed in range(RUNS)]
    folders = _prepare_together(configs)
    assert len(set(folders)) == RUNS
    for seed, folder in enumerate(folders):
        assert folder.parent == Path("runs") and f"-s{seed}-" in folder.name
        assert yaml.safe_load((folder / "config.yaml").read_text())["seed"] == seed


def test_a_name_taken_already_is_never_shared(same_second, tmp_path, monkeypatch):
    """Same seed, same second, and the random suffix drawn alike: the folder is made
    exclusively, so a taken name makes the run draw another instead of joining it."""
    draws, lock = itertools.chain(["0000"] * (2 * RUNS), (f"{i:04x}" for i in itertools.count(1))), threading.Lock()

    def token_hex(n):
        with lock:
            return next(draws)

    monkeypatch.setattr(ulfine.engine.rundir, "secrets", types.SimpleNamespace(token_hex=token_hex), raising=False)
    folders = _prepare_together([tiny_config(tmp_path, "output_dir=null", "seed=1") for _ in range(RUNS)])
    assert len(set(folders)) == RUNS
    assert sorted(p.name for p in Path("runs").iterdir()) == sorted(p.name for p in folders)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _train_cli(capsys, tmp_path, *overrides) -> tuple[int, str]:
    code = main(["train", "synthetic_smoke", *tiny_overrides(tmp_path, "method=supervised", *overrides)])
    return code, capsys.readouterr().err


def test_a_fresh_run_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    """Before: config.yaml was replaced (even when the run then failed), train.log appended and
    ``.*.tmp-*`` files deleted."""
    mine = tmp_path / "experiment"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own notes\n")
    (mine / "train.log").write_text("my log\n")
    (mine / ".draft.tmp-1").write_text("a draft")
    before = _snapshot(mine)
    code, err = _train_cli(capsys, tmp_path, f"output_dir={mine}")
    assert code == 2 and err.count("\n") == 1 and str(mine) in err and "not empty" in err
    assert _snapshot(mine) == before


@pytest.mark.parametrize("kind", ["root", "home", "file", "dangling link", "through a file"])
def test_output_dirs_that_cannot_be_run_folders_are_one_line_errors(kind, tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "a_file").write_text("mine")
    os.symlink(tmp_path / "nowhere", tmp_path / "link")
    target = {"root": Path("/"), "home": home, "file": tmp_path / "a_file", "dangling link": tmp_path / "link",
              "through a file": tmp_path / "a_file" / "run"}[kind]
    code, err = _train_cli(capsys, tmp_path, f"output_dir={target}")
    assert code == 2 and err.startswith("error: output_dir=") and err.count("\n") == 1, err
    assert sorted(p.name for p in home.iterdir()) == [] and (tmp_path / "a_file").read_text() == "mine"
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("existed", [False, True], ids=["new folder", "empty folder"])
def test_a_failed_run_removes_only_what_it_wrote(existed, tmp_path, monkeypatch):
    """A file someone put into the folder meanwhile stays; an empty folder the user made stays."""
    run = tmp_path / "run"
    if existed:
        run.mkdir()

    def fails(cfg, rt, run_dir, report=True):
        (run_dir / "colleague.txt").write_text("not the run's")
        (run_dir / "split.json").write_text("{}")  # what a run writes goes
        raise RuntimeError("boom")

    monkeypatch.setattr(ulfine.engine.run, "build_trainer", fails)
    with pytest.raises(RuntimeError, match="boom"):
        train(tiny_config(tmp_path, "method=supervised"))
    assert sorted(p.name for p in run.iterdir()) == ["colleague.txt"]
    (run / "colleague.txt").unlink()
    if not existed:
        run.rmdir()  # start again from no folder
    monkeypatch.setattr(ulfine.engine.run, "build_trainer", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError):
        train(tiny_config(tmp_path, "method=supervised"))
    assert run.is_dir() == existed  # the user's empty folder is kept; one the run made is not


def test_only_ulfine_temporaries_are_removed(tmp_path):
    ours, legacy = tmp_path / ".config.yaml.tmp-12-0123abcd", tmp_path / ".weights.safetensors.tmp-99"
    theirs, link = tmp_path / ".notes.tmp-backup", tmp_path / ".split.json.tmp-7-89abcdef"
    for path in (ours, legacy, theirs, tmp_path / "victim"):
        path.write_text("x")
    os.symlink(tmp_path / "victim", link)
    assert remove_temporaries(tmp_path) == 2
    assert not ours.exists() and not legacy.exists()
    assert theirs.read_text() == "x" and link.is_symlink() and (tmp_path / "victim").read_text() == "x"
