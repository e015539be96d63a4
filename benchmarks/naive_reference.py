"""The NAIVE REFERENCE the performance harness compares against: how the peers train.

Deliberately written the way the public LTSSL-with-CLIP code bases do it (docs/method.md
section 6), so that ``benchmarks/perf.py`` measures what ulfine's choices buy:

- a hand-written ViT forward re-implemented from the same open_clip weights, with explicit
  ``softmax(q @ k^T) @ v`` attention (no fused / SDPA kernel, the (B, H, L, L) matrix kept
  for backward);
- AdaptFormer adapters hand-written into that forward (same placement and size as ulfine's);
- the FixMatch weak views run WITH gradients in a separate forward pass (their graph is kept
  alive until the end of the step), then labeled + strong views in a second forward;
- fp32 throughout (no autocast).

This file exists only for benchmarking; ulfine itself never re-implements the forward pass.
Its forward matches open_clip's numerically (tests/perf/test_naive_reference.py), so the
comparison is fair: same weights, same FLOPs of useful work, same step semantics.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation, x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class NaiveAttention(nn.Module):
    """Multi-head self-attention written out by hand (as in the peers' CLIP copies)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class NaiveAdapter(nn.Module):
    """AdaptFormer bottleneck in its published form: up(dropout(relu(down(LN(x))))) * scale on the
    block's residual input, its own LayerNorm, up zero-initialised."""

    def __init__(self, width: int, bottleneck: int, scale: float, dropout: float = 0.1) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        self.scale = scale
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(F.relu(self.down(self.ln(x))))) * self.scale


class NaiveBlock(nn.Module):
    """Pre-norm residual block; the adapter runs parallel to the MLP on the residual input."""

    def __init__(self, width: int, heads: int, mlp_width: int, act: nn.Module, eps: float,
                 adapter: NaiveAdapter | None) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = NaiveAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.fc1 = nn.Linear(width, mlp_width)
        self.act = act
        self.fc2 = nn.Linear(mlp_width, width)
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        h = self.ln_2(x)
        out = self.fc2(self.act(self.fc1(h)))
        if self.adapter is not None:
            out = out + self.adapter(x)
        return x + out


class NaiveViT(nn.Module):
    """CLIP's image tower re-implemented by hand; build it with :meth:`from_open_clip`."""

    def __init__(self, *, image_size: int, patch: int, width: int, layers: int, heads: int,
                 mlp_width: int, output_dim: int, quick_gelu: bool, eps: float,
                 adapter_bottleneck: int | None, adapter_scale: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        grid = image_size // patch
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=eps)
        self.blocks = nn.ModuleList(
            NaiveBlock(width, heads, mlp_width, QuickGELU() if quick_gelu else nn.GELU(), eps,
                       NaiveAdapter(width, adapter_bottleneck, adapter_scale)
                       if adapter_bottleneck else None)
            for _ in range(layers)
        )
        self.ln_post = nn.LayerNorm(width, eps=eps)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    @classmethod
    def from_open_clip(cls, visual: nn.Module, adapter_bottleneck: int | None = 64,
                       adapter_scale: float = 0.1) -> "NaiveViT":
        """Copy the weights of an open_clip ``VisionTransformer`` (CLIP-style, token pooling).

        If ulfine's AdaptFormer was injected into ``visual`` its adapter weights are copied too
        (the bottleneck and scale then come from those adapters).
        """
        from open_clip.transformer import QuickGELU as OCQuickGELU

        blocks = visual.transformer.resblocks
        first = blocks[0]
        attn = first.attn
        injected = [getattr(b.mlp, "adapter", None) for b in blocks]
        if all(a is not None for a in injected):
            adapter_bottleneck, adapter_scale = injected[0].down.out_features, injected[0].scale
        mlps = [getattr(b.mlp, "mlp", b.mlp) for b in blocks]
        if not isinstance(attn, nn.MultiheadAttention) or getattr(visual, "attn_pool", None) is not None:
            raise ValueError("naive reference supports open_clip's plain CLIP ViT only")
        width = visual.conv1.out_channels
        model = cls(
            image_size=visual.image_size[0], patch=visual.patch_size[0], width=width,
            layers=len(blocks), heads=attn.num_heads, mlp_width=mlps[0].c_fc.out_features,
            output_dim=visual.proj.shape[1], quick_gelu=isinstance(mlps[0].gelu, OCQuickGELU),
            eps=first.ln_1.eps, adapter_bottleneck=adapter_bottleneck, adapter_scale=adapter_scale,
        )
        src = visual
        with torch.no_grad():
            model.conv1.weight.copy_(src.conv1.weight)
            model.class_embedding.copy_(src.class_embedding)
            model.positional_embedding.copy_(src.positional_embedding)
            for mine, theirs in ((model.ln_pre, src.ln_pre), (model.ln_post, src.ln_post)):
                mine.load_state_dict(theirs.state_dict())
            model.proj.copy_(src.proj)
            for nb, ob, mlp, adapter in zip(model.blocks, blocks, mlps, injected):
                nb.ln_1.load_state_dict(ob.ln_1.state_dict())
                nb.ln_2.load_state_dict(ob.ln_2.state_dict())
                nb.attn.qkv.weight.copy_(ob.attn.in_proj_weight)
                nb.attn.qkv.bias.copy_(ob.attn.in_proj_bias)
                nb.attn.proj.load_state_dict(ob.attn.out_proj.state_dict())
                nb.fc1.load_state_dict(mlp.c_fc.state_dict())
                nb.fc2.load_state_dict(mlp.c_proj.state_dict())
                if adapter is not None and nb.adapter is not None:
                    nb.adapter.ln.load_state_dict(adapter.ln.state_dict())
                    nb.adapter.down.load_state_dict(adapter.down.state_dict())
                    nb.adapter.up.load_state_dict(adapter.up.state_dict())
        return model.to(visual.conv1.weight.device)

    def freeze_backbone(self) -> "NaiveViT":
        """LFT as the peers do it: only the adapters train."""
        for name, p in self.named_parameters():
            p.requires_grad_(".adapter." in name)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls_tok = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls_tok, x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        for blk in self.blocks:
            x = blk(x)
        return self.ln_post(x[:, 0]) @ self.proj


class CosineHead(nn.Module):
    """The peers' text-initialised cosine classifier."""

    def __init__(self, prototypes: torch.Tensor, logit_scale: float) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(prototypes.detach().clone().float())
        self.logit_scale = logit_scale

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * F.normalize(f, dim=-1) @ F.normalize(self.prototypes, dim=-1).t()


def naive_fixmatch_step(model: nn.Module, head: nn.Module, opt: torch.optim.Optimizer,
                        x_l: torch.Tensor, y_l: torch.Tensor, u_w: torch.Tensor,
                        u_s: torch.Tensor, tau: float = 0.7) -> torch.Tensor:
    """One FixMatch step the peers' way: weak views WITH gradients in their own forward, fp32."""
    logits_w = head(model(u_w))  # graph kept alive: the peers never wrap this in no_grad
    probs = torch.softmax(logits_w.detach(), dim=-1)
    conf, pseudo = probs.max(dim=-1)
    mask = (conf >= tau).float()
    logits = head(model(torch.cat([x_l, u_s])))
    logits_l, logits_s = logits[: len(x_l)], logits[len(x_l):]
    loss = F.cross_entropy(logits_l, y_l) + (F.cross_entropy(logits_s, pseudo, reduction="none") * mask).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    del logits_w
    return loss.detach()
