"""End-to-end runs of the engine on the tiny world (micro ViT, synthetic10, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny import assert_unlabeled_loss_active, initial_weights, moved, tiny_config, tiny_overrides

import ulfine.engine.assemble
from ulfine.data import UNKNOWN_LABEL, ImageSet
from ulfine.engine import evaluate_run, load_run, train
from ulfine.engine.checkpoint import load_weights
from ulfine.engine.evaluation import build_eval_sets, evaluate_sets
from ulfine.engine.runtime import make_runtime
from ulfine.errors import DataError
from ulfine.methods import METHODS, Method, StepOutput

FINAL_KEYS = {
    "overall_acc", "balanced_acc", "group_acc", "group_rule", "per_class_acc", "ece", "pseudo_labels",
    "train_seconds", "trainable_params", "last_k_mean", "method_diagnostics", "images_seen", "steps",
}
TRAINING = [m for m in METHODS.names() if METHODS.get(m).trains]


@pytest.fixture(autouse=True)
def small_test_set(monkeypatch):
    """Keep 4 test images per class (40) so each tiny run evaluates quickly."""
    real = ulfine.data.build_ssl_data

    def build(cfg, seed):
        data = real(cfg, seed)
        labels = np.asarray(data.test.labels)
        keep = np.concatenate([np.flatnonzero(labels == c)[:4] for c in range(len(data.class_names))])
        data.test = data.test.subset(np.sort(keep))
        return data

    monkeypatch.setattr(ulfine.engine.assemble, "build_ssl_data", build)


def _final(run_dir):
    return json.loads((run_dir / "final_metrics.json").read_text())


@pytest.mark.parametrize("finetune", ["lp", "lft", "fft"])
@pytest.mark.parametrize("method", TRAINING)
def test_every_method_and_finetune_trains(tmp_path, method, finetune):
    cfg = tiny_config(tmp_path, f"method={method}", f"finetune={finetune}")
    init = initial_weights(cfg)
    run = train(cfg)
    m = _final(run)
    assert FINAL_KEYS <= set(m)
    assert m["steps"] == 2
    assert m["images_seen"]["labeled"] == 8
    assert m["images_seen"]["unlabeled"] == (8 if METHODS.get(method).uses_unlabeled else 0)
    assert len(m["per_class_acc"]) == 10 and m["num_images"] == 40
    assert set(m["group_acc"]) == {"head", "medium", "tail"}
    assert m["pseudo_labels"]["num_images"] == 16  # eval.pseudo_label_max
    assert m["trainable_params"] > 0
    cost = m["cost"]  # images of optimiser steps per second of optimiser steps; no GPU here
    assert cost["device"] == "cpu" and cost["peak_memory_mib"] is None
    # images / rate gives back the training time (train_seconds is rounded to the millisecond)
    images = m["images_seen"]["labeled"] + m["images_seen"]["unlabeled"]
    assert images / cost["train_images_per_s"] == pytest.approx(m["train_seconds"], abs=6e-4)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["overall_acc"] == m["overall_acc"]
    for name in ("config.yaml", "split.json", "weights.safetensors", "checkpoint/state.json",
                 "checkpoint/state.safetensors", "checkpoint/manifest.json"):
        assert (run / name).is_file(), name
    # the trainable weights moved away from their initialisation
    assert moved(run, init) > 1e-4


def test_zeroshot_evaluates_without_training_and_reloads(tmp_path):
    run = train(tiny_config(tmp_path, "method=zeroshot", "finetune=lp"))
    m = _final(run)
    assert m["steps"] == 0 and m["trainable_params"] == 0
    again = evaluate_run(run, "test")
    assert again["overall_acc"] == m["overall_acc"] and again["per_class_acc"] == m["per_class_acc"]


def test_feature_cache_mode_matches_image_mode(tmp_path):
    """LP without augmentation trains on cached features: same result as on images."""
    common = ["method=supervised", "finetune=lp", "data.augment=false", "head=linear"]
    cfg = tiny_config(tmp_path / "f", *common)
    init = initial_weights(cfg)
    ra = train(cfg)
    rb = train(tiny_config(tmp_path / "i", *common, "cache.features=false"))
    assert moved(ra, init) > 100 * 1e-5  # far beyond the tolerance below: the comparison means something
    assert any((tmp_path / "f" / "feature-cache").rglob("*")), "no feature cache written"
    assert not (tmp_path / "i" / "feature-cache").exists()
    wa, wb = load_file(ra / "weights.safetensors"), load_file(rb / "weights.safetensors")
    for k in wa:  # same labeled samples in the same order: same head up to float noise
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    assert _final(ra)["overall_acc"] == pytest.approx(_final(rb)["overall_acc"], abs=0.011)


def test_cached_diagnostic_features_follow_the_seeded_subset(tmp_path):
    """Regression: the unlabeled diagnostic subset depends on the seed even when the split does
    not (selection=first); its cached features must not be reused for another seed's subset."""
    common = ["method=zeroshot", "finetune=lp", "model.pretrained=micro", "data.selection=first",
              f"cache.dir={tmp_path / 'shared-cache'}"]
    train(tiny_config(tmp_path / "s0", *common, "seed=0"))
    cached = _final(train(tiny_config(tmp_path / "s1", *common, "seed=1")))
    fresh = _final(train(tiny_config(tmp_path / "s1i", *common, "seed=1", "cache.features=false")))
    assert cached["pseudo_labels"]["confident_counts"] == fresh["pseudo_labels"]["confident_counts"]
    assert cached["pseudo_labels"]["accuracy"] == pytest.approx(fresh["pseudo_labels"]["accuracy"])


def test_feature_cache_notices_changed_pixels(tmp_path, monkeypatch):
    """Regression: the cache key named the dataset and the rows, not the pixels, so re-generated
    or edited images (a new micro world, an edited image folder) were served stale features."""
    common = ["method=zeroshot", "finetune=lp", "model.pretrained=micro",
              f"cache.dir={tmp_path / 'shared-cache'}"]
    before = _final(train(tiny_config(tmp_path / "a", *common)))
    real = ulfine.engine.assemble.build_ssl_data

    def inverted(cfg, seed):  # the same dataset name, split and indices; other pixels
        data = real(cfg, seed)
        for role in ("test", "unlabeled"):
            s = getattr(data, role)
            setattr(data, role, ImageSet(255 - np.asarray(s.images), s.labels, s.image_size))
        return data

    monkeypatch.setattr(ulfine.engine.assemble, "build_ssl_data", inverted)
    cached = _final(train(tiny_config(tmp_path / "b", *common)))
    fresh = _final(train(tiny_config(tmp_path / "c", *common, "cache.features=false")))
    assert cached["pseudo_labels"]["confident_counts"] != before["pseudo_labels"]["confident_counts"]
    assert cached["pseudo_labels"]["confident_counts"] == fresh["pseudo_labels"]["confident_counts"]
    assert cached["per_class_acc"] == fresh["per_class_acc"]


def _relabel(monkeypatch, label: int) -> None:
    """Every unlabeled image's ground truth becomes ``label`` (one class, or -1 = unknown), with
    the per-class counts recomputed, so a leak through labels, counts or priors changes training."""
    real = ulfine.data.build_ssl_data

    def relabelled(cfg, seed):
        data = real(cfg, seed)
        u = data.unlabeled
        data.unlabeled = ImageSet(u.images, np.full(len(u), label, dtype=np.int64), u.image_size)
        data.unlabeled_counts = (None if label == UNKNOWN_LABEL
                                 else np.bincount([label] * len(u), minlength=data.num_classes).tolist())
        return data

    monkeypatch.setattr(ulfine.engine.assemble, "build_ssl_data", relabelled)


@pytest.mark.parametrize("method", ["fixmatch", "ulfine", "acr"])  # acr: its distribution estimate too
def test_unlabeled_ground_truth_never_reaches_training(tmp_path, monkeypatch, method):
    cfg_args = (f"method={method}", "finetune=lft", "ssl.tau=0.0", "ulfine.mu_paf=0.5", "acr.estimate_from_epoch=0")
    cfg = tiny_config(tmp_path / "a", *cfg_args)
    init = initial_weights(cfg)
    base = train(cfg)
    assert moved(base, init) > 1e-4
    assert_unlabeled_loss_active(base)
    wa = load_file(base / "weights.safetensors")
    for label, name in ((0, "one"), (UNKNOWN_LABEL, "unknown")):
        with monkeypatch.context() as m:
            _relabel(m, label)
            other = train(tiny_config(tmp_path / name, *cfg_args))
        wb = load_file(other / "weights.safetensors")
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"unlabeled labels = {label} changed training"
        # ...while the diagnostics, which may read the labels, did see the change
        if label == UNKNOWN_LABEL:
            assert _final(other)["pseudo_labels"] is None
        else:
            assert _final(other)["pseudo_labels"] != _final(base)["pseudo_labels"]


@pytest.mark.parametrize("method", ["fixmatch", "ulfine"])
def test_interrupt_and_resume_equals_uninterrupted(tmp_path, method):
    args = (f"method={method}", "finetune=lft", "train.epochs=2", "train.ema=0.5", "optim.warmup_steps=1",
            "ssl.tau=0.0", "ulfine.mu_paf=0.5")
    cfg = tiny_config(tmp_path / "full", *args)
    init = initial_weights(cfg)
    full = train(cfg)
    assert moved(full, init) > 1e-3 and moved(full, init, "ema.safetensors") > 1e-3
    assert_unlabeled_loss_active(full)
    part = train(tiny_config(tmp_path / "part", *args, "train.max_steps=3"))
    assert _final(part)["steps"] == 3 and _final(part)["stopped_early"]
    resumed = train(tiny_config(tmp_path / "part", *args, "resume=true"))
    assert resumed == part
    assert "resumed from checkpoint/ (step 3)" in (part / "train.log").read_text()
    assert_unlabeled_loss_active(resumed)  # the steps after the resume used unlabeled data too
    for name in ("weights.safetensors", "ema.safetensors"):
        wa, wb = load_file(full / name), load_file(resumed / name)
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)
    fa, fb = _final(full), _final(resumed)
    assert fb["steps"] == 4 and fb["images_seen"] == fa["images_seen"]
    # metrics.jsonl of the resumed run holds the same evaluations as the uninterrupted one: the
    # unscheduled stop-point evaluation (step 3) is dropped when the run continues, none twice
    steps = [[json.loads(line)["step"] for line in (r / "metrics.jsonl").read_text().splitlines()]
             for r in (full, resumed)]
    assert steps[0] == steps[1] == [2, 4]
    assert fb["overall_acc"] == fa["overall_acc"] and fb["last_k_mean"] == fa["last_k_mean"]


def test_evaluation_uses_the_ema_weights(tmp_path):
    """EMA: shadow <- d * shadow + (1 - d) * weight after each step, starting from the initial
    weights; every evaluation (and ``ulfine eval``) uses the shadow, not the raw weights."""
    cfg = tiny_config(tmp_path, "method=fixmatch", "finetune=lft", "ssl.tau=0.0", "train.ema=0.75",
                      "train.max_steps=1")
    init = initial_weights(cfg)
    run = train(cfg)
    raw, ema = load_file(run / "weights.safetensors"), load_file(run / "ema.safetensors")
    trainable = [k for k in raw if not torch.equal(raw[k], init[k])]
    assert trainable, "one step changed nothing"
    for k in raw:  # one update: 0.75 * initial + 0.25 * weights after step 1; buffers are raw
        expected = 0.75 * init[k] + 0.25 * raw[k] if k in trainable else raw[k]
        torch.testing.assert_close(ema[k], expected, rtol=0, atol=1e-6)
    final = _final(run)
    assert final["weights"] == "ema"
    parts, rt, name = load_run(run)  # what `ulfine eval` loads
    assert name == "ema.safetensors"
    with_ema = evaluate_sets(parts, build_eval_sets(parts, rt), rt)
    load_weights(parts.method, run / "weights.safetensors")
    with_raw = evaluate_sets(parts, build_eval_sets(parts, rt), rt)
    assert with_ema["ece"] == pytest.approx(final["ece"], abs=1e-9)
    assert with_raw["ece"] != pytest.approx(final["ece"], abs=1e-6)  # the raw weights score differently


def test_resume_refuses_data_that_gives_another_split(tmp_path, monkeypatch):
    """Regression: data.root may change on resume, but the split drawn there must be the saved one."""
    args = ("method=supervised", "finetune=lp")
    part = train(tiny_config(tmp_path, *args, "train.max_steps=1"))
    saved = (part / "split.json").read_text()
    real = ulfine.data.build_ssl_data
    monkeypatch.setattr(ulfine.engine.assemble, "build_ssl_data", lambda cfg, seed: real(cfg, seed + 1))
    with pytest.raises(DataError, match="differs from the saved one"):
        train(tiny_config(tmp_path, *args, "resume=true"))
    assert (part / "split.json").read_text() == saved  # the record was not overwritten


ACCUMULATION_EXTRA = {
    "fixmatch": ["ssl.tau=0.0"],
    # ulfine: the visual-prototype EMA and the momentum fitting see the whole step's batch too
    "ulfine": ["ulfine.mu_paf=0.5", "ssl.tau=0.1"],
    # acr (a scratch method, here on the LayerNorm micro ViT): the class counts behind its
    # distribution estimate and tau are the whole step's too; every pseudo-label used
    "acr": ["ssl.tau=0.0", "acr.estimate_from_epoch=0", "acr.ema_u=0.5"],
}


@pytest.mark.parametrize("method", list(ACCUMULATION_EXTRA))
def test_grad_accumulation_matches_one_big_batch(tmp_path, method):
    extra = ACCUMULATION_EXTRA[method]
    # AdaptFormer's dropout draws a mask per micro-batch shape: equal in distribution only, so the
    # exact comparison turns it off (resume stays exact with it on: tests/engine/test_resume.py)
    extra = [*extra, "adaptformer.dropout=0"]
    cfg = tiny_config(tmp_path / "a", f"method={method}", "finetune=lft", *extra)
    init = initial_weights(cfg)
    a = train(cfg)
    b = train(tiny_config(tmp_path / "b", f"method={method}", "finetune=lft", "optim.grad_accum=2", *extra))
    assert moved(a, init) > 100 * 1e-5  # far beyond the tolerance below
    assert_unlabeled_loss_active(a)
    assert_unlabeled_loss_active(b)
    wa, wb = load_file(a / "weights.safetensors"), load_file(b / "weights.safetensors")
    assert set(wa) == set(wb)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    if method == "ulfine":
        assert wa["alpha"].max() == 0.5  # PAF really ran: a class has the largest P_u
    if method == "acr":
        assert wa["tau"].item() != 2.0  # the estimate moved tau at the epoch's end


class _DtypeProbe(Method):
    """Records the dtype of its logits inside the engine's forward."""

    uses_unlabeled = False
    seen: list = []

    def __init__(self, backbone, ctx, options):
        super().__init__(backbone, ctx, options)
        self.fc = torch.nn.Linear(ctx.feature_dim, ctx.num_classes)

    def training_step(self, batch):
        z = self.fc(self.features(batch.x_l))
        _DtypeProbe.seen.append(z.dtype)
        return StepOutput(torch.nn.functional.cross_entropy(z.float(), batch.y_l))

    def predict(self, images):
        return self.fc(self.features(images))


@pytest.fixture()
def dtype_probe():
    METHODS.register("dtype_probe")(_DtypeProbe)
    _DtypeProbe.seen.clear()
    yield _DtypeProbe.seen
    METHODS.unregister("dtype_probe")  # no method stays registered for the tests after this one


def test_bf16_autocast_is_really_on_cpu(tmp_path, dtype_probe):
    train(tiny_config(tmp_path / "bf16", "method=dtype_probe", "finetune=lft", "train.precision=bf16"))
    assert dtype_probe and set(dtype_probe) == {torch.bfloat16}
    assert "precision bf16 (autocast dtype torch.bfloat16)" in (tmp_path / "bf16/run/train.log").read_text()
    dtype_probe.clear()
    train(tiny_config(tmp_path / "fp32", "method=dtype_probe", "finetune=lft", "train.precision=fp32"))
    assert set(dtype_probe) == {torch.float32}
    rt = make_runtime("cpu", "auto")
    assert rt.precision == "fp32" and rt.autocast_dtype is None


def test_eval_overrides_change_only_where_it_runs(tmp_path, capsys):
    from ulfine.cli import main
    from ulfine.errors import ConfigError

    run = train(tiny_config(tmp_path, "method=zeroshot", "finetune=lp"))
    m = _final(run)
    again = evaluate_run(run, "test", overrides=["eval.batch_size=7", "data.num_workers=0"])
    assert again["overall_acc"] == m["overall_acc"] and again["per_class_acc"] == m["per_class_acc"]
    with pytest.raises(ConfigError, match="can only override"):
        evaluate_run(run, "test", overrides=["method=fixmatch"])
    assert main(["eval", str(run), "ssl.tau=0.2"]) == 2  # what was trained stays as saved
    assert "can only override" in capsys.readouterr().err
    assert main(["eval", str(run), "eval.batch_size=5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["overall_acc"] == m["overall_acc"]


def test_cli_train_writes_its_report_unless_told_not_to(tmp_path, capsys):
    """`ulfine train` ends with the run's report; `--no-report` (grids of many runs) skips it and
    `ulfine report` writes the same report later."""
    from ulfine.cli import main

    for name, flag in (("with", []), ("without", ["--no-report"])):
        assert main(["train", *flag, *tiny_overrides(tmp_path / name, "method=supervised", "finetune=lp")]) == 0
    out = capsys.readouterr().out
    assert out.count("report: ") == 1 and str(tmp_path / "with" / "run" / "report") in out
    assert (tmp_path / "with" / "run" / "report" / "report.md").is_file()
    assert not (tmp_path / "without" / "run" / "report").exists()
    assert main(["report", str(tmp_path / "without" / "run")]) == 0
    assert (tmp_path / "without" / "run" / "report" / "report.md").is_file()
