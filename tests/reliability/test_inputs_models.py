"""Bad input to the commands that use a trained model, each answered in one line (never a
traceback, never a half-written or empty output): a file name that is not UTF-8, an ``--out``
that cannot be written, a model folder damaged field by field, a damaged text-prototype cache
entry, report and compare on a damaged run folder."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from tiny import tiny_config

from ulfine.apps.model_io import export_model
from ulfine.apps.report import RunFiles
from ulfine.cli import main
from ulfine.config import ModelConfig
from ulfine.engine import train
from ulfine.models import build_backbone
from ulfine.models.text import prototype_cache_key, text_prototypes

LP = ["method=supervised", "finetune=lp", "data.augment=false", "head=linear"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished LP run (2 steps, random micro CLIP) and its exported model folder."""
    out = tmp_path_factory.mktemp("inputs_models")
    run = train(tiny_config(out, *LP))
    export_model(run, out / "model")
    return {"run": run, "model": out / "model"}


def _images(folder: Path, names: list[str | bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        path = os.path.join(os.fsencode(folder), name) if isinstance(name, bytes) else folder / name
        Image.fromarray(np.full((12, 12, 3), 30 * i, np.uint8)).save(path, format="PNG")
    return folder


def _one_line(capsys: pytest.CaptureFixture[str], code: int, *expected: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert all(e in err for e in expected), err
    return err


def test_predict_writes_a_file_name_that_is_not_utf8(model, tmp_path, capsys):
    folder = _images(tmp_path / "imgs", ["a.png", b"caf\xe9.png"])  # Latin-1 é: not UTF-8
    out = tmp_path / "p.csv"
    assert main(["predict", str(model["model"]), str(folder), "--out", str(out), "--device", "cpu"]) == 0, \
        capsys.readouterr().err
    rows = out.read_text(encoding="utf-8").splitlines()
    assert len(rows) == 3 and rows[2].startswith(f"{folder}/caf\\xe9.png,")
    assert main(["predict", str(model["model"]), str(folder), "--out", str(tmp_path / "p.json")]) == 0
    assert [r["filename"] for r in json.loads((tmp_path / "p.json").read_text())][1].endswith("caf\\xe9.png")


@pytest.mark.parametrize("where", ["folder", "no-parent"])
def test_predict_checks_out_before_predicting(model, tmp_path, capsys, where):
    folder = _images(tmp_path / "imgs", ["a.png"])
    out = tmp_path / "existing" if where == "folder" else tmp_path / "missing" / "p.csv"
    if where == "folder":
        out.mkdir()
    _one_line(capsys, main(["predict", str(model["model"]), str(folder), "--out", str(out)]), str(out))
    assert not (tmp_path / "missing").exists() and list((tmp_path / "existing").iterdir() if where == "folder" else [])\
        == []


Damage = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Damage:
    def damage(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = spec
        for key in parents:
            node = node[key]
        node[last] = value
    return damage


SPEC_DAMAGE: list[tuple[str, Damage, str]] = [
    ("version-text", _set("version", "abc"), "version"),
    ("counts-text", _set("labeled_counts", "many"), "labeled_counts"),
    ("counts-short", _set("labeled_counts", [1]), "labeled_counts"),
    ("no-classes", _set("class_names", []), "class_names"),
    ("no-backbone", lambda s: s.pop("backbone"), "backbone"),
    ("unlabeled-negative", _set("num_unlabeled", -5), "num_unlabeled"),
    ("input-size-huge", _set("preprocessing.input_size", 100000), "preprocessing.input_size"),
    ("pretrained-passwd", lambda s: (_set("backbone.included", False)(s),
                                     _set("run_config.model.pretrained", "/etc/passwd")(s)), "/etc/passwd"),
    ("run-config-key", _set("run_config.train.batch_size", "x"), "train.batch_size"),
]


@pytest.mark.parametrize(("name", "damage", "named"), SPEC_DAMAGE, ids=[d[0] for d in SPEC_DAMAGE])
def test_a_damaged_model_folder_is_one_line(model, tmp_path, capsys, name, damage, named):
    broken = tmp_path / "broken"
    shutil.copytree(model["model"], broken)
    spec = json.loads((broken / "config.json").read_text())
    damage(spec)
    (broken / "config.json").write_text(json.dumps(spec))
    img = _images(tmp_path / "imgs", ["a.png"])
    _one_line(capsys, main(["predict", str(broken), str(img), "--out", str(tmp_path / "p.csv")]), named)
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("what", ["model.safetensors", "backbone.safetensors", "config.json"])
def test_a_truncated_model_folder_file_is_one_line(model, tmp_path, capsys, what):
    broken = tmp_path / "broken"
    shutil.copytree(model["model"], broken)
    data = (broken / what).read_bytes()
    (broken / what).write_bytes(data[: len(data) // 2])
    img = _images(tmp_path / "imgs", ["a.png"])
    _one_line(capsys, main(["predict", str(broken), str(img), "--out", str(tmp_path / "p.csv")]), what)


def test_a_damaged_text_prototype_cache_entry_is_recomputed(tmp_path, caplog):
    backbone = build_backbone(ModelConfig(arch="ulfine-micro-vit", pretrained="micro"))
    names = ["cat", "dog", "bird"]
    first = text_prototypes(backbone, names, cache_dir=tmp_path)
    entry = tmp_path / f"{prototype_cache_key(backbone, names, ['a photo of a {}.'])}.safetensors"
    for damage in (lambda b: b[: len(b) // 2], lambda b: b"\x00" * len(b)):
        entry.write_bytes(damage(entry.read_bytes()))
        with caplog.at_level(logging.WARNING, logger="ulfine"):
            again = text_prototypes(backbone, names, cache_dir=tmp_path)
        assert torch.allclose(first, again) and "recomputing" in caplog.text
        caplog.clear()
    assert torch.allclose(text_prototypes(backbone, names, cache_dir=tmp_path), first)  # the entry was rewritten


def test_report_and_compare_on_a_damaged_run_folder(model, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    shutil.copytree(model["run"], run, ignore=shutil.ignore_patterns("checkpoint*", "tb", "report"))
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "overall_acc": 0.\n\xff not json\n')
    with caplog.at_level(logging.WARNING, logger="ulfine"):
        files = RunFiles.read(run)
    assert files.history and all(isinstance(h, dict) for h in files.history)
    assert "damaged line" in caplog.text and "metrics.jsonl" in caplog.text
    (run / "config.yaml").write_text("method: [unclosed\n")
    _one_line(capsys, main(["report", str(run)]), "config.yaml")
    _one_line(capsys, main(["compare", str(run)]), "config.yaml")
    (run / "config.yaml").write_text(yaml.safe_dump({"method": "x", "seed": "zero"}))
    _one_line(capsys, main(["compare", str(run)]), "seed")
    (run / "final_metrics.json").write_bytes(b"\xff\xfe")
    _one_line(capsys, main(["compare", str(run)]), "final_metrics.json")
