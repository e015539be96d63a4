"""The README's practitioner path, end to end through the CLI: the shipped example-folder script,
``train --data``, the report written by train, ``export`` and ``predict``."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from pathlib import Path

import pytest

from ulfine.cli import main

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_example_folder.py"


def _script():
    spec = importlib.util.spec_from_file_location("make_example_folder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_folder_layout(tmp_path: Path) -> None:
    script = _script()
    assert script.main([str(tmp_path / "ex")]) == 0
    for name, n in zip(script.CLASSES, script.LABELED):
        folder = name.replace(" ", "_")
        assert len(list((tmp_path / "ex" / "labeled" / folder).glob("*.png"))) == n
        assert len(list((tmp_path / "ex" / "test" / folder).glob("*.png"))) == script.TEST_PER_CLASS
    assert len(list((tmp_path / "ex" / "unlabeled").glob("*.png"))) == 2 * sum(script.LABELED)
    assert len(list((tmp_path / "ex" / "new_images").glob("*.png"))) == len(script.CLASSES)


@pytest.mark.slow
def test_readme_practitioner_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, run, model = tmp_path / "example_data", tmp_path / "runs" / "example", tmp_path / "models" / "example"
    assert _script().main([str(data)]) == 0
    assert main(["train", "--data", str(data), "model.arch=ulfine-micro-vit", "model.pretrained=micro",
                 "train.epochs=1", "train.steps_per_epoch=3", f"output_dir={run}", "train.progress=false",
                 "model.text_cache_dir=null", f"cache.dir={tmp_path / 'cache'}", "data.num_workers=0"]) == 0
    assert f"report: {run / 'report' / 'report.md'}" in capsys.readouterr().out
    assert json.loads((run / "split.json").read_text())["config"]["image_size"] == 32  # the micro ViT's input
    assert (run / "report" / "per_class_accuracy.png").is_file()
    assert main(["export", str(run), "--out", str(model)]) == 0
    assert "ulfine train folder data.root=" in (model / "README.md").read_text()
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(model), str(data / "new_images"), "--topk", "3", "--out", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 8 and all(r["label_3"] and not r["error"] for r in rows)
