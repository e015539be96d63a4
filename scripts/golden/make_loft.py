"""Golden vectors of LoFT (games-liker/LoFT@9e192fb), from its own ``main_ssl.py`` and ``trainer.py``.

Runs LoFT's real ``main()`` with the options of its published ``train_ssl.sh`` (read from the
script: threshold 0.6, ood_threshold 0.3, lambda_u 3, lambda_uc 1, mu 7, CLIP ViT-B/16 config
with ``loss_type LA``, ``CosineClassifier`` at ``scale 25``, ``init_head text_feat``), so the real
``SSL_Trainer.__init__`` (data loaders, ``build_optimizer``, ``build_criterion`` ->
``LogitAdjustedLoss``, ``init_head_text_feat`` -> the cosine head's weights) and the real
``ssl_train()`` loop run for 2 steps. Overridden for a small, CPU-sized run: steps, batch sizes,
workers, ``lr 0`` (the head stays fixed, so each step can be recomputed) and ``is_open False``
(no COCO images; the OOD mask is applied either way).

Stubs: CLIP (``load_clip_to_cpu``; the text features are given vectors, ``proj`` the identity),
the PEFT model (its ``forward`` is LoFT's own ``CosineClassifier`` on given image features),
the datasets (tensor datasets of features), the evaluator, the test pass, the logger and the
tensorboard writer, whose ``add_scalar`` (called by ``ssl_train`` once a step is done) reads the
step's values from ``ssl_train``'s local variables.

    python scripts/golden/make_loft.py --peer-repo <clone of games-liker/LoFT>

writes tests/golden/fixtures/loft.{safetensors,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from fakes import CfgNode, caller_locals, command, open_peer, snapshot, unused, write_fixture
from peer import provenance, stub_module
from torch import nn
from torch.utils.data import Dataset, TensorDataset

NAME = "loft"
SCRIPT = "train_ssl.sh"
PATHS = ["main_ssl.py", "trainer.py", "utils/config.py", "utils/losses.py", "utils/meter.py",
         "models/classifiers.py", "configs/data/smallimagenet.yaml", "configs/model/clip_vit_b16.yaml", SCRIPT]
K, D = 10, 16
CLS_NUM_LIST = [50, 38, 29, 22, 16, 12, 9, 7, 6, 5]  # labeled counts (num_max 50, imbalance 10)
N_U = 42  # unlabeled features (3 batches of micro_batch_size * mu = 14)
#: the script's options this CPU-sized run changes, and why
SMALL = {"total_steps": "2", "eval_step": "2", "batch_size": "2", "micro_batch_size": "2",  # 2 steps of 2 + 14
         "num_workers": "0", "lr": "0.0",  # a fixed head: every step can be recomputed
         "is_open": "False", "output_dir": "golden"}  # no COCO images


def script_options(text: str) -> tuple[list[str], dict[str, int]]:
    """``main_ssl.py``'s ``opts`` as ``train_ssl.sh`` passes them (its shell variables substituted),
    and the line of the script where each variable is set."""
    values, lines = {}, {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = re.match(r"^(\w+)=(\S*)", line)
        if match:
            values[match.group(1)] = match.group(2).strip('"')
            lines[match.group(1)] = number
    command_text = text[text.index("main_ssl.py"):]
    opts: list[str] = []
    for key, value in re.findall(r"^(\w+) (\S+) \\$", command_text, flags=re.M):
        var = re.fullmatch(r'"?\$\{(\w+)\}"?', value)
        opts += [key, values[var.group(1)] if var else value.strip('"')]
    return opts, lines


def with_small_run(opts: list[str]) -> list[str]:
    pairs = dict(zip(opts[0::2], opts[1::2]))
    pairs.update(SMALL)
    return [item for pair in pairs.items() for item in pair]


def data(seed: int) -> dict[str, torch.Tensor]:
    """Text features (the head's initial weights; correlated, as CLIP's are), labeled and unlabeled
    image features: each a mixture of the class directions whose peakedness varies, so that
    weak-view confidences spread over the hard (>= 0.6), soft and out-of-distribution (<= 0.3)
    regimes at scale 25."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(1, D, generator=g) + torch.randn(K, D, generator=g) * 0.5

    def mixtures(n: int) -> torch.Tensor:
        peak = torch.empty(n, 1).uniform_(0.0, 4.0, generator=g)
        weights = torch.softmax(torch.randn(n, K, generator=g) * peak, dim=-1)
        return weights @ F.normalize(text, dim=-1) + torch.randn(n, D, generator=g) * 0.05

    u_w = mixtures(N_U)
    return {"text": text, "x_l": mixtures(sum(CLS_NUM_LIST)),
            "y_l": torch.repeat_interleave(torch.arange(K), torch.tensor(CLS_NUM_LIST)),
            "u_w": u_w, "u_s": u_w + torch.randn(N_U, D, generator=g) * 0.05}


class Labeled(TensorDataset):
    num_classes, cls_num_list, classnames = K, CLS_NUM_LIST, [f"class_{i}" for i in range(K)]


class Unlabeled(Dataset):
    def __init__(self, d: dict[str, torch.Tensor]) -> None:
        self.d = d

    def __len__(self) -> int:
        return N_U

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
        return (self.d["u_w"][i], self.d["u_s"][i]), -1


class FakeClip:
    """What LoFT reads of a CLIP model here: its text features and the image projection."""

    def __init__(self, text: torch.Tensor) -> None:
        self.text = text


def peft_model(classifiers: Any) -> type:
    class PeftModel(nn.Module):
        """Stands for ``PeftModelFromCLIP``: a tuner, LoFT's own head (built from the config as
        LoFT builds it, so ``scale`` is the config's), ``encode_text`` and an identity ``proj``;
        ``forward`` applies the head to the given image features."""

        def __init__(self, cfg: Any, clip_model: FakeClip, num_classes: int) -> None:
            super().__init__()
            self.text = clip_model.text
            self.tuner = nn.Linear(1, 1)  # trainable, never used: the features are given
            self.head = getattr(classifiers, cfg.classifier)(D, num_classes, torch.float32, **cfg)
            self.image_encoder = argparse.Namespace(proj=torch.eye(D))

        def encode_text(self, prompts: torch.Tensor) -> torch.Tensor:
            return self.text

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.head(image)

    return PeftModel


class Writer:
    """The tensorboard writer: ``ssl_train`` calls ``add_scalar`` after each step's update."""

    def __init__(self, steps: list[dict[str, Any]]) -> None:
        self.steps = steps

    def __call__(self, *args: Any, **kwargs: Any) -> Writer:
        return self

    def add_scalar(self, tag: str, value: float, n_iter: int) -> None:
        if tag == "train/lr":  # the first of the step's three scalars
            seen = caller_locals()
            self.steps.append({**snapshot(seen, [
                "inputs_x", "targets_x", "inputs_u_w", "inputs_u_s", "logits_x", "logits_u_w", "logits_u_s",
                "Lx", "pseudo_label", "max_probs", "targets_u", "mask", "ood_mask", "Lu", "Luc", "loss"]),
                "head_weight": seen["self"].head.weight.detach().clone()})

    def close(self) -> None:
        pass


def stub_loft() -> None:
    """The libraries and modules ``main_ssl.py``/``trainer.py`` import but the loss does not use."""
    stub_module("yacs.config", CfgNode=CfgNode)
    importlib.import_module("utils")
    stub_module("utils.logger", setup_logger=lambda output=None: None)
    stub_module("utils.samplers", DownSampler=unused("DownSampler"))
    stub_module("utils.evaluator", Evaluator=lambda *a, **k: None)
    stub_module("utils.templates", ZEROSHOT_TEMPLATES={})
    stub_module("sklearn.linear_model", LogisticRegression=unused("LogisticRegression"))
    stub_module("sklearn.metrics", roc_auc_score=unused("roc_auc_score"),
                average_precision_score=unused("average_precision_score"), roc_curve=unused("roc_curve"))
    stub_module("timm.models.vision_transformer", vit_base_patch16_224=unused("vit"),
                vit_base_patch16_384=unused("vit"), vit_large_patch16_224=unused("vit"))
    stub_module("open_clip")
    stub_module("clip.clip", tokenize=lambda text: torch.zeros(1, 77, dtype=torch.long))
    stub_module("datasets.cifar_ssl", DATASET_GETTERS={})


@contextlib.contextmanager
def in_folder(path: Path) -> Any:
    """LoFT reads ./configs and writes ./output relative to the working folder."""
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run(peer_root: Path, trainer: Any, main_ssl: Any, opts: list[str], d: dict[str, torch.Tensor],
        defaults: CfgNode) -> list[dict]:
    """LoFT's ``main()`` on the data ``d``, from the config ``defaults``: each training step's values."""
    steps: list[dict[str, Any]] = []
    main_ssl.cfg.clear()  # main() merges into the module-level config: start each run afresh
    main_ssl.cfg.update(defaults.clone())
    importlib.import_module("datasets.cifar_ssl").DATASET_GETTERS["smallimagenet"] = lambda cfg, root: (
        Labeled(d["x_l"], d["y_l"]), Unlabeled(d), Labeled(d["x_l"][:4], d["y_l"][:4]))
    trainer.load_clip_to_cpu = lambda backbone, prec: FakeClip(d["text"])
    trainer.SummaryWriter = Writer(steps)
    test = trainer.SSL_Trainer.test
    trainer.SSL_Trainer.test = lambda self, mode="test": None
    try:
        with in_folder(peer_root):
            main_ssl.main(argparse.Namespace(data="smallimagenet", model="clip_vit_b16", opts=opts))
    finally:
        trainer.SSL_Trainer.test = test
    return steps


def spread(steps: list[dict[str, Any]]) -> bool:
    """Every regime occurs, and some confidences lie in (0.2, 0.3] (the tests' tau_ood 0.2)."""
    conf = torch.cat([s["max_probs"] for s in steps])
    hard, ood = conf >= 0.6, conf <= 0.3
    return hard.sum() >= 3 and ood.sum() >= 3 and (~hard & ~ood).sum() >= 3 and ((conf > 0.2) & ood).any()


def main() -> None:
    args, peer = open_peer(__doc__.splitlines()[0], "loft", PATHS)
    importlib.import_module("torchvision")  # before the stubs: torch._dynamo looks up sklearn's spec
    stub_loft()
    classifiers = importlib.import_module("models.classifiers")
    trainer = importlib.import_module("trainer")
    trainer.PeftModelFromCLIP = peft_model(classifiers)
    main_ssl = importlib.import_module("main_ssl")
    defaults = main_ssl.cfg.clone()  # utils/config.py's _C, before any merge
    script = (Path(peer.root) / SCRIPT).read_text()
    published, lines = script_options(script)
    opts = with_small_run(published)

    for seed in range(100):
        d = data(seed)
        steps = run(Path(peer.root), trainer, main_ssl, opts, d, defaults)
        if spread(steps):
            break
    else:
        raise SystemExit("no data seed spread the confidences over the three regimes")
    cfg = main_ssl.cfg
    assert len(steps) == cfg.total_steps and cfg.loss_type == "LA" and cfg.classifier == "CosineClassifier"
    assert all(torch.equal(s["head_weight"], steps[0]["head_weight"]) for s in steps)  # lr 0

    stacked = {k: torch.stack([s[k] for s in steps]) for k in steps[0] if k != "head_weight"}
    tensors = {**stacked, "head_weight": steps[0]["head_weight"], "text_features": d["text"]}
    published_pairs = dict(zip(published[0::2], published[1::2]))
    meta = provenance(peer, command("make_loft.py"), data_seed=seed, opts=opts, options={
        "threshold": cfg.threshold, "ood_threshold": cfg.ood_threshold, "lambda_u": cfg.lambda_u,
        "lambda_uc": cfg.lambda_uc, "T": cfg.T, "mu": cfg.mu, "scale": cfg.scale, "loss_type": cfg.loss_type,
        "classifier": cfg.classifier, "init_head": cfg.init_head, "labeled_counts": CLS_NUM_LIST,
        "micro_batch_size": cfg.micro_batch_size},
        published={"script": SCRIPT, "opts": published_pairs,
                   "lambda_u": {"value": published_pairs["lambda_u"], "line": lines["lambda_u"]},
                   "mu": {"value": published_pairs["mu"], "line": lines["mu"]},
                   "threshold": {"value": published_pairs["threshold"], "line": lines["threshold"]},
                   "ood_threshold": {"value": published_pairs["ood_threshold"], "line": lines["ood_threshold"]}},
        changed_for_a_small_run=SMALL,
        executed="main_ssl.main -> SSL_Trainer.__init__ (build_data_loader, build_optimizer, build_criterion, "
        "init_head_text_feat) -> ssl_train, with stubbed CLIP/PEFT model and tensor datasets")
    write_fixture(args.out, NAME, tensors, meta)


if __name__ == "__main__":
    main()
