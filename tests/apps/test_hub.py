"""Sharing a model folder on the Hugging Face Hub, with no network: ``ulfine push`` is checked up
to the requests it would send (huggingface_hub's ``HfApi`` methods record their arguments), and
``hf-hub:`` models are loaded from a real Hub cache laid out on disk as huggingface_hub lays it
out (``models--org--name/refs/<branch>`` holding a commit hash, ``snapshots/<commit>/<files>``),
read offline through ``huggingface_hub.snapshot_download``; the card carries the Hub's metadata."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
import yaml

import ulfine
from ulfine.apps.hub import snapshot_folder
from ulfine.apps.model_card import front_matter
from ulfine.apps.model_io import CARD_FILE, CONFIG_FILE, export_model
from ulfine.cli import main
from ulfine.errors import HubError, UlfineError

MAIN_SHA = "a" * 40
DEV_SHA = "b" * 40


@pytest.fixture(scope="module")
def model_dir(feature_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cached-feature LP run exported (random backbone weights, so they travel in the folder)."""
    out = tmp_path_factory.mktemp("hub_models") / "lt_model"
    export_model(feature_run, out)
    return out


def _snapshot(cache: Path, repo_id: str, sha: str, model: Path, *refs: str) -> Path:
    """``model`` as the snapshot ``sha`` of ``repo_id`` in the Hub cache ``cache``, named by the
    branches ``refs``: files in ``blobs/`` (named by content, as downloads store them), linked
    from ``snapshots/<sha>/``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in sorted(model.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(sha)  # no newline, as huggingface_hub writes it
    return snap


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache in the test's folder, downloads off."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _pixels(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]


# ------------------------------------------------------------------------------------ load
def test_hf_hub_name_loads_the_cached_snapshot_offline_and_predicts_as_the_local_folder(model_dir, hub_cache):
    snap = _snapshot(hub_cache, "org/lt-model", MAIN_SHA, model_dir, "main")
    local = ulfine.load(model_dir, device="cpu")
    hub = ulfine.load("hf-hub:org/lt-model", device="cpu")
    assert Path(hub.info["source"]) == snap
    assert hub.class_names == local.class_names
    torch.testing.assert_close(hub.logits(_pixels()), local.logits(_pixels()), rtol=0, atol=0)


def test_revision_resolves_a_branch_ref_and_a_commit_hash(model_dir, hub_cache):
    _snapshot(hub_cache, "org/lt-model", MAIN_SHA, model_dir, "main")
    dev = _snapshot(hub_cache, "org/lt-model", DEV_SHA, model_dir, "dev")
    assert snapshot_folder("hf-hub:org/lt-model@dev") == dev
    assert snapshot_folder(f"hf-hub:org/lt-model@{MAIN_SHA}").name == MAIN_SHA
    assert Path(ulfine.load("hf-hub:org/lt-model@dev", device="cpu").info["source"]) == dev


def test_a_missing_snapshot_offline_is_one_line_saying_how_to_get_it(hub_cache, tmp_path, capsys):
    with pytest.raises(HubError, match=r"not in the local Hugging Face cache .*HF_HUB_OFFLINE=1.*run the command once "
                       r"online.*or pass a local model folder"):
        ulfine.load("hf-hub:org/absent")
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    assert main(["predict", "hf-hub:org/absent@v2", str(img), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: revision v2 of hf-hub:org/absent is not in the local") and "\n" not in err


def test_predict_cli_reads_an_hf_hub_model(model_dir, hub_cache, tmp_path):
    _snapshot(hub_cache, "org/lt-model", MAIN_SHA, model_dir, "main")
    from PIL import Image

    files = []
    for i, px in enumerate(_pixels()):
        files.append(tmp_path / f"img_{i}.png")
        Image.fromarray(px).save(files[-1])
    out = tmp_path / "p.json"
    assert main(["predict", "hf-hub:org/lt-model", *map(str, files), "--out", str(out), "--device", "cpu",
                 "--topk", "2"]) == 0
    rows = json.loads(out.read_text())
    expected = ulfine.load(model_dir, device="cpu").predict(files, topk=2)
    assert [r["labels"] for r in rows] == [p.labels for p in expected]


def test_a_downloaded_folder_naming_a_plugin_is_refused_without_trust(model_dir, hub_cache, tmp_path, capsys):
    marker = tmp_path / "imported"
    plugged = tmp_path / "plugged"
    shutil.copytree(model_dir, plugged)
    spec = json.loads((plugged / CONFIG_FILE).read_text())
    spec["run_config"]["plugins"] = ["evil_plugin.py"]
    (plugged / CONFIG_FILE).write_text(json.dumps(spec))
    (plugged / "evil_plugin.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    _snapshot(hub_cache, "org/plugged", MAIN_SHA, plugged, "main")
    with pytest.raises(UlfineError, match=r"evil_plugin\.py.*trust"):
        ulfine.load("hf-hub:org/plugged", device="cpu")
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    assert main(["predict", "hf-hub:org/plugged", str(img), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--trust-plugins" in err and "\n" not in err
    assert not marker.exists()  # nothing was imported


# ------------------------------------------------------------------------------------ push
@pytest.fixture
def hub_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple, dict]]:
    """huggingface_hub's request-sending HfApi methods replaced by recorders (no network)."""
    calls: list[tuple[str, tuple, dict]] = []

    def recorder(name: str):
        def record(self, *args, **kwargs):
            calls.append((name, args, kwargs))
            return huggingface_hub.CommitInfo(commit_url="https://huggingface.co/org/lt/commit/1", commit_message="",
                                              commit_description="", oid="1" * 40) if name == "upload_folder" else None
        return record

    for name in ("create_repo", "create_branch", "upload_folder", "create_commit", "upload_file"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, recorder(name))
    return calls


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


def test_push_sends_one_commit_of_the_model_folder(model_dir, hub_calls, online, capsys):
    assert main(["push", str(model_dir), "org/lt-model", "--private", "--revision", "dev", "--token", "hf_x"]) == 0
    assert [c[0] for c in hub_calls] == ["create_repo", "create_branch", "upload_folder"]
    (_, repo_args, repo_kw), (_, _, branch_kw), (_, _, upload_kw) = hub_calls
    assert repo_args == ("org/lt-model",) and repo_kw["private"] is True and repo_kw["exist_ok"] is True
    assert branch_kw["branch"] == "dev" and branch_kw["exist_ok"] is True
    assert upload_kw["repo_id"] == "org/lt-model" and Path(upload_kw["folder_path"]) == model_dir
    assert upload_kw["revision"] == "dev" and upload_kw["token"] == repo_kw["token"] == "hf_x"
    message = upload_kw["commit_message"]
    assert "ulfine" in message and "lt_model" in message and "\n" not in message
    assert "hf-hub:org/lt-model" in capsys.readouterr().out


def test_push_to_main_is_public_by_default_and_creates_no_branch(model_dir, hub_calls, online, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert main(["push", str(model_dir), "org/lt-model"]) == 0
    assert [c[0] for c in hub_calls] == ["create_repo", "upload_folder"]
    assert hub_calls[0][2]["private"] is False and hub_calls[1][2]["revision"] is None


@pytest.mark.parametrize("case", ["offline", "no token", "not a model folder"])
def test_push_fails_in_one_line_before_any_request(case, model_dir, hub_calls, online, monkeypatch, tmp_path,
                                                   capsys):
    folder = model_dir
    if case == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if case == "no token":
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    if case == "not a model folder":
        folder = tmp_path
    args = ["push", str(folder), "org/lt-model"] + (["--token", "hf_x"] if case != "no token" else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert {"offline": "HF_HUB_OFFLINE=1", "no token": "--token", "not a model folder": "ulfine export"}[case] in err
    assert hub_calls == []


# ------------------------------------------------------------------------------------ card
def test_the_card_carries_the_hubs_metadata_with_the_final_models_test_figures(model_dir, feature_run):
    card = (model_dir / CARD_FILE).read_text()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    spec = json.loads((model_dir / CONFIG_FILE).read_text())
    final = json.loads((feature_run / "final_metrics.json").read_text())
    assert meta["library_name"] == "ulfine" and meta["license"] == "other"
    assert {"image-classification", "long-tailed", "semi-supervised", "clip", spec["method"]} <= set(meta["tags"])
    assert meta["datasets"] == [spec["run_config"]["data"]["dataset"]]
    assert "base_model" not in meta  # random backbone weights: no Hub repository to name
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["split"] == "test"
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values == {"accuracy": final["overall_acc"], "balanced_accuracy": final["balanced_acc"]}
    assert "No license was chosen" in card


def test_the_cards_license_and_base_model_follow_the_export():
    spec = {"name": "m", "method": "ulfine", "license": "apache-2.0",
            "backbone": {"arch": "ViT-B-16", "pretrained": "openai"}, "run_config": {"data": {"dataset": "cifar100"}}}
    meta = front_matter(spec, {"overall_acc": 0.5, "balanced_acc": 0.25})
    assert meta["license"] == "apache-2.0" and meta["tags"].count("ulfine") == 1
    assert meta["base_model"] == "timm/vit_base_patch16_clip_224.openai"
    assert front_matter({**spec, "backbone": {"arch": "hf-hub:org/clip", "pretrained": ""}}, {})["base_model"] \
        == "org/clip"
