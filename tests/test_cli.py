"""The command line: presets, splits, help texts, and one-line errors without tracebacks."""

import json
import pickle

import numpy as np
import pytest

from ulfine.cli import build_parser, main
from ulfine.config import list_presets
from ulfine.data.splits import class_counts


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_standard_setting_has_a_preset():
    names = set(list_presets())
    for n1, m1, gammas in [(1500, 3000, (100, 150)), (500, 4000, (100, 150))]:
        for g in gammas:
            for order in ("consistent", "uniform", "reversed"):
                assert f"cifar10_n{n1}_m{m1}_g{g}_{order}" in names
    for n1, m1, gammas in [(150, 300, (10, 15)), (50, 400, (10, 20))]:
        for g in gammas:
            for order in ("consistent", "uniform", "reversed"):
                assert f"cifar100_n{n1}_m{m1}_g{g}_{order}" in names
    assert {"stl10_n150_g10", "stl10_n450_g20"} <= names
    assert any(n.startswith("imagenet127") for n in names)


def test_train_help_lists_every_preset(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in list_presets():
        assert name in out
    assert "method=ulfine" in out


def test_splits_json_is_exactly_the_planned_counts(capsys):
    code, out, _ = run_cli(capsys, "splits", "cifar10_n1500_m3000_g100_reversed", "--json")
    assert code == 0
    payload = json.loads(out)
    assert list(payload) == ["classes", "labeled", "unlabeled"]
    assert payload["classes"][0] == "airplane" and len(payload["classes"]) == 10
    assert payload["labeled"] == class_counts(1500, 10, 100) == [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    assert payload["unlabeled"] == class_counts(3000, 10, 100)[::-1]


@pytest.mark.parametrize("order", ["overrides first", "options first"])
def test_splits_json_applies_overrides(capsys, order):
    args = ["data.unlabeled_order=uniform", "--json"]
    code, out, _ = run_cli(capsys, "splits", "cifar100_n150_m300_g10_consistent",
                           *(args if order == "overrides first" else args[::-1]))
    payload = json.loads(out)
    assert code == 0 and len(payload["labeled"]) == 100
    assert payload["labeled"][0] == 150 and payload["labeled"][-1] == 15
    assert payload["unlabeled"] == [300] * 100


def test_splits_table_reports_the_realised_split_when_data_is_present(capsys, tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    per_batch = 40  # 200 train images, 20 per class
    for b in range(1, 6):
        labels = (np.arange(per_batch) % 10).tolist()
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        (base / f"data_batch_{b}").write_bytes(pickle.dumps({"labels": labels, "data": data}))
    (base / "test_batch").write_bytes(
        pickle.dumps({"labels": list(range(10)), "data": rng.integers(0, 256, (10, 3072), dtype=np.uint8)})
    )
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    code, out, err = run_cli(
        capsys, "splits", "cifar10_n1500_m3000_g100_consistent", f"data.root={tmp_path}",
        "data.num_labeled_head=10", "data.num_unlabeled_head=8", "data.imbalance_labeled=10",
        "data.imbalance_unlabeled=8",
    )
    assert code == 0, err
    assert "realised labeled" in out
    # the realised labeled column repeats the planned counts 10 .. 1
    rows = [line for line in out.splitlines() if line.startswith("│ 9 ")]
    assert rows and rows[0].split("│")[3].strip() == "1" and rows[0].split("│")[5].strip() == "1"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["splits", "no_such_preset"], "unknown preset 'no_such_preset'"),
        (["splits", "cifar10_n1500_m3000_g100_consistent", "data.gamma=3"], "unknown key 'data.gamma'"),
        (["splits", "cifar10_n1500_m3000_g100_consistent", "data.imbalance_labeled=0.5"],
         "data.imbalance_labeled"),
        (["train", "cifar10_n1500_m3000_g100_consistent", "ssl.tau=2"], "ssl.tau"),
        (["eval", "/no/such/run"], "does not exist"),
    ],
)
def test_bad_input_gets_one_line_error(capsys, argv, expected):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_train_takes_an_image_folder_or_no_preset(tmp_path):
    from ulfine.cli import _train_args
    from ulfine.config import load_config
    from ulfine.engine.assemble import data_config

    args = build_parser().parse_args(["train", "--data", str(tmp_path), "model.arch=ulfine-micro-vit"])
    preset, overrides = _train_args(args)
    cfg = load_config(preset, overrides)
    assert (cfg.preset, cfg.data.dataset, cfg.data.root, cfg.method) == ("folder", "folder", tmp_path, "ulfine")
    assert cfg.data.num_labeled_head is None and cfg.data.num_unlabeled_head is None
    assert data_config(cfg).image_size == 32  # the micro ViT's input size: images are resized once
    assert data_config(load_config("folder", ["model.arch=ViT-B-16"])).image_size == 224
    assert data_config(load_config("folder", ["data.image_size=48"])).image_size == 48
    assert data_config(load_config("cifar10_n500_m4000_g100_consistent")).image_size is None  # native 32 px
    assert _train_args(build_parser().parse_args(["train", "method=supervised", "seed=1"])) == (
        None, ["method=supervised", "seed=1"])


def test_every_standard_setting_has_a_scratch_preset():
    """<setting>_scratch: the same split, a scratch backbone and ACR's budget."""
    from ulfine.config import load_config

    names = set(list_presets())
    standard = [n for n in names if not n.endswith("_scratch") and n.startswith(("cifar", "stl10", "imagenet127"))]
    assert len(standard) == 30 and all(f"{n}_scratch" in names for n in standard)
    for name in ("cifar100_n50_m400_g20_reversed", "imagenet127_64px"):
        clip, scratch = load_config(name), load_config(f"{name}_scratch")
        assert scratch.data == clip.data and scratch.model.pretrained == "none" and scratch.finetune == "fft"
        assert scratch.train.epochs * scratch.train.steps_per_epoch == 250_000 and scratch.train.batch_size == 64
    assert load_config("imagenet127_64px_scratch").model.image_size == 64
    assert load_config("stl10_n450_g10_scratch").model.arch == "wrn-28-2"

