"""Failures stop cleanly: a non-finite loss (stop or skip), running out of accelerator memory, and a
run that fails before its first checkpoint leaving no half run folder behind."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny_config, tiny_overrides

import ulfine.engine.reevaluate
import ulfine.engine.trainer
from ulfine.cli import main
from ulfine.engine import train
from ulfine.engine.checkpoint import find_checkpoint
from ulfine.errors import NumericalError

OOM = "CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total capacity)\nmore detail"


def _train_cli(capsys, out, *overrides) -> tuple[int, str]:
    code = main(["train", "synthetic_smoke", *tiny_overrides(out, *overrides)])
    return code, capsys.readouterr().err


def test_a_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, capsys):
    code, err = _train_cli(capsys, tmp_path, "method=fixmatch", "ssl.tau=0.0", "optim.lr=1e30",
                           "train.steps_per_epoch=4", "train.checkpoint_every_steps=1")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "non-finite loss at optimiser step 2 (" in err and "loss_u=nan" in err
    assert "last checkpoint (step 1)" in err and "train.on_nonfinite=skip" in err
    run = tmp_path / "run"
    assert find_checkpoint(run).step == 1  # the last good state, loadable
    weights = load_file(str(run / "checkpoint" / "weights.safetensors"))
    assert all(torch.isfinite(t.float()).all() for t in weights.values())
    assert not (run / "final_metrics.json").exists()


def test_on_nonfinite_skip_drops_the_step_and_counts_it(tmp_path, monkeypatch):
    """The skipped step changes nothing: weights and the method's buffers (ULFine's memories,
    updated in the forward) are as before it when the next step starts."""
    real, before = ulfine.engine.trainer.StepModule.forward, {}

    def snapshot(module):
        return {**{n: p.detach().clone() for n, p in module.method.named_parameters() if p.requires_grad},
                **{n: b.detach().clone() for n, b in module.method.named_buffers()}}

    def forward(self, batch):
        if batch.step == 1:
            before.update(snapshot(self))
            loss, out = real(self, batch)
            return loss * float("nan"), out
        if batch.step == 2:
            now = snapshot(self)
            assert all(torch.equal(now[k], before[k]) for k in before), "the skipped step left a trace"
        return real(self, batch)

    monkeypatch.setattr(ulfine.engine.trainer.StepModule, "forward", forward)
    run = train(tiny_config(tmp_path, "method=ulfine", "ssl.tau=0.1", "ulfine.mu_paf=0.5",
                            "train.steps_per_epoch=4", "train.on_nonfinite=skip"))
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["steps"] == 4 and final["nonfinite_skipped_steps"] == 1 and before
    assert "non-finite loss at optimiser step 2" in (run / "train.log").read_text()
    assert all(torch.isfinite(t.float()).all() for t in load_file(str(run / "weights.safetensors")).values())


def test_weights_that_overflow_are_never_checkpointed(tmp_path, monkeypatch):
    """A finite loss can still come with overflowing gradients: the weights go non-finite after the
    optimiser step, and the checkpoint that would save them is refused."""
    real = ulfine.engine.trainer.Trainer.optimizer_step

    def overflow(self):
        real(self)
        if self.state.step == 2:  # counted after this call: this is the 3rd step
            next(p for p in self.method.parameters() if p.requires_grad).data[0] = float("inf")

    monkeypatch.setattr(ulfine.engine.trainer.Trainer, "optimizer_step", overflow)
    with pytest.raises(NumericalError, match="not finite at step 3 .*checkpoint of step 2 is kept"):
        train(tiny_config(tmp_path, "method=supervised", "train.steps_per_epoch=4", "train.checkpoint_every_steps=1"))
    assert find_checkpoint(tmp_path / "run").step == 2


def test_out_of_memory_names_the_settings_to_change(tmp_path, capsys, monkeypatch):
    def oom(self, host):
        raise torch.OutOfMemoryError(OOM)

    monkeypatch.setattr(ulfine.engine.trainer.Trainer, "step", oom)
    code, err = _train_cli(capsys, tmp_path, "method=fixmatch")
    assert code == 2 and err.count("\n") == 1 and "Tried to allocate 20.00 GiB" in err
    for setting in ("train.batch_size (now 4)", "optim.grad_accum (now 1)", "train.precision=bf16",
                    "eval.batch_size (now 100)"):
        assert setting in err, setting
    assert not (tmp_path / "run").exists()  # failed before its first checkpoint: nothing left behind

    run = train(tiny_config(tmp_path / "zs", "method=zeroshot", "finetune=lp"))

    def eval_oom(*args, **kwargs):
        raise torch.OutOfMemoryError(OOM)

    monkeypatch.setattr(ulfine.engine.reevaluate, "evaluate_sets", eval_oom)
    assert main(["eval", str(run), "eval.batch_size=64"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval.batch_size (now 64)" in err


def test_a_failed_train_leaves_no_half_run_folder(tmp_path, capsys):
    missing = ["data.dataset=cifar10", f"data.root={tmp_path / 'no-data'}"]
    code, err = _train_cli(capsys, tmp_path, *missing)
    assert code == 2 and "cifar-10-batches-py" in err
    assert not (tmp_path / "run").exists()
    # a folder that was not empty before is not the run's to remove
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    code, err = _train_cli(capsys, tmp_path, *missing)
    assert code == 2 and (tmp_path / "run" / "notes.txt").read_text() == "mine"
