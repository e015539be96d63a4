"""Golden vectors of CPE (machengcheng2016/CPE-LTSSL@dedd598), from its own code.

Builds the algorithm as the fork's ``get_imb_algorithm`` does (semilearn/imb_algorithms/__init__.py:
a class deriving from ``CPE`` and the config's ``algorithm``, ``FixMatchDebug``), so the real
``CPE.__init__`` runs (``ImbAlgorithmBase``/``FixMatchDebug``/``AlgorithmBase.__init__``, the
``CBNNet`` wrapper with its two extra classifiers, the labeled prior from the labeled set's
targets) with the options of ``config/classic_cv_imb/fixmatch_cpe/
fixmatch_cpe_cifar10_lb1500_100_ulb3000_100_0_2_4_0.yaml`` and the defaults of the algorithms'
``get_argument`` (cut1 2, cut2 4, est_epoch 0, ema_u 0.9), then calls the real ``CPE.train_step``
for 3 steps (epochs 0, 1, 2: the estimates move from epoch 1) and back-propagates its loss.

The network is the fork's own ``WideResNetCBN`` (wrn_cbn.py) at depth 4 and widen factor 1 (no
residual blocks, 64 channels) whose ``extract`` (the convolutional body) is replaced by the
identity: its inputs are the feature maps, and its class-wise BatchNorm (BNH, BNM, BNT), pooling
and classifier run as written. The classifiers and the three BN affines are set to seeded
values, so the branches differ. What ``train_step`` computed is read from its local variables
when it calls ``process_out_dict``; the gradients after ``loss.backward()`` are read from the
modules. Datasets, loaders, optimiser and the training hooks are stubs; ``sklearn``'s
precision/recall (logged only, from the unlabeled ground truth) return NaN.

    python scripts/golden/make_cpe.py --peer-repo <clone of machengcheng2016/CPE-LTSSL>

writes tests/golden/fixtures/cpe.{safetensors,json}.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import fakes
import numpy as np
import torch
import yaml
from fakes import USBArgs, caller_locals, command, legacy_torch, open_peer, snapshot, stub_usb_hooks, write_fixture
from peer import USB_CORE, provenance, stub_module
from torch import nn

NAME = "cpe"
CONFIG = "config/classic_cv_imb/fixmatch_cpe/fixmatch_cpe_cifar10_lb1500_100_ulb3000_100_0_2_4_0.yaml"
PATHS = [
    "semilearn/imb_algorithms/cpe/cpe.py",
    "semilearn/algorithms/fixmatchdebug/fixmatchdebug.py",
    "semilearn/nets/wrn/wrn_cbn.py",
    "semilearn/nets/utils.py",
    *USB_CORE,
    CONFIG,
]
K, C, H, W = 6, 64, 1, 2  # classes; channels of a widen-1 WRN; feature map size
COUNTS = [20, 12, 7, 4, 2, 1]  # labeled images per class (ranks = indices: head 0-1, medium 2-3, tail 4-5)
B_L, STEPS = 3, 3  # labeled batch (the unlabeled one is uratio x B_L); steps = epochs 0, 1, 2
STEP_VALUES = ["sup_loss1", "sup_loss2", "sup_loss3", "unsup_loss1", "unsup_loss2", "unsup_loss3",
               "mask1", "mask2", "mask3", "pseudo_label1", "pseudo_label2", "pseudo_label3",
               "probs_x_ulb_w1", "probs_x_ulb_w2", "probs_x_ulb_w3", "total_loss"]


def nan_scores(y_true: list[int], y_pred: list[int], average: Any = None, zero_division: Any = None) -> np.ndarray:
    """sklearn's per-class precision/recall, as NaN: CPE only logs them (from y_ulb)."""
    return np.full(len(set(y_true) | set(y_pred)), np.nan)


class LabeledSet:
    """What ``CPE.__init__`` reads of the labeled set: its targets."""

    def __init__(self) -> None:
        self.targets = np.repeat(np.arange(K), COUNTS).tolist()

    def __len__(self) -> int:
        return len(self.targets)


def stub_semilearn() -> None:
    """Register what the executed files import besides the code the step runs."""
    stub_usb_hooks(precision_score=nan_scores, recall_score=nan_scores)
    registry = importlib.import_module("semilearn.core.utils.registry")
    stub_module("semilearn.core.utils", ALGORITHMS=registry.ALGORITHMS, IMB_ALGORITHMS=registry.IMB_ALGORITHMS,
                get_dataset=lambda *a, **k: {"train_lb": LabeledSet(), "train_ulb": [0] * 64, "eval": None,
                                             "test": None},
                get_data_loader=lambda *a, **k: None,  # no loaders: the steps get their batches directly
                get_optimizer=lambda *a, **k: None,
                get_cosine_schedule_with_warmup=lambda *a, **k: None,
                Bn_Controller=type("Bn_Controller", (), {}))
    base = importlib.import_module("semilearn.core.algorithmbase")
    stub_module("semilearn.core", AlgorithmBase=base.AlgorithmBase, ImbAlgorithmBase=base.ImbAlgorithmBase)


def network(wrn_cbn: Any) -> Any:
    """The fork's ``WideResNetCBN`` with no residual blocks; ``extract`` passes feature maps through."""
    def build(num_classes: int, **kw: Any) -> nn.Module:
        net = wrn_cbn.WideResNetCBN(first_stride=1, num_classes=num_classes, depth=4, widen_factor=1)
        net.extract = lambda x: x
        return net
    return build


def parameters(seed: int) -> dict[str, torch.Tensor]:
    """The three experts' classifiers and the three branches' BN affines."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in ("classifier", "classifier2", "classifier3"):
        out[f"{name}.weight"] = torch.randn(K, C, generator=g) * 0.6
        out[f"{name}.bias"] = torch.randn(K, generator=g) * 0.3
    for name in ("BNH", "BNM", "BNT"):
        out[f"{name}.weight"] = 1.0 + 0.3 * torch.randn(C, generator=g)
        out[f"{name}.bias"] = 0.2 * torch.randn(C, generator=g)
    return out


def inputs(seed: int, b_u: int) -> list[dict[str, torch.Tensor]]:
    """Per step: labeled maps and labels, weak and strong unlabeled maps, unlabeled labels."""
    g = torch.Generator().manual_seed(1000 + seed)

    def maps(n: int) -> torch.Tensor:
        return torch.randn(n, C, H, W, generator=g) * torch.empty(n, 1, 1, 1).uniform_(0.5, 2.0, generator=g)

    return [{"x_lb": maps(B_L), "y_lb": torch.randint(0, K, (B_L,), generator=g), "x_ulb_w": maps(b_u),
             "x_ulb_s": maps(b_u), "y_ulb": torch.randint(0, K, (b_u,), generator=g)} for _ in range(STEPS)]


def modules(algorithm: Any) -> dict[str, nn.Module]:
    net = algorithm.model
    return {"classifier": net.backbone.classifier, "classifier2": net.classifier2, "classifier3": net.classifier3,
            "BNH": net.backbone.BNH, "BNM": net.backbone.BNM, "BNT": net.backbone.BNT}


def run(algorithm: Any, params: dict[str, torch.Tensor], steps: list[dict[str, torch.Tensor]]
        ) -> list[dict[str, Any]]:
    """The real ``train_step`` on each step's inputs, as epochs 0, 1, 2, with its loss back-propagated."""
    mods = modules(algorithm)
    with torch.no_grad():
        for key, value in params.items():
            owner, attr = key.split(".")
            getattr(mods[owner], attr).copy_(value)
    seen: dict[str, Any] = {}
    real_out = algorithm.process_out_dict

    def spy(*a: Any, **kw: Any) -> Any:  # train_step calls it once its losses are computed
        seen.update(snapshot(caller_locals(), STEP_VALUES))
        return real_out(*a, **kw)

    algorithm.process_out_dict = spy
    records = []
    for s, x in enumerate(steps):
        algorithm.epoch, algorithm.it = s, s + 1
        algorithm.model.zero_grad()
        out, _ = algorithm.train_step(**x)
        out["loss"].backward()
        rec = {**seen, **{f"u_py{e}": getattr(algorithm, f"u_py{e}").clone() for e in (1, 2, 3)}}
        for name, m in mods.items():
            rec[f"grad.{name}.weight"] = m.weight.grad.clone()
            rec[f"grad.{name}.bias"] = m.bias.grad.clone()
        records.append(rec)
    algorithm.process_out_dict = real_out
    return records


def varied(records: list[dict[str, Any]]) -> bool:
    """Every expert's mask passes some and stops some samples at every step, and the confident
    pseudo-labels reach medium and tail classes."""
    labels = []
    for r in records:
        for e in (1, 2, 3):
            m = r[f"mask{e}"]
            if not 0 < int(m.sum()) < len(m):
                return False
            labels.append(r[f"pseudo_label{e}"][m])
    picked = torch.cat(labels)
    return bool(((picked >= 2) & (picked < 4)).any() and (picked >= 4).any())


def main() -> None:
    args, peer = open_peer(__doc__.splitlines()[0], "cpe", PATHS)
    stub_semilearn()
    cpe = importlib.import_module("semilearn.imb_algorithms.cpe.cpe")
    fixmatchdebug = importlib.import_module("semilearn.algorithms.fixmatchdebug.fixmatchdebug")
    wrn_cbn = importlib.import_module("semilearn.nets.wrn.wrn_cbn")

    options = yaml.safe_load((Path(peer.root) / CONFIG).read_text())
    peer_args = USBArgs(**options)
    for argument in [*cpe.CPE.get_argument(), *fixmatchdebug.FixMatchDebug.get_argument()]:
        key = argument.name.lstrip("-")
        if getattr(peer_args, key) is None:  # argparse's default: not in the config
            setattr(peer_args, key, argument.default)
    peer_args.gpu, peer_args.distributed, peer_args.num_classes = None, False, K

    # the fork's get_imb_algorithm: the imbalanced algorithm over the config's base algorithm
    algorithm_class = type("DummyClass", (cpe.CPE, fixmatchdebug.FixMatchDebug), {})
    with legacy_torch(cpu_for_cuda=True):
        for seed in range(200):
            torch.manual_seed(seed)
            algorithm = algorithm_class(args=peer_args, net_builder=network(wrn_cbn))
            b_u = B_L * peer_args.uratio
            params, steps = parameters(seed), inputs(seed, b_u)
            records = run(algorithm, params, steps)
            if varied(records):
                break
        else:
            raise SystemExit("no seed gave varied masks and medium/tail pseudo-labels")

    tensors: dict[str, torch.Tensor] = {**params, "p_hat_lb": algorithm.p_hat_lb.float()}
    for key in ("x_lb", "y_lb", "x_ulb_w", "x_ulb_s"):  # not y_ulb: only CPE's logging reads it
        tensors[key] = torch.stack([x[key] for x in steps])
    tensors.update(fakes.stack_steps(records))
    for name in ("BNH", "BNM", "BNT"):
        bn = modules(algorithm)[name]
        tensors[f"{name}.running_mean"], tensors[f"{name}.running_var"] = bn.running_mean, bn.running_var
    meta = provenance(peer, command("make_cpe.py"), seed=seed, config=CONFIG, options={
        "p_cutoff": algorithm.p_cutoff, "lambda_u": algorithm.lambda_u, "use_cat": algorithm.use_cat,
        "tau_lb": [algorithm.tau_lb1, algorithm.tau_lb2, algorithm.tau_lb3], "cut1": algorithm.cut1,
        "cut2": algorithm.cut2, "est_epoch": algorithm.est_epoch, "ema_u": algorithm.ema_u,
        "uratio": peer_args.uratio, "num_classes": K, "labeled_counts": COUNTS, "labeled_batch": B_L,
        "feature_map": [C, H, W], "bn_eps": algorithm.model.backbone.BNH.eps,
        "bn_momentum": algorithm.model.backbone.BNH.momentum},
        executed="CPE.__init__ over FixMatchDebug (as get_imb_algorithm composes them) and CPE.train_step "
        "x3 with loss.backward(); the network is the fork's WideResNetCBN (depth 4, widen 1) with "
        "extract() as the identity on given feature maps",
        legacy_torch=".cuda() stays on the CPU",
        stubs="datasets, loaders, optimiser, training hooks; sklearn precision/recall (logged) return NaN")
    write_fixture(args.out, NAME, tensors, meta)


if __name__ == "__main__":
    main()
