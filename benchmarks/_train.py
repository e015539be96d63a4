"""Section (a) and (d) building blocks: ulfine's LFT FixMatch step vs the naive reference step."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from _attention import AttentionKernelCounter
from _common import cpu_step_peak_bytes, cuda_step_memory, interleaved, mib, sync, timed
from naive_reference import CosineHead, NaiveViT, naive_fixmatch_step
from torch import nn

NUM_CLASSES = 10


@dataclass
class Stepper:
    """One benchmarked training step and the modules it owns (for device offloading)."""

    name: str
    step: Callable[[], Any]
    modules: list[nn.Module]
    optimizer: torch.optim.Optimizer
    info: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device) -> None:
        """Move modules and optimiser state (to measure one step's memory alone on the device)."""
        for m in self.modules:
            m.to(device)
        for state in self.optimizer.state.values():
            for k, v in state.items():
                if isinstance(v, torch.Tensor):
                    state[k] = v.to(device)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """What ulfine's engine uses for train.precision=auto on this device."""
    from ulfine.engine.precision import AUTOCAST_DTYPES, resolve_precision

    return AUTOCAST_DTYPES[resolve_precision("auto", device.type)]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast when a dtype is given, else nothing (fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def make_batch(device: torch.device, batch: int, mu: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Normalised random images at model size (the pipeline is measured separately in (b))."""
    g = torch.Generator().manual_seed(seed)
    nu = mu * batch
    return {
        "x_l": torch.randn(batch, 3, size, size, generator=g).to(device),
        "y_l": torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(device),
        "u_w": torch.randn(nu, 3, size, size, generator=g).to(device),
        "u_s": torch.randn(nu, 3, size, size, generator=g).to(device),
        "idx_u": torch.arange(nu).to(device),
    }


def build_steps(arch: str, device: torch.device, batch: dict[str, torch.Tensor]) -> tuple[Stepper, Stepper]:
    """(ours, naive) on the same random weights: ulfine backbone + AdaptFormer + FixMatch method,
    and the hand-written ViT copy of that tower."""
    from ulfine.config.schema import Config, ModelConfig
    from ulfine.methods import METHODS, Batch, MethodContext
    from ulfine.models import apply_finetune, build_backbone

    torch.manual_seed(0)
    model_cfg = ModelConfig(arch=arch, pretrained="none", text_cache_dir=None)
    backbone = build_backbone(model_cfg, device="cpu")  # text tower stays on the CPU
    summary = apply_finetune(backbone, "lft", "adaptformer", None)
    cfg = Config(method="fixmatch", finetune="lft", peft="adaptformer", head="prototype", model=model_cfg)
    protos = F.normalize(torch.randn(NUM_CLASSES, backbone.embed_dim), dim=-1)
    ctx = MethodContext(num_classes=NUM_CLASSES, class_names=[f"c{i}" for i in range(NUM_CLASSES)],
                        labeled_counts=torch.ones(NUM_CLASSES), text_prototypes=protos,
                        logit_scale=backbone.logit_scale, num_unlabeled=len(batch["u_w"]),
                        feature_dim=backbone.embed_dim)
    # the naive copy is taken after injection, so it carries the very same adapter weights
    naive = NaiveViT.from_open_clip(backbone.visual).freeze_backbone()
    method = METHODS.get("fixmatch").from_config(cfg, backbone, ctx).to(device).train()
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.03,
                          momentum=0.9, weight_decay=5e-4)
    amp = autocast_dtype(device)
    sslbatch = Batch(**batch)

    def our_step() -> torch.Tensor:
        with autocast(device, amp):
            out = method.training_step(sslbatch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        return out.loss.detach()

    naive = naive.to(device).train()
    head = CosineHead(protos, backbone.logit_scale).to(device)
    nopt = torch.optim.SGD([p for p in [*naive.parameters(), *head.parameters()] if p.requires_grad],
                           lr=0.03, momentum=0.9, weight_decay=5e-4)

    def naive_step() -> torch.Tensor:
        return naive_fixmatch_step(naive, head, nopt, batch["x_l"], batch["y_l"], batch["u_w"],
                                   batch["u_s"], tau=cfg.ssl.tau)

    ours = Stepper("ulfine", our_step, [method], opt,
                   {"precision": str(amp).replace("torch.", "") if amp else "fp32",
                    "step": "ulfine.methods.fixmatch.FixMatch.training_step (weak views no_grad; "
                            "labeled+strong one forward)",
                    "trainable_params": summary.trainable, "total_params": summary.total})
    ref = Stepper("naive", naive_step, [naive, head], nopt,
                  {"precision": "fp32", "step": "benchmarks/naive_reference.naive_fixmatch_step "
                   "(explicit attention; weak views with gradients, separate forward)",
                   "trainable_params": sum(p.numel() for p in nopt.param_groups[0]["params"])})
    ours.info["method"] = method  # kept for compile / FLOP counting (removed before JSON)
    return ours, ref


def step_memory(stepper: Stepper, others: list[Stepper], device: torch.device) -> dict[str, Any]:
    """Peak memory of one step with only this step's modules on the device."""
    if device.type == "cuda":
        for o in others:
            o.to(torch.device("cpu"))
        stepper.step()  # one warm step after the move
        mem = cuda_step_memory(stepper.step, device)
        for o in others:
            o.to(device)
        return {**mem, "peak_total_mib": mib(mem["peak_total_bytes"]),
                "peak_step_mib": mib(mem["peak_step_bytes"]),
                "method": "torch.cuda.max_memory_allocated over one step, only this step's "
                          "model on the GPU (total) and above the pre-step level (step)"}
    peak = cpu_step_peak_bytes(stepper.step)
    return {"peak_step_bytes": peak, "peak_step_mib": mib(peak),
            "method": "torch.profiler(profile_memory=True): peak of live CPU-allocator bytes during "
                      "one step above the level before it (activations, grads, temporaries)"}


def attention_kernels(step: Callable[[], Any]) -> dict[str, Any]:
    """Fused-attention and softmax op counts of one step."""
    with AttentionKernelCounter() as counter:
        step()
    return counter.summary()


def compile_ours(ours: Stepper, device: torch.device, warmup: int, steps: int) -> dict[str, Any]:
    """train.compile=true: torch.compile the image tower, time compilation and steady steps."""
    method = ours.info["method"]
    visual = method.backbone.visual
    method.backbone.visual = torch.compile(visual)
    try:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(max(2, warmup)):
            ours.step()
        sync(device)
        compile_s = time.perf_counter() - t0
        per_step = timed(ours.step, device, steps)
    finally:
        method.backbone.visual = visual
    return {"compile_and_warmup_s": round(compile_s, 2), "median_s": per_step}


def time_steps(steppers: list[Stepper], device: torch.device, *, warmup: int, steps: int,
               rounds: int) -> dict[str, dict[str, float]]:
    """Interleaved timing of several steps (see _common.interleaved)."""
    return interleaved({s.name: s.step for s in steppers}, device, warmup=warmup, steps=steps,
                       rounds=rounds)


FINETUNE_MODES = [("lp", None), ("lft", "adaptformer"), ("lft", "vpt"), ("lft", "lora"),
                  ("lft", "bitfit"), ("fft", None)]


def fused_attention_by_mode(device: torch.device, arch: str = "ulfine-micro-vit") -> dict[str, Any]:
    """Attention kernels of one training forward+backward in every fine-tuning mode.

    ulfine injects its modules around open_clip's blocks (hooks, wrappers, parametrisations),
    so every mode must still run one fused SDPA kernel per block and no explicit softmax.
    """
    from ulfine.config.schema import ModelConfig
    from ulfine.models import apply_finetune, build_backbone

    out: dict[str, Any] = {}
    for finetune, peft in FINETUNE_MODES:
        torch.manual_seed(0)
        backbone = build_backbone(ModelConfig(arch=arch, pretrained="none", text_cache_dir=None))
        apply_finetune(backbone, finetune, peft or "adaptformer", None)
        backbone.to(device).train()
        size = backbone.preprocess.size if isinstance(backbone.preprocess.size, int) else backbone.preprocess.size[0]
        x = torch.randn(2, 3, size, size, device=device)
        with AttentionKernelCounter() as counter, autocast(device, autocast_dtype(device)):
            feats = backbone.encode_image(x)
        if feats.requires_grad:
            with AttentionKernelCounter() as bwd:
                feats.float().sum().backward()
            counter.ops.update(bwd.ops)
            counter.attention_softmax += bwd.attention_softmax
        blocks = len(backbone.visual.transformer.resblocks)
        summary = counter.summary()
        summary["blocks"] = blocks
        summary["ok"] = summary["fused_forward"] == blocks and summary["explicit_attention_softmax"] == 0
        out[finetune if peft is None else f"{finetune}/{peft}"] = summary
    return out
