"""Golden vectors of DebiasPL (frank-xwang/debiased-pseudo-labeling@3d68ccb), from its own code.

Imports the real ``main_DebiasPL.py`` (its argument parser, ``initial_qhat``, ``causal_inference``,
``update_qhat``) and runs its real ``train()`` for one epoch of 5 steps, with the real ``FixMatch``
model of ``models/fixmatch.py`` (``eman=False``: the weak view through the trained network) on an
identity backbone, so the "images" are features and the logits are the model's ``fc``. Arguments
are parsed by the peer's own parser: ``--tau 0.4`` (every released script), ``--threshold 0.7`` and
``--lambda-u 10`` (its defaults), ``--qhat_m 0.9`` (the scripts use 0.99/0.999; a faster EMA makes
q^ move visibly in 5 steps). ``train()`` starts from ``initial_qhat`` (uniform) as ``main_worker``
does, with the peer's helper called for this fixture's K classes.

Stubs: the datasets, transforms, backbones, ``engine.validate`` (imports faiss), ``utils.get_norm``
/ ``dist_utils`` and pandas; the loaders hold one batch per step; the writer ignores scalars; the
optimiser is SGD with learning rate 0 (the classifier stays fixed, so ulfine can recompute every
step). Each step's values are read from ``train()``'s local variables when it calls
``optimizer.step()`` (after the loss and q^ update). :func:`fakes.legacy_torch` keeps on the CPU
the tensors ``train()`` moves with ``.cuda()``.

    python scripts/golden/make_debiaspl.py --peer-repo <clone of frank-xwang/debiased-pseudo-labeling>

writes tests/golden/fixtures/debiaspl.{safetensors,json}.
"""

from __future__ import annotations

import importlib
import importlib.machinery
from typing import Any

import torch
from fakes import command, frame_locals, legacy_torch, open_peer, snapshot, stack_steps, unused, write_fixture
from peer import provenance, stub_module
from torch import nn

NAME = "debiaspl"
PATHS = ["main_DebiasPL.py", "models/fixmatch.py", "utils/utils.py", "utils/lr_schedule.py"]
K, D = 10, 12  # classes (>= 5: train() logs top-5 accuracy); feature dimension
STEPS, B_X, MU = 5, 4, 2
ARGV = ["data", "--tau", "0.4", "--threshold", "0.7", "--lambda-u", "10", "--qhat_m", "0.9", "--mu", str(MU),
        "--batch-size", str(B_X), "--epochs", "1", "--warmup-epoch", "0", "--lr", "0", "--cls", str(K)]
BIAS = torch.linspace(2.0, -2.0, K)  # the classifier prefers the first classes: q^ and debiasing matter
STEP_VALUES = ["logits_x", "logits_u_w", "logits_u_s", "pseudo_label", "max_probs", "pseudo_targets_u", "mask",
               "qhat", "loss_x", "loss_u", "loss"]


class IdentityEncoder(nn.Module):
    """The backbone: features = input; ``out_channels`` as DebiasPL's ResNet encoders."""

    out_channels = D

    def __init__(self, norm_layer: Any = None) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Loader:
    """A data loader yielding one batch per step."""

    def __init__(self, batches: list[tuple[Any, ...]]) -> None:
        self.batches = batches

    def __iter__(self) -> Any:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Writer:
    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass


class SpySGD(torch.optim.SGD):
    """SGD that records ``train()``'s local variables each time the loop steps it."""

    def __init__(self, params: Any, record: list[dict[str, Any]]) -> None:
        super().__init__(params, lr=0.0)
        self.record = record

    def step(self, closure: Any = None) -> Any:
        self.record.append(snapshot(frame_locals("train"), STEP_VALUES))
        return super().step(closure)


def stub_debiaspl() -> None:
    """Register what ``main_DebiasPL.py`` imports but ``train()`` does not use."""
    # pandas (reads index CSVs in main_worker): a stub with a module spec, since PyTorch's compiler
    # probes installed modules with importlib.util.find_spec when the optimiser is built
    stub_module("pandas", __spec__=importlib.machinery.ModuleSpec("pandas", None))
    stub_module("data.datasets")
    stub_module("data.transforms")
    stub_module("backbone", resnet50_encoder=IdentityEncoder)
    stub_module("engine", validate=unused("validate"))
    importlib.import_module("models")
    fixmatch = importlib.import_module("models.fixmatch")
    stub_module("models", get_fixmatch_model=fixmatch.get_fixmatch_model)
    importlib.import_module("utils.utils")
    importlib.import_module("utils.lr_schedule")
    stub_module("utils.dist_utils", get_rank=lambda: 0)
    stub_module("utils", get_norm=lambda name: None)


def inputs(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(STEPS, B_X, D, generator=g)
    weak = 3.0 * torch.randn(STEPS, B_X * MU, D, generator=g)
    return {"inputs_x": x, "targets_x": torch.randint(0, K, (STEPS, B_X), generator=g), "inputs_u_w": weak,
            "inputs_u_s": weak + 0.7 * torch.randn(STEPS, B_X * MU, D, generator=g)}


def run(main: Any, args: Any, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The peer's ``train()`` over the steps of ``x``; its values per step, stacked."""
    torch.manual_seed(0)  # fc: nn.Linear's default initialisation
    model = main.get_fixmatch_model(args.arch)(IdentityEncoder, num_classes=K, eman=args.eman)
    with torch.no_grad():
        model.main.fc.bias.add_(BIAS)
    record: list[dict[str, Any]] = []
    optimizer = SpySGD(model.parameters(), record)
    loader_x = Loader([(x["inputs_x"][s], x["targets_x"][s], torch.arange(B_X)) for s in range(STEPS)])
    loader_u = Loader([((x["inputs_u_w"][s], x["inputs_u_s"][s]), torch.zeros(B_X * MU, dtype=torch.long),
                        torch.arange(B_X * MU)) for s in range(STEPS)])
    with legacy_torch(cpu_for_cuda=True):
        qhat0 = main.initial_qhat(class_num=K)
        qhat = main.train(loader_x, loader_u, model, optimizer, 0, args, qhat0.clone(), Writer())
    assert len(record) == STEPS
    out = stack_steps(record)
    out["qhat"] = out["qhat"].squeeze(1)  # (1, K) per step in the peer
    out["qhat_before"] = torch.cat([qhat0, out["qhat"][:-1]])
    assert torch.equal(out["qhat"][-1], qhat.squeeze(0))
    out["fc.weight"] = model.main.fc.weight.detach().clone()
    out["fc.bias"] = model.main.fc.bias.detach().clone()
    return out


def interesting(t: dict[str, torch.Tensor]) -> bool:
    """Masks mixed and debiasing changing some pseudo-label (argmax z != argmax(z - tau log q^))."""
    mask = t["mask"]
    changed = (t["logits_u_w"].argmax(-1) != t["pseudo_targets_u"])[1:].any()  # q^ is uniform at step 0
    return bool(0 < mask.sum() < mask.numel() - 3 and mask[1:].sum() >= 8 and changed)


def main() -> None:
    cli, peer = open_peer(__doc__.splitlines()[0], "debiaspl", PATHS)
    stub_debiaspl()
    debiaspl = importlib.import_module("main_DebiasPL")
    args = debiaspl.parser.parse_args(ARGV)
    args.gpu, args.rank = None, -1  # one process (main_worker sets these)
    args.distributed = False
    assert not (args.eman or args.multiviews or args.CLDLoss or args.use_clip or args.masked_qhat)
    for seed in range(200):
        x = inputs(seed)
        t = run(debiaspl, args, x)
        if interesting(t):
            break
    else:
        raise SystemExit("no seed gave mixed masks and debiased labels")
    meta = provenance(peer, command("make_debiaspl.py"), seed=seed, argv=ARGV, options={
        "tau": args.tau, "threshold": args.threshold, "lambda_u": args.lambda_u, "qhat_m": args.qhat_m,
        "mu": args.mu, "num_classes": K, "eman": args.eman, "multiviews": args.multiviews,
        "cld": args.CLDLoss, "masked_qhat": args.masked_qhat},
        executed="main_DebiasPL.train() for one epoch of 5 steps (initial_qhat, causal_inference, update_qhat) "
        "with models/fixmatch.py's FixMatch on an identity backbone, learning rate 0")
    write_fixture(cli.out, NAME, {**x, **t}, meta)


if __name__ == "__main__":
    main()
