"""FineSSL's own model and training step, executed from a local clone (benchmarks/peer_reference.py).

Nothing of FineSSL is copied here: its files are read with ``git show`` at the pinned commit
(Gank0078/FineSSL@76b6f48, ``scripts/golden/peer.py``) into a temporary folder and imported from
there, as ``scripts/golden/make_peft.py`` does for the golden vectors. What this module adds:

- the open_clip weights: FineSSL's ``clip/model.py`` ``VisionTransformer`` is built on the meta
  device and handed the open_clip image tower's tensors (``load_state_dict(strict=True,
  assign=True)``: the OpenAI names match, no second copy of the weights is made). It is built
  directly because ``clip.build_model`` needs a full OpenAI state dict and derives
  ``heads = width // 64`` (make_peft.py explains the same bypass);
- FineSSL's ``Trainer`` (``trainer.py``) is subclassed only where it touches the outside world:
  ``build_data_loader`` hands it one fixed batch (its loaders are ``cycle``-d, so one batch is
  what every step sees), ``test`` / ``save_model`` do nothing, and the module-level
  ``load_clip_to_cpu`` returns the CLIP above. Its ``__init__``, ``build_model`` (freezing, the
  ``Model``/``ViT_Tuner`` construction, SGD over ``tuner.parameters()``) and ``train`` (the step
  timed "as published") are FineSSL's own code;
- stubs for what the step never uses: ``yacs`` (``CfgNode`` -> namespace, as make_peft.py),
  ``clip.clip`` (download and BPE tokenizer; the text features are seeded random), ``datasets.data``,
  ``utils.logger_SSL`` (a file logger), ``utils.utils`` (plots; the trainer takes ``F`` from its
  star import) and the tensorboard ``SummaryWriter`` (no event files).
"""

from __future__ import annotations

import atexit
import copy
import io
import math
import shutil
import sys
import tempfile
import types
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "scripts" / "golden"
if str(GOLDEN) not in sys.path:
    sys.path.insert(0, str(GOLDEN))

from make_peft import ADAPTFORMER_NAMES  # noqa: E402  (ulfine's adapter names -> FineSSL's)
from peer import PINNED, checkout, stub_module  # noqa: E402

#: the files executed: the model, its CLIP ViT, its option defaults, its trainer and the meter it uses
PATHS = ["model.py", "clip/model.py", "utils/config.py", "utils/meter.py", "utils/torchtools.py", "trainer.py"]
REPOSITORY, COMMIT = PINNED["finessl"]


class FineSSL(types.SimpleNamespace):
    """The loaded peer: its modules ``model``, ``clip_model`` (clip/model.py), ``trainer``,
    ``config`` (utils/config.py) and the resolved ``commit``."""


def load(clone: Path) -> FineSSL:
    """Import FineSSL's files at the pinned commit from ``clone`` (a clone or a bare mirror)."""
    peer = checkout("finessl", Path(clone), PATHS)
    atexit.register(shutil.rmtree, peer.root, True)
    stub_module("yacs.config", CfgNode=types.SimpleNamespace)
    config = peer.load("utils/config.py")
    clip_model = peer.load("clip/model.py")
    model = peer.load("model.py")
    stub_module("clip.clip", _MODELS={}, tokenize=lambda text, *a, **k: torch.zeros(1, 77, dtype=torch.long))
    stub_module("datasets.data", DATASET_GETTERS={})
    stub_module("utils.logger_SSL", Logger=_NullLogger)
    stub_module("utils.utils", F=F, _ECELoss=nn.Identity)
    saved = sys.modules.get("torch.utils.tensorboard")
    stub_module("torch.utils.tensorboard", SummaryWriter=_NullWriter)  # no event files, no import
    try:
        trainer = peer.load("trainer.py")
    finally:
        if saved is not None:
            sys.modules["torch.utils.tensorboard"] = saved
        else:
            sys.modules.pop("torch.utils.tensorboard", None)
    return FineSSL(model=model, clip_model=clip_model, trainer=trainer, config=config, commit=peer.commit,
                   files=list(PATHS), repository=REPOSITORY)


class _NullLogger:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_names(self, *args: Any) -> None:
        pass

    def append(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass


class _NullWriter(_NullLogger):
    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass


class _Loader:
    """What FineSSL's trainer reads of a DataLoader: iteration and ``.dataset``'s length."""

    def __init__(self, item: tuple, length: int) -> None:
        self.item, self.dataset = item, range(length)

    def __iter__(self):
        yield self.item


class ClipStub(nn.Module):
    """The ``clip_model`` FineSSL's ``build_model`` expects: ``visual`` (its VisionTransformer),
    ``dtype``, ``logit_scale``, ``encode_text``. The open_clip model whose tensors the tower
    shares rides along un-registered (FineSSL keeps its whole CLIP resident too)."""

    def __init__(self, visual: nn.Module, num_classes: int, owner: Any) -> None:
        super().__init__()
        self.visual = visual
        self.dtype = visual.conv1.weight.dtype
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.num_classes = num_classes
        object.__setattr__(self, "owner", owner)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(7)  # in the tower's dtype, as CLIP's text tower returns them
        return torch.randn(self.num_classes, self.visual.output_dim, generator=g).to(self.dtype)


def vision_transformer(fs: FineSSL, open_clip_visual: nn.Module) -> nn.Module:
    """FineSSL's ``clip/model.py`` VisionTransformer holding ``open_clip_visual``'s own tensors."""
    state = {k: v for k, v in open_clip_visual.state_dict().items() if ".adapter." not in k}
    width = open_clip_visual.conv1.out_channels
    patch = open_clip_visual.conv1.kernel_size[0]
    size = open_clip_visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    heads = open_clip_visual.transformer.resblocks[0].attn.num_heads
    with torch.device("meta"):
        vit = fs.clip_model.VisionTransformer(
            input_resolution=int(size), patch_size=int(patch), width=int(width),
            layers=len(open_clip_visual.transformer.resblocks), heads=int(heads),
            output_dim=int(open_clip_visual.proj.shape[1]))
    vit.load_state_dict(state, strict=True, assign=True)
    return vit


def options(fs: FineSSL, *, num_classes: int, batch: int, mu: int, output_dir: str, prec: str = "fp32") -> Any:
    """FineSSL's option defaults (utils/config.py) + its AdaptFormer, ``prec`` (its default is fp16;
    fp32 on a CPU), the benchmark's B and mu."""
    cfg = copy.deepcopy(fs.config._C)
    cfg.backbone = "ViT-B/16"  # Model picks CLIP_ViT / ViT_Tuner by this prefix
    cfg.adaptformer = True  # ffn_num 64, ln_opt "in", adapter_scalar 0.1, ffn_opt "parallel": defaults
    cfg.prec = prec
    cfg.output_dir = output_dir
    cfg.num_epochs = 1
    cfg.DATA.NUMBER_CLASSES = num_classes
    cfg.DATA.BATCH_SIZE = batch
    cfg.DATA.MU_U = mu
    return cfg


def build_trainer(fs: FineSSL, open_clip_visual: nn.Module, owner: Any, batch: dict[str, torch.Tensor], *,
                  num_classes: int, mu: int, prec: str = "fp32") -> Any:
    """FineSSL's own ``Trainer`` (its __init__ and build_model) on the given tower and one fixed batch.

    ``batch`` holds ``x_l, y_l, u_w, u_s, u_s1, idx_u`` (FineSSL reads two strong views). With
    ``prec='fp16'`` the tower is converted by FineSSL's own ``convert_weights``, as its CLIP loader
    (``clip.build_model``) hands it over; its ``build_model`` then builds adapters and heads in the
    tower's dtype.
    """
    vit = vision_transformer(fs, open_clip_visual)
    if prec == "fp16":  # new half tensors in FineSSL's tower's parameters; open_clip's stay fp32
        fs.clip_model.convert_weights(vit)
    clip = ClipStub(vit, num_classes, owner)
    # FineSSL's ViT_Head hard-codes emb_dim 768 for its random init (rand_init, the default);
    # a narrower test tower uses its other option, text-initialised heads (same cost)
    rand_init = vit.transformer.width == 768
    base = fs.trainer.Trainer
    b = len(batch["x_l"])

    class BenchTrainer(base):  # type: ignore[misc, valid-type]
        def build_data_loader(self) -> None:
            self.num_classes = num_classes
            self.classnames = [f"class {i}" for i in range(num_classes)]
            self.train_label_loader = _Loader((batch["x_l"], batch["y_l"], torch.arange(b)), b)
            unl = (batch["u_w"], batch["u_s"], batch["u_s1"])
            self.train_unlabel_loader = _Loader((unl, batch["y_u"], batch["idx_u"]), len(batch["u_w"]))
            self.test_loader = []

        def test(self) -> float:
            return 0.0

        def save_model(self, *args: Any, **kwargs: Any) -> None:
            pass

    fs.trainer.load_clip_to_cpu = lambda cfg: clip
    out = tempfile.mkdtemp(prefix="peer-reference-finessl-")
    atexit.register(shutil.rmtree, out, True)
    cfg = options(fs, num_classes=num_classes, batch=b, mu=mu, output_dir=out, prec=prec)
    cfg.rand_init = cfg.rand_init1 = rand_init
    with redirect_stdout(io.StringIO()):  # build_model prints its progress
        trainer = BenchTrainer(cfg)
    return trainer


def set_adapters(adapters: list[nn.Module], values: list[dict[str, torch.Tensor]], names: dict[str, str]) -> None:
    """Copy seeded adapter values (keys ``ln/down/up.weight/bias``) into FineSSL's or ulfine's modules."""
    with torch.no_grad():
        for module, vals in zip(adapters, values, strict=True):
            for ours, theirs in names.items():
                for leaf in ("weight", "bias"):
                    getattr(getattr(module, theirs), leaf).copy_(vals[f"{ours}.{leaf}"])


def adapter_values(width: int, bottleneck: int, layers: int, seed: int = 11) -> list[dict[str, torch.Tensor]]:
    """Non-trivial adapter values (FineSSL's init leaves up at zero: the adapters would vanish)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(layers):
        out.append({
            "ln.weight": 1.0 + 0.2 * torch.randn(width, generator=g),
            "ln.bias": 0.1 * torch.randn(width, generator=g),
            "down.weight": torch.randn(bottleneck, width, generator=g) / math.sqrt(width),
            "down.bias": 0.1 * torch.randn(bottleneck, generator=g),
            "up.weight": 0.3 * torch.randn(width, bottleneck, generator=g) / math.sqrt(bottleneck),
            "up.bias": 0.1 * torch.randn(width, generator=g),
        })
    return out


#: FineSSL's module names of one AdaptFormer, by ulfine's (from make_peft.py)
FINESSL_NAMES = dict(ADAPTFORMER_NAMES)


def published_step(trainer: Any) -> Callable[[int], None]:
    """``n`` steps of FineSSL's own ``Trainer.train`` (one epoch of ``total_steps = n``): labeled +
    weak + two strong views interleaved through the model with gradients, then ``head`` and
    ``head1``, its losses, SGD. Its progress line goes to a buffer."""

    def run(n: int) -> None:
        trainer.cfg.total_steps = n
        trainer.num_epochs = 1
        with redirect_stdout(io.StringIO()):
            trainer.train()

    return run


def equal_work_step(fs: FineSSL, trainer: Any, batch: dict[str, torch.Tensor],
                    tau: float) -> Callable[[], torch.Tensor]:
    """FineSSL's model, head and optimiser on ulfine's FixMatch work: labeled + weak + ONE strong
    view in one interleaved batch with gradients (FineSSL's ``interleave``/``de_interleave`` and
    ``Model.forward``), ``tuner.head``, loss = CE(labeled) + mean(mask * CE(strong, weak's label))."""
    model, head, optim = trainer.model, trainer.tuner.head, trainer.optim
    x_l, y_l, u_w, u_s = batch["x_l"], batch["y_l"], batch["u_w"], batch["u_s"]
    b, size = len(x_l), 2 * (len(u_w) // len(x_l)) + 1

    def step() -> torch.Tensor:
        trainer.tuner.train()
        inputs = fs.trainer.interleave(torch.cat((x_l, u_w, u_s)), size)
        feat = fs.trainer.de_interleave(model(inputs), size)
        logits = head(feat)
        z_l = logits[:b]
        z_w, z_s = logits[b:].chunk(2)
        conf, label = torch.softmax(z_w.detach(), dim=-1).max(dim=-1)
        mask = conf.ge(tau).float()
        loss = F.cross_entropy(z_l, y_l) + (F.cross_entropy(z_s, label, reduction="none") * mask).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        return loss.detach()

    return step


def features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """FineSSL's image features in open_clip's space: ``Model.forward`` (ln_post of CLS) @ proj."""
    return model(images) @ model.image_encoder.proj
