"""Files in shared folders: a symlink planted at a temporary name never redirects a write, and
what a run, an export and the caches write is readable by colleagues (0644 under umask 022)."""

from __future__ import annotations

import os
import stat
import types
from pathlib import Path

import pytest
from tiny import tiny_config

import ulfine.safefiles
from ulfine.apps.model_io import export_model
from ulfine.engine import evaluate_run, train
from ulfine.safefiles import atomic_write_text

LP = ["method=supervised", "finetune=lp", "data.augment=false", "head=linear"]


def test_a_link_planted_at_a_temporary_name_is_not_followed(tmp_path, monkeypatch):
    """The old predictable name and the very name the writer draws next both hold a planted link."""
    victim, target = tmp_path / "victim.txt", tmp_path / "shared" / "eval_test.json"
    victim.write_text("precious")
    target.parent.mkdir()
    os.symlink(victim, target.parent / f".{target.name}.tmp-{os.getpid()}")
    draws = iter(["0badcafe", "0badcafe", "feedf00d"])
    monkeypatch.setattr(ulfine.safefiles, "secrets", types.SimpleNamespace(token_hex=lambda n: next(draws)),
                        raising=False)
    os.symlink(victim, target.parent / f".{target.name}.tmp-{os.getpid()}-0badcafe")
    atomic_write_text(target, "{}")
    assert victim.read_text() == "precious"
    assert target.read_text() == "{}" and not target.is_symlink()


def test_ulfine_eval_in_a_shared_run_folder_does_not_follow_a_planted_link(lp_runs, tmp_path):
    run, victim = lp_runs[0], tmp_path / "victim.txt"
    victim.write_text("precious")
    planted = run / f".eval_test.json.tmp-{os.getpid()}"
    os.symlink(victim, planted)
    try:
        evaluate_run(run, "test")
    finally:
        planted.unlink()
    assert victim.read_text() == "precious"
    assert stat.S_ISREG((run / "eval_test.json").lstat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(folder: Path) -> dict[str, int]:
    """Permission bits of every file and folder under ``folder`` (itself included)."""
    found = {".": stat.S_IMODE(folder.stat().st_mode)}
    for path in folder.rglob("*"):
        found[str(path.relative_to(folder))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_run_export_and_cache_files_are_readable_by_others(umask_022, tmp_path):
    """Before: safetensors' writer and mkstemp made model files and caches 0600."""
    text_cache = tmp_path / "text-cache"
    run = train(tiny_config(tmp_path, *LP, "model.pretrained=micro", f"model.text_cache_dir={text_cache}",
                            "train.checkpoint_every_steps=1"))
    export_model(run, tmp_path / "model")
    for folder in (run, tmp_path / "model", tmp_path / "feature-cache", text_cache):
        modes = _modes(folder)
        assert len(modes) > 1, folder
        for name, mode in modes.items():
            want = 0o755 if (folder / name).is_dir() else 0o644
            assert mode == want, f"{folder / name}: {oct(mode)}"
