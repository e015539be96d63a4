"""Golden vectors of ABC (LeeHyuck/ABC@f70e926), from its own ``ABCcode0920/ABCfix.py``.

Runs ABC's real ``main()`` (argument parsing at import, the class counts ``make_imb_data`` makes and
the keep probabilities ``ir2`` it derives from them, its loaders, Adam, ``WeightEMA``, ``Logger``,
the checkpoint it resumes from and writes) and so its real ``train()`` and ``validate()``. The run
*resumes* (ABC's ``--resume`` path, the only way its ``main()`` starts at a later epoch) from a
checkpoint at epoch 250 and trains epochs 250-252 of 2 steps: half-way through ABC's 500-epoch
schedule of the unlabeled mask probability, where every epoch moves it visibly.

Stubs: the datasets (``dataset.fix_cifar10.get_cifar10`` gives small tensor datasets of feature
vectors, its labeled set with exactly the per-class counts ``main()`` passes it), the network
(``wideresnetwithABC.WideResNet`` gives a net whose ``forward`` is the identity and whose
``classify``/``classify2`` are two linear heads), ``scipy.optimize`` (imported, never used) and the
``progress`` bar package (a git submodule of ABC's ``utils``, not in the repository). The loaders
run without worker processes. The learning rate is 0 (``--lr 0``), so the heads stay fixed and
every step can be recomputed. ``torch.bernoulli`` is wrapped to record each call's probabilities
and draws (ABC draws the labeled mask, then the unlabeled one); each step's values are read from
``train()``'s local variables when it calls ``ema_optimizer.step()`` (after ``optimizer.step()``),
and the last evaluation's balanced-head logits from ``validate()``'s locals when it calls
``accuracy``. :func:`fakes.legacy_torch` maps ABC's ``.cuda()`` to the CPU and gives ``DataLoader``
iterators the ``.next()`` of the PyTorch ABC ran on.

    python scripts/golden/make_abc.py --peer-repo <clone of LeeHyuck/ABC>

writes tests/golden/fixtures/abc.{safetensors,json}.
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
from fakes import (
    FeatureHeads,
    caller_locals,
    command,
    legacy_torch,
    open_peer,
    remove_at_exit,
    snapshot,
    stack_steps,
    write_fixture,
)
from peer import provenance, stub_module
from torch.utils.data import Dataset, TensorDataset

NAME = "abc"
SUB = "ABCcode0920"
PATHS = [f"{SUB}/ABCfix.py", f"{SUB}/utils/__init__.py", f"{SUB}/utils/misc.py", f"{SUB}/utils/logger.py",
         f"{SUB}/utils/eval.py"]
K, D = 10, 12  # ABC's cifar10: 10 classes; feature dimension of the fake network
N_U, N_TEST, BATCH = 16, 8, 8
RESUME_EPOCH, EPOCHS, VAL_ITERATION = 250, 3, 2
ARGV = ["--dataset", "cifar10", "--num_max", "10", "--imb_ratio", "10", "--label_ratio", "20",
        "--batch-size", str(BATCH), "--lr", "0", "--epochs", str(RESUME_EPOCH + EPOCHS),
        "--val-iteration", str(VAL_ITERATION), "--manualSeed", "0"]
STEP_VALUES = ["epoch", "inputs_x", "targets_x", "inputs_u", "inputs_u2", "inputs_u3", "max_p", "targets_u",
               "select_mask", "max_p2", "label_u", "select_mask2", "logitsu1", "maskforbalance",
               "maskforbalanceu", "Lx", "Lu", "abcloss", "abcloss1", "abcloss2", "totalabcloss", "loss"]


class FeatureNet(FeatureHeads):
    """ABC's network on features: its heads ``fc`` and ``fc2`` (``classify``/``classify2``)."""

    def __init__(self, heads: dict[str, torch.Tensor]) -> None:
        super().__init__(heads, ("fc", "fc2"))

    def classify2(self, out: torch.Tensor) -> torch.Tensor:
        return self.fc2(out)


def data(seed: int = 0) -> dict[str, torch.Tensor]:
    """The two heads, the unlabeled set (three views) and a test set; features of varied norm so
    that both heads' weak confidences fall on both sides of ABC's 0.95."""
    g = torch.Generator().manual_seed(seed)

    def features(n: int) -> torch.Tensor:
        return torch.randn(n, D, generator=g) * torch.empty(n, 1).uniform_(0.3, 2.5, generator=g)

    return {"fc.weight": torch.randn(K, D, generator=g) * 1.5, "fc.bias": torch.randn(K, generator=g) * 0.1,
            "fc2.weight": torch.randn(K, D, generator=g) * 1.5, "fc2.bias": torch.randn(K, generator=g) * 0.1,
            "u_w": features(N_U), "u_s": features(N_U), "u_s2": features(N_U),
            "x_test": features(N_TEST), "y_test": torch.arange(N_TEST) % K, "labeled_pool": features(200)}


def stub_abc(d: dict[str, Any]) -> None:
    """The datasets, the network and the packages ABC imports but the check never uses."""

    def get_cifar10(root: str, l_samples: list[int], u_samples: list[int]) -> tuple[Dataset, Dataset, Dataset]:
        counts = torch.tensor([int(c) for c in l_samples])
        y = torch.repeat_interleave(torch.arange(K), counts)
        d["labeled_counts"] = counts
        x = d["labeled_pool"][: len(y)]
        test = TensorDataset(d["x_test"], d["y_test"], torch.arange(N_TEST))
        return TensorDataset(x, y, torch.arange(len(y))), fakes.UnlabeledViews(d), test

    stub_module("dataset.fix_cifar10", get_cifar10=get_cifar10)
    stub_module("wideresnetwithABC", WideResNet=lambda num_classes: FeatureNet(d))
    stub_module("scipy.optimize")
    stub_module("progress.bar", Bar=fakes.Bar)


def resume_checkpoint(d: dict[str, Any], folder: Path) -> Path:
    """What ABC's ``save_checkpoint`` writes after epoch ``RESUME_EPOCH`` (model, EMA model, Adam
    state at lr 0), and a ``log.txt`` with a header of ABC's six columns for its resuming Logger."""
    net = FeatureNet(d)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.0)
    path = folder / "checkpoint.pth.tar"
    torch.save({"epoch": RESUME_EPOCH, "state_dict": net.state_dict(), "ema_state_dict": net.state_dict(),
                "optimizer": optimizer.state_dict()}, path)
    (folder / "log.txt").write_text("\t".join(f"column{i}" for i in range(6)) + "\n")
    return path


def run(d: dict[str, Any], peer_root: Path) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """ABC's ``main()``: each step's values (and its Bernoulli calls), and the last evaluation."""
    out = remove_at_exit(Path(tempfile.mkdtemp(prefix="golden-abc-out-")))
    sys.argv = ["ABCfix.py", *ARGV, "--out", str(out), "--resume", str(resume_checkpoint(d, out))]
    sys.path.insert(0, str(peer_root / SUB))
    abcfix = importlib.import_module("ABCfix")  # parses sys.argv and seeds at import

    steps: list[dict[str, Any]] = []
    draws: list[tuple[torch.Tensor, torch.Tensor]] = []
    evaluation: dict[str, torch.Tensor] = {}
    real_bernoulli, real_step, real_accuracy = torch.bernoulli, abcfix.WeightEMA.step, abcfix.accuracy

    def bernoulli(p: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        drawn = real_bernoulli(p, *args, **kwargs)
        draws.append((p.detach().clone(), drawn.clone()))
        return drawn

    def ema_step(self: Any) -> None:  # train() calls it once per step, after optimizer.step()
        seen = caller_locals()
        (p_l, m_l), (p_u, m_u) = draws[-2:]
        steps.append({**snapshot(seen, STEP_VALUES), "p_labeled": p_l, "drawn_labeled": m_l,
                      "p_unlabeled": p_u, "drawn_unlabeled": m_u, "draws_in_step": len(draws)})
        draws.clear()
        return real_step(self)

    def accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)) -> Any:
        seen = caller_locals()  # validate(): keep the last evaluation's balanced-head logits
        evaluation.update(test_inputs=seen["inputs"].clone(), test_logits=seen["outputs2"].clone())
        return real_accuracy(output, target, topk)

    # ABC's loaders with 4 worker processes, here in the main process
    abcfix.data = fakes.in_process_loaders()
    torch.bernoulli, abcfix.WeightEMA.step, abcfix.accuracy = bernoulli, ema_step, accuracy
    try:
        with legacy_torch(cpu_for_cuda=True, loader_next=True):
            abcfix.main()
    finally:
        torch.bernoulli, abcfix.WeightEMA.step, abcfix.accuracy = real_bernoulli, real_step, real_accuracy
    return steps, evaluation


def main() -> None:
    args, peer = open_peer(__doc__.splitlines()[0], "abc", PATHS)
    os.environ.setdefault("MPLBACKEND", "Agg")  # utils/logger.py imports matplotlib.pyplot
    d: dict[str, Any] = data()
    stub_abc(d)
    steps, evaluation = run(d, peer.root)
    assert all(s["draws_in_step"] == 2 for s in steps), "ABC draws two Bernoulli masks per step"

    stacked = stack_steps(steps, skip=("draws_in_step",))
    stacked["label_u"] = stacked["label_u"].argmax(-1)  # ABC's one-hot of the balanced weak argmax
    tensors = {**{k: d[k] for k in ("fc.weight", "fc.bias", "fc2.weight", "fc2.bias")}, **stacked,
               **evaluation, "labeled_counts": d["labeled_counts"]}
    meta = provenance(peer, command("make_abc.py"), argv=ARGV + ["--resume", "<checkpoint at epoch 250>"],
                      options={"threshold": 0.95, "schedule_epochs": 500, "num_classes": K, "batch_size": BATCH,
                               "val_iteration": VAL_ITERATION, "resume_epoch": RESUME_EPOCH, "epochs": EPOCHS,
                               "labeled_counts": d["labeled_counts"].tolist()},
                      executed="ABCfix.py main(), train() and validate() with tensor datasets, a linear-heads "
                               "network and lr 0, resumed from a checkpoint at epoch 250",
                      legacy_torch=".cuda() stays on the CPU; DataLoader iterators have .next()",
                      bernoulli="torch.bernoulli wrapped: p_* are its probabilities, drawn_* its draws")
    write_fixture(args.out, NAME, tensors, meta)


if __name__ == "__main__":
    main()
