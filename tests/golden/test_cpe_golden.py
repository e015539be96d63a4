"""ulfine's ``cpe`` against CPE's own code (machengcheng2016/CPE-LTSSL@dedd598).

The fixture holds 3 steps (epochs 0, 1, 2) of the fork's real ``CPE.train_step`` with the options
of its ``fixmatch_cpe_cifar10_*`` config (p_cutoff 0.95, tau 0/2/4, cut 2/4, lambda_u 1) on the
fork's own ``WideResNetCBN`` fed with feature maps (scripts/golden/make_cpe.py): every expert's
labeled and class-wise unlabeled loss, pseudo-labels, masks and confidences, the total, the
gradients of the three classifiers and of the three class-wise BatchNorms' affines, the BNs'
running statistics, and the per-expert unlabeled estimates after each step.

ulfine's CPE runs on a stand-in backbone with batch statistics whose image network is an average
pool: its own hook on that pool applies the class-wise BatchNorm to the same feature maps
(``classwise_norm=auto`` resolves to ``batchnorm``).
"""

from __future__ import annotations

import torch
from golden_fixtures import close, load, mismatches, same
from torch import nn

from ulfine.batch import Batch
from ulfine.config import load_config
from ulfine.methods import METHODS, MethodContext
from ulfine.methods.base import StepOutput
from ulfine.methods.cpe import CPE

T, META = load("cpe")
OPTS = META["options"]
COUNTS = torch.tensor(OPTS["labeled_counts"])
K, STEPS = OPTS["num_classes"], len(T["sup_loss1"])
C = OPTS["feature_map"][0]
PEER = {"experts": ("classifier", "classifier2", "classifier3"), "branches": ("BNH", "BNM", "BNT")}


class MapBackbone(nn.Module):
    """A BatchNorm-style scratch backbone whose image network only average-pools its input maps."""

    batch_statistics = True
    logit_scale = float("nan")
    embed_dim = C

    def __init__(self) -> None:
        super().__init__()
        self.visual = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


def make(*overrides: str) -> CPE:
    """ulfine's CPE with the fork's options, classifiers and BN affines."""
    tau = OPTS["tau_lb"]
    cfg = load_config(None, ["method=cpe", "head=linear", f"ssl.tau={OPTS['p_cutoff']}",
                             f"ssl.lambda_u={OPTS['lambda_u']}", f"cpe.tau_1={tau[0]}", f"cpe.tau_2={tau[1]}",
                             f"cpe.tau_3={tau[2]}", f"cpe.cut1={OPTS['cut1']}", f"cpe.cut2={OPTS['cut2']}",
                             f"cpe.ema_u={OPTS['ema_u']}", f"cpe.estimate_from_epoch={OPTS['est_epoch'] + 1}",
                             *overrides])
    ctx = MethodContext(K, [f"c{i}" for i in range(K)], COUNTS, None, float("nan"), 64, C, steps_per_epoch=1)
    m = METHODS.get("cpe").from_config(cfg, MapBackbone(), ctx)
    assert m.norm_kind == "batchnorm"
    with torch.no_grad():
        for head, name in zip(m.experts, PEER["experts"]):
            head.fc.weight.copy_(T[f"{name}.weight"])
            head.fc.bias.copy_(T[f"{name}.bias"])
        for norm, name in zip(m.classwise.norms, PEER["branches"]):
            norm.weight.copy_(T[f"{name}.weight"])
            norm.bias.copy_(T[f"{name}.bias"])
    return m


def step(m: CPE, s: int, y: torch.Tensor | None = None) -> StepOutput:
    m.zero_grad()
    out = m.training_step(Batch(T["x_lb"][s], T["y_lb"][s] if y is None else y, T["x_ulb_w"][s], T["x_ulb_s"][s],
                                idx_u=torch.arange(T["x_ulb_w"].shape[1]), step=s))
    out.loss.backward()
    m.after_optimizer_step(s)
    return out


def check_step(m: CPE, s: int, out: StepOutput) -> None:
    """Every expert's losses and targets, the gradients, then the estimates, against step s."""
    for e in (1, 2, 3):
        close(out.logs[f"loss_s_expert{e}"], T[f"sup_loss{e}"][s])
        close(out.logs[f"loss_u_expert{e}"], T[f"unsup_loss{e}"][s])
        close(out.logs[f"mask_rate_expert{e}"], T[f"mask{e}"][s].float().mean())
        close(m.u_estimate[e - 1], T[f"u_py{e}"][s])
    close(out.loss, T["total_loss"][s])
    same(out.pseudo.label, T["pseudo_label2"][s])  # expert 2: the one CPE evaluates and logs
    same(out.pseudo.mask, T["mask2"][s])
    close(out.pseudo.confidence, T["probs_x_ulb_w2"][s].max(-1).values)
    for head, name in zip(m.experts, PEER["experts"]):
        close(head.fc.weight.grad, T[f"grad.{name}.weight"][s])
        close(head.fc.bias.grad, T[f"grad.{name}.bias"][s])
    for norm, name in zip(m.classwise.norms, PEER["branches"]):
        close(norm.weight.grad, T[f"grad.{name}.weight"][s])
        close(norm.bias.grad, T[f"grad.{name}.bias"][s])


def run(m: CPE, labels: dict[int, torch.Tensor] | None = None) -> None:
    for s in range(STEPS):
        check_step(m, s, step(m, s, (labels or {}).get(s)))
    for norm, name in zip(m.classwise.norms, PEER["branches"]):
        close(norm.running_mean, T[f"{name}.running_mean"])
        close(norm.running_var, T[f"{name}.running_var"])


def test_fixture_is_cpe_with_its_cifar10_config():
    assert META["peer"] == "cpe" and META["commit"].startswith("dedd598")
    assert OPTS["tau_lb"] == [0.0, 2.0, 4.0] and (OPTS["cut1"], OPTS["cut2"]) == (2, 4)
    assert OPTS["p_cutoff"] == 0.95 and OPTS["use_cat"] and OPTS["est_epoch"] == 0
    assert (OPTS["bn_eps"], OPTS["bn_momentum"]) == (1e-5, 0.1)  # PyTorch's BatchNorm2d defaults
    close(T["p_hat_lb"], COUNTS / COUNTS.sum())
    picked = torch.cat([T[f"pseudo_label{e}"][T[f"mask{e}"]] for e in (1, 2, 3)])
    assert (picked >= OPTS["cut2"]).any() and ((picked >= OPTS["cut1"]) & (picked < OPTS["cut2"])).any()
    assert not torch.allclose(T["BNH.weight"], T["BNT.weight"])  # the branches differ
    assert not torch.allclose(T["grad.BNM.weight"][0], T["grad.BNT.weight"][0])  # and train apart


def test_every_step_matches_cpe():
    run(make())


def test_prediction_is_expert_2():
    m = make()
    m.eval()
    x = T["x_ulb_w"][0]
    branches = m.predict_branches(x)
    assert torch.equal(branches["decision"], branches["expert2"]) and torch.equal(m.predict(x), branches["expert2"])


def test_can_fail_with_another_expert_scale():
    """tau_3 4 -> 3: expert 3's labeled loss no longer matches."""
    assert mismatches(lambda: run(make("cpe.tau_3=3.0")))


def test_can_fail_with_other_cuts():
    """cut2 4 -> 5: class 4 no longer trains the T branch; L_u and the BNT gradients move."""
    assert mismatches(lambda: run(make("cpe.cut2=5")))


def test_can_fail_with_another_threshold():
    """p_cutoff 0.95 -> the lowest confidence of the fixture: every sample passes."""
    low = min(float(T[f"probs_x_ulb_w{e}"].max(-1).values.min()) for e in (1, 2, 3))
    assert mismatches(lambda: run(make(f"ssl.tau={low}")))


def test_can_fail_with_one_branch_for_all():
    """The H branch's features in all three branches (no class-wise BN): the losses and the BN
    gradients no longer match."""
    m = make()
    m.features = lambda images: CPE.features(m, images)[:, :1].expand(-1, 3, -1)
    assert mismatches(lambda: run(m))


def test_can_fail_with_a_flipped_label():
    y = T["y_lb"][0].clone()
    y[0] = (y[0] + 1) % K
    assert mismatches(lambda: run(make(), {0: y}))
