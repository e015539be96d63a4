"""Golden vectors of USB's FixMatch (microsoft/Semi-supervised-learning@1ef4cbe), from its own code.

Runs the real ``FixMatch.__init__`` (and so ``AlgorithmBase.__init__``, with USB's hooks
``PseudoLabelingHook`` and ``FixedThresholdingHook``, ``CELoss`` and ``ConsistencyLoss``) with the
options of USB's ``config/classic_cv/fixmatch/fixmatch_cifar10_40_0.yaml``, then calls the real
``FixMatch.train_step`` once on given logits: the network is an identity that returns its input as
``logits``. What ``train_step`` computed is read from its local variables when it calls
``process_out_dict``. Datasets, loaders, optimiser, scheduler and the training hooks the step
does not call are stubs.

    python scripts/golden/make_usb.py --peer-repo <clone of microsoft/Semi-supervised-learning>

writes tests/golden/fixtures/usb_fixmatch.{safetensors,json}.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
import yaml
from fakes import USBArgs, caller_locals, command, open_peer, snapshot, stub_usb_hooks, unused, write_fixture
from peer import USB_CORE, provenance, stub_module
from torch import nn

NAME = "usb_fixmatch"
CONFIG = "config/classic_cv/fixmatch/fixmatch_cifar10_40_0.yaml"
PATHS = [
    *USB_CORE,
    "semilearn/algorithms/fixmatch/fixmatch.py",
    CONFIG,
]
K, B_L, B_U = 10, 8, 16  # classes, labeled and unlabeled batch
PERTURBED_TAU = 0.9  # the test's "can fail" threshold: some confidences must lie in [0.9, p_cutoff)


class IdentityNet(nn.Module):
    """The network: returns its input as the logits (and as the features)."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": x, "feat": x}


def stub_usb() -> None:
    """Register what ``algorithmbase.py`` imports besides the loss and hook code the step runs."""
    stub_usb_hooks()
    registry = importlib.import_module("semilearn.core.utils.registry")
    stub_module("semilearn.core.utils", ALGORITHMS=registry.ALGORITHMS,
                get_dataset=lambda *a, **k: None,  # no dataset: AlgorithmBase builds no loaders
                get_data_loader=unused("get_data_loader"),
                get_optimizer=lambda *a, **k: None,
                get_cosine_schedule_with_warmup=lambda *a, **k: None,
                Bn_Controller=type("Bn_Controller", (), {}))


def inputs(seed: int, p_cutoff: float) -> dict[str, torch.Tensor]:
    """Seeded logits whose weak-view confidences fall on both sides of p_cutoff and of 0.9."""
    g = torch.Generator().manual_seed(seed)

    def logits(n: int) -> torch.Tensor:
        scale = torch.empty(n, 1).uniform_(0.5, 7.0, generator=g)
        return torch.randn(n, K, generator=g) * scale

    x = {"x_lb": logits(B_L), "y_lb": torch.randint(0, K, (B_L,), generator=g),
         "x_ulb_w": logits(B_U), "x_ulb_s": logits(B_U)}
    conf = torch.softmax(x["x_ulb_w"], -1).max(-1).values
    ok = (conf >= p_cutoff).sum() >= 3 and (conf < PERTURBED_TAU).sum() >= 3
    between = ((conf >= PERTURBED_TAU) & (conf < p_cutoff)).sum() >= 2
    return x if ok and between else {}


def main() -> None:
    args, peer = open_peer(__doc__.splitlines()[0], "usb", PATHS)
    stub_usb()
    fixmatch = importlib.import_module("semilearn.algorithms.fixmatch.fixmatch")

    options = yaml.safe_load((Path(peer.root) / CONFIG).read_text())
    usb_args = USBArgs(**options)
    usb_args.gpu, usb_args.distributed, usb_args.num_classes = None, False, K
    algorithm = fixmatch.FixMatch(usb_args, net_builder=lambda **kw: IdentityNet())

    seed = next(s for s in range(1000) if inputs(s, algorithm.p_cutoff))
    x = inputs(seed, algorithm.p_cutoff)
    seen: dict[str, Any] = {}
    real_out = algorithm.process_out_dict

    def spy(*a: Any, **kw: Any) -> Any:  # train_step calls it once its losses are computed
        seen.update(snapshot(caller_locals(), [
            "logits_x_lb", "logits_x_ulb_w", "logits_x_ulb_s", "sup_loss", "probs_x_ulb_w", "mask",
            "pseudo_label", "unsup_loss", "total_loss"]))
        return real_out(*a, **kw)

    algorithm.process_out_dict = spy
    out, log = algorithm.train_step(**x)
    assert torch.equal(out["loss"].detach(), seen["total_loss"])
    assert torch.equal(seen["logits_x_ulb_w"], x["x_ulb_w"])  # the identity net and use_cat's split

    tensors = {**x, **{k: seen[k] for k in ("sup_loss", "unsup_loss", "total_loss", "mask", "pseudo_label")},
               "confidence": seen["probs_x_ulb_w"].max(-1).values}
    meta = provenance(peer, command("make_usb.py"), seed=seed, config=CONFIG, options={
        "p_cutoff": algorithm.p_cutoff, "T": algorithm.T, "hard_label": algorithm.use_hard_label,
        "lambda_u": algorithm.lambda_u, "use_cat": algorithm.use_cat, "num_classes": K},
        log_dict=log, executed="FixMatch.__init__ (AlgorithmBase.__init__, set_hooks) and "
        "FixMatch.train_step on an identity network")
    write_fixture(args.out, NAME, tensors, meta)


if __name__ == "__main__":
    main()
