"""Nothing a shared folder carries runs without consent: a run or model folder whose config names a
plugin (a ``.py`` file sitting in the folder) is refused in one line by ``ulfine eval``,
``predict``, ``export``, ``ulfine.load`` and a resume, and the plugin is never imported; with
``--trust-plugins`` / ``trust_plugins=True`` it is. Plugins the user names for a fresh run are
trusted and recorded as absolute paths, as is ``data.root``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from tiny import tiny_config, tiny_overrides

import ulfine
from ulfine import registry
from ulfine.cli import main
from ulfine.config import config_to_dict, load_config, save_config
from ulfine.errors import ConfigError, UlfineError

#: a plugin that leaves a marker file when (and only when) it is imported
EVIL = "from pathlib import Path\nPath({marker!r}).write_text('imported')\n"


@pytest.fixture()
def evil(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(the plugin file, the marker it writes when imported); forgotten again afterwards."""
    folder, marker = tmp_path / "shared", tmp_path / "IMPORTED"
    folder.mkdir()
    plugin = folder / "evil.py"
    plugin.write_text(EVIL.format(marker=str(marker)))
    yield plugin, marker
    registry._loaded.discard(str(plugin))
    sys.modules.pop("ulfine_plugin_evil", None)


@pytest.fixture()
def shared_run(tmp_path: Path, evil: tuple[Path, Path]) -> Path:
    """A run folder as someone shares it: its config.yaml names the plugin beside it (relative)."""
    run = evil[0].parent
    save_config(tiny_config(tmp_path / "t"), run / "config.yaml")
    data = yaml.safe_load((run / "config.yaml").read_text())
    data["plugins"] = ["evil.py"]
    (run / "config.yaml").write_text(yaml.safe_dump(data))
    return run


@pytest.fixture()
def shared_model(tmp_path: Path, evil: tuple[Path, Path]) -> Path:
    """A model folder whose config.json names the plugin beside it (every other field valid)."""
    model = evil[0].parent
    run_config = {**config_to_dict(tiny_config(tmp_path / "t")), "plugins": ["evil.py"]}
    spec = {"format": "ulfine-model", "version": 1, "class_names": ["a", "b"], "labeled_counts": [3, 1],
            "num_unlabeled": 0, "preprocessing": {"input_size": 32},
            "backbone": {"arch": "ulfine-micro-vit", "pretrained": "none", "fingerprint": "0" * 64,
                         "included": False},
            "run_config": run_config}
    (model / "config.json").write_text(json.dumps(spec))
    save_file({"x": torch.zeros(1)}, str(model / "model.safetensors"))
    return model


def _refused(capsys: pytest.CaptureFixture[str], code: int, marker: Path) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "evil.py" in err and "--trust-plugins" in err, err
    assert not marker.exists(), "the plugin was imported"
    return err


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    return path


def test_eval_refuses_a_run_folders_plugin(shared_run, evil, capsys):
    _refused(capsys, main(["eval", str(shared_run)]), evil[1])


def test_predict_refuses_a_run_folders_plugin(shared_run, evil, tmp_path, capsys):
    out = tmp_path / "p.csv"
    _refused(capsys, main(["predict", str(shared_run), str(_image(tmp_path)), "--out", str(out)]), evil[1])
    assert not out.exists()


def test_export_refuses_a_run_folders_plugin(shared_run, evil, tmp_path, capsys):
    _refused(capsys, main(["export", str(shared_run), "--out", str(tmp_path / "model")]), evil[1])


def test_a_refused_resume_imports_nothing_and_trust_plugins_consents(shared_run, evil, tmp_path, capsys):
    args = ["train", *tiny_overrides(tmp_path / "t"), "resume=true", f"output_dir={shared_run}"]
    _refused(capsys, main(args), evil[1])
    # with consent the plugin is imported; the resume is then refused for its other config
    assert main([*args, "--trust-plugins"]) == 2
    assert evil[1].read_text() == "imported"


def test_ulfine_load_refuses_a_model_folders_plugin_unless_trusted(shared_model, evil, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"evil\.py.*--trust-plugins.*trust_plugins=True"):
        ulfine.load(shared_model, device="cpu")
    assert not evil[1].exists()
    _refused(capsys, main(["predict", str(shared_model), str(_image(tmp_path)), "--out", str(tmp_path / "p.csv")]),
             evil[1])
    with pytest.raises(UlfineError):  # consent given: imported; the fake tensors then fail to load
        ulfine.load(shared_model, device="cpu", trust_plugins=True)
    assert evil[1].read_text() == "imported"


def test_a_plugin_typed_by_the_user_is_trusted_and_paths_are_recorded_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text("LOADED = True\n")
    try:
        cfg = load_config(None, ["plugins=[mine.py]", "data.root=images"])
        assert cfg.plugins == [str(tmp_path / "mine.py")]
        assert cfg.data.root == tmp_path / "images"
        # the run folder's config now names a plugin already imported: no consent needed
        save_config(cfg, tmp_path / "run" / "config.yaml")
        monkeypatch.chdir(tmp_path / "run")
        from ulfine.config import load_saved_config

        assert load_saved_config(tmp_path / "run" / "config.yaml").plugins == [str(tmp_path / "mine.py")]
    finally:
        registry._loaded.discard(str(tmp_path / "mine.py"))
        sys.modules.pop("ulfine_plugin_mine", None)


def test_eval_and_predict_take_a_data_root_override(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = tiny_config(tmp_path, "data.dataset=folder", f"data.root={tmp_path / 'gone'}")
    save_config(cfg, run / "config.yaml")
    moved = tmp_path / "moved_here"
    assert main(["eval", str(run), "--data-root", str(moved)]) == 2
    assert str(moved) in capsys.readouterr().err
    assert main(["predict", str(run), str(_image(tmp_path)), "--out", str(tmp_path / "p.csv"),
                 "--data-root", str(moved)]) == 2
    assert str(moved) in capsys.readouterr().err
