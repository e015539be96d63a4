"""Golden vectors of CDMAD (LeeHyuck/CDMAD@7cd732b), from its own ``fixmatchcdmad.py``.

Runs CDMAD's real ``main()`` (argument parsing at import, its loaders, Adam, ``WeightEMA``,
``Logger``, checkpoints) and so its real ``train()`` and ``validate()``, for 3 epochs of 2 steps with
``--debiasstart 0``: epoch 0 pseudo-labels from the raw weak logits, epochs 1 and 2 from the weak
logits minus the logits of CDMAD's solid image ``torch.ones((1, 3, 32, 32))``. ``--tau 0.8`` (CDMAD's
default is 0, which keeps every sample) so that the confidence mask is tested too.

Stubs: the datasets (``dataset.fix_cifar10.get_cifar10`` gives small tensor datasets of 3 x 4 x 4
"normalised images") and the network (``wrn.WRN`` gives :class:`SolidNet`: a 1 x 1 convolution,
LeakyReLU(0.1), global average pooling and a linear classifier; a per-pixel network, so CDMAD's
32 x 32 solid image and ulfine's solid image at the data's 4 x 4 have the same features, and
nothing that depends on how the views are batched, such as BatchNorm), ``scipy.optimize``
(imported, never used) and the ``progress`` bar package (a git submodule of CDMAD's ``utils``, not
in the repository). The loaders run without worker processes. The learning rate is 0
(``--lr 0``), so the network stays fixed and every step can be recomputed. Each step's values are
read from ``train()``'s local variables when it calls ``ema_optimizer.step()`` (after
``optimizer.step()``), and the last evaluation's raw and debiased logits from ``validate()``'s
locals when it calls ``accuracy``. :func:`fakes.legacy_torch` maps CDMAD's ``.cuda()`` to the CPU
and gives ``DataLoader`` iterators the ``.next()`` of the PyTorch CDMAD ran on.

    python scripts/golden/make_cdmad.py --peer-repo <clone of LeeHyuck/CDMAD>

writes tests/golden/fixtures/cdmad.{safetensors,json}.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import fakes
import torch
import torch.nn.functional as F
from fakes import caller_locals, command, legacy_torch, open_peer, remove_at_exit, snapshot, stack_steps, write_fixture
from peer import provenance, stub_module
from torch import nn
from torch.utils.data import Dataset, TensorDataset

NAME = "cdmad"
PATHS = ["fixmatchcdmad.py", "utils/__init__.py", "utils/misc.py", "utils/logger.py", "utils/eval.py"]
K, D, SIZE = 10, 8, 4  # CDMAD's cifar10: 10 classes; feature width and image side of the fake data
N_U, N_TEST, BATCH, RATIO = 24, 8, 4, 2
EPOCHS, VAL_ITERATION, DEBIAS_START, TAU = 3, 2, 0, 0.8
ARGV = ["--dataset", "cifar10", "--num_max", "10", "--num_max_u", "20", "--imb_ratio", "10",
        "--imb_ratio_u", "10", "--batch-size", str(BATCH), "--unlabeledratio", str(RATIO), "--lr", "0",
        "--epochs", str(EPOCHS), "--val-iteration", str(VAL_ITERATION), "--debiasstart", str(DEBIAS_START),
        "--tau", str(TAU), "--manualSeed", "0"]
STEP_VALUES = ["epoch", "inputs_x", "targets_x", "inputs_u", "inputs_u2", "inputs_u3", "white", "biaseddegree",
               "outputs_u", "targets_u2", "max_p", "select_mask", "logits_x", "logits_u2", "logits_u3",
               "Lx", "Lu", "loss"]


class SolidNet(nn.Module):
    """CDMAD's network: per-pixel features (1 x 1 convolution, LeakyReLU), global average pooling
    and a linear classifier; ``forward`` returns (logits, rotation logits) as CDMAD's WRN does."""

    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, D, 1)
        self.output = nn.Linear(D, K)
        self.load_state_dict({k.removeprefix("net."): v for k, v in weights.items() if k.startswith("net.")})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = F.leaky_relu(self.conv(x), 0.1).mean(dim=(2, 3))
        c = self.output(f)
        return c, torch.zeros(c.shape[0], 4)

    def cuda(self, *args: Any, **kwargs: Any) -> SolidNet:  # CDMAD moves it to the GPU
        return self


def data(seed: int = 0) -> dict[str, torch.Tensor]:
    """The network's weights (a classifier with a clear bias, so debiasing moves pseudo-labels),
    the unlabeled set (three views), a labeled pool and a test set."""
    g = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        return torch.randn(n, 3, SIZE, SIZE, generator=g) * torch.empty(n, 1, 1, 1).uniform_(0.5, 2.0, generator=g)

    return {"net.conv.weight": torch.randn(D, 3, 1, 1, generator=g), "net.conv.bias": torch.randn(D, generator=g) * 0.5,
            "net.output.weight": torch.randn(K, D, generator=g) * 1.5,
            "net.output.bias": torch.linspace(1.5, -1.5, K),
            "u_w": images(N_U), "u_s": images(N_U), "u_s2": images(N_U), "labeled_pool": images(64),
            "x_test": images(N_TEST), "y_test": torch.arange(N_TEST) % K}


def stub_cdmad(d: dict[str, Any]) -> None:
    """The datasets, the network and the packages CDMAD imports but the check never uses."""

    def get_cifar10(root: str, l_samples: list[int], u_samples: list[int], rand_number: int = 0
                    ) -> tuple[Dataset, Dataset, Dataset]:
        counts = torch.tensor([int(c) for c in l_samples])
        y = torch.repeat_interleave(torch.arange(K), counts)
        d["labeled_counts"] = counts
        test = TensorDataset(d["x_test"], d["y_test"], torch.arange(N_TEST))
        return TensorDataset(d["labeled_pool"][: len(y)], y, torch.arange(len(y))), fakes.UnlabeledViews(d), test

    stub_module("dataset.fix_cifar10", get_cifar10=get_cifar10)
    stub_module("wrn", WRN=lambda width, num_classes: SolidNet(d))
    stub_module("scipy.optimize")
    stub_module("progress.bar", Bar=fakes.Bar)


def run(d: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """CDMAD's ``main()``: each step's values, and the last evaluation's logits."""
    out = remove_at_exit(Path(tempfile.mkdtemp(prefix="golden-cdmad-out-")))
    sys.argv = ["fixmatchcdmad.py", *ARGV, "--out", str(out)]
    cdmad = importlib.import_module("fixmatchcdmad")  # parses sys.argv and seeds at import

    steps: list[dict[str, Any]] = []
    evaluation: dict[str, torch.Tensor] = {}
    real_step, real_accuracy = cdmad.WeightEMA.step, cdmad.accuracy

    def ema_step(self: Any) -> None:  # train() calls it once per step, after optimizer.step()
        steps.append(snapshot(caller_locals(), STEP_VALUES))
        return real_step(self)

    def accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)) -> Any:
        seen = caller_locals()  # validate(): the last evaluation's raw and debiased logits
        if "outputs2" in seen:
            evaluation.update(snapshot(seen, ["inputs", "outputs", "outputs2", "biaseddegree"]))
        return real_accuracy(output, target, topk)

    # CDMAD's loaders with 4 worker processes, here in the main process
    cdmad.data = fakes.in_process_loaders()
    cdmad.WeightEMA.step, cdmad.accuracy = ema_step, accuracy
    try:
        with legacy_torch(cpu_for_cuda=True, loader_next=True):
            cdmad.main()
    finally:
        cdmad.WeightEMA.step, cdmad.accuracy = real_step, real_accuracy
    return steps, evaluation


def main() -> None:
    args, peer = open_peer(__doc__.splitlines()[0], "cdmad", PATHS)
    os.environ.setdefault("MPLBACKEND", "Agg")  # utils/logger.py imports matplotlib.pyplot
    d: dict[str, Any] = data()
    stub_cdmad(d)
    steps, evaluation = run(d)

    stacked = stack_steps(steps, skip=("white",))
    white = steps[0]["white"]
    assert all(torch.equal(s["white"], white) for s in steps)
    tensors = {**{k: v for k, v in d.items() if k.startswith("net.")}, **stacked,
               "test_inputs": evaluation["inputs"], "test_logits": evaluation["outputs"],
               "test_logits_debiased": evaluation["outputs2"], "test_bias": evaluation["biaseddegree"],
               "labeled_counts": d["labeled_counts"]}
    meta = provenance(peer, command("make_cdmad.py"), argv=ARGV, options={
        "tau": TAU, "debiasstart": DEBIAS_START, "num_classes": K, "batch_size": BATCH, "unlabeledratio": RATIO,
        "val_iteration": VAL_ITERATION, "epochs": EPOCHS, "labeled_counts": d["labeled_counts"].tolist(),
        "white_shape": list(white.shape), "white_values": sorted({float(v) for v in white.unique()})},
        executed="fixmatchcdmad.py main(), train() and validate() with tensor datasets of 3x4x4 images, "
                 "a per-pixel network and lr 0",
        legacy_torch=".cuda() stays on the CPU; DataLoader iterators have .next()")
    write_fixture(args.out, NAME, tensors, meta)


if __name__ == "__main__":
    main()
