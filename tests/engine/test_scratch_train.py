"""The scratch methods on the scratch WRN-28-2 in the engine: interrupt + resume equals an
uninterrupted run (unlabeled loss active, weights shown to move), and a scratch preset trains end
to end from the command line on CIFAR files written here. Gradient accumulation and two
processes are checked for ``acr`` beside the CLIP methods (test_train.py, test_distributed.py):
BatchNorm statistics depend on the micro-batch, so those equalities are shown on the LayerNorm
micro ViT (docs/engine.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import small_test_set  # noqa: F401  (autouse fixture: 40 test images)
from tiny import tiny_config

from ulfine.cli import main
from ulfine.engine import train
from ulfine.engine.assemble import assemble_run
from ulfine.engine.checkpoint import weight_state
from ulfine.engine.runtime import make_runtime

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from datafakes import write_cifar10

# at 16 px (the WRN is fully convolutional) a step costs a quarter of its 32 px compute
SCRATCH = ("model.arch=wrn-28-2", "model.image_size=16", "finetune=fft", "head=linear")


def _final(run_dir: Path) -> dict:
    return json.loads((run_dir / "final_metrics.json").read_text())


def initial_weights(cfg) -> dict[str, torch.Tensor]:
    """The method's weights as the run starts (same seed, same assembly)."""
    return weight_state(assemble_run(cfg, make_runtime("cpu", "fp32")).method)


@pytest.mark.parametrize("method", [
    pytest.param("supervised", marks=pytest.mark.slow),
    pytest.param("fixmatch", marks=pytest.mark.slow),
    pytest.param("fixmatch_la", marks=pytest.mark.slow),
    "acr",  # the one with its own state: in the fast suite
])
def test_scratch_resume_equals_uninterrupted(tmp_path, method):
    # ssl.tau=0: every pseudo-label is used; acr estimates from epoch 0, so its tau moves at the
    # end of each 2-step epoch and the interruption (step 3) falls inside an estimating epoch
    args = (*SCRATCH, f"method={method}", "ssl.tau=0.0", "train.epochs=2", "train.ema=0.5",
            "eval.every_epochs=2", "acr.estimate_from_epoch=0", "acr.ema_u=0.5")
    full = train(tiny_config(tmp_path / "full", *args))
    train(tiny_config(tmp_path / "part", *args, "train.max_steps=3"))
    resumed = train(tiny_config(tmp_path / "part", *args, "resume=true"))
    for name in ("weights.safetensors", "ema.safetensors"):
        wa, wb = load_file(full / name), load_file(resumed / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)
    assert _final(full)["overall_acc"] == _final(resumed)["overall_acc"]
    final, init = load_file(full / "weights.safetensors"), initial_weights(tiny_config(tmp_path / "i", *args))
    assert not torch.equal(final["backbone.visual.stem.weight"], init["backbone.visual.stem.weight"])
    assert not torch.equal(final["backbone.visual.head_act.0.running_mean"],
                           init["backbone.visual.head_act.0.running_mean"])  # BN statistics moved
    if method == "acr":
        assert final["tau"].item() != 2.0 and not torch.equal(final["u_estimate"], init["u_estimate"])
        assert _final(full)["method_diagnostics"]["tau"] == pytest.approx(final["tau"].item())
    if method != "supervised":
        assert _final(full)["images_seen"]["unlabeled"] == 16


def test_scratch_preset_trains_acr_from_the_command_line(tmp_path, capsys):
    write_cifar10(tmp_path / "cifar", per_batch=40)  # real-format CIFAR-10: 200 images, 20 a class
    out = tmp_path / "run"
    code = main(["train", "cifar10_n1500_m3000_g100_consistent_scratch", "method=acr",
                 f"data.root={tmp_path / 'cifar'}", "data.num_labeled_head=8", "data.num_unlabeled_head=8",
                 "data.imbalance_labeled=4", "data.imbalance_unlabeled=4", "data.num_workers=0",
                 "train.batch_size=4", "train.device=cpu", "train.progress=false", f"output_dir={out}",
                 f"cache.dir={tmp_path / 'cache'}", "--budget", "0.000008"])
    assert code == 0, capsys.readouterr().err
    m = _final(out)
    # the preset's 500 x 500 steps cut to 8e-6 of them: 1 epoch of 2 steps, in the saved config
    assert m["steps"] == 2 and m["images_seen"] == {"labeled": 8, "unlabeled": 8}
    saved = (out / "config.yaml").read_text()
    assert "arch: wrn-28-2" in saved and "epochs: 1\n" in saved and "steps_per_epoch: 2\n" in saved
    assert "nesterov: true" in saved and "schedule: cosine_7_16" in saved and "ema: 0.999" in saved
    assert m["weights"] == "ema" and m["method_diagnostics"]["tau"] == 2.0  # no estimate before epoch 6
    assert len(m["per_class_acc"]) == 10


def test_batchnorm_backbone_says_accumulation_changes_the_model(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="ulfine.engine"):
        assemble_run(tiny_config(tmp_path / "a", *SCRATCH, "method=fixmatch"), make_runtime("cpu", "fp32"))
        assert "uses BatchNorm" not in caplog.text
        assemble_run(tiny_config(tmp_path / "b", *SCRATCH, "method=fixmatch", "optim.grad_accum=2"),
                     make_runtime("cpu", "fp32"))
    assert "uses BatchNorm: its statistics come from each process's micro-batch" in caplog.text
