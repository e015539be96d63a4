"""Golden vectors for ``peft=adaptformer`` and ``peft=vpt``: FineSSL's own ViT forward with its
own AdaptFormer and VPT-deep modules (Gank0078/FineSSL@76b6f48).

FineSSL is executed, not re-implemented: ``model.py`` (``Model``, ``CLIP_ViT``, ``ViT_Tuner``,
``AdaptFormer``, ``VPT``), ``clip/model.py`` (OpenAI CLIP's ``VisionTransformer``) and
``utils/config.py`` (FineSSL's option defaults: ffn_num 64, ln_opt "in", adapter_scalar 0.1,
ffn_opt "parallel", partial None) are read from the clone at the pinned commit (:mod:`peer`);
only ``yacs`` is stubbed (its ``CfgNode`` becomes a ``SimpleNamespace``).

1. A tiny open_clip CLIP (QuickGELU, as OpenAI's weights use) is built with seeded weights, every
   tower weight perturbed, so no LayerNorm is left at (1, 0) and no bias at 0.
2. Its image tower's state dict is loaded, strictly (the names are OpenAI's), into FineSSL's
   ``clip/model.py`` ``VisionTransformer`` (2 heads of 16: ``build_model`` would derive
   ``heads = width // 64``, which a 32-wide tower cannot use, so the class is built directly).
   FineSSL's ``Model(cfg, clip_model, text_features)`` then wraps it: ``CLIP_ViT`` (FineSSL's
   own block loop) and ``ViT_Tuner`` (which builds the AdaptFormer / VPT modules).
3. The adapters get seeded non-trivial values (non-zero up-projection and biases, LayerNorm affine
   away from (1, 0)); VPT's prompts keep FineSSL's own (seeded) initialisation.
4. ``Model.forward`` runs in eval mode (dropout off) on seeded images. Recorded: its output
   (``ln_post`` of the CLS token: FineSSL's image features, before ``proj``), that output
   ``@ proj``, the residual stream entering each block's ``ln_1`` and ``ln_2`` (forward pre-hooks;
   FineSSL's loop is sequence-first, stored batch-first), each AdaptFormer's output (forward
   hooks), one adapter on a given token tensor, and the features of a second FineSSL model with
   ``partial=1`` (modules in the last block only, holding the full model's last-block values).

The parameter names are mapped to ulfine's (the JSON's ``names``): FineSSL's
``tuner.adaptformer_list.i.{adapter_layer_norm_before,down_proj,up_proj}`` are ulfine's
``transformer.resblocks.i.mlp.adapter.{ln,down,up}``; ``tuner.vpt_list.i.prompt`` is
``transformer.resblocks.i.vpt.prompts``.

Run: ``python scripts/golden/make_peft.py --peer-repo PATH`` (a clone or bare mirror of
https://github.com/Gank0078/FineSSL holding commit 76b6f48); writes
``tests/golden/fixtures/peft_{adaptformer,vpt}.{safetensors,json}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import types
from pathlib import Path

import open_clip
import torch
from peer import checkout, provenance, stub_module
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
PATHS = ["model.py", "clip/model.py", "utils/config.py"]
COMMAND = "python scripts/golden/make_peft.py --peer-repo PATH"

#: the tiny tower: open_clip.CLIP(**OPEN_CLIP); FineSSL's VisionTransformer gets the same sizes
WIDTH, LAYERS, HEADS, PATCH, IMAGE, EMBED = 32, 2, 2, 8, 32, 16
OPEN_CLIP = {
    "embed_dim": EMBED,
    "vision_cfg": {"image_size": IMAGE, "patch_size": PATCH, "width": WIDTH, "layers": LAYERS,
                   "head_width": WIDTH // HEADS},
    "text_cfg": {"context_length": 8, "vocab_size": 32, "width": 16, "heads": 2, "layers": 1},
    "quick_gelu": True,
}
BATCH, NUM_CLASSES, SEED = 2, 3, 0
VPT_LEN = 10  # ulfine's default vpt.length (FineSSL's configs run 50; the semantics do not depend on it)
MAX_BYTES = 300_000


def load_peer(clone: Path) -> tuple:
    """FineSSL's checkout, its config defaults ``_C`` and its ``clip.model`` / ``model`` modules."""
    peer = checkout("finessl", clone, PATHS)
    stub_module("yacs.config", CfgNode=types.SimpleNamespace)  # utils/config.py: `_C = CN()`, attributes
    config = peer.load("utils/config.py")
    return peer, config._C, peer.load("clip/model.py"), peer.load("model.py")


def tiny_tower() -> torch.nn.Module:
    """The seeded tiny open_clip image tower, every weight perturbed."""
    torch.manual_seed(SEED)
    clip = open_clip.CLIP(**OPEN_CLIP)
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for _, p in sorted(clip.visual.named_parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return clip.visual.eval()


def finessl_model(cfg_defaults, clip_mod, model_mod, visual_state: dict, **options: object):
    """FineSSL's ``Model`` (CLIP_ViT + ViT_Tuner) on its own VisionTransformer holding ``visual_state``."""
    vit = clip_mod.VisionTransformer(input_resolution=IMAGE, patch_size=PATCH, width=WIDTH, layers=LAYERS,
                                     heads=HEADS, output_dim=EMBED)
    vit.load_state_dict(visual_state, strict=True)
    clip_model = types.SimpleNamespace(visual=vit, dtype=vit.conv1.weight.dtype,
                                       logit_scale=torch.nn.Parameter(torch.tensor(math.log(1 / 0.07))))
    cfg = copy.deepcopy(cfg_defaults)
    cfg.backbone = "ViT-B/16"  # Model picks CLIP_ViT / ViT_Tuner by this prefix (as FineSSL's configs set it)
    cfg.DATA.NUMBER_CLASSES = NUM_CLASSES
    for key, value in options.items():
        setattr(cfg, key, value)
    text_features = torch.randn(NUM_CLASSES, EMBED)  # only FineSSL's heads read it; features do not
    return model_mod.Model(cfg, clip_model, text_features).eval(), cfg


def record(model, images: torch.Tensor, adapters: bool) -> dict[str, torch.Tensor]:
    """FineSSL's features and, per block, the residual stream at ln_1 / ln_2 (and the adapter outputs)."""
    out: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name: str, sequence_first: torch.Tensor) -> None:
        out[name] = sequence_first.detach().permute(1, 0, 2).clone()  # FineSSL's loop is LND

    for i, block in enumerate(model.image_encoder.transformer.resblocks):
        handles.append(block.ln_1.register_forward_pre_hook(lambda m, a, i=i: keep(f"peer.block{i}.ln_1_in", a[0])))
        handles.append(block.ln_2.register_forward_pre_hook(lambda m, a, i=i: keep(f"peer.block{i}.ln_2_in", a[0])))
        if adapters:
            handles.append(model.tuner.adaptformer_list[i].register_forward_hook(
                lambda m, a, o, i=i: keep(f"peer.block{i}.adapter_out", o)))
    with torch.no_grad():
        out["peer.features"] = model(images).clone()
    for h in handles:
        h.remove()
    out["peer.features_proj"] = out["peer.features"] @ model.image_encoder.proj.detach()
    return out


def randomise_adaptformer(module: torch.nn.Module, g: torch.Generator) -> None:
    """Seeded non-trivial adapter values (FineSSL's init leaves the up-projection at zero)."""
    with torch.no_grad():
        ln = module.adapter_layer_norm_before
        ln.weight.copy_(1.0 + 0.2 * torch.randn(ln.weight.shape, generator=g))
        ln.bias.copy_(0.1 * torch.randn(ln.bias.shape, generator=g))
        module.down_proj.bias.copy_(0.1 * torch.randn(module.down_proj.bias.shape, generator=g))
        module.up_proj.weight.copy_(0.3 * torch.randn(module.up_proj.weight.shape, generator=g))
        module.up_proj.bias.copy_(0.1 * torch.randn(module.up_proj.bias.shape, generator=g))


ADAPTFORMER_NAMES = {"ln": "adapter_layer_norm_before", "down": "down_proj", "up": "up_proj"}


def make_adaptformer(peer, cfg_defaults, clip_mod, model_mod, visual, images) -> tuple[dict, dict]:
    torch.manual_seed(SEED + 2)
    model, cfg = finessl_model(cfg_defaults, clip_mod, model_mod, visual.state_dict(), adaptformer=True)
    g = torch.Generator().manual_seed(SEED + 3)
    modules = list(model.tuner.adaptformer_list)
    for m in modules:
        randomise_adaptformer(m, g)
    tensors = record(model, images, adapters=True)
    names: dict[str, str] = {}
    for i, m in enumerate(modules):
        for ours, theirs in ADAPTFORMER_NAMES.items():
            for leaf in ("weight", "bias"):
                key = f"transformer.resblocks.{i}.mlp.adapter.{ours}.{leaf}"
                names[key] = f"tuner.adaptformer_list.{i}.{theirs}.{leaf}"
                tensors[f"adapter.{key}"] = getattr(getattr(m, theirs), leaf).detach().clone()
    probe = torch.randn(2, 5, WIDTH, generator=g)
    with torch.no_grad():
        tensors["probe.tokens"] = probe
        tensors["probe.adapter_out"] = modules[0](probe, add_residual=False).clone()
        without = model.image_encoder(images, None)  # FineSSL's loop without a tuner: the frozen tower
    assert (tensors["peer.features"] - without).abs().max() > 1e-2, "the adapters barely change the features"

    torch.manual_seed(SEED + 4)
    partial, _ = finessl_model(cfg_defaults, clip_mod, model_mod, visual.state_dict(), adaptformer=True, partial=1)
    assert partial.tuner.adaptformer_list[0] is None
    partial.tuner.adaptformer_list[LAYERS - 1].load_state_dict(modules[LAYERS - 1].state_dict())
    with torch.no_grad():
        tensors["peer.partial1.features"] = partial(images).clone()

    options = {key: getattr(cfg, key) for key in ("adaptformer", "ffn_num", "ln_opt", "adapter_scalar",
                                                  "scalar_learnable", "ffn_opt", "partial")}
    meta = {
        "module": "adaptformer",
        "finessl_options": {**options, "dropout": modules[0].dropout,
                            "init_option": "lora (FineSSL's AdaptFormer default)"},
        "ulfine_options": {"bottleneck": cfg.ffn_num, "scale": cfg.adapter_scalar, "dropout": modules[0].dropout,
                           "layernorm": "own"},
        "partial1": {"finessl": {"partial": 1}, "ulfine": {"last_k_blocks": 1},
                     "weights": f"the full model's block {LAYERS - 1} adapter"},
        "names": names,
    }
    return tensors, meta


def make_vpt(peer, cfg_defaults, clip_mod, model_mod, visual, images) -> tuple[dict, dict]:
    torch.manual_seed(SEED + 5)  # FineSSL's own prompt init, seeded
    model, cfg = finessl_model(cfg_defaults, clip_mod, model_mod, visual.state_dict(), vpt_deep=True,
                               vpt_len=VPT_LEN)
    modules = list(model.tuner.vpt_list)
    tensors = record(model, images, adapters=False)
    names: dict[str, str] = {}
    for i, m in enumerate(modules):
        key = f"transformer.resblocks.{i}.vpt.prompts"
        names[key] = f"tuner.vpt_list.{i}.prompt"
        tensors[f"vpt.{key}"] = m.prompt.detach().clone()
    with torch.no_grad():
        without = model.image_encoder(images, None)
    assert (tensors["peer.features"] - without).abs().max() > 1e-2, "the prompts barely change the features"

    torch.manual_seed(SEED + 6)
    partial, _ = finessl_model(cfg_defaults, clip_mod, model_mod, visual.state_dict(), vpt_deep=True,
                               vpt_len=VPT_LEN, partial=1)
    assert partial.tuner.vpt_list[0] is None
    partial.tuner.vpt_list[LAYERS - 1].load_state_dict(modules[LAYERS - 1].state_dict())
    with torch.no_grad():
        tensors["peer.partial1.features"] = partial(images).clone()

    meta = {
        "module": "vpt",
        "finessl_options": {key: getattr(cfg, key) for key in ("vpt_deep", "vpt_len", "partial")},
        "ulfine_options": {"length": VPT_LEN},
        "partial1": {"finessl": {"partial": 1}, "ulfine": {"last_k_blocks": 1},
                     "weights": f"the full model's block {LAYERS - 1} prompts"},
        "token_order": "FineSSL's VPT (model.py lines 21-25) appends a block's prompts after the patch "
                       "tokens ([CLS, patches, prompts]); ulfine inserts them after CLS ([CLS, prompts, "
                       "patches], as in VPT's code). peer.block*.ln_*_in are in FineSSL's order.",
        "names": names,
    }
    return tensors, meta


def write(out_dir: Path, name: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.safetensors"
    save_file({k: v.detach().contiguous().clone() for k, v in sorted(tensors.items())}, str(path))
    path.chmod(0o644)  # safetensors writes 0600
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    size = path.stat().st_size + (out_dir / f"{name}.json").stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{name}: {size} bytes (> {MAX_BYTES})")
    print(f"wrote {path} ({size} bytes)")


def run(clone: Path, out_dir: Path) -> None:
    peer, cfg_defaults, clip_mod, model_mod = load_peer(clone)
    visual = tiny_tower()
    images = torch.randn(BATCH, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(SEED + 7))
    common = {f"tower.{k}": v.detach().clone() for k, v in visual.state_dict().items()}
    common["input.images"] = images
    for name, make in (("peft_adaptformer", make_adaptformer), ("peft_vpt", make_vpt)):
        tensors, meta = make(peer, cfg_defaults, clip_mod, model_mod, visual, images)
        meta = provenance(
            peer, COMMAND, **meta, seed=SEED, open_clip=OPEN_CLIP, open_clip_version=open_clip.__version__,
            executed="model.Model(cfg, clip_model, text_features).forward (CLIP_ViT.forward with ViT_Tuner) "
                     "on clip/model.VisionTransformer, eval mode; cfg = utils/config.py defaults + the options",
            features="peer.features = CLIP_ViT.forward's output, ln_post(x[:, 0]) before proj; "
                     "peer.features_proj = peer.features @ visual.proj (open_clip's encode_image)",
            tolerance={"atol": 1e-5, "rtol": 1e-5, "dtype": "float32"})
        write(out_dir, name, {**common, **tensors}, meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-repo", type=Path, required=True, help="clone or bare mirror of Gank0078/FineSSL")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "golden" / "fixtures")
    args = ap.parse_args()
    run(args.peer_repo, args.out)


if __name__ == "__main__":
    main()
