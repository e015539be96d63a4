"""The typed config: defaults in one place, overrides, validation that names the key."""

from pathlib import Path

import pytest
import yaml

from ulfine.config import (
    Config,
    load_config,
    load_recipes,
    load_saved_config,
    parse_overrides,
    save_config,
)
from ulfine.errors import ConfigError


@pytest.fixture()
def preset_root(tmp_path, monkeypatch):
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "base_one.yaml").write_text(
        "# a base preset\ndata:\n  dataset: cifar100\n  num_labeled_head: 150\n  imbalance_labeled: 10\n"
    )
    (presets / "child.yaml").write_text(
        "# extends base_one\nbase: base_one\ndata:\n  imbalance_labeled: 15\nssl:\n  tau: 0.9\n"
    )
    (presets / "loop_a.yaml").write_text("base: loop_b\n")
    (presets / "loop_b.yaml").write_text("base: loop_a\n")
    monkeypatch.setenv("ULFINE_CONFIG_DIR", str(tmp_path))
    return presets


def test_defaults_are_the_documented_recipe():
    cfg = Config()
    assert cfg.method == "fixmatch" and cfg.finetune == "lft" and cfg.peft == "adaptformer"
    assert cfg.ssl.tau == 0.7 and cfg.ssl.mu == 1 and cfg.ssl.lambda_u == 1.0
    assert cfg.optim.lr == 0.03 and cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == 5e-4
    assert cfg.adaptformer.bottleneck == 64
    assert cfg.adaptformer.scale == 0.1
    assert cfg.vpt.length == 10 and cfg.lora.rank == 8
    assert cfg.ulfine.beta == 0.9 and cfg.ulfine.mu_paf == 0.1 and cfg.ulfine.lambda_orth == 0.1
    assert cfg.eval.ece_bins == 15 and cfg.data.labeled_in_unlabeled is False
    assert cfg.data.selection == "shuffle" and cfg.data.pin_last is True


def test_parse_overrides_nests_and_parses_yaml_values():
    assert parse_overrides(["data.root=/x", "ssl.tau=0.95", "train.ema=null", "seed=3"]) == {
        "data": {"root": "/x"},
        "ssl": {"tau": 0.95},
        "train": {"ema": None},
        "seed": 3,
    }
    assert parse_overrides(["model.templates=['a {}.', 'the {}.']"]) == {
        "model": {"templates": ["a {}.", "the {}."]}
    }


def test_overrides_apply_on_top_of_preset_and_base(preset_root):
    cfg = load_config("child", ["ssl.tau=0.95", "output_dir=runs/x", "seed=4"])
    assert cfg.preset == "child"
    assert cfg.data.dataset == "cifar100"  # from the base preset
    assert cfg.data.num_labeled_head == 150
    assert cfg.data.imbalance_labeled == 15.0  # child overrides base
    assert cfg.ssl.tau == 0.95  # command line overrides child
    assert cfg.output_dir == Path("runs/x") and cfg.seed == 4


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.imbalance_labeled=0.5", "data.imbalance_labeled"),  # gamma < 1
        ("data.num_labeled_head=-3", "data.num_labeled_head"),  # negative count
        ("ssl.tau=1.2", "ssl.tau"),  # threshold outside [0, 1]
        ("ssl.tau=-0.1", "ssl.tau"),
        ("train.epochs=many", "train.epochs"),  # wrong type
        ("finetune=partial", "finetune"),  # not a choice
        ("ulfine.mu_paf=2", "ulfine.mu_paf"),
    ],
)
def test_invalid_values_fail_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert key in message and "\n" not in message


def test_unknown_keys_fail_naming_the_key():
    with pytest.raises(ConfigError, match="unknown key 'data.imbalance'"):
        load_config(None, ["data.imbalance=10"])
    with pytest.raises(ConfigError, match="unknown key 'optimizer'"):
        load_config(None, ["optimizer.lr=0.1"])


def test_malformed_override_and_unknown_preset(preset_root):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["ssl.tau"])
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config("loop_a")


def test_group_fractions_must_fit():
    with pytest.raises(ConfigError, match="head_fraction"):
        load_config(None, ["eval.head_fraction=0.7", "eval.tail_fraction=0.5"])


def test_resolved_config_round_trips(tmp_path, preset_root):
    cfg = load_config("child", ["ulfine.prior=labeled+pseudo"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["ssl"]["tau"] == 0.9 and saved["ulfine"]["prior"] == "labeled+pseudo"
    assert "optim" in saved and saved["optim"]["lr"] == 0.03  # defaults are written too
    assert load_saved_config(tmp_path / "run" / "config.yaml") == cfg


def test_budget_cuts_epochs_first_then_steps():
    """--budget F: ACR's 500 x 500 steps cut to 0.1 -> 50 epochs of 500; to 0.001 -> 1 epoch of 250."""
    from ulfine.config.loader import apply_budget

    full = load_config(None, ["train.epochs=500", "train.steps_per_epoch=500"])
    assert (apply_budget(full, 0.1).train.epochs, apply_budget(full, 0.1).train.steps_per_epoch) == (50, 500)
    short = load_config(None, ["train.epochs=500", "train.steps_per_epoch=500"], budget=0.001)
    assert (short.train.epochs, short.train.steps_per_epoch) == (1, 250)
    assert apply_budget(full, 1.0) is full and full.train.epochs == 500  # the input is not changed
    with pytest.raises(ConfigError, match="--budget must be in"):
        apply_budget(full, 0.0)


def test_fixmatch_cosine_schedule_and_nesterov_by_hand():
    import math

    import torch

    from ulfine.engine.optim import build_optimizer
    from ulfine.schedule import lr_factor

    assert lr_factor(0, 100, 0, "cosine_7_16") == 1.0
    assert lr_factor(50, 100, 0, "cosine_7_16") == pytest.approx(math.cos(7 * math.pi * 0.5 / 16))
    assert lr_factor(100, 100, 0, "cosine_7_16") == pytest.approx(math.cos(7 * math.pi / 16))  # ~0.195
    cfg = load_config(None, ["optim.nesterov=true"])
    opt = build_optimizer(torch.nn.Linear(2, 2), cfg.optim)
    assert all(g["nesterov"] for g in opt.param_groups)


def test_recipes_are_data_read_as_overrides(tmp_path, monkeypatch):
    """Recipes live in configs/recipes/*.yaml: the shipped ones validate as overrides, and a
    recipe file's values come back as ``key=value`` strings in file order (YAML booleans and nulls
    written as the loader reads them)."""
    from ulfine.config import recipe_overrides

    assert recipe_overrides("microworld", "tuned", "fixmatch") == ("ssl.tau=0.95",)
    assert recipe_overrides("microworld", "tuned", "ulfine") == ()  # ULFine's are the code's defaults
    for name, groups in (("published", [[]]), ("microworld", [["strategy"], ["tuned"], ["scaled"]])):
        for group in groups:
            for key in load_recipes(name) if not group else load_recipes(name)[group[0]]:
                load_config(None, list(recipe_overrides(name, *group, key)))  # every value validates
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text("m:\n  train.ema: null\n  data.augment: false\n")
    monkeypatch.setenv("ULFINE_CONFIG_DIR", str(tmp_path))
    assert recipe_overrides("mine", "m") == ("train.ema=null", "data.augment=false")
    with pytest.raises(ConfigError, match="does not exist"):
        recipe_overrides("absent", "m")


def test_legacy_peft_options_load_as_the_modules_own_sections():
    """A config.yaml written before each PEFT module had its own section still loads, with the
    AdaptFormer form it trained (the ln_2 input, no dropout); unknown old keys are named."""
    from ulfine.config.schema import Config

    cfg = Config.model_validate({"peft": "vpt", "peft_options": {"vpt_length": 5, "last_k_blocks": 2,
                                                                  "adaptformer_bottleneck": 8}})
    assert cfg.vpt.length == 5 and cfg.vpt.last_k_blocks == 2 and cfg.adaptformer.bottleneck == 8
    assert cfg.adaptformer.layernorm == "block" and cfg.adaptformer.dropout == 0.0
    assert Config().adaptformer.layernorm == "own" and Config().adaptformer.dropout == 0.1
    with pytest.raises(ConfigError, match="peft_options.nope"):
        Config.model_validate({"peft_options": {"nope": 1}})
