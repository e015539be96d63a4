"""A trained run predicts the same from its run folder, from its exported model folder (in a fresh
process, through the CLI) and through the Python API; the image path agrees with the engine's
evaluation; a model folder refuses other backbone weights; ONNX matches PyTorch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import ulfine
from ulfine.apps.model_io import CONFIG_FILE, MODEL_FILE, export_model, load_run_dir
from ulfine.data import build_ssl_data
from ulfine.engine.reevaluate import saved_run_config
from ulfine.errors import DataError, WeightsError

SRC = Path(__file__).resolve().parents[2] / "src"
#: probabilities of the same model in two processes / two loaders agree to this (fp32, CPU)
PROB_ATOL = 1e-5
#: ONNX Runtime vs PyTorch logits (fp32, CPU); the export itself refuses more than 1e-3
ONNX_ATOL = 1e-4


def _images(run_dir: Path, folder: Path, n: int = 12) -> list[Path]:
    """The run's first ``n`` test images as PNG files, plus two of other sizes (resized on load)."""
    cfg = saved_run_config(run_dir)
    test = build_ssl_data(cfg.data, cfg.seed).test
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"test_{i:02d}.png")
        Image.fromarray(test.load(i)).save(paths[-1])
    big = np.random.default_rng(0).integers(0, 256, (57, 41, 3), dtype=np.uint8)
    Image.fromarray(big).save(folder / "odd_size.png")
    Image.fromarray(big[:, :, 0]).save(folder / "gray.png")
    return [*paths, folder / "odd_size.png", folder / "gray.png"]


def _cli_predict(model_dir: Path, files: list[Path], out: Path, topk: int) -> list[dict]:
    """``ulfine predict`` in a fresh Python process; its JSON output."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "ulfine.cli", "predict", str(model_dir), *map(str, files), "--topk", str(topk),
           "--out", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def exported(ulfine_run: Path, feature_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("models")
    export_model(ulfine_run, out / "ulfine_model")
    export_model(feature_run, out / "feature_model")
    return {"ulfine": out / "ulfine_model", "features": out / "feature_model"}


def test_same_topk_from_run_folder_model_folder_in_a_fresh_process_and_python_api(
        ulfine_run: Path, exported: dict[str, Path], tmp_path: Path) -> None:
    files = _images(ulfine_run, tmp_path / "images")
    from_run = ulfine.load(ulfine_run, device="cpu").predict(files, topk=3)
    api = ulfine.load(exported["ulfine"], device="cpu")
    from_api = api.predict([Image.open(f) for f in files], topk=3)  # PIL images this time
    from_cli = _cli_predict(exported["ulfine"], files, tmp_path / "p.json", topk=3)
    assert [r["filename"] for r in from_cli] == [str(f) for f in files]
    for a, b, c in zip(from_run, from_api, from_cli):
        assert a.labels == b.labels == c["labels"]
        np.testing.assert_allclose(a.probs, b.probs, atol=PROB_ATOL)
        np.testing.assert_allclose(a.probs, c["probs"], atol=PROB_ATOL)
    assert len({tuple(p.labels) for p in from_run}) > 1  # the images are told apart
    assert api.class_names == json.loads((exported["ulfine"] / CONFIG_FILE).read_text())["class_names"]


def test_feature_mode_run_predicts_on_pixels_the_same_from_both_folders(
        feature_run: Path, exported: dict[str, Path], tmp_path: Path) -> None:
    """Trained on cached features, the method gets the real tower in both loaders."""
    files = _images(feature_run, tmp_path / "images")
    arrays = [np.asarray(Image.open(f)) for f in files]  # uint8 arrays this time
    a = ulfine.load(feature_run, device="cpu").logits(arrays)
    b = ulfine.load(exported["features"], device="cpu").logits(files)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert a.argmax(1).unique().numel() > 1


def test_training_changed_what_the_model_folder_holds(exported: dict[str, Path]) -> None:
    ulf = load_file(str(exported["ulfine"] / MODEL_FILE))
    assert ulf["linear_head.fc.weight"].abs().sum() > 0  # DLF's linear branch starts at zero
    assert not torch.allclose(ulf["prototype_head.prototypes"], ulf["context.text_prototypes"])  # PAF + gradients
    adapters = [k for k in ulf if ".adapter.up." in k]
    assert adapters and any(ulf[k].abs().sum() > 0 for k in adapters)  # zero-initialised up-projections moved
    assert all(t.dtype in (torch.float32, torch.int64) for t in ulf.values())
    feat = load_file(str(exported["features"] / MODEL_FILE))
    assert feat["head.fc.weight"].abs().sum() > 0 and not any(k.startswith("backbone.") for k in feat)


@pytest.mark.parametrize("which", ["ulfine", "features"])
def test_predictions_on_the_test_set_give_the_engines_accuracy(which: str, ulfine_run: Path, feature_run: Path,
                                                                 exported: dict[str, Path]) -> None:
    """The classifier's image path (a feature-mode run: the real tower, not the cache) reproduces
    the evaluation the engine wrote into final_metrics.json."""
    run_dir = {"ulfine": ulfine_run, "features": feature_run}[which]
    cfg = saved_run_config(run_dir)
    test = build_ssl_data(cfg.data, cfg.seed).test
    clf = ulfine.load(exported[which], device="cpu")
    pixels = torch.from_numpy(np.stack([test.load(i) for i in range(len(test))])).permute(0, 3, 1, 2)
    acc = float((clf.logits_of_pixels(pixels).argmax(1).numpy() == test.labels).mean())
    assert acc == pytest.approx(json.loads((run_dir / "final_metrics.json").read_text())["overall_acc"], abs=1e-9)


def test_model_folder_contents_and_card(ulfine_run: Path, feature_run: Path, exported: dict[str, Path]) -> None:
    spec = json.loads((exported["ulfine"] / CONFIG_FILE).read_text())
    assert spec["backbone"] | {"fingerprint": None} == spec["backbone"] | {
        "arch": "ulfine-micro-vit", "pretrained": "micro", "included": False, "fingerprint": None}
    assert spec["preprocessing"]["size"] == 32 and len(spec["preprocessing"]["mean"]) == 3
    assert spec["command"].startswith("ulfine train ") and "method=ulfine" in spec["command"]
    assert "ssl.tau=0.3" in spec["command"] and "output_dir" not in spec["command"]
    card = (exported["ulfine"] / "README.md").read_text()
    metrics = json.loads((ulfine_run / "final_metrics.json").read_text())
    assert f"| final model | {100 * metrics['overall_acc']:.1f} |" in card
    assert "| 0 | red | 20 |" in card  # the split's head class and its labeled count
    # random backbone weights are no reference: they are copied
    feature_spec = json.loads((exported["features"] / CONFIG_FILE).read_text())
    assert feature_spec["backbone"]["included"] and (exported["features"] / "backbone.safetensors").is_file()
    assert feature_spec["trained_on_cached_features"] is True


def test_other_backbone_weights_are_refused(exported: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "tampered"
    copy.mkdir()
    spec = json.loads((exported["ulfine"] / CONFIG_FILE).read_text())
    spec["backbone"]["fingerprint"] = "0" * 32
    (copy / CONFIG_FILE).write_text(json.dumps(spec))
    (copy / MODEL_FILE).write_bytes((exported["ulfine"] / MODEL_FILE).read_bytes())
    with pytest.raises(WeightsError, match="other weights"):
        ulfine.load(copy, device="cpu")
    with pytest.raises(DataError, match="neither a model folder"):
        ulfine.load(tmp_path, device="cpu")


def test_onnx_graph_matches_pytorch(ulfine_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for extra in ("onnx", "onnxruntime", "onnxscript"):  # ulfine[onnx], also in the test extra
        pytest.importorskip(extra)
    from ulfine.apps.onnx_export import model_size_pixels, onnx_logits

    result = export_model(ulfine_run, tmp_path / "m", onnx=True)
    assert "ONNX parity: max |logit difference|" in capsys.readouterr().out
    assert result.onnx_max_abs_diff is not None and result.onnx_max_abs_diff <= ONNX_ATOL
    clf = load_run_dir(ulfine_run, device="cpu")
    files = _images(ulfine_run, tmp_path / "images", n=5)  # another batch size than at export
    pixels = model_size_pixels(clf, clf.pixels(files))
    expected = clf.logits_of_pixels(pixels).numpy()
    got = onnx_logits(tmp_path / "m" / "model.onnx", pixels)
    assert got.shape == expected.shape == (7, 10)
    assert np.abs(got - expected).max() <= ONNX_ATOL
    assert expected.std() > 0.1  # logits that tell classes apart, not a constant


def test_missing_onnx_extra_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from ulfine.apps.onnx_export import _import_onnx
    from ulfine.errors import UlfineError

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    with pytest.raises(UlfineError, match=r"onnxscript is missing\): pip install 'ulfine\[onnx\]'"):
        _import_onnx()
