"""Golden vectors of DASO's FixMatch + logit adjustment (ytaek-oh/daso@3541a6c), from its own code.

Builds DASO's config from its own ``lib/config/defaults.py`` and ``configs/cifar10/fixmatch.yaml``
with ``ALGORITHM.LOGIT_ADJUST.APPLY True`` (TAU 1, the default), runs the real constructors
(``FixMatch`` -> ``SemiSupervised`` -> ``BaseAlgorithm`` -> ``BaseTrainer``: the labeled loss, the
unlabeled loss from DASO's loss builder, p_data from the labeled class counts) and then the real
``FixMatch.run_step`` once, on an identity network (logits = input * a scalar weight of 1, so the
backward pass runs). What ``run_step`` computed is read from its local variables when it calls
``_write_metrics``. Model/optimiser/loader/EMA builders, writers and loggers are stubs; the
optimiser has learning rate 0.

PyTorch >= 1.5 refuses ``detach_()`` on a view, which ``run_step`` calls on the weak logits; DASO
ran on PyTorch 1.4 (its README), where it detached; :func:`fakes.legacy_torch` gives that back and
keeps on the CPU the tensors DASO moves to ``cfg.GPU_ID``.

    python scripts/golden/make_daso.py --peer-repo <clone of ytaek-oh/daso>

writes tests/golden/fixtures/daso_fixmatch_la.{safetensors,json}.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from fakes import (
    CfgNode,
    caller_locals,
    command,
    legacy_torch,
    open_peer,
    snapshot,
    unused,
    write_fixture,
)
from peer import DASO_BASES, DASO_LOSSES, provenance, stub_module
from torch import nn

NAME = "daso_fixmatch_la"
CONFIG = "configs/cifar10/fixmatch.yaml"
OPTS = ["ALGORITHM.LOGIT_ADJUST.APPLY", "True"]  # FixMatch+LA: the labeled loss on z + tau log p_data
PATHS = [
    "lib/algorithm/fixmatch.py",
    *DASO_BASES,
    *DASO_LOSSES,
    "lib/utils/meters.py",
    "lib/dataset/utils.py",
    "lib/config/defaults.py",
    CONFIG,
]
COUNTS = [100, 60, 36, 22, 13, 8, 5, 3, 2, 1]  # labeled images per class (long-tailed)
B_L, B_U = 8, 16
PERTURBED_TAU = 0.9


class ScaledIdentity(nn.Module):
    """The network: logits = input * w with w = 1 (a parameter, so DASO's backward pass runs)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


class Loader:
    """A data loader holding one batch; ``dataset.num_samples_per_class`` as DASO's datasets."""

    def __init__(self, batch: tuple[Any, ...], counts: list[int] | None = None) -> None:
        self.batch = batch
        self.dataset = type("Dataset", (), {"num_samples_per_class": list(enumerate(counts or []))})()

    def __iter__(self) -> Any:
        return iter([self.batch])


class Nothing:
    """A writer, logger or EMA model the step does not need."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def update(self, *args: Any, **kwargs: Any) -> float:
        return 0.0


def inputs(seed: int, conf_thres: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = len(COUNTS)

    def logits(n: int) -> torch.Tensor:
        return torch.randn(n, k, generator=g) * torch.empty(n, 1).uniform_(0.5, 7.0, generator=g)

    x = {"l_images": logits(B_L), "labels": torch.randint(0, k, (B_L,), generator=g),
         "ul_weak": logits(B_U), "ul_strong": logits(B_U)}
    conf = torch.softmax(x["ul_weak"], -1).max(-1).values
    ok = (conf >= conf_thres).sum() >= 3 and (conf < PERTURBED_TAU).sum() >= 3
    return x if ok else {}


def stub_daso(batches: dict[str, tuple[Any, ...]]) -> None:
    """Register the builders and utilities DASO's trainer imports but the step does not check."""
    stub_module("yacs.config", CfgNode=CfgNode)
    meters = importlib.import_module("lib.utils.meters")
    stub_module("lib.utils", AverageMeter=meters.AverageMeter, Meters=meters.Meters,
                get_last_n_median=meters.get_last_n_median, save_checkpoint=unused("save_checkpoint"))
    stub_module("lib.utils.writer", CommonMetricPrinter=Nothing, JSONWriter=Nothing, TensorboardWriter=Nothing)
    stub_module("lib.utils.dist_logger", DistributionLogger=Nothing)
    importlib.import_module("lib.dataset.utils")
    stub_module("lib.dataset", build_data_loaders=lambda cfg: (
        Loader(batches["l"], COUNTS), Loader(batches["ul"]), None, None))
    stub_module("lib.solver", build_optimizer=lambda cfg, model: torch.optim.SGD(model.parameters(), lr=0.0),
                build_lr_scheduler=lambda *a, **k: None)
    importlib.import_module("lib.models")
    stub_module("lib.models", EMAModel=Nothing, build_model=lambda cfg: ScaledIdentity(cfg.MODEL.NUM_CLASSES))
    stub_module("lib.models.dist_align", DistributionAlignment=unused("DistributionAlignment"))
    importlib.import_module("lib.algorithm")
    stub_module("lib.algorithm.darp_reproduce", DARP=unused("DARP"))
    base_trainer = importlib.import_module("lib.engine.base_trainer")
    stub_module("lib.engine", BaseTrainer=base_trainer.BaseTrainer)


def main() -> None:
    args, peer = open_peer(__doc__.splitlines()[0], "daso", PATHS)
    stub_module("yacs.config", CfgNode=CfgNode)
    cfg = importlib.import_module("lib.config.defaults")._C.clone()
    cfg.merge_from_file(Path(peer.root) / CONFIG)
    cfg.merge_from_list(OPTS)
    assert cfg.MODEL.NUM_CLASSES == len(COUNTS)

    seed = next(s for s in range(1000) if inputs(s, cfg.ALGORITHM.CONFIDENCE_THRESHOLD))
    x = inputs(seed, cfg.ALGORITHM.CONFIDENCE_THRESHOLD)
    ul_indices = torch.arange(B_U)
    batches = {"l": (x["l_images"], x["labels"], torch.arange(B_L)),
               "ul": ((x["ul_weak"], x["ul_strong"]), torch.full((B_U,), -1), ul_indices)}
    stub_daso(batches)
    fixmatch = importlib.import_module("lib.algorithm.fixmatch")
    with legacy_torch(cpu_for_cuda=True):  # DASO moves its tensors to cfg.GPU_ID
        algorithm = fixmatch.FixMatch(cfg)
    assert algorithm.with_la and not algorithm.with_align and not algorithm.with_darp

    seen: dict[str, Any] = {}
    write_metrics = algorithm._write_metrics

    def spy(metrics: dict[str, Any], *a: Any, **kw: Any) -> Any:  # run_step's last call
        seen.update(snapshot(caller_locals(), [
            "l_logits", "cls_loss", "p", "confidence", "pred_class", "loss_weight", "cons_loss", "losses"]))
        return write_metrics(metrics, *a, **kw)

    algorithm._write_metrics = spy
    # the batch accuracy (a log, unchecked) calls view() on a transposed slice, which PyTorch > 1.4 refuses
    algorithm.accuracy = lambda logits, labels, **kw: (0.0, 0.0)
    algorithm.iter = 0
    with legacy_torch(cpu_for_cuda=True, view_detach=True):
        algorithm.run_step()

    tensors = {**x, "p_data": algorithm.p_data, "l_logits_adjusted": seen["l_logits"],
               "loss_cls": seen["cls_loss"], "loss_cons": seen["cons_loss"], "loss_total": seen["losses"],
               "probs_weak": seen["p"], "confidence": seen["confidence"], "pseudo_label": seen["pred_class"],
               "mask": seen["loss_weight"]}
    meta = provenance(peer, command("make_daso.py"), seed=seed, config=CONFIG, opts=OPTS, options={
        "conf_thres": cfg.ALGORITHM.CONFIDENCE_THRESHOLD, "tau_la": cfg.ALGORITHM.LOGIT_ADJUST.TAU,
        "with_la": cfg.ALGORITHM.LOGIT_ADJUST.APPLY, "unlabeled_loss": cfg.MODEL.LOSS.UNLABELED_LOSS,
        "lambda_u": cfg.MODEL.LOSS.UNLABELED_LOSS_WEIGHT, "labeled_counts": COUNTS},
        executed="FixMatch.__init__ (SemiSupervised, BaseAlgorithm, BaseTrainer) and FixMatch.run_step "
        "on a scaled identity network",
        legacy_torch="detach_() on a view returns the detached values (PyTorch 1.4 behaviour)")
    write_fixture(args.out, NAME, tensors, meta)


if __name__ == "__main__":
    main()
