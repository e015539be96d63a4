"""The one configuration schema of ulfine: every key, its type, its default and its valid range.

Presets (``configs/presets/*.yaml``) and command-line ``key=value`` overrides only state what
differs from these defaults. Validation happens on load, before any work starts: unknown keys,
wrong types and out-of-range values fail with a message that names the key.

Defaults follow ``docs/method.md``: [B] values come from the FineSSL/LIFT recipes, [R] values
are this project's reconstruction of what the ULFine paper leaves open.

A method (or PEFT module) owns its options: it registers an options class next to its code
(``METHODS.register("ulfine", options=ULFineOptions)``) and the config validates the section of
that name (``ulfine.beta=0.9``) against it. ``method``, ``finetune`` and ``peft`` are checked
against their registries (``ulfine.registry``), which plugins extend.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError
from ..registry import (
    BACKBONES,
    FINETUNE_MODES,
    METHODS,
    OPTION_REGISTRIES,
    PEFT_MODULES,
    load_builtins,
    load_plugin,
    plugin_key,
    plugin_names,
)

#: upper bounds of sizes that allocate memory or processes: a value above them validates as an
#: integer but crashes (or swaps the machine) long after the start, so it is refused up front
MAX_BATCH = 2**20
MAX_WORKERS = 256
MAX_IMAGE_SIDE = 4096
MAX_ECE_BINS = 10_000
MAX_SEED = 2**63 - 1
#: default of ``data.max_image_pixels``: 64 megapixels (an RGB image of 64 MP decodes to 192 MB)
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# --------------------------------------------------------------------------------------- data
UnlabeledOrder = Literal["consistent", "uniform", "reversed", "middle", "headtail"]


#: RandAugment's ops (torchvision's table, in its order) and the named sets a recipe may choose for
#: the strong view: ``hue_preserving`` drops the ops that move hue (Color, Solarize, AutoContrast,
#: Equalize), for tasks whose classes are defined by colour (the micro world, traffic lights, stains)
RANDAUGMENT_OPS: tuple[str, ...] = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
    "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
)
HUE_CHANGING_OPS: tuple[str, ...] = ("Color", "Solarize", "AutoContrast", "Equalize")
STRONG_OP_SETS: dict[str, tuple[str, ...]] = {
    "all": RANDAUGMENT_OPS,
    "hue_preserving": tuple(op for op in RANDAUGMENT_OPS if op not in HUE_CHANGING_OPS),
}


def strong_ops(value: str | list[str]) -> tuple[str, ...]:
    """The RandAugment ops of ``data.strong_ops`` (a named set or a list of op names), in
    torchvision's order; unknown names fail, naming the choices."""
    if isinstance(value, str):
        if value not in STRONG_OP_SETS:
            raise ValueError(f"unknown op set {value!r}; choose {', '.join(STRONG_OP_SETS)} or a list of ops")
        return STRONG_OP_SETS[value]
    unknown = sorted(set(value) - set(RANDAUGMENT_OPS))
    if unknown or not value:
        raise ValueError(f"unknown or no RandAugment ops {unknown}; choose from {', '.join(RANDAUGMENT_OPS)}")
    return tuple(op for op in RANDAUGMENT_OPS if op in value)


class DataConfig(Section):
    """Which dataset, where it lives, and how the long-tailed labeled/unlabeled split is built."""

    dataset: str = Field("cifar10", description="dataset registry name (see `ulfine presets`)")
    root: Path = Field(Path("data"), description="folder where datasets live")
    download: bool = Field(False, description="use torchvision's downloader (connected machines)")
    num_labeled_head: int | None = Field(
        1500, ge=1, description="N_1: labeled images of the most frequent class"
    )
    num_unlabeled_head: int | None = Field(
        3000,
        ge=0,
        description="M_1: unlabeled images of the most frequent class; null = the dataset's "
        "natural unlabeled set (STL-10's 100k split; ImageNet-127's remaining images)",
    )
    imbalance_labeled: float = Field(100.0, ge=1.0, description="gamma_l = N_1 / N_K")
    imbalance_unlabeled: float = Field(100.0, ge=1.0, description="gamma_u = M_1 / M_K")
    unlabeled_order: UnlabeledOrder = Field(
        "consistent", description="shape of the unlabeled class counts relative to the labeled"
    )
    labeled_fraction: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="instead of N_1/gamma_l: take this fraction of every class as labeled "
        "(ImageNet-127's naturally long-tailed protocol)",
    )
    pin_last: bool = Field(True, description="pin N_K to floor(N_1/gamma) (ACR/USB/FineSSL)")
    labeled_in_unlabeled: bool = Field(
        False, description="the unlabeled set also contains the labeled images (ACR/FineSSL)"
    )
    selection: Literal["shuffle", "first"] = Field(
        "shuffle", description="seeded shuffle per class, or the first indices per class (ACR)"
    )
    val_per_class: int = Field(
        0, ge=0, description="held-out balanced validation images per class, from the train set"
    )
    image_size: int | None = Field(
        None, ge=8, le=MAX_IMAGE_SIDE, description="native size images are stored/augmented at (file datasets); null: "
        "the dataset's own, or the backbone's input size for a dataset without one (folder)"
    )
    test_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="folder without test/: fraction of every labeled class "
        "held out as the evaluation set"
    )
    num_workers: int = Field(2, ge=0, le=MAX_WORKERS, description="data-loader worker processes")
    augment_on: Literal["auto", "host", "device"] = Field(
        "auto",
        description="where the weak/strong views are made: host (loader workers), device (batched on "
        "the training device, same samples), auto = device on CUDA, host otherwise",
    )
    augment: bool = Field(
        True,
        description="augment labeled images (weak view); false lets frozen-tower runs (LP "
        "supervised, zero-shot) train on cached features",
    )
    class_names: list[str] | None = Field(
        None, description="override the dataset's class names (what CLIP reads)"
    )
    strong_ops: str | list[str] = Field(
        "all", description="RandAugment ops the strong view may draw: all, hue_preserving (no op that "
        "moves hue: for colour-defined classes), or a list of torchvision op names"
    )

    @field_validator("strong_ops")
    @classmethod
    def _known_ops(cls, value: str | list[str]) -> str | list[str]:
        strong_ops(value)
        return value
    on_bad_image: Literal["fail", "skip"] = Field(
        "fail",
        description="an unreadable image file (truncated, not an image, unsupported mode): fail "
        "naming it, or skip it and list it in the run folder's skipped_images.json",
    )
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS, ge=1, le=2**40,
        description="largest image decoded, in pixels of RGB (width x height x channels / 3, read from "
        "the file's header before decoding): a larger file is a bad image (data.on_bad_image)",
    )


# -------------------------------------------------------------------------------------- model
class ModelConfig(Section):
    """The backbone: an open_clip architecture plus its weights, or a scratch network."""

    arch: str = Field(
        "ViT-B-16",
        description="open_clip model name, a registered tiny arch, or a scratch backbone "
        "(wrn-28-2, resnet50: random weights, no text tower)",
    )
    pretrained: str = Field(
        "openai",
        description="open_clip pretrained tag (openai, laion2b_s34b_b88k, ...), a local "
        "weights file/folder, or 'none' for random weights (explicit only)",
    )
    cache_dir: Path | None = Field(None, description="open_clip / hub cache folder")
    templates: list[str] = Field(
        ["a photo of a {}."], min_length=1, description="text prompt templates (ensemble)"
    )
    text_cache_dir: Path | None = Field(
        Path(".cache/ulfine/text"), description="cache for text prototypes; null disables"
    )
    image_size: int | None = Field(
        None, ge=8, le=MAX_IMAGE_SIDE, description="input side of a scratch backbone (null: the arch's own, 32 px); "
        "open_clip weights fix their own"
    )
    bn_momentum: float | None = Field(
        None, gt=0.0, le=1.0, description="BatchNorm momentum of a scratch backbone, running <- (1 - m) "
        "running + m batch (null: the arch's reference value, 0.001 for wrn-28-2). Scale it to a cut "
        "budget as train.ema: 0.001 keeps exp(-2) = 14% of the initial statistics after 2,000 steps"
    )

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, templates: list[str]) -> list[str]:
        """Each template holds exactly one ``{}`` (the class name) and no other field: ``{1}`` or
        a second ``{}`` would raise inside the text tower's prompt building, long after the start."""
        for template in templates:
            try:
                fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
            except ValueError:  # an unmatched brace
                fields = []
            if fields != [("", "", None)]:
                raise ValueError(f"template {template!r} must hold exactly one {{}} (the class name) and no "
                                 "other {field}; write a literal brace as {{ or }}")
        return templates


# ---------------------------------------------------------------------------------- methods
class SSLConfig(Section):
    """FixMatch-style semi-supervised options shared by every SSL method [B]."""

    tau: float = Field(0.7, ge=0.0, le=1.0, description="confidence threshold (0.7 for CLIP)")
    mu: int = Field(1, ge=1, le=1024, description="unlabeled batch = mu x labeled batch")
    lambda_u: float = Field(1.0, ge=0.0, description="weight of the unlabeled loss")


# ------------------------------------------------------------------------------ optim/train
class OptimConfig(Section):
    """Optimiser and schedule [B: SGD 0.03, momentum 0.9, wd 5e-4, cosine]."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.03, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = Field(False, description="Nesterov momentum (FixMatch/ACR/USB scratch recipes)")
    weight_decay: float = Field(5e-4, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "cosine_7_16", "constant"] = Field(
        "cosine", description="cosine to 0; cosine_7_16: lr*cos(7 pi t / 16T), FixMatch's; constant"
    )
    grad_accum: int = Field(1, ge=1, le=MAX_BATCH, description="gradient accumulation micro-steps")
    clip_grad_norm: float | None = Field(None, gt=0.0)


Tracker = Literal["tensorboard", "wandb", "mlflow"]


class TrainConfig(Section):
    """The loop: budget, batch, precision, EMA, devices."""

    epochs: int = Field(30, ge=0)
    steps_per_epoch: int = Field(500, ge=1, description="iterations per epoch (infinite streams)")
    batch_size: int = Field(32, ge=1, le=MAX_BATCH, description="labeled batch (global, over all processes)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 where supported (CUDA), else fp32"
    )
    ema: float | None = Field(None, gt=0.0, lt=1.0, description="EMA decay of trainable weights")
    compile: bool = Field(False, description="torch.compile the image tower")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(1, ge=1, description="save a resumable checkpoint every N epochs")
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="also save one every N optimiser steps (an epoch can be an hour)"
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="a NaN/inf loss: stop naming the step and loss terms (the last checkpoint is "
        "kept), or skip that optimiser step and count it",
    )
    progress: bool = Field(True, description="progress bars")
    max_steps: int | None = Field(
        None, ge=1, description="stop after this many optimiser steps (tests, smoke runs)"
    )
    log_with: list[Tracker] = Field(
        ["tensorboard"], description="experiment trackers (Accelerate's): tensorboard, wandb, mlflow; "
        "a list, one name, or none"
    )

    @field_validator("log_with", mode="before")
    @classmethod
    def _trackers(cls, value: Any) -> Any:
        """``wandb`` means ``[wandb]``; ``none`` or null, no tracker. (Whether a tracker's package
        is installed is checked when training starts, so a run logged to W&B can still be
        re-evaluated where wandb is not installed.)"""
        if value is None or value == "none":
            return []
        return [value] if isinstance(value, str) else value


class EvalConfig(Section):
    """Honest evaluation: final model and mean of the last k evaluations, never best-on-test."""

    every_epochs: int = Field(1, ge=1)
    last_k: int = Field(3, ge=1, description="report the mean of the last k evaluations too")
    batch_size: int = Field(256, ge=1, le=MAX_BATCH)
    group_rule: Literal["fraction", "count"] = Field(
        "fraction",
        description="fraction: classes ranked by labeled count, first head_fraction head, last "
        "tail_fraction tail; count: head if N_k > head_min_count, tail if N_k < tail_max_count",
    )
    head_fraction: float = Field(0.3, ge=0.0, le=1.0)
    tail_fraction: float = Field(0.3, ge=0.0, le=1.0)
    head_min_count: int = Field(100, ge=0)
    tail_max_count: int = Field(20, ge=0)
    ece_bins: int = Field(15, ge=1, le=MAX_ECE_BINS)
    pseudo_label_max: int | None = Field(
        50000, ge=1, description="unlabeled images scored for pseudo-label diagnostics"
    )
    select_on: Literal["none", "val"] = Field(
        "none", description="model selection: none (final model) or the validation split"
    )

    @model_validator(mode="after")
    def _groups_fit(self) -> "EvalConfig":
        if self.head_fraction + self.tail_fraction > 1.0:
            raise ValueError("head_fraction + tail_fraction must be <= 1")
        return self


class CacheConfig(Section):
    """On-disk feature cache for frozen towers (LP without augmentation, zero-shot)."""

    features: bool = Field(True, description="cache image features of frozen towers")
    dir: Path = Field(Path(".cache/ulfine/features"))


# ---------------------------------------------------------------------------------- top level
def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line naming every offending key (``unknown key 'x.y'``, ``ssl.tau: ... (got -1)``)."""
    parts = []
    for err in exc.errors():
        loc = ".".join([prefix] * bool(prefix) + [str(p) for p in err["loc"]]) or "config"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r}")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            parts.append(f"{loc}: {err['msg']}{shown}")
    return "invalid config: " + "; ".join(parts)


def option_sections() -> dict[str, type[BaseModel]]:
    """Section name -> options class, for every registered method / PEFT module that has one."""
    out: dict[str, type[BaseModel]] = {}
    for registry in OPTION_REGISTRIES:
        out.update(registry.options())
    return out


#: config files written before each PEFT module had its own section kept them in ``peft_options``
LEGACY_PEFT_KEYS: dict[str, str] = {
    "adaptformer_bottleneck": "adaptformer.bottleneck", "adaptformer_scale": "adaptformer.scale",
    "vpt_length": "vpt.length", "lora_rank": "lora.rank", "lora_alpha": "lora.alpha",
    "lora_targets": "lora.targets", "adaptformer_layernorm": "adaptformer.layernorm",
    "adaptformer_dropout": "adaptformer.dropout",
}


def migrate_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """Read a config written by an older ulfine: ``peft_options.X`` becomes the PEFT module's own
    section (``last_k_blocks`` goes to the selected module's), so old run folders still load."""
    old = data.pop("peft_options", None)
    if old is None:
        return data
    if not isinstance(old, dict):
        raise ConfigError("invalid config: peft_options must be a mapping")
    # such a run trained ulfine's earlier AdaptFormer: the frozen ln_2 output, no dropout
    old = {"adaptformer_layernorm": "block", "adaptformer_dropout": 0.0, **old}
    for key, value in old.items():
        target = (f"{data.get('peft', 'adaptformer')}.last_k_blocks" if key == "last_k_blocks"
                  else LEGACY_PEFT_KEYS.get(key))
        if target is None:
            raise ConfigError(f"invalid config: unknown key 'peft_options.{key}'")
        section, name = target.split(".")
        current = data.get(section) or {}
        data[section] = {**(current if isinstance(current, dict) else current.model_dump()), name: value}
    return data


def _section(key: str, cls: type[BaseModel], value: Any) -> BaseModel:
    if isinstance(value, cls):
        return value
    try:
        return cls.model_validate(value if value is not None else {})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, key)) from None


class Config(Section):
    """A whole run. ``method``, ``finetune`` and ``peft`` are the three top-level choices.

    Besides the sections below, the config holds one section per registered options class
    (``ulfine``, ``fixmatch_la``, ``finessl``, a plugin's own); :meth:`options_for` returns it.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True, frozen=False)

    plugins: list[str] = Field(
        [], description="modules (dotted names or .py files, recorded as absolute paths) imported first; "
        "they may register methods, datasets, PEFT modules (see docs/extending.md); a run or model "
        "folder's plugins are imported only with --trust-plugins"
    )
    preset: str | None = Field(None, description="the preset this config came from")
    method: str = Field("fixmatch", description="method registry name")
    finetune: str = Field("lft", description="which parameters train: lp | lft | fft")
    peft: str = Field("adaptformer", description="LFT module (finetune=lft): adaptformer | vpt | lora | bitfit")
    head: Literal["prototype", "linear"] = Field(
        "prototype",
        description="baselines' classifier: cosine head initialised from the text prototypes "
        "(LIFT's, at the CLIP logit scale [R]) or a zero-initialised linear head",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED)
    output_dir: Path | None = Field(
        None, description="run folder (default runs/<preset>-<method>-<finetune>-s<seed>-<time>-<suffix>, made afresh)")
    resume: bool = Field(False, description="continue the run in output_dir from its checkpoint")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    ssl: SSLConfig = Field(default_factory=SSLConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)

    @model_validator(mode="before")
    @classmethod
    def _registered_sections(cls, data: Any) -> Any:
        """Load the registries (built-ins, installed plugins, ``plugins``), then validate every
        extra top-level section against its registered options class (defaults for the rest)."""
        if not isinstance(data, dict):
            return data
        load_builtins()
        names = [plugin_key(n) for n in plugin_names(data.get("plugins"), "the config")]
        for plugin in names:
            load_plugin(plugin)
        sections = option_sections()
        data = migrate_legacy({**data, "plugins": names})
        for key in [k for k in data if k not in cls.model_fields]:
            if key not in sections:
                raise ConfigError(f"invalid config: unknown key {key!r}")
            data[key] = _section(key, sections[key], data[key])
        for key, section in sections.items():
            data.setdefault(key, section())
        return data

    @model_validator(mode="after")
    def _registered_choices(self) -> "Config":
        for key, registry in (("method", METHODS), ("finetune", FINETUNE_MODES), ("peft", PEFT_MODULES)):
            value = getattr(self, key)
            if value not in registry:
                raise ConfigError(f"invalid config: {key}: unknown {registry.kind} {value!r}; "
                                  f"choose one of: {', '.join(registry.names())}")
        return self

    @model_validator(mode="after")
    def _backbone_fits(self) -> "Config":
        """A scratch backbone (``BACKBONES``) starts from random weights, trains all of them and has
        no text tower: refuse, before any work, what cannot apply to it."""
        arch, model = self.model.arch, self.model
        if arch not in BACKBONES:
            if model.image_size is not None:
                raise ConfigError(f"invalid config: model.image_size applies to scratch backbones "
                                  f"only; the weights of model.arch={arch} fix its input size")
            if model.bn_momentum is not None:
                raise ConfigError(f"invalid config: model.bn_momentum applies to scratch backbones "
                                  f"only; model.arch={arch} has no BatchNorm of ulfine's to set")
            return self
        spec = BACKBONES.get(arch)
        if model.pretrained != "none":
            raise ConfigError(f"invalid config: model.arch={arch} trains from scratch: set "
                              "model.pretrained=none")
        if self.finetune not in spec.finetune_modes:
            raise ConfigError(f"invalid config: model.arch={arch} trains from scratch, so every "
                              f"weight trains: use finetune={'|'.join(spec.finetune_modes)} "
                              f"(got {self.finetune})")
        reason = None if spec.has_text else METHODS.get(self.method).text_need(self.head)
        if reason:
            raise ConfigError(f"invalid config: model.arch={arch} has no text tower, but {reason}")
        return self

    def options_for(self, name: str) -> BaseModel | None:
        """The options section of the registered entry ``name`` (None when it declares none)."""
        return (self.__pydantic_extra__ or {}).get(name)
