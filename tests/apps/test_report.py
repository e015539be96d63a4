"""``ulfine report`` draws every plot that applies, for a ULFine run and for a zero-shot run, and
the plots are real pictures (decoded, large, varied), not empty files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ulfine.apps.report import PLOTS, write_report
from ulfine.apps.report_plots import ClassAxis
from ulfine.cli import main


def _assert_real_picture(path: Path) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG"
        pixels = np.asarray(img.convert("RGB"), dtype=float)
    h, w, _ = pixels.shape
    assert h >= 400 and w >= 500
    assert pixels.std() > 20  # not a blank canvas
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # bars, text, colour maps
    assert (pixels.reshape(-1, 3) != 255).any(axis=1).mean() > 0.03  # ink on more than 3% of the page


def test_ulfine_run_gets_every_plot(ulfine_run: Path, tmp_path: Path) -> None:
    report = write_report(ulfine_run, tmp_path / "r")
    assert sorted(report.plots) == sorted(PLOTS) and not report.skipped
    for path in report.plots.values():
        _assert_real_picture(path)
    page = (tmp_path / "r" / "report.md").read_text()
    final = json.loads((ulfine_run / "final_metrics.json").read_text())
    assert f"| final model | {100 * final['overall_acc']:.1f} | {100 * final['balanced_acc']:.1f} |" in page
    assert all(f"![{name}]({name})" in page for name in PLOTS)


def test_zeroshot_run_gets_every_plot_but_the_drift(zeroshot_run: Path) -> None:
    assert main(["report", str(zeroshot_run)]) == 0  # default folder RUN_DIR/report
    folder = zeroshot_run / "report"
    drawn = {p.name for p in folder.glob("*.png")}
    assert drawn == set(PLOTS) - {"prototype_drift.png"}
    for name in drawn:
        _assert_real_picture(folder / name)
    assert "prototype_drift.png: not drawn (prototype drift exists only for ULFine)" in (folder / "report.md").read_text()


def test_classes_run_head_to_tail() -> None:
    axis = ClassAxis.build(["a", "b", "c", "d"], [5, 20, 20, 1], {"head": [1], "tail": [3]})
    assert axis.order == [1, 2, 0, 3]  # most labeled first, ties by index
    assert axis.groups == ["medium", "head", "medium", "tail"]
