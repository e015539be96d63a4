"""``ulfine predict`` on a folder holding a truncated image and a text file finishes, reports both
(one warning line each, a row with its error) and predicts every good image, in timm's columns."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ulfine
from ulfine.apps.classifier import Prediction
from ulfine.apps.predict import FileResult, to_csv
from ulfine.cli import main


def _folder(root: Path) -> tuple[list[Path], list[Path]]:
    """Good PNG/JPEG images (one in a sub-folder), a truncated PNG and a text file."""
    rng = np.random.default_rng(1)
    good = []
    for i, (sub, ext) in enumerate([("", "png"), ("", "jpg"), ("nested/deeper", "png"), ("", "png")]):
        path = root / sub / f"img{i}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24 + 8 * i, 30, 3), dtype=np.uint8)).save(path)
        good.append(path)
    whole = (root / "img0.png").read_bytes()
    (root / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (root / "notes.txt").write_text("not an image\n")
    (root / ".hidden").write_text("skipped: hidden files are not inputs\n")
    return good, [root / "notes.txt", root / "truncated.png"]


def test_predict_folder_with_broken_files(ulfine_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good, bad = _folder(tmp_path / "images")
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(ulfine_run), str(tmp_path / "images"), "--topk", "3", "--out", str(out),
                 "--batch-size", "2", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: cannot read")]
    assert sorted(w.split()[3].rstrip(":") for w in warnings) == sorted(map(str, bad))
    assert "Traceback" not in captured.err
    assert "4 images predicted, 2 unreadable" in captured.out
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == ["filename", "label_1", "label_2", "label_3", "prob_1", "prob_2", "prob_3", "error"]
    assert sorted(r["filename"] for r in rows) == sorted(map(str, good + bad))  # one row per file, none lost
    by_name = {r["filename"]: r for r in rows}
    for path in bad:
        assert by_name[str(path)]["error"] and not by_name[str(path)]["label_1"]
    expected = ulfine.load(ulfine_run, device="cpu").predict(good, topk=3)
    for path, pred in zip(good, expected):
        row = by_name[str(path)]
        assert not row["error"]
        assert [row[f"label_{i}"] for i in (1, 2, 3)] == pred.labels
        np.testing.assert_allclose([float(row[f"prob_{i}"]) for i in (1, 2, 3)], pred.probs, atol=1e-6)


def test_json_output_and_missing_path(ulfine_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good, _ = _folder(tmp_path / "images")
    out = tmp_path / "p.json"
    assert main(["predict", str(ulfine_run), str(good[0]), "--out", str(out), "--topk", "50"]) == 0
    import json

    (row,) = json.loads(out.read_text())
    assert len(row["labels"]) == 10 and row["error"] is None  # --topk is capped at the number of classes
    assert abs(sum(row["probs"]) - 1.0) < 1e-5
    assert main(["predict", str(ulfine_run), str(tmp_path / "absent.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_csv_pads_rows_without_a_prediction() -> None:
    text = to_csv([FileResult("a.png", Prediction(["x", "y"], [0, 1], [0.75, 0.25])),
                   FileResult("b.txt", error="UnidentifiedImageError: cannot identify image file")], topk=2)
    assert text.splitlines() == ["filename,label_1,label_2,prob_1,prob_2,error",
                                 "a.png,x,y,0.750000,0.250000,",
                                 "b.txt,,,,,UnidentifiedImageError: cannot identify image file"]
