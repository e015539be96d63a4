"""Reproduction scripts: the dry run lists exactly the expected commands; tables come from
final_metrics.json files (mean ± std over seeds)."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "reproduce"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"reproduce_{name}", SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _dry(mod, capsys, *args: str) -> list[list[str]]:
    assert mod.main(["--dry-run", *args]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("# ")
    return [shlex.split(line) for line in lines[:-1]]


def test_ablation_dry_run_lists_every_variant(capsys, tmp_path):
    mod = _load("ablation")
    cmds = _dry(mod, capsys, "--presets", "cifar10_n1500_m3000_g100_consistent", "--seeds", "0", "1",
                "--extra", "model.pretrained=/w/vit.pt", "--runs-dir", str(tmp_path))
    assert len(cmds) == len(mod.VARIANTS) * 2
    first = cmds[0]
    assert first[:6] == ["ulfine", "train", "--no-report", "cifar10_n1500_m3000_g100_consistent", "method=ulfine", "seed=0"]
    assert first[6] == "model.pretrained=/w/vit.pt"
    assert first[7].startswith(f"output_dir={tmp_path}/ablation/cifar10_n1500_m3000_g100_consistent/")
    all_off = [c for c in cmds if "ulfine.paf=false" in c and "ulfine.orth=false" in c
               and "ulfine.dlf=false" in c]
    assert len(all_off) == 2 and {c[5] for c in all_off} == {"seed=0", "seed=1"}
    assert len({c[-1] for c in cmds}) == len(cmds)  # every run has its own folder


def test_main_results_dry_run(capsys):
    mod = _load("main_results")
    cmds = _dry(mod, capsys, "--presets", "stl10_n150_g10", "cifar100_n50_m400_g10_reversed",
                "--methods", "zeroshot", "fixmatch", "ulfine", "--seeds", "0", "1", "2")
    # zeroshot: one seed; the others three, per preset
    assert len(cmds) == 2 * (1 + 3 + 3)
    assert [c[3:6] for c in cmds[:4]] == [
        ["stl10_n150_g10", "method=zeroshot", "seed=0"],
        ["stl10_n150_g10", "method=fixmatch", "seed=0"],
        ["stl10_n150_g10", "method=fixmatch", "seed=1"],
        ["stl10_n150_g10", "method=fixmatch", "seed=2"],
    ]
    assert len(mod.PRESETS) == 16


def test_finetune_and_cost_dry_runs(capsys):
    cmds = _dry(_load("finetune_analysis"), capsys, "--presets", "cifar10_n1500_m3000_g100_consistent",
                "--methods", "fixmatch", "--seeds", "0")
    assert [c[6] for c in cmds] == ["finetune=lp", "finetune=lft", "finetune=fft"]
    cost = _load("training_cost")
    cmds = _dry(cost, capsys)
    assert len(cmds) == len(cost.BUDGETS)
    assert ["finessl", "train.epochs=30"] == [cmds[0][4].split("=")[1], cmds[0][7]]


def test_tables_collect_final_metrics(tmp_path, capsys):
    mod = _load("ablation")
    common = sys.modules["common"]
    args = ["--presets", "cifar10_n1500_m3000_g100_consistent", "--seeds", "0", "1",
            "--variants", "ULFine (PAF + orth + DLF)", "w/o PAF momentum fitting",
            "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "ab.md")]
    grid = mod.build_grid(["cifar10_n1500_m3000_g100_consistent"],
                          ["ULFine (PAF + orth + DLF)", "w/o PAF momentum fitting"], [0, 1])
    accs = {("ULFine (PAF + orth + DLF)", 0): 0.80, ("ULFine (PAF + orth + DLF)", 1): 0.82,
            ("w/o PAF momentum fitting", 0): 0.75}  # seed 1 of the second row "unfinished"
    for run in grid.runs:
        if (run.label, run.seed) not in accs:
            continue
        d = run.run_dir(tmp_path / "runs")
        d.mkdir(parents=True)
        acc = accs[(run.label, run.seed)]
        (d / common.METRICS_FILE).write_text(json.dumps({
            "overall_acc": acc, "group_acc": {"head": 0.9, "medium": 0.8, "tail": acc - 0.2},
            "pseudo_labels": {"precision": 0.5, "mask_rate": 0.25},
        }))
    assert mod.main(["--collect-only", *args]) == 0
    text = (tmp_path / "ab.md").read_text()
    assert "3/4 runs finished" in text
    assert "| ULFine (PAF + orth + DLF) | 81.00 ± 1.41 | 90.00 ± 0.00 | 80.00 ± 0.00 | 61.00 ± 1.41 | 50.00 ± 0.00 | 25.00 ± 0.00 |" in text
    assert "| w/o PAF momentum fitting | 75.00 | 90.00 | 80.00 | 55.00 | 50.00 | 25.00 |" in text


@pytest.mark.parametrize("name", ["main_results", "finetune_analysis", "ablation", "training_cost"])
def test_scripts_have_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        _load(name).main(["--help"])
    assert exc.value.code == 0
    assert "--dry-run" in capsys.readouterr().out


def test_main_results_runs_loft_with_its_recipe(capsys):
    cmds = _dry(_load("main_results"), capsys, "--presets", "stl10_n150_g10", "--methods", "fixmatch", "loft",
                "--seeds", "0")
    assert "ssl.tau=0.6" in cmds[1] and cmds[1][4] == "method=loft"
    assert not any(c.startswith("ssl.tau") for c in cmds[0])  # the recipe is LoFT's only


def test_finetune_analysis_reports_false_pseudo_labels_and_plots_them(tmp_path, capsys, monkeypatch):
    mod = _load("finetune_analysis")
    preset = "microworld_n100_m200_g20_consistent"
    grid = mod.build_grid([preset], ["zeroshot", "supervised", "fixmatch"], ["lp", "lft"], [0, 1],
                          mod.QUICK_BUDGET, "finetune_analysis_quick")
    assert grid.labels == ["zero-shot", "supervised LP", "supervised LFT", "fixmatch LP", "fixmatch LFT"]
    assert [r.seed for r in grid.runs if r.label == "zero-shot"] == [0]  # untrained: one run
    for i, run in enumerate(grid.runs):
        d = run.run_dir(tmp_path / "runs")
        d.mkdir(parents=True)
        hist = {"edges": [0.7, 0.85, 1.0], "correct": [i, 1], "wrong": [2, i]}
        (d / "final_metrics.json").write_text(json.dumps({
            "overall_acc": 0.5, "group_acc": {"head": 0.6, "medium": 0.5, "tail": 0.4},
            "pseudo_labels": {"precision": 0.75, "mask_rate": 0.5, "false_confident": 10 * i,
                              "false_confidence_mean": 0.8, "true_confidence_mean": 0.9,
                              "confidence_histogram": hist}}))
    drawn = {}
    monkeypatch.setattr(mod, "plot_confidence_histograms", lambda panels, path, title: drawn.update(
        {p[0]: p[1] for p in panels}) or path)
    out = tmp_path / "fa.md"
    assert mod.main(["--collect-only", "--quick", "--presets", preset, "--methods", "zeroshot", "supervised",
                     "fixmatch", "--finetunes", "lp", "lft", "--seeds", "0", "1",
                     "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "SMOKE RUN" in text and "9/9 runs finished" in text
    # runs 5, 6 are fixmatch LP seeds 0, 1: false confident 50 and 60
    assert "| fixmatch LP | 50.00 ± 0.00 | 60.00 ± 0.00 | 50.00 ± 0.00 | 40.00 ± 0.00 | 75.00 ± 0.00 | " \
           "50.00 ± 0.00 | 55.0 ± 7.1 | 0.800 ± 0.000 | 0.900 ± 0.000 |" in text
    assert set(drawn) == {"zero-shot", "fixmatch LP", "fixmatch LFT"}  # supervised: table only
    assert drawn["fixmatch LP"] == {"edges": [0.7, 0.85, 1.0], "seeds": 2, "correct": [11, 2], "wrong": [4, 11]}
    assert f"![confidence histogram](fa_{preset}_confidence.png)" in text


def test_confidence_histogram_plot_has_one_panel_per_row(tmp_path):
    from matplotlib.image import imread

    from ulfine.apps.plots import plot_confidence_histograms

    hist = {"edges": [0.7, 0.85, 1.0], "correct": [1, 2], "wrong": [3, 0], "seeds": 1}
    png = plot_confidence_histograms([("a", hist), ("b", hist), ("c", hist)], tmp_path / "h.png", "t")
    height, width, _ = imread(png).shape
    assert (width, height) == (round(3 * 3.8 * 120), round((3.2 + 0.5) * 120))  # 3 panels in one row


def test_round_two_rule_combines_the_three_families_that_gained_most() -> None:
    """docs/microworld.md 7.5's rule, mechanically: per family the best alternative that beat the
    defaults; the top three families; every pair and the triple."""
    mod = _load("microworld_study")
    means = {"M defaults": 60.0, "M tau 0.6": 61.0, "M tau 0.8": 62.0, "M alpha 4": 59.0,
             "M alpha 16": 63.0, "M w_con 1": 60.5, "M w_con 6": 58.0, "M smoothing 0.1": 60.2,
             "M smoothing 0.8": 59.0}
    combos = mod.round_two(means, "M")
    assert combos == {
        "M alpha 16, tau 0.8": ("M alpha 16", "M tau 0.8"),
        "M alpha 16, w_con 1": ("M alpha 16", "M w_con 1"),
        "M tau 0.8, w_con 1": ("M tau 0.8", "M w_con 1"),
        "M alpha 16, tau 0.8, w_con 1": ("M alpha 16", "M tau 0.8", "M w_con 1"),
    }
    # one gaining family: nothing to combine; none: nothing either
    assert mod.round_two({"M defaults": 60.0, "M tau 0.8": 61.0, "M alpha 4": 59.0}, "M") == {}
    assert mod.round_two({"M defaults": 60.0, "M tau 0.8": 60.0}, "M") == {}


def test_finessl_round_two_waits_for_the_whole_round_one(tmp_path) -> None:
    mod = _load("microworld_study")
    with pytest.raises(SystemExit, match="needs the whole finessl stage"):
        mod.build_grid("finessl_combos", [0, 1, 2], runs_dir=tmp_path)


def test_regime25_stage_evaluates_every_epoch_at_the_budget_tried(capsys, tmp_path) -> None:
    mod = _load("microworld_study")
    cmds = _dry(mod, capsys, "regime25", "--epochs", "10", "--runs-dir", str(tmp_path))
    assert len(cmds) == 4 * 3
    assert {c[3] for c in cmds} == {"microworld_n25_m200_g20_consistent"}
    assert all("train.epochs=10" in c and "eval.every_epochs=1" in c for c in cmds)
    assert {c[4] for c in cmds} == {"method=supervised", "method=fixmatch", "method=finessl", "method=ulfine"}
    assert all(c[-1].startswith(f"output_dir={tmp_path}/microworld_regime25_e10/") for c in cmds)


def test_field_stage_gives_each_baseline_its_scaled_settings_and_distinct_families() -> None:
    """Every row of a field baseline carries the world-scaled settings; the shared threshold and
    a method's own ``tau`` are different option families (round 2 must not merge them)."""
    mod = _load("microworld_study")
    variants = mod.field_variants()
    for label, (method, overrides) in variants.items():
        assert set(mod.scaled(method)) <= set(overrides), label
    assert "cdmad.debias_from_epoch=1" in variants["CDMAD defaults"][1]
    families = {mod.family(lab) for lab in variants if lab.startswith("DebiasPL") and "defaults" not in lab}
    assert families == {"tau", "debiaspl.tau", "debiaspl.qhat_momentum"}
    assert len(variants) == sum(3 + 2 * len(own) for own in mod.FIELD_OWN.values())


def test_skeleton_stage_differs_from_the_defaults_only_by_the_head_scale(capsys, tmp_path) -> None:
    mod = _load("microworld_study")
    cmds = _dry(mod, capsys, "skeleton", "--runs-dir", str(tmp_path))
    assert len(cmds) == 2 * 3 and {c[4] for c in cmds} == {"method=ulfine"}
    by_row: dict[str, set[tuple[str, ...]]] = {}
    for c in cmds:
        by_row.setdefault(c[-1].split("/")[-2], set()).add(tuple(x for x in c if not x.startswith(("seed=", "output_dir="))))
    assert len(by_row) == 2 and all(len(v) == 1 for v in by_row.values())  # one command per row
    (base,) = by_row.pop("ULFine_defaults")
    ((candidate,),) = by_row.values()
    assert set(candidate) - set(base) == {"ulfine.prototype_scale=finessl"} and set(base) <= set(candidate)


def test_threads_option_sets_each_runs_torch_threads(monkeypatch, tmp_path) -> None:
    mod = _load("microworld_study")
    common = sys.modules["common"]
    seen: list[str] = []
    monkeypatch.setattr(common.subprocess, "call", lambda cmd, env, stdout: seen.append(env["OMP_NUM_THREADS"]) or 0)
    grid = mod.build_grid("skeleton", [0])
    monkeypatch.setattr(common.os, "cpu_count", lambda: 8)
    for threads, expected in ((None, "4"), (1, "1")):  # cores / workers, or as told
        args = mod.base_parser("t", presets=[mod.PRESET]).parse_args(
            ["--workers", "2", "--runs-dir", str(tmp_path)] + (["--threads", str(threads)] if threads else []))
        seen.clear()
        assert common.execute(grid, args) == 0
        assert seen == [expected] * 2


def test_fixmatch_la_stage_tunes_dasos_form_with_the_same_budget(capsys, tmp_path) -> None:
    """DASO's FixMatch-LA (labeled term only) gets 7.4's grid: the defaults, two thresholds and two
    tau_la, in two distinct families; its round 2 waits for the whole round 1."""
    mod = _load("microworld_study")
    cmds = _dry(mod, capsys, "fixmatch_la", "--runs-dir", str(tmp_path))
    assert len(cmds) == 5 * 3 and {c[4] for c in cmds} == {"method=fixmatch_la"}
    assert not any("fixmatch_la.adjust=both" in c for c in cmds)
    rows = [lab for lab in mod.FIXMATCH_LA_VARIANTS if lab != "FixMatch-LA defaults"]
    assert sorted({mod.family(lab) for lab in rows}) == ["tau", "tau_la"]
    with pytest.raises(SystemExit, match="needs the whole fixmatch_la stage"):
        mod.build_grid("fixmatch_la_combos", [0, 1, 2], runs_dir=tmp_path)


def test_field_round_two_goes_on_method_by_method(monkeypatch, tmp_path) -> None:
    """A field method whose round 1 is finished on every dev seed gets 7.5's round 2 (its scaled
    settings once, plus each combined alternative) while unfinished methods wait; with none
    finished, the stage says what it waits for."""
    mod = _load("microworld_study")
    with pytest.raises(SystemExit, match="unfinished: ABC, DASO, DebiasPL, SimPro, CDMAD, CPE"):
        mod.build_grid("field_combos", [0, 1, 2], runs_dir=tmp_path)
    means = {"DebiasPL defaults": 60.0, "DebiasPL tau 0.6": 59.0, "DebiasPL tau 0.8": 61.0,
             "DebiasPL debiaspl.tau 0.2": 62.0, "DebiasPL debiaspl.tau 1.0": 58.0,
             "DebiasPL debiaspl.qhat_momentum 0.99": 59.5, "DebiasPL debiaspl.qhat_momentum 0.9999": 60.0,
             "CPE defaults": 50.0, "CPE tau 0.6": 51.0, "CPE tau 0.8": 49.0}
    monkeypatch.setattr(mod, "round_one_means", lambda stage, seeds, runs_dir: (means, ["ABC defaults seed 0"]))
    grid = mod.build_grid("field_combos", [0, 1, 2], runs_dir=tmp_path)
    assert grid.labels == ["DebiasPL debiaspl.tau 0.2, tau 0.8"]  # by gain; CPE: one gaining family, no combination
    run = grid.runs[0]
    assert run.method == "debiaspl" and {r.seed for r in grid.runs} == {0, 1, 2}
    assert {"ssl.tau=0.8", "debiaspl.tau=0.2"} <= set(run.overrides)
    assert run.overrides.count("ssl.tau=0.8") == 1 and set(mod.scaled("debiaspl")) <= set(run.overrides)
