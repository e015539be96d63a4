"""ulfine's training step against FineSSL's OWN code (Gank0078/FineSSL@76b6f48), on a CPU or a GPU.

    python benchmarks/peer_reference.py --finessl-repo /path/to/FineSSL            # ViT-B-16, 224 px, B=4
    python benchmarks/peer_reference.py --finessl-repo PATH --image-size 224 32 --patch 16 4 --batch 4 8
    python benchmarks/peer_reference.py --finessl-repo PATH --device cuda --batch 32   # ours bf16, FineSSL fp16

Precision: on the CPU both run fp32. On a GPU each runs as it ships: ulfine under bf16 autocast
(``train.precision=auto``), FineSSL with its default ``prec: fp16`` (its CLIP loader's
``convert_weights``: the tower, its adapters and heads in half precision, SGD on half weights, no
loss scaling); ``--precision-ours`` / ``--precision-finessl`` choose otherwise. Memory: peak RSS
per child on the CPU; on a GPU also ``torch.cuda.max_memory_allocated`` over the timed steps.

FineSSL is executed, not imitated: its ``model.py``, ``clip/model.py``, ``utils/config.py`` and
``trainer.py`` are read from the clone at the pinned commit (``benchmarks/_finessl_model.py``,
``scripts/golden/peer.py``) and run on the same random open_clip weights as ulfine (pretrained
none; QuickGELU as OpenAI's weights and FineSSL's CLIP use). Four steps per row, same B and mu:

- ``ulfine``: ulfine's LFT AdaptFormer FixMatch step (``Method.training_step``, backward, SGD;
  the bare step of ``benchmarks/perf.py`` section (a)): labeled + strong views in one forward,
  weak views under ``no_grad``; with the attention-layout hooks (``ulfine.models.attention_layout``);
- ``ulfine_no_layout``: the same with those hooks removed (what the layout fix is worth);
- ``finessl_equal``: FineSSL's ``Model`` (its ``CLIP_ViT`` block loop and ``AdaptFormer``), its
  ``head`` and its SGD, on ulfine's work: labeled + weak + ONE strong view interleaved in one
  batch with gradients (FineSSL's ``interleave``), loss CE + masked CE;
- ``finessl_published``: FineSSL's own ``Trainer.train`` step: labeled + weak + TWO strong views
  in one batch with gradients, then ``head`` and ``head1``, its losses, SGD.

Each step runs in its own child process (peak RSS per variant: the kernel's high-water mark,
reset after the build, read after the last step); the parent alternates them round by round
(order reversed every other round) so load changes on a shared machine hit all alike, and reports
the median seconds per step. images/s = (B + mu*B) images consumed per step / step time.
Before timing, a check asserts that FineSSL's features equal ulfine's on the same weights and
adapters (max |diff| <= 1e-4; on the CPU in fp32, whatever the timed device). Without
``--finessl-repo`` it says how to get the clone, exit 2.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

FINESSL = ("Gank0078/FineSSL", "76b6f48")  # = scripts/golden/peer.py PINNED["finessl"]
CLONE_HINT = (f"FineSSL's rows need a clone of https://github.com/{FINESSL[0]} holding commit {FINESSL[1]}: "
              f"git clone https://github.com/{FINESSL[0]} /path/to/FineSSL, then pass "
              "--finessl-repo /path/to/FineSSL (or set ULFINE_FINESSL_REPO)")
VARIANTS = ["ulfine", "ulfine_no_layout", "finessl_equal", "finessl_published"]
NUM_CLASSES = 10
TOLERANCE = 1e-4
SEED = 0


# ---------------------------------------------------------------------------------------------
# the architecture of a row, registered into open_clip (ViT-B-16's config with overrides)


def model_cfg(spec: dict[str, Any]) -> dict[str, Any]:
    """open_clip's config of ``spec['arch']`` with the row's image size / patch (and, for tests,
    width / layers / head width; the text tower is then shrunk too), QuickGELU on."""
    import open_clip

    base = open_clip.get_model_config(spec["arch"])
    if base is None:
        raise SystemExit(f"error: --arch {spec['arch']} is not an open_clip architecture")
    cfg = copy.deepcopy(base)
    vision = cfg["vision_cfg"]
    vision["image_size"] = spec["image_size"]
    if spec.get("patch"):
        vision["patch_size"] = spec["patch"]
    for key in ("width", "layers", "head_width"):
        if spec.get(key):
            vision[key] = spec[key]
    if spec.get("width") or spec.get("layers"):  # a test-sized tower: a test-sized text tower
        cfg["text_cfg"].update(width=32, heads=2, layers=1)
        cfg["embed_dim"] = 32
    cfg["quick_gelu"] = True
    if vision["image_size"] % vision["patch_size"]:
        raise SystemExit(f"error: image size {vision['image_size']} is not a multiple of patch {vision['patch_size']}")
    return cfg


def register(spec: dict[str, Any]) -> str:
    """Write the row's config as an open_clip model config and register it; returns its name."""
    import open_clip

    cfg = model_cfg(spec)
    name = "peer-reference-" + hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(tempfile.mkdtemp(prefix="peer-reference-arch-"))
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder / f"{name}.json")
    return name


def backbone(spec: dict[str, Any]):
    """ulfine's backbone (its real factory, random weights seeded): the same tensors in every child."""
    import torch

    from ulfine.config.schema import ModelConfig
    from ulfine.models import build_backbone

    torch.manual_seed(SEED)
    return build_backbone(ModelConfig(arch=register(spec), pretrained="none", text_cache_dir=None))


def make_batch(spec: dict[str, Any]) -> dict[str, Any]:
    """Normalised random images at model size: labeled, weak, strong, second strong (FineSSL's)."""
    import torch

    g = torch.Generator().manual_seed(SEED + 1)
    b, size = spec["batch"], spec["image_size"]
    nu = spec["mu"] * b
    return {"x_l": torch.randn(b, 3, size, size, generator=g),
            "y_l": torch.randint(0, NUM_CLASSES, (b,), generator=g),
            "u_w": torch.randn(nu, 3, size, size, generator=g),
            "u_s": torch.randn(nu, 3, size, size, generator=g),
            "u_s1": torch.randn(nu, 3, size, size, generator=g),
            "y_u": torch.randint(0, NUM_CLASSES, (nu,), generator=g),
            "idx_u": torch.arange(nu)}


def remove_layout_hooks(visual) -> int:
    """Take ulfine's attention-layout hooks off every attention module (open_clip's own path)."""
    from torch import nn

    from ulfine.models.attention_layout import _to_batch_first, _to_sequence_first

    removed = 0
    for module in visual.modules():
        if isinstance(module, nn.MultiheadAttention):
            pairs = ((module._forward_pre_hooks, _to_sequence_first), (module._forward_hooks, _to_batch_first))
            for hooks, fn in pairs:
                for key in [k for k, h in hooks.items() if h is fn]:
                    del hooks[key]
                    removed += 1
    return removed


def ulfine_adapters(visual) -> list:
    return [block.mlp.adapter for block in visual.transformer.resblocks]


def on_device(batch: dict[str, Any], device: str) -> dict[str, Any]:
    """The row's batch on the timed device."""
    return {k: v.to(device) for k, v in batch.items()}


def ulfine_step(spec: dict[str, Any], layout: bool):
    """ulfine's LFT AdaptFormer FixMatch step, as benchmarks/_train.build_steps builds it, on
    ``spec['device']`` under ``spec['precision_ours']`` (bf16 autocast, or fp32)."""
    import torch
    import torch.nn.functional as F
    from _finessl_model import adapter_values, set_adapters
    from _train import autocast

    from ulfine.config.schema import Config, ModelConfig
    from ulfine.methods import METHODS, Batch, MethodContext
    from ulfine.models import apply_finetune

    bb = backbone(spec)
    apply_finetune(bb, "lft", "adaptformer", None)
    adapters = ulfine_adapters(bb.visual)
    width = bb.visual.conv1.out_channels
    set_adapters(adapters, adapter_values(width, adapters[0].down.out_features, len(adapters)),
                 {k: k for k in ("ln", "down", "up")})
    if not layout:
        assert remove_layout_hooks(bb.visual) == 2 * len(adapters)
    batch = on_device(make_batch(spec), spec["device"])
    cfg = Config(method="fixmatch", finetune="lft", peft="adaptformer", head="prototype",
                 model=ModelConfig(arch=bb.arch, pretrained="none", text_cache_dir=None))
    protos = F.normalize(torch.randn(NUM_CLASSES, bb.embed_dim, generator=torch.Generator().manual_seed(3)), dim=-1)
    ctx = MethodContext(num_classes=NUM_CLASSES, class_names=[f"c{i}" for i in range(NUM_CLASSES)],
                        labeled_counts=torch.ones(NUM_CLASSES), text_prototypes=protos,
                        logit_scale=bb.logit_scale, num_unlabeled=len(batch["u_w"]), feature_dim=bb.embed_dim)
    method = METHODS.get("fixmatch").from_config(cfg, bb, ctx).to(spec["device"]).train()
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.03, momentum=0.9,
                          weight_decay=5e-4)
    sslbatch = Batch(x_l=batch["x_l"], y_l=batch["y_l"], u_w=batch["u_w"], u_s=batch["u_s"], idx_u=batch["idx_u"])

    amp = {"bf16": torch.bfloat16, "fp32": None}[spec["precision_ours"]]
    device = torch.device(spec["device"])

    def step() -> None:
        with autocast(device, amp):
            out = method.training_step(sslbatch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    seen = matmul_dtype(bb.visual.transformer.resblocks[0])
    return lambda n: [step() for _ in range(n)], {"tau": cfg.ssl.tau, "precision": spec["precision_ours"],
                                                  "mlp_matmul_dtype": seen}


def matmul_dtype(block) -> dict[str, str]:
    """A dict that a forward hook fills, in the timed steps, with the output dtype of the first
    ``nn.Linear`` in ``block.mlp`` (what the precision setting did, observed, not assumed: FineSSL's
    block loop calls the MLP's modules but never a block's forward, and a residual stream under
    autocast stays fp32, so a matmul's output is what shows it)."""
    from torch import nn

    seen: dict[str, str] = {}
    linear = next(m for m in block.mlp.modules() if isinstance(m, nn.Linear))

    def hook(module, args, output) -> None:
        seen["dtype"] = str(output.dtype).replace("torch.", "")

    linear.register_forward_hook(hook)
    return seen


def finessl_trainer(spec: dict[str, Any], clone: Path, batch: dict[str, Any]):
    """FineSSL's loaded modules and its Trainer on the row's weights, adapters set like ulfine's."""
    from _finessl_model import FINESSL_NAMES, adapter_values, build_trainer, load, set_adapters

    bb = backbone(spec)  # the same seeded weights; FineSSL's tower takes its tensors
    fs = load(clone)
    trainer = build_trainer(fs, bb.visual, bb, batch, num_classes=NUM_CLASSES, mu=spec["mu"],
                            prec=spec.get("precision_finessl", "fp32"))
    adapters = list(trainer.tuner.adaptformer_list)
    width = trainer.model.image_encoder.conv1.out_channels
    set_adapters(adapters, adapter_values(width, adapters[0].down_proj.out_features, len(adapters)), FINESSL_NAMES)
    return fs, trainer, bb


def finessl_step(spec: dict[str, Any], clone: Path, published: bool):
    from _finessl_model import equal_work_step, published_step

    batch = make_batch(spec)
    fs, trainer, _ = finessl_trainer(spec, clone, batch)
    info = {"commit": fs.commit, "files": fs.files, "precision": trainer.cfg.prec, "device": str(trainer.device),
            "mlp_matmul_dtype": matmul_dtype(trainer.model.image_encoder.transformer.resblocks[0])}
    if published:
        return published_step(trainer), info
    from ulfine.config.schema import Config

    tau = Config(method="fixmatch").ssl.tau  # ulfine's FixMatch threshold, so the work is equal
    trainer.tuner.train()
    step = equal_work_step(fs, trainer, on_device(batch, str(trainer.device)), tau)
    return lambda n: [step() for _ in range(n)], {**info, "tau": tau}


def check(spec: dict[str, Any], clone: Path) -> dict[str, Any]:
    """FineSSL's features (Model.forward @ proj) equal ulfine's encode_image on the same weights
    and adapters, eval mode (dropout off), without and with gradients (the layout hooks act then)."""
    import torch
    from _finessl_model import FINESSL_NAMES, adapter_values, features, set_adapters

    from ulfine.models import apply_finetune

    batch = make_batch(spec)
    fs, trainer, bb = finessl_trainer({**spec, "precision_finessl": "fp32"}, clone, batch)  # the check: fp32
    apply_finetune(bb, "lft", "adaptformer", None)
    ours = ulfine_adapters(bb.visual)
    theirs = list(trainer.tuner.adaptformer_list)
    width = bb.visual.conv1.out_channels
    set_adapters(ours, adapter_values(width, ours[0].down.out_features, len(ours)), {k: k for k in FINESSL_NAMES})
    bb.eval()
    trainer.model.eval()
    images = torch.randn(2, 3, spec["image_size"], spec["image_size"], generator=torch.Generator().manual_seed(5))
    out: dict[str, Any] = {"commit": fs.commit, "adapters": len(theirs), "tolerance": TOLERANCE}
    with torch.no_grad():
        peer = features(trainer.model, images)
        bare = trainer.model.image_encoder(images, None) @ trainer.model.image_encoder.proj
        out["max_abs_diff_no_grad"] = float((bb.encode_image(images) - peer).abs().max())
        out["adapter_effect"] = float((peer - bare).abs().max())
    with torch.enable_grad():
        out["max_abs_diff_grad"] = float((bb.encode_image(images).detach() - peer).abs().max())
    out["feature_scale"] = float(peer.abs().max())
    out["ok"] = max(out["max_abs_diff_no_grad"], out["max_abs_diff_grad"]) <= TOLERANCE and out["adapter_effect"] > 1e-3
    return out


# ---------------------------------------------------------------------------------------------
# child processes: one per variant (and one for the check), driven over stdin / a private stdout


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(variant: str, spec: dict[str, Any], clone: Path | None) -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the steps print (Python or C) stays off the protocol
    sys.stdout = sys.stderr

    def send(obj: dict[str, Any]) -> None:
        proto.write(json.dumps(obj) + "\n")

    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    t0 = time.perf_counter()
    try:
        if variant == "check":
            send({"check": check(spec, clone)})
            return
        if variant.startswith("ulfine"):
            run, info = ulfine_step(spec, layout=variant == "ulfine")
        else:
            run, info = finessl_step(spec, clone, published=variant == "finessl_published")
    except Exception as e:  # reported to the parent, which stops
        import traceback

        traceback.print_exc()
        send({"error": f"{variant}: {type(e).__name__}: {e}"})
        return
    import gc

    gc.collect()
    cuda = spec["device"] == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_before = torch.cuda.memory_allocated()
    reset = _reset_peak()
    before = _rss_kib("VmRSS")
    send({"ready": True, "build_s": round(time.perf_counter() - t0, 2), "threads": torch.get_num_threads()})
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "run":
            t = time.perf_counter()
            run(int(arg))
            if cuda:
                torch.cuda.synchronize()
            send({"s": time.perf_counter() - t})
        elif cmd == "mem":  # after the steps: the dtypes they showed are in ``info`` now
            peak = _rss_kib("VmHWM") if reset else _max_rss_kib()
            gpu = {"gpu_before_mib": round(gpu_before / 2**20, 1),
                   "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if cuda else {}
            send({"rss_before_mib": round(before / 1024, 1), "peak_rss_mib": round(peak / 1024, 1), **gpu,
                  "method": "VmHWM reset after the build (clear_refs 5)" if reset else
                  "ru_maxrss over the child's life (VmHWM could not be reset)", "info": info})
        else:
            return


def _max_rss_kib() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class Child:
    """A worker process: JSON lines out, commands in; its stderr kept in a temporary file."""

    def __init__(self, variant: str, spec: dict[str, Any], clone: Path | None) -> None:
        self.variant = variant
        self.err = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ)
        if spec["device"] == "cpu" or variant == "check":  # FineSSL's trainer picks cuda when it sees one
            env["CUDA_VISIBLE_DEVICES"] = ""
        if spec.get("threads"):
            env["OMP_NUM_THREADS"] = str(spec["threads"])
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--spec", json.dumps(spec)]
        if clone is not None:
            cmd += ["--finessl-repo", str(clone)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                     text=True, bufsize=1, env=env)

    def read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.err.seek(0)
            tail = self.err.read()[-3000:]
            raise SystemExit(f"error: the {self.variant} child ended (rc {self.proc.returncode}):\n{tail}")
        msg = json.loads(line)
        if "error" in msg:
            self.err.seek(0)
            raise SystemExit(f"error: {msg['error']}\n{self.err.read()[-3000:]}")
        return msg

    def ask(self, command: str) -> dict[str, Any]:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.err.close()


def measure_row(spec: dict[str, Any], clone: Path, *, warmup: int, steps: int, rounds: int) -> dict[str, Any]:
    """Check, then time the four variants in alternating rounds; peak RSS per child."""
    children = {v: Child(v, spec, clone) for v in ["check", *VARIANTS]}
    try:
        checked = children["check"].read()["check"]
        children.pop("check").close()
        if not checked["ok"]:
            raise SystemExit(f"error: FineSSL's features differ from ulfine's: {json.dumps(checked)}")
        ready = {v: children[v].read() for v in VARIANTS}
        for v in VARIANTS:
            if warmup:
                children[v].ask(f"run {warmup}")
        per_round = max(1, steps // rounds)
        samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(rounds):
            for v in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                samples[v].append(children[v].ask(f"run {per_round}")["s"] / per_round)
        mem = {v: children[v].ask("mem") for v in VARIANTS}
    finally:
        for c in children.values():
            c.close()
    consumed = spec["batch"] * (1 + spec["mu"])
    b, nu = spec["batch"], spec["batch"] * spec["mu"]
    views = {"ulfine": f"{b}+{nu}(no_grad)+{nu}", "ulfine_no_layout": f"{b}+{nu}(no_grad)+{nu}",
             "finessl_equal": f"{b}+{nu}+{nu}", "finessl_published": f"{b}+{nu}+{nu}+{nu}"}
    out: dict[str, Any] = {"spec": spec, "check": checked, "variants": {}}
    for v in VARIANTS:
        med = statistics.median(samples[v])
        out["variants"][v] = {
            "median_s": med, "min_s": min(samples[v]), "max_s": max(samples[v]),
            "images_per_s": consumed / med, "views_per_step": views[v], "calls": per_round * rounds,
            "build_s": ready[v]["build_s"], "threads": ready[v]["threads"], **mem[v],
        }
    return out


# ---------------------------------------------------------------------------------------------
# report


def label(spec: dict[str, Any]) -> str:
    extra = "".join(f" {k}={spec[k]}" for k in ("width", "layers") if spec.get(k))
    patch = f"/{spec['patch']}" if spec.get("patch") else ""
    where = " cuda" if spec.get("device") == "cuda" else ""
    return f"{spec['arch']}{extra} {spec['image_size']}px{patch} B={spec['batch']} mu={spec['mu']}{where}"


def memory_keys(spec: dict[str, Any]) -> tuple[str, str, str]:
    """The memory a row compares (its name, peak key, before-steps key): GPU memory allocated on a
    GPU, the process's RSS on a CPU."""
    if spec.get("device") == "cuda":
        return "peak GPU memory", "peak_gpu_mib", "gpu_before_mib"
    return "peak RSS", "peak_rss_mib", "rss_before_mib"


def table(rows: list[dict[str, Any]]) -> str:
    what = memory_keys(rows[0]["spec"])[0] if rows else "peak RSS"
    head = ("| row | images/s ulfine (layout fix) | ulfine (without) | FineSSL equal work | "
            "FineSSL as published | ratios: ulfine ÷ FineSSL equal / ÷ published / fix ÷ without | "
            f"{what} ratio: FineSSL equal ÷ ulfine / published ÷ ulfine |")
    lines = [head, "|" + "---|" * 7]
    for row in rows:
        v = row["variants"]
        ips = {k: v[k]["images_per_s"] for k in VARIANTS}
        _, peak, _ = memory_keys(row["spec"])
        rss = {k: v[k][peak] for k in VARIANTS}
        lines.append(
            f"| {label(row['spec'])} | {ips['ulfine']:.2f} | {ips['ulfine_no_layout']:.2f} | "
            f"{ips['finessl_equal']:.2f} | {ips['finessl_published']:.2f} | "
            f"{ips['ulfine'] / ips['finessl_equal']:.2f}x / {ips['ulfine'] / ips['finessl_published']:.2f}x / "
            f"{ips['ulfine'] / ips['ulfine_no_layout']:.2f}x | "
            f"{rss['finessl_equal'] / rss['ulfine']:.2f} / {rss['finessl_published'] / rss['ulfine']:.2f} |")
    lines += ["", f"| row | variant | precision (matmul output) | views per step (labeled+weak+strong...) | "
              f"median s/step [min, max] | images/s | {what} MiB | before steps MiB | peak above it MiB |",
              "|" + "---|" * 9]
    for row in rows:
        _, peak, before = memory_keys(row["spec"])
        for k in VARIANTS:
            x = row["variants"][k]
            info = x.get("info", {})
            lines.append(f"| {label(row['spec'])} | {k} | {info.get('precision', '?')} "
                         f"({info.get('mlp_matmul_dtype', {}).get('dtype', '?')}) | {x['views_per_step']} | "
                         f"{x['median_s']:.4f} [{x['min_s']:.4f}, {x['max_s']:.4f}] | {x['images_per_s']:.2f} | "
                         f"{x[peak]:.1f} | {x[before]:.1f} | {x[peak] - x[before]:.1f} |")
    return "\n".join(lines)


def _expand(values: list[Any], n: int, name: str) -> list[Any]:
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise SystemExit(f"error: {name} takes 1 or {n} values (one per row)")
    return values


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--finessl-repo", type=Path, default=None,
                   help="a clone (or bare mirror) of https://github.com/Gank0078/FineSSL holding 76b6f48")
    p.add_argument("--arch", default="ViT-B-16", help="open_clip architecture whose config is used")
    p.add_argument("--image-size", type=int, nargs="+", default=[224], help="one per row")
    p.add_argument("--patch", type=int, nargs="+", default=[0], help="patch size per row (0: the arch's)")
    p.add_argument("--batch", type=int, nargs="+", default=[4], help="labeled B per row (mu*B unlabeled)")
    p.add_argument("--mu", type=int, default=1, help="unlabeled ratio (FineSSL's CIFAR configs: 1)")
    p.add_argument("--width", type=int, default=None, help="override the tower's width (tests)")
    p.add_argument("--layers", type=int, default=None, help="override the tower's depth (tests)")
    p.add_argument("--head-width", type=int, default=None, help="override the attention head width (tests)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (median over them)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant and row")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads in each child")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the steps are timed")
    p.add_argument("--precision-ours", choices=["fp32", "bf16"], default=None,
                   help="ulfine's autocast (default: bf16 on cuda as train.precision=auto, fp32 on cpu)")
    p.add_argument("--precision-finessl", choices=["fp32", "fp16"], default=None,
                   help="FineSSL's cfg.prec (default: its own fp16 on cuda, fp32 on cpu)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        worker(args.worker, json.loads(args.spec), args.finessl_repo)
        return 0
    if args.finessl_repo is None and os.environ.get("ULFINE_FINESSL_REPO"):
        args.finessl_repo = Path(os.environ["ULFINE_FINESSL_REPO"])
    if args.finessl_repo is None:
        print(CLONE_HINT)
        return 2
    if not args.finessl_repo.exists():
        print(f"error: --finessl-repo {args.finessl_repo} does not exist")
        return 2
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda, but torch sees no CUDA device")
            return 2
    gpu = args.device == "cuda"
    precision = {"device": args.device, "precision_ours": args.precision_ours or ("bf16" if gpu else "fp32"),
                 "precision_finessl": args.precision_finessl or ("fp16" if gpu else "fp32")}
    n = max(len(args.image_size), len(args.patch), len(args.batch))
    specs = [{"arch": args.arch, "image_size": s, "patch": p or None, "batch": b, "mu": args.mu,
              "width": args.width, "layers": args.layers, "head_width": args.head_width, "threads": args.threads,
              **precision}
             for s, p, b in zip(_expand(args.image_size, n, "--image-size"), _expand(args.patch, n, "--patch"),
                                _expand(args.batch, n, "--batch"), strict=True)]
    rows = []
    for spec in specs:
        row = measure_row(spec, args.finessl_repo, warmup=args.warmup, steps=args.steps, rounds=args.rounds)
        c = row["check"]
        print(f"check {label(spec)}: FineSSL@{c['commit'][:7]} features = ulfine's, max |diff| "
              f"{max(c['max_abs_diff_no_grad'], c['max_abs_diff_grad']):.2e} (<= {TOLERANCE:g}; adapters "
              f"change them by {c['adapter_effect']:.2e})", flush=True)
        rows.append(row)
    import torch

    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    report = {"what": f"ulfine's training step vs FineSSL's own code (Gank0078/FineSSL@76b6f48), {where}, "
                      f"ulfine {precision['precision_ours']}, FineSSL {precision['precision_finessl']}",
              "images_per_s": "(B + mu*B) images consumed per step / median seconds per step",
              "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
              "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
              "rows": rows}
    print(table(rows))
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
