"""Extension without editing ulfine: a method, a dataset and a PEFT module from a user's own file,
registered by ``--plugin``, validated, listed, trained and re-evaluated."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from safetensors.torch import load_file

from ulfine import registry
from ulfine.cli import main

PLUGIN = textwrap.dedent(
    '''
    """A user's plugin: one method with options, one dataset, one PEFT module."""
    import numpy as np
    import torch
    from pydantic import Field

    from ulfine.config import Section
    from ulfine.data import DATASETS, DatasetSpec, ImageSet, SourceData
    from ulfine.methods import METHODS, StepOutput
    from ulfine.methods.supervised import Supervised
    from ulfine.models.peft.base import PEFT_MODULES, vit_blocks


    class ScaledOptions(Section):
        scale: float = Field(1.0, gt=0.0)


    @METHODS.register("scaled_ce", options=ScaledOptions)
    class ScaledCE(Supervised):
        """Supervised cross-entropy times options.scale (a loss the built-ins do not have)."""

        def training_step(self, batch):
            z = self.logits(self.features(batch.x_l))
            loss = self.options.own.scale * torch.nn.functional.cross_entropy(z.float(), batch.y_l)
            return StepOutput(loss, {"loss_s": loss.detach()})


    def _read(cfg):
        rng = np.random.default_rng(0)
        make = lambda n: ImageSet(rng.integers(0, 256, (3 * n, 16, 16, 3), dtype=np.uint8),
                                  np.repeat(np.arange(3), n))
        return SourceData("stripes", ["red", "green", "blue"], make(12), make(4), native_size=16)


    DATASETS.register("stripes")(DatasetSpec("stripes", 3, ["red", "green", "blue"], 16, False,
                                             "three random classes (plugin test)", reader=_read))


    @PEFT_MODULES.register("last_norm")
    def last_norm(visual, opts):
        """Train only the LayerNorms of the last block."""
        for p in vit_blocks(visual, 1)[0].ln_1.parameters():
            p.requires_grad_(True)
    '''
)

TINY = ["model.arch=ulfine-micro-vit", "model.pretrained=none", "model.text_cache_dir=null",
        "data.dataset=stripes", "data.num_labeled_head=12", "data.num_unlabeled_head=0",
        "data.imbalance_labeled=2", "data.num_workers=0", "train.batch_size=6", "train.epochs=1",
        "train.steps_per_epoch=3", "train.progress=false", "train.device=cpu", "optim.lr=0.5"]


@pytest.fixture()
def plugin(tmp_path):
    path = tmp_path / "my_plugin.py"
    path.write_text(PLUGIN)
    yield str(path)
    for reg, name in ((registry.METHODS, "scaled_ce"), (registry.DATASETS, "stripes"),
                      (registry.PEFT_MODULES, "last_norm")):
        reg.unregister(name)
    registry._loaded.discard(str(path))


def test_plugin_entries_are_listed(plugin, capsys):
    with pytest.raises(SystemExit):
        main(["--plugin", plugin, "train", "--help"])
    help_text = capsys.readouterr().out
    assert "scaled_ce (scaled_ce.*)" in help_text and "last_norm" in help_text and "stripes" in help_text
    assert main(["--plugin", plugin, "presets"]) == 0
    assert "scaled_ce" in capsys.readouterr().out


def test_plugin_options_are_validated(plugin, tmp_path, capsys):
    code = main(["--plugin", plugin, "train", "synthetic_smoke", "method=scaled_ce", "scaled_ce.scale=-1",
                 f"output_dir={tmp_path / 'bad'}"])
    err = capsys.readouterr().err
    assert code == 2 and "scaled_ce.scale" in err and "\n" not in err.strip()
    assert not (tmp_path / "bad").exists()


def test_plugin_method_dataset_and_peft_train_and_reevaluate(plugin, tmp_path, capsys):
    runs = {}
    for scale in ("1.0", "3.0"):
        out = tmp_path / f"run{scale}"
        code = main(["--plugin", plugin, "train", "synthetic_smoke", *TINY, "method=scaled_ce",
                     f"scaled_ce.scale={scale}", "finetune=lft", "peft=last_norm", f"output_dir={out}",
                     f"cache.dir={tmp_path / 'cache'}"])
        assert code == 0, capsys.readouterr().err
        runs[scale] = load_file(str(out / "weights.safetensors"))
    # the PEFT module trained exactly the last block's ln_1, and the option changed the training
    trained = [k for k in runs["1.0"] if k.startswith("backbone.")]
    assert trained and all(".ln_1." in k for k in trained)
    assert any(not (runs["1.0"][k] == runs["3.0"][k]).all() for k in trained)
    saved = (tmp_path / "run3.0" / "config.yaml").read_text()
    assert "my_plugin.py" in saved and "scale: 3.0" in saved
    # a fresh process re-imports the plugin named in config.yaml only with consent, and re-evaluates the run
    done = subprocess.run([sys.executable, "-m", "ulfine.cli", "eval", str(tmp_path / "run3.0"), "--json",
                           "--trust-plugins"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    assert metrics["weights"] == "weights.safetensors" and 0.0 <= metrics["overall_acc"] <= 1.0


def test_a_finetune_mode_carries_the_facts_the_engine_reads():
    """The engine asks a registered mode whether the tower stays frozen (features cacheable) and
    whether it all trains; it never tests the mode's name."""
    from ulfine.config import load_config
    from ulfine.engine.assemble import uses_features
    from ulfine.models import FINETUNE_MODES, register_finetune_mode

    @register_finetune_mode("frozen_probe", frozen_tower=True)
    def frozen_probe(backbone, peft, opts):
        """A second frozen-tower mode, under another name than lp."""
        backbone.frozen_features = True
        return "frozen_probe"

    try:
        mode = FINETUNE_MODES.get("frozen_probe")
        assert mode.frozen_tower and not mode.trains_whole_tower and mode.doc.startswith("A second")
        cfg = load_config(None, ["method=supervised", "finetune=frozen_probe", "data.augment=false"])
        assert uses_features(cfg)  # as for lp: the same pixels through the same tower every epoch
        assert not uses_features(load_config(None, ["method=supervised", "finetune=fft", "data.augment=false"]))
        assert FINETUNE_MODES.get("fft").trains_whole_tower and FINETUNE_MODES.get("lp").frozen_tower
    finally:
        FINETUNE_MODES.unregister("frozen_probe")
