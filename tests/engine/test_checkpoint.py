"""Checkpoints on their own: safetensors + JSON state (no pickle), the swap that leaves one complete
checkpoint at every instant, a full disk, and the refusal of pickles in a run folder."""

from __future__ import annotations

import errno
import json
import pickle
import random

import numpy as np
import pytest
import torch

import ulfine.engine.checkpoint as ckpt
import ulfine.safefiles
from ulfine.engine.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from ulfine.errors import DataError, ResourceError, UnsafeFileError
from ulfine.safefiles import atomic_write_text, looks_like_pickle, refuse_pickles
from ulfine.statefiles import atomic_save_tensors, load_tree, save_tree


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not an Exception, so no handler catches it)."""


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.register_buffer("memory", torch.zeros(2, dtype=torch.long))


def _state(step: int) -> dict:
    return {"step": step, "history": [{"step": step, "overall_acc": 0.5}], "rng": {"torch": torch.get_rng_state()}}


def _save(run, step: int) -> None:
    model = Tiny()
    with torch.no_grad():
        model.w.fill_(float(step))
    save_checkpoint(run, model, _state(step), ema={"w": torch.full((3,), step + 0.5)})


def _loaded_step(run) -> tuple[int, float, str]:
    model = Tiny()
    state, ema, folder = load_checkpoint(run, model)
    w = float(model.w.detach()[0])
    assert float(ema["w"][0]) == state["step"] + 0.5 and w == state["step"]
    return state["step"], w, folder.name


def test_training_state_round_trips_without_pickle(tmp_path):
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([p], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    p.grad = torch.ones(4)
    opt.step()
    sched.step()
    random.seed(3)
    np.random.seed(4)
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
             "history": [{"step": 1, "ece": float("nan"), "group_acc": {"head": None}}], "__tensor__": "a key"}
    save_tree(state, tmp_path, "state")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["state.json", "state.safetensors"]
    json.loads((tmp_path / "state.json").read_text())  # plain JSON: structure and numbers only
    expected = (random.random(), np.random.rand(), torch.rand(1))
    back = load_tree(tmp_path, "state")
    random.setstate(back["rng"]["python"])
    np.random.set_state(back["rng"]["numpy"])
    torch.set_rng_state(back["rng"]["torch"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.ones(4))], lr=0.1)
    opt2.load_state_dict(back["optimizer"])
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(opt2.state_dict()["state"][0][k], v), k
    assert back["scheduler"] == sched.state_dict() and back["__tensor__"] == "a key"
    assert back["history"][0]["group_acc"] == {"head": None} and np.isnan(back["history"][0]["ece"])


def test_every_save_leaves_one_complete_checkpoint(tmp_path):
    with pytest.raises(DataError, match="holds no complete checkpoint"):
        load_checkpoint(tmp_path, Tiny())
    for step in (1, 2):
        _save(tmp_path, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == [
        "ema.safetensors", "manifest.json", "state.json", "state.safetensors", "weights.safetensors"]
    assert _loaded_step(tmp_path) == (2, 2.0, "checkpoint")


def test_a_kill_between_the_two_renames_keeps_the_new_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1)
    real, calls = ckpt._rename, []

    def rename_then_die(src, dst):
        real(src, dst)
        calls.append(dst.name)
        if dst.name == "checkpoint.old":  # checkpoint/ renamed away, checkpoint.new/ not yet in
            raise Killed

    monkeypatch.setattr(ckpt, "_rename", rename_then_die)
    with pytest.raises(Killed):
        _save(tmp_path, 2)
    monkeypatch.setattr(ckpt, "_rename", real)
    assert not (tmp_path / "checkpoint").exists()
    assert find_checkpoint(tmp_path).step == 2
    assert _loaded_step(tmp_path) == (2, 2.0, "checkpoint.new")  # the newest complete one
    _save(tmp_path, 3)  # the next save finishes the interrupted swap first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert _loaded_step(tmp_path) == (3, 3.0, "checkpoint")


def test_a_kill_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1)

    def die(*args):
        raise Killed

    monkeypatch.setattr(ckpt, "atomic_write_text", die)  # the manifest, written last, never lands
    with pytest.raises(Killed):
        _save(tmp_path, 2)
    assert (tmp_path / "checkpoint.new" / "weights.safetensors").is_file()  # everything but the manifest
    assert _loaded_step(tmp_path) == (1, 1.0, "checkpoint")
    # a file cut short is seen too: the manifest records every size
    monkeypatch.setattr(ckpt, "atomic_write_text", atomic_write_text)
    _save(tmp_path, 2)
    weights = tmp_path / "checkpoint" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4])
    assert find_checkpoint(tmp_path) is None


def test_a_full_disk_fails_cleanly_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1)
    real_fsync = ulfine.safefiles.os.fsync

    def no_space(fd):  # the data does not fit: the first flush to the disk fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ulfine.safefiles.os, "fsync", no_space)
    with pytest.raises(ResourceError) as exc:
        _save(tmp_path, 2)
    monkeypatch.setattr(ulfine.safefiles.os, "fsync", real_fsync)
    msg = str(exc.value)
    assert "\n" not in msg and "No space left on device" in msg
    assert "checkpoint/ (step 1) is intact" in msg and "resume=true" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no half folder, no temp file
    assert _loaded_step(tmp_path) == (1, 1.0, "checkpoint")


def test_an_interrupted_file_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "weights.safetensors"
    atomic_save_tensors({"a": torch.ones(2)}, path)
    monkeypatch.setattr(ulfine.safefiles.os, "replace", lambda *a: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        atomic_save_tensors({"a": torch.zeros(2)}, path)
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(path))["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]


class Payload:
    """Unpickling this writes a marker file: what a malicious state.pt would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_in_a_run_folder_are_refused_not_loaded(tmp_path):
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    _save(run, 1)
    refuse_pickles(run)  # what ulfine writes passes
    atomic_save_tensors({"x": torch.zeros(200)}, run / "weights.safetensors")
    (run / ".weights.safetensors.tmp-99").write_bytes(pickle.dumps(Payload(marker)))  # a killed write
    refuse_pickles(run)
    for name, data in (("checkpoint/state.pt", None), ("notes.dat", pickle.dumps(Payload(marker)))):
        path = run / name
        if data is None:
            torch.save({"x": Payload(marker)}, path)
        else:
            path.write_bytes(data)
        assert looks_like_pickle(path)
        with pytest.raises(UnsafeFileError) as exc:
            refuse_pickles(run)
        assert str(path) in str(exc.value) and "\n" not in str(exc.value)
        path.unlink()
    assert not marker.exists()
    # a safetensors header length of 0x380 bytes begins with the pickle marker 0x80 0x03: the data
    # formats ulfine writes are recognised by name, not sniffed
    (run / "a.safetensors").write_bytes((0x380).to_bytes(8, "little") + b"{" + b" " * 0x37F)
    assert not looks_like_pickle(run / "a.safetensors")
    (tmp_path / "x").write_bytes(b"\x80\x03.")  # the same bytes under a name ulfine does not write
    assert looks_like_pickle(tmp_path / "x")


def test_the_step_budget_is_computed_once_for_loop_schedule_and_resume():
    """``step_budget`` is the one computation: the schedule's length, where max_steps stops this
    invocation, and zero for a method that does not train."""
    from ulfine.config import TrainConfig
    from ulfine.engine.state import step_budget

    full = step_budget(TrainConfig(epochs=3, steps_per_epoch=10), True)
    assert (full.total, full.stop, full.stopped_early) == (30, 30, False)
    cut = step_budget(TrainConfig(epochs=3, steps_per_epoch=10, max_steps=7), True)
    assert (cut.total, cut.stop, cut.stopped_early) == (30, 7, True)
    assert step_budget(TrainConfig(epochs=3, steps_per_epoch=10), False).stop == 0
