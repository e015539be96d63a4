"""Resume end to end: step-granular checkpoints, a kill between the two renames of a save, a full
disk, a finished run, a changed config, a folder without checkpoint, a planted pickle, and the
same seed giving the same weights."""

from __future__ import annotations

import errno
import json
import logging
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file
from tiny import assert_unlabeled_loss_active, initial_weights, moved, tiny_config, tiny_overrides

import ulfine.engine.checkpoint as ckpt
import ulfine.engine.trainer
import ulfine.safefiles
from ulfine.cli import main
from ulfine.engine import train
from ulfine.engine.checkpoint import find_checkpoint
from ulfine.errors import ConfigError, ResourceError

ARGS = ("method=fixmatch", "finetune=lft", "ssl.tau=0.0", "train.ema=0.5", "train.epochs=2",
        "train.checkpoint_every_steps=1")
WEIGHTS = ("weights.safetensors", "ema.safetensors")


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not an Exception, so no handler catches it)."""


def _spy_saves(monkeypatch) -> list[int]:
    steps: list[int] = []
    real = ulfine.engine.trainer.save_checkpoint

    def spy(run_dir, method, state, ema=None):
        steps.append(state["step"])
        return real(run_dir, method, state, ema)

    monkeypatch.setattr(ulfine.engine.trainer, "save_checkpoint", spy)
    return steps


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("reference")
    cfg = tiny_config(out, *ARGS)
    with pytest.MonkeyPatch.context() as mp:
        saves = _spy_saves(mp)
        run = train(cfg)
    assert saves == [1, 2, 3, 4]  # train.checkpoint_every_steps=1 (the epoch boundary at 2 saves once)
    assert moved(run, initial_weights(cfg)) > 1e-3
    assert_unlabeled_loss_active(run)
    return run


def _assert_same_weights(run, reference) -> None:
    for name in WEIGHTS:
        a, b = load_file(str(reference / name)), load_file(str(run / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def _metric_steps(run) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_checkpoints_follow_epochs_without_the_step_setting(tmp_path, monkeypatch):
    saves = _spy_saves(monkeypatch)
    train(tiny_config(tmp_path, "method=supervised", "finetune=lp", "train.epochs=2", "train.max_steps=3"))
    assert saves == [2, 3]  # the epoch boundary, then the stop point


def test_same_seed_same_machine_same_weights(tmp_path, reference):
    again = train(tiny_config(tmp_path, *ARGS))
    _assert_same_weights(again, reference)
    other, ref = (load_file(str(r / WEIGHTS[0])) for r in (train(tiny_config(tmp_path / "s1", *ARGS, "seed=1")),
                                                           reference))
    assert any(not torch.equal(other[k], ref[k]) for k in ref)  # the comparison above can fail


def test_a_kill_between_the_two_renames_resumes_exactly(tmp_path, monkeypatch, reference):
    real = ckpt._rename

    def rename_then_die(src, dst):
        real(src, dst)
        if dst.name == "checkpoint.old" and json.loads((src.parent / "checkpoint.new/manifest.json").read_text())["step"] == 3:
            raise Killed  # step 3's save: checkpoint/ renamed away, checkpoint.new/ not yet renamed in

    monkeypatch.setattr(ckpt, "_rename", rename_then_die)
    with pytest.raises(Killed):
        train(tiny_config(tmp_path, *ARGS))
    monkeypatch.setattr(ckpt, "_rename", real)
    run = tmp_path / "run"
    assert not (run / "checkpoint").exists() and find_checkpoint(run).step == 3
    train(tiny_config(tmp_path, *ARGS, "resume=true"))
    assert "resumed from checkpoint.new/ (step 3)" in (run / "train.log").read_text()
    _assert_same_weights(run, reference)
    assert _metric_steps(run) == _metric_steps(reference) == [2, 4]


def test_a_full_disk_stops_cleanly_and_the_previous_checkpoint_resumes(tmp_path, monkeypatch, reference):
    real_fsync, run = ulfine.safefiles.os.fsync, tmp_path / "run"

    def fills_up(fd):
        if (run / "checkpoint").exists() and (run / "checkpoint.new").exists():
            raise OSError(errno.ENOSPC, "No space left on device")  # writing the second checkpoint
        return real_fsync(fd)

    monkeypatch.setattr(ulfine.safefiles.os, "fsync", fills_up)
    with pytest.raises(ResourceError, match=r"checkpoint of step 2 .*No space left on device.*checkpoint/ \(step 1\) is intact"):
        train(tiny_config(tmp_path, *ARGS))
    monkeypatch.setattr(ulfine.safefiles.os, "fsync", real_fsync)
    assert find_checkpoint(run).step == 1 and not (run / "checkpoint.new").exists()
    train(tiny_config(tmp_path, *ARGS, "resume=true"))
    _assert_same_weights(run, reference)


def test_resuming_a_finished_run_does_nothing(tmp_path, caplog, reference):
    before = {p.name: p.read_bytes() for p in reference.iterdir() if p.is_file()}
    with caplog.at_level(logging.WARNING, logger="ulfine"):
        assert train(tiny_config(reference.parent, *ARGS, "resume=true")) == reference
    assert "already finished (4 steps, final_metrics.json): nothing to do" in caplog.text
    after = {p.name: p.read_bytes() for p in reference.iterdir() if p.is_file()}
    assert after == before  # metrics.jsonl in particular: no second final evaluation; config.yaml as saved


def test_resume_refuses_a_changed_config_naming_the_keys(reference):
    with pytest.raises(ConfigError) as exc:
        train(tiny_config(reference.parent, *ARGS, "resume=true", "optim.lr=0.1", "seed=3"))
    assert "optim.lr, seed" in str(exc.value) and "\n" not in str(exc.value)


def test_resume_without_a_checkpoint_says_so_in_one_line(tmp_path, capsys):
    cli = ["train", "synthetic_smoke", *tiny_overrides(tmp_path, "resume=true")]
    assert main(cli) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no run (config.yaml missing)" in err
    (tmp_path / "run").mkdir()  # a run killed before its first save: config.yaml, no checkpoint
    assert main(["train", "synthetic_smoke", *tiny_overrides(tmp_path, "train.max_steps=1")]) == 0
    for name in ("checkpoint", "final_metrics.json"):
        path = tmp_path / "run" / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    assert main(cli) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no complete checkpoint" in err and "without resume=true" in err


def test_a_planted_pickle_is_refused_by_resume_and_eval(tmp_path, capsys):
    marker = tmp_path / "marker"
    cli = ["train", "synthetic_smoke", *tiny_overrides(tmp_path, "train.max_steps=1")]
    assert main(cli) == 0
    run = tmp_path / "run"
    # a pickle whose loading would create the marker file, where ulfine < 0.2 kept its state
    payload = f"cbuiltins\nopen\n(V{marker}\nVw\ntR.".encode()
    (run / "checkpoint" / "state.pt").write_bytes(b"\x80\x02" + payload)
    capsys.readouterr()
    for argv in (cli + ["resume=true"], ["eval", str(run)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "state.pt is a pickle file" in err, err
        assert not marker.exists()
    pickle.loads(b"\x80\x02" + payload.replace(str(marker).encode(), str(tmp_path / "proof").encode()))
    assert (tmp_path / "proof").exists()  # the payload is live: loading it does write a file


def test_a_grid_rerun_continues_a_killed_run_exactly(tmp_path, monkeypatch, reference):
    """A benchmark or study killed mid-run (a session's end) is re-run through ``run_method``: the
    unfinished run is continued from its checkpoint (not refused, not restarted) and ends with the
    uninterrupted run's weights; a finished or never-checkpointed folder gets no resume."""
    from ulfine.apps.compare import MethodSpec, continue_unfinished, run_dir_for, run_method

    spec = MethodSpec("t", tuple(o for o in tiny_overrides(tmp_path, *ARGS) if not o.startswith("output_dir=")))
    run = run_dir_for(spec, None, 0, tmp_path / "grid")  # no preset: the tiny config alone
    assert continue_unfinished(run) == []  # nothing there yet
    real = ulfine.engine.trainer.save_checkpoint

    def save_then_die(run_dir, method, state, ema=None):
        real(run_dir, method, state, ema)
        if state["step"] == 2:
            raise Killed

    monkeypatch.setattr(ulfine.engine.trainer, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        run_method(spec, None, 0, tmp_path / "grid", report=False)
    monkeypatch.setattr(ulfine.engine.trainer, "save_checkpoint", real)
    assert continue_unfinished(run) == ["resume=true"]
    run_method(spec, None, 0, tmp_path / "grid", report=False)
    assert "resumed from checkpoint/ (step 2)" in (run / "train.log").read_text()
    _assert_same_weights(run, reference)
    assert continue_unfinished(run) == []  # finished: a re-run skips it, never resumes it
