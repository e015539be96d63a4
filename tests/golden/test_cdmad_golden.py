"""ulfine's ``cdmad`` against CDMAD's own ``fixmatchcdmad.py`` (LeeHyuck/CDMAD@7cd732b).

The fixture holds every step of a real 3-epoch x 2-step run of CDMAD's ``main()``/``train()`` with
``--debiasstart 0 --tau 0.8`` and a fixed per-pixel network (scripts/golden/make_cdmad.py): the
solid image's logits, the (debiased) weak logits, the soft targets, confidences and masks, the
logits of every view, the two loss terms, and the last evaluation's raw and debiased test logits.
ulfine's CDMAD runs the same steps on the same network (a 1 x 1 convolution, LeakyReLU, average
pooling as its backbone; CDMAD's linear classifier as its ``head``), building its own solid image.

(Named ``test_cdmad_golden.py``: ``tests/methods/test_cdmad.py`` exists, and two test modules of one
basename in folders without ``__init__.py`` cannot be collected in one pytest run.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from golden_fixtures import close, load, mismatches, same
from torch import nn

from ulfine.batch import Batch
from ulfine.config import load_config
from ulfine.methods import METHODS, MethodContext
from ulfine.methods.cdmad import CDMAD

T, META = load("cdmad")
OPTS = META["options"]
K, B, STEPS = OPTS["num_classes"], OPTS["batch_size"], len(T["epoch"])
N = B * OPTS["unlabeledratio"]
VAL_ITERATION = OPTS["val_iteration"]
D = T["net.conv.weight"].shape[0]


class PixelBackbone(nn.Module):
    """The generator's network without its classifier: features of a 1 x 1 convolution and a
    LeakyReLU(0.1), averaged over the image."""

    embed_dim, logit_scale = D, float("nan")

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, D, 1)
        with torch.no_grad():
            self.conv.weight.copy_(T["net.conv.weight"])
            self.conv.bias.copy_(T["net.conv.bias"])

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x), 0.1).mean(dim=(2, 3))


def make(*overrides: str) -> CDMAD:
    """ulfine's CDMAD with CDMAD's options of the run and its network."""
    cfg = load_config(None, ["method=cdmad", "head=linear", f"ssl.tau={OPTS['tau']}", "ssl.lambda_u=1.0",
                             f"cdmad.debias_from_epoch={OPTS['debiasstart'] + 1}", *overrides])
    ctx = MethodContext(K, [f"c{i}" for i in range(K)], T["labeled_counts"], None, float("nan"), STEPS * N, D,
                        steps_per_epoch=VAL_ITERATION)
    m = METHODS.get("cdmad").from_config(cfg, PixelBackbone(), ctx)
    with torch.no_grad():
        m.head.fc.weight.copy_(T["net.output.weight"])
        m.head.fc.bias.copy_(T["net.output.bias"])
    return m


def batch(s: int, y: torch.Tensor | None = None) -> Batch:
    step = int(T["epoch"][s]) * VAL_ITERATION + s % VAL_ITERATION
    return Batch(T["inputs_x"][s], T["targets_x"][s] if y is None else y, T["inputs_u"][s], T["inputs_u2"][s],
                 idx_u=torch.arange(s * N, (s + 1) * N), step=step, u_s2=T["inputs_u3"][s])


def check_step(m: CDMAD, s: int, y: torch.Tensor | None = None) -> None:
    t = m.step_terms(batch(s, y))
    assert t.debiased == (int(T["epoch"][s]) > OPTS["debiasstart"])
    close(t.bias, T["biaseddegree"][s][0])
    close(t.logits["z_u_w"] - t.bias if t.debiased else t.logits["z_u_w"], T["outputs_u"][s])
    close(t.target, T["targets_u2"][s])
    same(t.label, T["targets_u2"][s].argmax(-1))
    close(t.confidence, T["max_p"][s])
    same(t.mask.repeat(2), T["select_mask"][s])
    close(t.logits["z_x_l"], T["logits_x"][s])
    close(t.logits["z_u_s"], T["logits_u2"][s])
    close(t.logits["z_u_s2"], T["logits_u3"][s])
    close(t.loss_x, T["Lx"][s])
    close(t.loss_u, T["Lu"][s])
    close(t.loss, T["loss"][s])


def run(m: CDMAD, labels: dict[int, torch.Tensor] | None = None) -> None:
    for s in range(STEPS):
        check_step(m, s, (labels or {}).get(s))


def test_fixture_is_cdmad_with_a_debias_switch():
    assert META["peer"] == "cdmad" and META["commit"].startswith("7cd732b")
    assert T["epoch"].tolist() == [0, 0, 1, 1, 2, 2]
    # CDMAD's solid image: ones, at its 32 px input, in the normalised input space
    assert OPTS["white_shape"] == [1, 3, 32, 32] and OPTS["white_values"] == [1.0]
    mask = T["select_mask"].bool()
    assert mask.any() and not mask.all()
    # debiasing moved some pseudo-labels: raw and debiased argmax differ somewhere
    raw = T["outputs_u"][2:] + T["biaseddegree"][2:]
    assert (raw.argmax(-1) != T["outputs_u"][2:].argmax(-1)).any()


def test_solid_image_is_cdmads_ones_in_the_input_space():
    m = make()
    s = m.solid_image(T["inputs_x"][0])
    assert s.shape == (1, *T["inputs_x"].shape[2:]) and torch.equal(s, torch.ones_like(s))


def test_every_step_matches_cdmad():
    run(make())


def test_prediction_is_cdmads_debiased_logits():
    m = make()
    m.eval()
    branches = m.predict_branches(T["test_inputs"])
    close(branches["decision"], T["test_logits_debiased"])
    close(branches["raw"], T["test_logits"])
    close(m.predict(T["test_inputs"]), T["test_logits_debiased"])
    close(m.bias_logits(T["test_inputs"]), T["test_bias"][0])


def test_can_fail_with_another_threshold():
    assert mismatches(lambda: run(make("ssl.tau=0.7")))


def test_can_fail_with_another_debias_start():
    """Debiasing from epoch 2 instead of 1: epoch 1's targets no longer match."""
    assert mismatches(lambda: run(make("cdmad.debias_from_epoch=2")))


def test_can_fail_with_another_solid_image():
    """A black (0) solid image in the normalised space instead of CDMAD's ones."""
    assert mismatches(lambda: run(make("cdmad.solid_value=0.0")))


def test_can_fail_with_a_flipped_label():
    y = T["targets_x"][0].clone()
    y[0] = (y[0] + 1) % K
    assert mismatches(lambda: run(make(), {0: y}))
