"""Contrastive pretraining of the tiny CLIP (``ulfine-micro-vit``) on the micro world.

Why: the project cannot download a foundation model, so it makes one. ``pretrain()`` trains
open_clip's own model with open_clip's own ``ClipLoss`` on freshly drawn world batches (every
step a new, seeded batch: no dataset to store), then writes fp16 safetensors that
``model.pretrained=micro`` (or ``model.pretrained=<file>``) loads, plus a JSON record of how
they were made and how well they transfer zero-shot to the downstream task.

Re-make the shipped weights with ``ulfine pretrain-micro`` (the defaults below are the recipe).
"""

from __future__ import annotations

import json
import math
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..models.archs import MICRO_ARCH, register_archs
from ..models.preprocess import DeviceNormalizer
from ..schedule import lr_factor
from ..statefiles import atomic_save_tensors
from .task import CLASS_NAMES, NUM_CLASSES, TEST_PER_CLASS, held_out_classes, task_arrays
from .world import sample_pretrain_batch
from .zeroshot import as_uint8_nchw, micro_normalizer, per_class_accuracy, zero_shot_predict

DEFAULT_STEPS = 1500
DEFAULT_BATCH = 128
DEFAULT_LR = 1e-3
#: real CLIP's learnt logit scale ends at its clamp, 100; the micro-CLIP is trained at that scale
#: (temperature 0.01, not learnt) so that confidence thresholds such as tau = 0.7 or 0.95 mean
#: here what they mean with real CLIP
DEFAULT_LOGIT_SCALE = 100.0
TEMPLATE = "a photo of a {}."


@dataclass
class PretrainResult:
    """What a pretraining run produced and measured (also written as JSON next to the weights)."""

    path: str
    arch: str
    steps: int
    batch_size: int
    seed: int
    lr: float
    seconds: float
    device: str
    torch_threads: int
    first_loss: float  # mean contrastive loss of the first 10 steps
    final_loss: float  # mean contrastive loss of the last 10 steps
    zero_shot_accuracy: float | None = None  # downstream test subset, template TEMPLATE
    zero_shot_seen: float | None = None  # classes whose colour/shape pair pretraining showed
    zero_shot_held_out: float | None = None  # classes whose pair pretraining never showed
    zero_shot_images: int = 0
    chance: float | None = None
    logit_scale: float | None = None  # the fixed contrastive scale; None = learnt
    losses: list[float] = field(default_factory=list)  # every step, for plots and tests
    command: str = ""
    torch_version: str = torch.__version__
    machine: str = platform.machine()

    def __str__(self) -> str:  # the CLI prints the result as the weights path
        return self.path


def build_micro_clip(seed: int = 0, logit_scale: float | None = None) -> torch.nn.Module:
    """A randomly initialised ``ulfine-micro-vit`` open_clip model (image + text towers).

    ``logit_scale`` fixes the contrastive scale (a buffer-like parameter without gradient);
    None keeps open_clip's learnable one (initialised at 1 / 0.07).
    """
    import open_clip

    register_archs()
    torch.manual_seed(seed)
    model = open_clip.create_model(MICRO_ARCH, pretrained=None, output_dict=True)
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(logit_scale))
        model.logit_scale.requires_grad_(False)
    return model


def contrastive_step_loss(
    model: torch.nn.Module,
    tokenizer,  # noqa: ANN001 - open_clip tokenizer
    images: np.ndarray,
    captions: list[str],
    normalizer: DeviceNormalizer | None = None,
) -> torch.Tensor:
    """open_clip's symmetric InfoNCE loss of one (images, captions) batch.

    ``normalizer`` (default :func:`micro_normalizer`) turns the uint8 batch into model input on
    the model's device; pass one to build it once per run instead of once per step.
    """
    from open_clip.loss import ClipLoss

    device = model.logit_scale.device
    normalizer = (normalizer or micro_normalizer()).to(device)
    x = normalizer(as_uint8_nchw(images).to(device))
    out = model(x, tokenizer(captions).to(device))
    return ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"])


@torch.no_grad()
def evaluate_zero_shot(model: torch.nn.Module, tokenizer, per_class: int = 40) -> dict[str, float]:  # noqa: ANN001
    """Zero-shot accuracy of an open_clip model on the first ``per_class`` test images per class."""
    _, _, x_te, y_te = task_arrays()
    keep = np.concatenate([np.arange(k * TEST_PER_CLASS, k * TEST_PER_CLASS + per_class) for k in range(NUM_CLASSES)])
    images, labels = x_te[keep], y_te[keep]
    was_training = model.training
    model.eval()
    device = model.logit_scale.device
    text = model.encode_text(tokenizer([TEMPLATE.format(c) for c in CLASS_NAMES]).to(device))
    pred = zero_shot_predict(lambda x: model.encode_image(x.to(device)), text, images, micro_normalizer())
    model.train(was_training)
    acc = per_class_accuracy(pred, labels, NUM_CLASSES)
    held = held_out_classes()
    seen = [k for k in range(NUM_CLASSES) if k not in held]
    return {
        "zero_shot_accuracy": float((pred == labels).mean()),
        "zero_shot_seen": float(np.nanmean(acc[seen])),
        "zero_shot_held_out": float(np.nanmean(acc[held])),
        "zero_shot_images": int(len(labels)),
        "chance": 1.0 / NUM_CLASSES,
    }


def save_micro_clip(model: torch.nn.Module, path: Path, fp16: bool = True) -> None:
    """Write a pretrained micro-CLIP as the open_clip state dict in safetensors.

    Why its own writer (not the engine's run checkpoint): this file *is* a foundation model that
    ``model.pretrained=micro`` / ``=<file>`` loads into open_clip; fp16 keeps the shipped file
    under ~10 MB.
    """
    state = {}
    for name, value in model.state_dict().items():
        value = value.detach().cpu()
        state[name] = (value.half() if fp16 and value.is_floating_point() else value).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(state, path, metadata={"arch": "ulfine-micro-vit", "format": "open_clip"})  # mode 0644


def _train_contrastive(
    model: torch.nn.Module, steps: int, batch_size: int, seed: int, lr: float, weight_decay: float,
    warmup: int, progress: bool,
) -> list[float]:
    """The pretraining loop (AdamW, warm-up + cosine, one fresh seeded batch per step); its losses.

    Why a thread: the next world batch is drawn (numpy, GIL released) while this one trains.
    """
    import open_clip
    from tqdm.auto import tqdm

    tokenizer = open_clip.get_tokenizer(MICRO_ARCH)
    normalizer = micro_normalizer()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98), eps=1e-6)
    batch_seed = lambda i: seed * 1_000_003 + i
    losses: list[float] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(sample_pretrain_batch, batch_seed(0), batch_size)
        bar = tqdm(range(steps), desc="pretrain-micro", disable=not progress, unit="step")
        for step in bar:
            images, captions, _ = pending.result()
            if step + 1 < steps:
                pending = pool.submit(sample_pretrain_batch, batch_seed(step + 1), batch_size)
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(step, steps, warmup)
            loss = contrastive_step_loss(model, tokenizer, images, captions, normalizer)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            if step % 10 == 0 or step + 1 == steps:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
    return losses


def pretrain(
    out_path: Path | str,
    steps: int | None = DEFAULT_STEPS,
    batch_size: int | None = DEFAULT_BATCH,
    seed: int = 0,
    lr: float = DEFAULT_LR,
    weight_decay: float = 0.05,
    warmup: int | None = None,
    eval_per_class: int = 40,
    progress: bool = True,
    threads: int | None = None,
    device: str = "cpu",
    command: str = "",
    logit_scale: float | None = DEFAULT_LOGIT_SCALE,
) -> PretrainResult:
    """Train ``ulfine-micro-vit`` contrastively on the micro world and write its weights.

    Writes ``out_path`` (fp16 safetensors) and ``out_path`` with suffix ``.json`` (the
    :class:`PretrainResult`). ``steps``/``batch_size`` None mean the shipped recipe;
    ``logit_scale`` None learns the scale (open_clip's default) instead of fixing it.
    Deterministic given ``seed``, the device and the thread count. Example::

        pretrain("src/ulfine/assets/micro_clip.safetensors")  # the shipped recipe
    """
    import open_clip

    steps = DEFAULT_STEPS if steps is None else steps
    batch_size = DEFAULT_BATCH if batch_size is None else batch_size
    if steps < 1 or batch_size < 2:
        raise ConfigError(f"pretrain-micro needs steps >= 1 and batch size >= 2 (got {steps}, {batch_size})")
    if threads:
        torch.set_num_threads(threads)
    out_path = Path(out_path)
    model = build_micro_clip(seed, logit_scale).to(device)
    model.train()
    warmup = max(1, steps // 20) if warmup is None else max(1, warmup)
    start = time.perf_counter()
    losses = _train_contrastive(model, steps, batch_size, seed, lr, weight_decay, warmup, progress)
    seconds = time.perf_counter() - start
    tokenizer = open_clip.get_tokenizer(MICRO_ARCH)
    zs = evaluate_zero_shot(model, tokenizer, eval_per_class) if eval_per_class > 0 else {}
    save_micro_clip(model, out_path)
    result = PretrainResult(
        path=str(out_path), arch=MICRO_ARCH, steps=steps, batch_size=batch_size, seed=seed, lr=lr,
        seconds=round(seconds, 1), device=str(device), torch_threads=torch.get_num_threads(),
        first_loss=float(np.mean(losses[:10])), final_loss=float(np.mean(losses[-10:])),
        logit_scale=logit_scale, losses=[round(x, 4) for x in losses], **zs,
        command=command or f"ulfine.microworld.pretrain.pretrain({str(out_path)!r}, steps={steps}, "
        f"batch_size={batch_size}, seed={seed}, lr={lr}, weight_decay={weight_decay}, device={device!r}, "
        f"logit_scale={logit_scale})",
    )
    out_path.with_suffix(".json").write_text(json.dumps(asdict(result), indent=1) + "\n")
    return result
