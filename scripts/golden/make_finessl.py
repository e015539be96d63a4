"""Golden vectors for ``method=finessl``: FineSSL's own ``Trainer.train`` run for a few steps.

FineSSL (Gank0078/FineSSL@76b6f48) is executed, not re-implemented: ``trainer.py`` and
``model.py`` (with ``utils/meter.py``, ``utils/torchtools.py``, ``utils/utils.py`` and
``utils/logger_SSL.py``, which it imports) are read from the clone at the pinned commit
(:mod:`peer`), and the real ``Trainer.train`` runs on a Trainer built without its ``__init__``
(which would load CLIP and the datasets). What ``train`` reads is set by hand:

- ``model``: a seeded bias-free linear map standing in for the tuned image encoder (feature in,
  feature out), so the pass through FineSSL's interleave / de-interleave and the gradient into
  the "backbone" are real;
- ``tuner.head`` / ``tuner.head1``: FineSSL's own ``ViT_Head`` (its random initialisation, the
  default ``rand_init``), seeded; ``train`` itself copies head's weights into head1;
- loaders: fixed per-epoch lists of batches ``(x, y, idx)`` and ``((u_w, u_s, u_s1), _, uidx)``,
  cycled by ``train`` as it cycles its DataLoaders;
- optimiser: plain SGD over the map and both heads (a subclass that records the parameters after
  each step); ``sched``, the tensorboard writer, the logger, ``test`` and ``save_model`` are stubs.

What each step computed is read, not recomputed: a temporary wrapper of ``torch.Tensor.backward``
copies the local variables of ``train`` (Lx, Lx1, Lu, Lu1, classwise_acc, the margins, masks,
pseudo-labels, conf1, the per-sample ``selected_label`` buffer) at ``loss.backward()``, and
forward hooks record both heads' logits. Two epochs of three steps, so the per-epoch reset of the
buffer and of classwise_acc and the counter's growth within an epoch are both in the vectors.

Run: ``python scripts/golden/make_finessl.py --peer-repo PATH`` (a clone or bare mirror of
https://github.com/Gank0078/FineSSL holding commit 76b6f48); writes
``tests/golden/fixtures/finessl_train.{safetensors,json}``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch
from peer import checkout, provenance, stub_module
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
PATHS = ["trainer.py", "model.py", "utils/meter.py", "utils/torchtools.py", "utils/utils.py",
         "utils/logger_SSL.py"]

#: the run's sizes and FineSSL options (th_min above its default 0.0 so that mask1 varies)
SIZES = {"num_classes": 6, "feature_dim": 16, "batch_size": 4, "mu": 2, "num_unlabeled": 16,
         "epochs": 2, "steps_per_epoch": 3}
OPTIONS = {"alpha": 8.0, "w_con": 3.0, "smoothing": 0.5, "th": 0.8, "th_min": 0.6}
LR = 0.1
SEED = 0

#: the locals of Trainer.train recorded at loss.backward()
LOCALS = ["Lx", "Lx1", "Lu", "Lu1", "loss", "classwise_acc", "alpha", "conf", "targets_u", "mask",
          "conf1", "mask1", "select", "selected_label", "output_x", "output_u_s_twice"]


def load_peer(clone: Path):
    """FineSSL's trainer and model modules, with what they import but the check never runs stubbed."""
    peer = checkout("finessl", clone, PATHS)
    # imported before the stubs below: torchvision's import scans for optional packages and
    # would trip over a stub without a module spec
    importlib.import_module("torchvision.transforms")
    importlib.import_module("torch.utils.tensorboard")
    stub_module("matplotlib", rcParams={})  # plotting imports of utils/utils.py, utils/logger_SSL.py
    stub_module("matplotlib.pyplot")
    stub_module("sklearn.manifold", TSNE=object)
    stub_module("clip.clip", clip=None)  # CLIP loading: the Trainer's __init__ only
    sys.modules.pop("datasets", None)
    stub_module("datasets.data", DATASET_GETTERS={})
    for path in ("utils/meter.py", "utils/torchtools.py", "utils/utils.py", "utils/logger_SSL.py", "model.py"):
        peer.load(path)
    return peer, peer.load("trainer.py"), sys.modules["model"]


class EpochLoader:
    """A DataLoader stand-in: each ``iter()`` (one per epoch, from ``itertools.cycle``) yields the
    next epoch's fixed batches."""

    def __init__(self, epochs: list[list[tuple]], size: int) -> None:
        self.epochs, self.calls = epochs, 0
        self.dataset = range(size)  # train() reads len(loader.dataset)

    def __iter__(self):
        self.calls += 1
        return iter(self.epochs[self.calls - 1])


def make_batches(weight: torch.Tensor, encoder: torch.Tensor, g: torch.Generator):
    """Inputs whose encoded features lie at varied distances from the head's class rows, so the
    confidences straddle every threshold; the encoder is inverted to place them."""
    k, d = weight.shape
    s = SIZES
    n = s["batch_size"] * s["mu"]
    inv = torch.linalg.inv(encoder)

    def inputs(classes: torch.Tensor, strength: torch.Tensor, noise: float) -> torch.Tensor:
        feats = strength[:, None] * weight[classes] + noise * torch.randn(len(classes), d, generator=g) / d**0.5
        return feats @ inv.t()  # encoder(inputs) = feats

    hidden = torch.randint(0, k, (s["num_unlabeled"],), generator=g)  # the unlabeled samples' classes
    labeled, unlabeled = [], []
    for _ in range(s["epochs"]):
        lab_epoch, unl_epoch = [], []
        for _ in range(s["steps_per_epoch"]):
            y = torch.randint(0, k, (s["batch_size"],), generator=g)
            x = inputs(y, 0.4 + 0.8 * torch.rand(s["batch_size"], generator=g), 1.0)
            lab_epoch.append((x, y, torch.arange(s["batch_size"])))
            uidx = torch.randperm(s["num_unlabeled"], generator=g)[:n]
            c = hidden[uidx]
            a = 0.05 + 0.6 * torch.rand(n, generator=g)
            views = (inputs(c, a, 0.6), inputs(c, a, 1.0), inputs(c, a, 1.0))
            unl_epoch.append((views, torch.zeros(n, dtype=torch.long), uidx))
        labeled.append(lab_epoch)
        unlabeled.append(unl_epoch)
    return labeled, unlabeled


def run(clone: Path, out_dir: Path, command: str) -> None:
    peer, trainer_mod, model_mod = load_peer(clone)
    s = SIZES
    k, d = s["num_classes"], s["feature_dim"]
    torch.manual_seed(SEED)
    head = model_mod.ViT_Head(k, None, d)  # FineSSL's random init (rand_init=True)
    head1 = model_mod.ViT_Head(k, None, d)  # train() overwrites its weight with head's
    g = torch.Generator().manual_seed(SEED)
    encoder = torch.nn.Linear(d, d, bias=False)
    with torch.no_grad():
        encoder.weight.copy_(torch.eye(d) + 0.1 * torch.randn(d, d, generator=g))
    labeled, unlabeled = make_batches(head.weight.detach(), encoder.weight.detach(), g)

    init = {"init.encoder": encoder.weight.detach().clone(), "init.head.weight": head.weight.detach().clone(),
            "init.head.logit_scale": head.logit_scale.detach().clone(),
            "init.head1.weight": head1.weight.detach().clone(),
            "init.head1.logit_scale": head1.logit_scale.detach().clone()}

    tuner = torch.nn.Module()
    tuner.head, tuner.head1 = head, head1
    records: list[dict[str, torch.Tensor]] = []

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            result = super().step(closure)
            records[-1].update({
                "after.encoder": encoder.weight.detach().clone(),
                "after.head.weight": head.weight.detach().clone(),
                "after.head.logit_scale": head.logit_scale.detach().clone(),
                "after.head1.weight": head1.weight.detach().clone(),
                "after.head1.logit_scale": head1.logit_scale.detach().clone()})
            return result

    trainer = object.__new__(trainer_mod.Trainer)
    cfg = types.SimpleNamespace(resume=None, total_steps=s["steps_per_epoch"], print_freq=10, checkpoint_freq=0,
                                DATA=types.SimpleNamespace(MU_U=s["mu"]),
                                **{key: v for key, v in OPTIONS.items() if key != "th"})
    trainer.__dict__.update(
        cfg=cfg, device=torch.device("cpu"), start_epoch=0, num_epochs=s["epochs"], num_classes=k,
        th=OPTIONS["th"], model=encoder, tuner=tuner,
        train_label_loader=EpochLoader(labeled, s["batch_size"] * s["steps_per_epoch"]),
        train_unlabel_loader=EpochLoader(unlabeled, s["num_unlabeled"]),
        optim=RecordingSGD(list(encoder.parameters()) + list(tuner.parameters()), lr=LR),
        sched=types.SimpleNamespace(step=lambda: None),
        logger=types.SimpleNamespace(append=lambda *a: None, close=lambda: None),
        test=lambda: 0.0, save_model=lambda *a, **kw: None)
    trainer_mod.SummaryWriter = lambda **kw: types.SimpleNamespace(add_scalar=lambda *a: None, close=lambda: None)

    logits: dict[str, torch.Tensor] = {}
    head.register_forward_hook(lambda m, i, o: logits.__setitem__("z", o.detach().clone()))
    head1.register_forward_hook(lambda m, i, o: logits.__setitem__("z1", o.detach().clone()))
    backward = torch.Tensor.backward

    def recording_backward(self, *args, **kwargs):
        frame = sys._getframe(1)
        if frame.f_code.co_name == "train":  # FineSSL's loss.backward()
            local = frame.f_locals
            rec = {}
            for name in LOCALS:
                v = local[name]
                rec[f"peer.{name}"] = v.detach().clone() if torch.is_tensor(v) else torch.tensor(float(v))
            rec.update({f"peer.{n}": t for n, t in logits.items()})
            records.append(rec)
        return backward(self, *args, **kwargs)

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        trainer.output_dir = tmp  # its tensorboard folder
        torch.Tensor.backward = recording_backward
        try:
            trainer.train()
        finally:
            torch.Tensor.backward = backward

    steps = s["epochs"] * s["steps_per_epoch"]
    assert len(records) == steps, f"recorded {len(records)} of {steps} steps"
    tensors = dict(init)
    for i, rec in enumerate(records):
        e, j = divmod(i, s["steps_per_epoch"])
        x, y, _ = labeled[e][j]
        (u_w, u_s, u_s1), _, uidx = unlabeled[e][j]
        rec.update({"input.x": x, "input.y": y, "input.u_w": u_w, "input.u_s": u_s, "input.u_s2": u_s1,
                    "input.uidx": uidx})
        for name, t in rec.items():
            t = t.long() if t.dtype == torch.bool else t
            tensors[f"step{i}.{name}"] = t.contiguous()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "finessl_train.safetensors"))
    (out_dir / "finessl_train.safetensors").chmod(0o644)
    meta = provenance(peer, command, function="trainer.Trainer.train", sizes=s, options=OPTIONS,
                      optimizer={"name": "SGD", "lr": LR, "momentum": 0.0, "weight_decay": 0.0},
                      seed=SEED, steps=steps,
                      stand_ins={"model": "bias-free nn.Linear(D, D) (the tuned image encoder)",
                                 "heads": "model.ViT_Head(num_classes, None, D): FineSSL's random init",
                                 "loaders": "fixed per-epoch batches, cycled by train()",
                                 "stubbed": "clip, datasets, matplotlib, sklearn, tensorboard writer, "
                                            "logger, sched, test(), save_model()"},
                      recorded="train() locals at loss.backward(); head/head1 forward outputs; "
                               "parameters after each optimizer step")
    (out_dir / "finessl_train.json").write_text(json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(peer.root, ignore_errors=True)  # the peer's files, written by checkout()
    summary = {n: [round(float(r[f'peer.{n}']), 4) for r in records] for n in ("Lx", "Lx1", "Lu", "Lu1")}
    summary["mask"] = [r["peer.mask"].long().tolist() for r in records]
    summary["mask1"] = [r["peer.mask1"].long().tolist() for r in records]
    summary["select"] = [r["peer.select"].tolist() for r in records]
    summary["classwise_acc"] = [[round(v, 3) for v in r["peer.classwise_acc"].tolist()] for r in records]
    print(json.dumps(summary))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-repo", type=Path, required=True, help="clone or bare mirror of Gank0078/FineSSL")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "golden" / "fixtures")
    args = ap.parse_args()
    run(args.peer_repo, args.out, "python scripts/golden/make_finessl.py --peer-repo PATH")


if __name__ == "__main__":
    main()
