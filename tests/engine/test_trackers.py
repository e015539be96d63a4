"""``train.log_with``: TensorBoard (default) and MLflow (when installed) receive the engine's
scalars and the final table through Accelerate's trackers; a tracker whose package is missing
fails before any work starts, in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import tiny_config

from ulfine.config import load_config
from ulfine.engine import reporting, train
from ulfine.errors import ConfigError


def _evaluations(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_tensorboard_gets_the_evaluations_and_the_final_table(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tiny_config(tmp_path, "method=fixmatch", "ssl.tau=0.3", "train.epochs=2", "train.log_every=1"))
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    evals = _evaluations(run)
    overall = [(e.step, e.value) for e in events.Scalars("test/overall_acc")]
    assert overall == [(e["step"], pytest.approx(e["overall_acc"])) for e in evals] and len(overall) == 2
    final = json.loads((run / "final_metrics.json").read_text())
    assert events.Scalars("final/tail_acc")[0].value == pytest.approx(final["group_acc"]["tail"])
    assert len(events.Scalars("train/loss")) == 4  # every optimiser step (log_every=1)


def test_log_with_values_and_a_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config(None, ["train.log_with=mlflow"]).train.log_with == ["mlflow"]
    assert load_config(None, ["train.log_with=none"]).train.log_with == []
    assert load_config(None, ["train.log_with=[tensorboard,wandb]"]).train.log_with == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match="train.log_with"):
        load_config(None, ["train.log_with=comet"])
    monkeypatch.setitem(reporting.TRACKER_PACKAGES, "wandb", "ulfine_no_such_package")
    with pytest.raises(ConfigError, match=r"train.log_with=wandb needs .* pip install 'ulfine\[wandb\]'"):
        train(load_config(None, ["train.log_with=wandb", "data.dataset=nowhere"]))  # fails before the data


def test_mlflow_file_store_in_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = train(tiny_config(tmp_path, "method=supervised", "train.log_with=mlflow"))
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("ulfine")
    (logged,) = client.search_runs([experiment.experiment_id])
    (evaluation,) = _evaluations(run)
    assert logged.data.metrics["test/overall_acc"] == pytest.approx(evaluation["overall_acc"])
    assert logged.data.params["method"] == "supervised" and logged.data.params["train.log_with"] == "['mlflow']"
    assert not (run / "tb").exists()


def test_wandb_offline_run_in_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = train(tiny_config(tmp_path, "method=supervised", "train.log_with=wandb"))
    (log,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    data = log.read_bytes()  # W&B's record log: protobuf items, a key then its value as JSON (field 16)
    final = json.loads((run / "final_metrics.json").read_text())
    for key, value in (("final/overall_acc", final["overall_acc"]), ("final/tail_acc", final["group_acc"]["tail"])):
        at = data.index(key.encode()) + len(key)
        assert data[at : at + 2] == b"\x82\x01"  # the value_json field follows the key
        assert json.loads(data[at + 3 : at + 3 + data[at + 2]]) == pytest.approx(value)
    assert b"test/overall_acc" in data and b"train/loss" in data
