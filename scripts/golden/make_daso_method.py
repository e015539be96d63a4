"""Golden vectors of DASO itself (ytaek-oh/daso@3541a6c): FixMatch + DASO, from its own code.

Builds DASO's config from its own ``lib/config/defaults.py`` and ``configs/cifar10/fixmatch_daso.yaml``
with a short schedule (``PRETRAIN_STEPS 2``, ``PL_DIST_UPDATE_PERIOD 2``, ``MAX_ITER 6``) and a
3-feature class queue (``MODEL.QUEUE.MAX_SIZE 3``), then runs the real constructors (``DASO`` ->
``SemiSupervised`` -> ``BaseAlgorithm`` -> ``BaseTrainer``, the real ``DASOModel`` with its
``FeatureQueue`` and ``Classifier``, the real ``EMAModel`` and ``DistributionLogger``) and the real
``BaseAlgorithm.train()`` loop, hence ``DASO.run_step`` and ``DASOModel.forward_train``, for 6 steps:
steps 0-1 pre-train (queue and pseudo-label counts fill), steps 2-5 blend the semantic pseudo-labels
with the distribution of the window before (updated after steps 1 and 3).

Stubs: the WRN encoder (``lib.models.wrn.build_wrn``) is the identity, so "images" are features;
loaders hold one batch per step; the optimiser is SGD with learning rate 0 (the classifier and the
EMA teacher stay equal to the initial network, so ulfine can recompute every step); writers, the
checkpoint and the learning-rate scheduler are no-ops. Each step's values are read from
``forward_train``'s local variables when it calls the unlabeled loss (a spy around
``ul_loss``), from ``run_step``'s when it calls ``_write_metrics``, and the queue and pseudo-label
distribution after the step when ``train()`` calls ``meters.step()``.

    python scripts/golden/make_daso_method.py --peer-repo <clone of ytaek-oh/daso>

writes tests/golden/fixtures/daso_method.{safetensors,json}.
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from typing import Any

import torch
from fakes import (
    CfgNode,
    caller_locals,
    command,
    frame_locals,
    legacy_torch,
    open_peer,
    remove_at_exit,
    snapshot,
    unused,
    write_fixture,
)
from peer import DASO_BASES, DASO_LOSSES, provenance, stub_module
from torch import nn

NAME = "daso_method"
CONFIG = "configs/cifar10/fixmatch_daso.yaml"
PATHS = [
    "lib/algorithm/daso.py",
    *DASO_BASES,
    "lib/models/daso_model.py",
    "lib/models/semi_model.py",
    "lib/models/classifier.py",
    "lib/models/feature_queue.py",
    "lib/models/ema_model.py",
    "lib/models/heads/rotation_head.py",
    *DASO_LOSSES,
    "lib/utils/meters.py",
    "lib/utils/dist_logger.py",
    "lib/dataset/utils.py",
    "lib/config/defaults.py",
    CONFIG,
]
K, D = 10, 8  # DASO's cifar10 classes; feature dimension of the identity encoder
STEPS, PRETRAIN, PERIOD, QUEUE = 6, 2, 2, 3
B_L, B_U = 8, 16  # UNLABELED_BATCH_RATIO 2 (fixmatch_daso.yaml)
OPTS = ["ALGORITHM.DASO.PRETRAIN_STEPS", str(PRETRAIN), "ALGORITHM.DASO.PL_DIST_UPDATE_PERIOD", str(PERIOD),
        "MODEL.QUEUE.MAX_SIZE", str(QUEUE), "MODEL.QUEUE.FEAT_DIM", str(D), "SOLVER.MAX_ITER", str(STEPS),
        "PERIODS.EVAL", "1000", "PERIODS.LOG", "1000", "PERIODS.CHECKPOINT", "0"]
COUNTS = [100, 60, 36, 22, 13, 8, 5, 3, 2, 1]  # labeled images per class (p_data; unused by DASO's loss)
LABEL_P = torch.tensor([8.0, 6, 4, 3, 2, 2, 1, 1, 0.5, 0.5])  # long-tailed labeled draws: queues overflow
# forward_train's locals read at its unlabeled-loss call (absent in pre-training steps: zeros)
SEMANTIC = ["prototypes", "sim_weak", "soft_target", "assignment", "loss_assign", "current_pl_dist", "pred_to_dist"]


class Identity(nn.Module):
    """The encoder: features = the input; ``num_classes``/``out_features`` as DASO's WRN."""

    def __init__(self, num_classes: int, out_features: int) -> None:
        super().__init__()
        self.num_classes, self.out_features = num_classes, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Loader:
    """A data loader yielding one batch per step; ``dataset.num_samples_per_class`` as DASO's."""

    def __init__(self, batches: list[tuple[Any, ...]], counts: list[int] | None = None) -> None:
        self.batches = batches
        self.dataset = type("Dataset", (), {"num_samples_per_class": list(enumerate(counts or []))})()

    def __iter__(self) -> Any:
        return iter(self.batches)


class Nothing:
    """A writer or scheduler the run does not need."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def write(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def inputs(seed: int) -> dict[str, torch.Tensor]:
    """Features around K random class centres: labeled (long-tailed classes), weak and strong views."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(K, D, generator=g), dim=-1) * 6.0
    y = torch.multinomial(LABEL_P.expand(STEPS, K), B_L, replacement=True, generator=g)
    c = torch.randint(0, K, (STEPS, B_U), generator=g)
    weak = centres[c] + 1.2 * torch.randn(STEPS, B_U, D, generator=g)
    return {"l_images": centres[y] + 0.8 * torch.randn(STEPS, B_L, D, generator=g), "labels": y,
            "ul_weak": weak, "ul_strong": weak + 0.8 * torch.randn(STEPS, B_U, D, generator=g)}


def stub_daso(loaders: dict[str, Loader]) -> Any:
    """Register what DASO's trainer imports but the run does not check; return ``DASO``."""
    stub_module("yacs.config", CfgNode=CfgNode)
    meters = importlib.import_module("lib.utils.meters")
    stub_module("lib.utils", AverageMeter=meters.AverageMeter, Meters=meters.Meters,
                get_last_n_median=meters.get_last_n_median, save_checkpoint=unused("save_checkpoint"))
    stub_module("lib.utils.writer", CommonMetricPrinter=Nothing, JSONWriter=Nothing, TensorboardWriter=Nothing)
    importlib.import_module("lib.utils.dist_logger")
    importlib.import_module("lib.dataset.utils")
    stub_module("lib.dataset", build_data_loaders=lambda cfg: (loaders["l"], loaders["ul"], None, None))
    stub_module("lib.solver", build_optimizer=lambda cfg, model: torch.optim.SGD(model.parameters(), lr=0.0),
                build_lr_scheduler=lambda *a, **k: Nothing())
    importlib.import_module("lib.models")
    stub_module("lib.models.wrn", build_wrn=lambda cfg: Identity(cfg.MODEL.NUM_CLASSES, cfg.MODEL.QUEUE.FEAT_DIM))
    daso_model = importlib.import_module("lib.models.daso_model")
    ema = importlib.import_module("lib.models.ema_model")
    stub_module("lib.models", EMAModel=ema.EMAModel, build_model=daso_model.DASOModel)
    stub_module("lib.models.dist_align", DistributionAlignment=unused("DistributionAlignment"))
    importlib.import_module("lib.algorithm")
    stub_module("lib.algorithm.darp_reproduce", DARP=unused("DARP"))
    base_trainer = importlib.import_module("lib.engine.base_trainer")
    stub_module("lib.engine", BaseTrainer=base_trainer.BaseTrainer)
    return importlib.import_module("lib.algorithm.daso").DASO


class UnlabeledLossSpy(nn.Module):
    """DASO's unlabeled loss, recording ``forward_train``'s locals when it is called."""

    def __init__(self, loss: nn.Module, record: list[dict[str, Any]]) -> None:
        super().__init__()
        self.loss, self.record = loss, record

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen = frame_locals("forward_train")
        out = self.loss(*args, **kwargs)
        names = ["p", "confidence", "pred_class", "loss_weight", "loss_cls"] + [n for n in SEMANTIC if n in seen]
        values = snapshot(seen, names)
        values["linear_pl"] = seen["logger_dict"]["linear_pl"].clone()
        values["queue_prototypes"] = seen["self"].queue.prototypes.clone()
        values["loss_cons"] = out.detach().clone()
        self.record.append(values)
        return out


def run(daso: Any, cfg: CfgNode) -> dict[str, Any]:
    """DASO's real ``train()`` over the loaders' steps; every step's values, stacked."""
    steps: list[dict[str, Any]] = []
    after: list[dict[str, torch.Tensor]] = []
    with legacy_torch(cpu_for_cuda=True):  # any .cuda() stays on the CPU
        torch.manual_seed(0)  # the classifier's Xavier initialisation
        algorithm = daso(cfg)
        algorithm.writers = []
        algorithm.save_checkpoint = lambda **kw: None  # needs evaluations; none run here
        algorithm.ul_loss = UnlabeledLossSpy(algorithm.ul_loss, steps)
        write_metrics = algorithm._write_metrics

        def spy_metrics(metrics: dict[str, Any], *a: Any, **kw: Any) -> Any:
            steps[-1]["losses"] = caller_locals()["losses"].detach().clone()
            return write_metrics(metrics, *a, **kw)

        algorithm._write_metrics = spy_metrics
        meters_step = algorithm.meters.step

        def spy_step() -> Any:  # train() calls it right after run_step()
            after.append({"pl_dist_after": torch.tensor(algorithm.dist_logger._pl_dist, dtype=torch.float32),
                          "prototypes_after": algorithm.model.queue.prototypes.clone()})
            return meters_step()

        algorithm.meters.step = spy_step
        algorithm.train()
    assert len(steps) == len(after) == STEPS
    out: dict[str, Any] = {"classifier.weight": algorithm.model.classifier.classifier.weight.detach().clone(),
                           "classifier.bias": algorithm.model.classifier.classifier.bias.detach().clone()}
    names = {n for s in steps for n in s} | {n for a in after for n in a}
    for name in sorted(names):
        like = next(s[name] for s in steps + after if name in s)
        like = torch.as_tensor(like)
        out[name] = torch.stack([torch.as_tensor((s | a).get(name, torch.zeros_like(like)))
                                 for s, a in zip(steps, after)])
    out["semantic"] = torch.tensor(["soft_target" in s for s in steps])
    return out


def interesting(t: dict[str, Any]) -> bool:
    """Steps where every part matters: masks mixed, blend weights strictly between 0 and 1 for some
    pseudo-label, the blend changing some label, a queue overflowing and a class without prototype."""
    sem = t["semantic"]
    mask = t["loss_weight"][sem]
    w = t["pred_to_dist"][sem].flatten()
    changed = (t["linear_pl"][sem] != t["pred_class"][sem]).any()
    empty_class = (t["queue_prototypes"][0].abs().sum(-1) == 0).any()
    return bool(4 <= mask.sum() <= mask.numel() - 4 and ((w > 0.05) & (w < 0.95)).any() and changed and empty_class)


def main() -> None:
    args, peer = open_peer(__doc__.splitlines()[0], "daso", PATHS)
    out_dir = remove_at_exit(Path(tempfile.mkdtemp(prefix="golden-daso-run-")))
    stub_module("yacs.config", CfgNode=CfgNode)
    cfg = importlib.import_module("lib.config.defaults")._C.clone()
    cfg.merge_from_file(Path(peer.root) / CONFIG)
    # GPU_ID: DASO moves its tensors and its EMA copy to it; the CPU here
    cfg.merge_from_list(OPTS + ["OUTPUT_DIR", str(out_dir), "GPU_ID", "cpu"])
    assert cfg.MODEL.NUM_CLASSES == K and cfg.ALGORITHM.NAME == "DASO"
    loaders: dict[str, Loader] = {}
    daso = stub_daso(loaders)

    for seed in range(200):
        x = inputs(seed)
        loaders["l"] = Loader([(x["l_images"][s], x["labels"][s], torch.arange(B_L)) for s in range(STEPS)], COUNTS)
        loaders["ul"] = Loader([((x["ul_weak"][s], x["ul_strong"][s]), torch.full((B_U,), -1), torch.arange(B_U))
                                for s in range(STEPS)])
        t = run(daso, cfg)
        if interesting(t):
            break
    else:
        raise SystemExit("no seed gave a fixture where every part of DASO matters")

    d = cfg.ALGORITHM.DASO
    meta = provenance(peer, command("make_daso_method.py"), seed=seed, config=CONFIG, opts=OPTS, options={
        "conf_thres": cfg.ALGORITHM.CONFIDENCE_THRESHOLD, "lambda_u": cfg.MODEL.LOSS.UNLABELED_LOSS_WEIGHT,
        "unlabeled_loss": cfg.MODEL.LOSS.UNLABELED_LOSS, "queue_size": cfg.MODEL.QUEUE.MAX_SIZE,
        "proto_temp": d.PROTO_TEMP, "dist_temp": d.DIST_TEMP, "dist_aware": d.WITH_DIST_AWARE,
        "interp_alpha": d.INTERP_ALPHA, "psa_loss_weight": d.PSA_LOSS_WEIGHT, "pretrain_steps": d.PRETRAIN_STEPS,
        "pl_dist_update_period": d.PL_DIST_UPDATE_PERIOD, "max_iter": cfg.SOLVER.MAX_ITER,
        "with_la": cfg.ALGORITHM.LOGIT_ADJUST.APPLY, "with_abc": cfg.ALGORITHM.ABC.APPLY,
        "num_classes": K, "labeled_counts": COUNTS},
        executed="DASO.__init__ (SemiSupervised, BaseAlgorithm, BaseTrainer; DASOModel, FeatureQueue, "
        "EMAModel, DistributionLogger) and BaseAlgorithm.train() -> DASO.run_step -> DASOModel.forward_train "
        "for 6 steps on an identity encoder, learning rate 0")
    write_fixture(args.out, NAME, {**x, **t}, meta)


if __name__ == "__main__":
    main()
