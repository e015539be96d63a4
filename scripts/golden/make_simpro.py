"""Golden vectors of SimPro (LeapLabTHU/SimPro@aa2425d), from its own ``SimPro/train.py``.

Runs SimPro's real ``main()`` (argument parsing; the labeled prior from the class counts the
dataset getter returns, the loaders with their ``DistributedSampler``, SGD, the cosine schedule,
``ModelEMA``, ``Logger``) and so its real ``train()`` loop and ``test()``, for 3 epochs of 2
steps with the CIFAR-10 values of ``sh/SimPro.sh`` (``--tau 2.0 --threshold 0.95 --ema-u 0.9``)
and ``--mu 2``: epoch 0 pseudo-labels with the uniform initial estimate, epochs 1 and 2 with the
priors of SimPro's per-epoch EM update.

Stubs: the datasets (``dataset.cifar.DATASET_GETTERS`` gives small tensor datasets whose
"images" are feature vectors; the labeled set returns the same vector as its weak and its strong
view, as ulfine has one labeled view) and the network (``models.wideresnet.build_wideresnet``
gives a linear map, SimPro's fc, on those features). ``termcolor`` (console colours) is stubbed.
SimPro runs under ``torchrun`` with NCCL: here one process joins a gloo group through a file,
``torch.cuda.set_device`` is a no-op and ``DistributedDataParallel`` returns the model (one
process: DDP only averages gradients). The learning rate is 0 (``--lr 0``) so the head stays
fixed and every step can be recomputed. Each step's values are read from ``train()``'s local
variables when it calls ``ema_model.update(model)`` (after ``loss.backward()`` and
``optimizer.step()``). :func:`fakes.legacy_torch` maps SimPro's ``.cuda()``/``.to('cuda')`` to
the CPU.

    python scripts/golden/make_simpro.py --peer-repo <clone of LeapLabTHU/SimPro>

writes tests/golden/fixtures/simpro.{safetensors,json}.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from fakes import caller_locals, command, legacy_torch, open_peer, remove_at_exit, snapshot, stack_steps, write_fixture
from peer import provenance, stub_module
from torch import nn
from torch.utils.data import Dataset, TensorDataset

NAME = "simpro"
PATHS = ["SimPro/train.py", "SimPro/models/ema.py", "SimPro/utils/__init__.py", "SimPro/utils/misc.py",
         "SimPro/utils/logger.py"]
K, D = 10, 12  # SimPro's cifar10: 10 classes; feature dimension of the fake network
COUNTS = [12, 10, 7, 5, 4, 3, 3, 2, 1, 1]  # labeled images per class: 48 = 6 batches of 8
N_U, BATCH, MU, EPOCHS, EVAL_STEP = 32, 8, 2, 3, 2  # 32 unlabeled = 2 batches of 16
ARGV = ["--dataset", "cifar10", "--arch", "wideresnet", "--batch-size", str(BATCH), "--mu", str(MU),
        "--lr", "0", "--total-steps", str(EPOCHS * EVAL_STEP), "--eval-step", str(EVAL_STEP),
        "--tau", "2.0", "--threshold", "0.95", "--ema-u", "0.9", "--num-workers", "0",
        "--num-max", "12", "--num-max-u", "8", "--imb-ratio-label", "12", "--imb-ratio-unlabel", "8",
        "--version", "SimPro"]
STEP_VALUES = ["epoch", "batch_idx", "inputs_l_w", "inputs_l_s", "l_real", "inputs_u_w", "inputs_u_s",
               "inputs_u_s1", "pseudo_label", "max_probs", "mask", "Lx", "Lu", "loss", "dis_unlabeled",
               "count_labeled_dataset"]


class FeatureNet(nn.Module):
    """The network: SimPro's WRN ends in ``fc``; here ``fc`` is the whole network, on features."""

    def __init__(self, head: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.fc = nn.Linear(D, K)
        with torch.no_grad():
            self.fc.weight.copy_(head["fc.weight"])
            self.fc.bias.copy_(head["fc.bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)

    def to(self, *args: Any, **kwargs: Any) -> FeatureNet:  # SimPro moves it to 'cuda'
        return self

    def cuda(self, *args: Any, **kwargs: Any) -> FeatureNet:
        return self


def data(seed: int) -> dict[str, torch.Tensor]:
    """The head, the labeled set (classes sorted by count), the unlabeled set and a test set."""
    g = torch.Generator().manual_seed(seed)

    def features(n: int) -> torch.Tensor:
        return torch.randn(n, D, generator=g) * torch.empty(n, 1).uniform_(0.3, 2.5, generator=g)

    return {"fc.weight": torch.randn(K, D, generator=g) * 1.5, "fc.bias": torch.randn(K, generator=g) * 0.1,
            "x_l": features(sum(COUNTS)), "y_l": torch.repeat_interleave(torch.arange(K), torch.tensor(COUNTS)),
            "u_w": features(N_U), "u_s": features(N_U), "u_s1": features(N_U),
            "u_real": torch.randint(0, K, (N_U,), generator=g),
            "x_test": features(BATCH), "y_test": torch.arange(BATCH) % K}


class Labeled(Dataset):
    """SimPro's labeled set yields ((weak, strong), label): here the same vector twice."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        return (self.x[i], self.x[i]), self.y[i]


class Unlabeled(Dataset):
    """SimPro's unlabeled set yields ((weak, strong, strong1), label)."""

    def __init__(self, d: dict[str, torch.Tensor]) -> None:
        self.d = d

    def __len__(self) -> int:
        return N_U

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        return (self.d["u_w"][i], self.d["u_s"][i], self.d["u_s1"][i]), self.d["u_real"][i]


def stub_simpro(d: dict[str, torch.Tensor]) -> None:
    """The datasets, the network and the console colours SimPro's ``main()`` uses."""
    def getter(args: Any, root: str) -> tuple[Any, ...]:
        u_counts = torch.bincount(d["u_real"], minlength=K).clamp_min(1).tolist()  # logged KL only
        return (Labeled(d["x_l"], d["y_l"]), Unlabeled(d), TensorDataset(d["x_test"], d["y_test"]),
                COUNTS, u_counts, [1] * K)

    stub_module("dataset.cifar", DATASET_GETTERS={"cifar10": getter})
    stub_module("termcolor", colored=lambda text, *a, **k: text)
    importlib.import_module("models")
    stub_module("models.wideresnet", build_wideresnet=lambda **kw: FeatureNet(d))


def one_process(folder: Path) -> dict[tuple[Any, str], Any]:
    """What lets SimPro's torchrun/NCCL set-up run as one CPU process; returns the originals."""
    dist = torch.distributed
    init = dist.init_process_group
    saved = {(dist, "init_process_group"): init, (torch.cuda, "set_device"): torch.cuda.set_device,
             (torch.nn.parallel, "DistributedDataParallel"): torch.nn.parallel.DistributedDataParallel}
    dist.init_process_group = lambda backend=None, **kw: init(
        "gloo", init_method=f"file://{folder / 'rendezvous'}", world_size=1, rank=0)
    torch.cuda.set_device = lambda *a, **k: None
    torch.nn.parallel.DistributedDataParallel = lambda model, *a, **k: model
    os.environ.update({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"})
    return saved


def run(train: Any, ema: Any, seed: int) -> tuple[list[dict[str, Any]], Any]:
    """SimPro's ``main()`` with ``--seed seed``: each step's values and the final ``args``."""
    steps: list[dict[str, Any]] = []
    update = ema.ModelEMA.update

    def spy(self: Any, model: nn.Module) -> None:  # train() calls it once per step
        seen = caller_locals()
        a = seen["args"]
        steps.append({**snapshot(seen, STEP_VALUES), "adjustment": a.adjustment.clone(),
                      "adjustment_u": a.adjustment_u.clone(), "estimated_dis": a.estimated_dis.clone(),
                      "adapt_dis": a.adapt_dis.clone(), "scale_ratio": a.scale_ratio})
        return update(self, model)

    ema.ModelEMA.update = spy
    out = remove_at_exit(Path(tempfile.mkdtemp(prefix="golden-simpro-out-")))
    sys.argv = ["train.py", *ARGV, "--seed", str(seed), "--out", str(out / "run")]
    captured: dict[str, Any] = {}
    real_train = train.train

    def keep_args(args: Any, *rest: Any) -> None:
        captured["args"] = args
        real_train(args, *rest)

    train.train = keep_args
    saved = one_process(out)
    try:
        with legacy_torch(cpu_for_cuda=True):
            train.main()
    finally:
        ema.ModelEMA.update, train.train = update, real_train
        torch.distributed.destroy_process_group()
        for (owner, name), value in saved.items():
            setattr(owner, name, value)
    return steps, captured["args"]


def varied(steps: list[dict[str, Any]]) -> bool:
    """Every step has confident and unconfident pseudo-labels (so the threshold is tested)."""
    return all(0 < s["mask"].sum() < len(s["mask"]) for s in steps)


def main() -> None:
    args, peer = open_peer(__doc__.splitlines()[0], "simpro", PATHS)
    sys.path.insert(0, str(peer.root / "SimPro"))  # train.py imports dataset, models, utils
    os.environ.setdefault("MPLBACKEND", "Agg")  # utils/logger.py imports matplotlib.pyplot
    for seed in range(100):
        d = data(seed)
        stub_simpro(d)
        train = importlib.import_module("train")
        ema = importlib.import_module("models.ema")
        steps, simpro_args = run(train, ema, 0)
        if varied(steps):
            break
        sys.modules.pop("train")
    else:
        raise SystemExit("no data seed gave steps with both confident and unconfident samples")

    stacked = stack_steps(steps)
    tensors = {"fc.weight": d["fc.weight"], "fc.bias": d["fc.bias"], **stacked,
               "final_estimated_dis": simpro_args.estimated_dis, "final_adapt_dis": simpro_args.adapt_dis,
               "py_l": simpro_args.py_l}
    meta = provenance(peer, command("make_simpro.py"), data_seed=seed, argv=ARGV + ["--seed", "0"], options={
        "threshold": simpro_args.threshold, "tau": simpro_args.tau, "ema_u": simpro_args.ema_u,
        "T": simpro_args.T, "mu": simpro_args.mu, "eval_step": simpro_args.eval_step,
        "epochs": simpro_args.epochs, "num_classes": simpro_args.num_classes, "labeled_counts": COUNTS,
        "num_unlabeled": N_U, "batch_size": BATCH, "scale_ratio": simpro_args.scale_ratio},
        executed="SimPro/train.py main(), train() and test() with tensor datasets, a linear network "
        "and lr 0, one gloo process",
        legacy_torch=".cuda()/.to('cuda') stay on the CPU",
        labeled_views="the labeled set's weak and strong views are the same vector")
    write_fixture(args.out, NAME, tensors, meta)


if __name__ == "__main__":
    main()
