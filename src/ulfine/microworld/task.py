"""The downstream LTSSL task of the micro world: 24 colour+shape classes under a domain shift.

Why: the shipped tiny CLIP must face a task that is (a) readable by its text tower, so zero-shot
works far above chance, (b) partly new, so transfer is real: 8 of the 24 classes are colour/shape
pairs held out of pretraining, and (c) shifted, so fine-tuning matters: the images use sizes,
textures, coloured gradient backgrounds, clutter and lighting that pretraining never showed
(``world.DOWNSTREAM_STYLE``).

The class order (head first) is a fixed seeded permutation drawn once, before any method was run,
and written out literally so that it can never drift.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..config import recipe_overrides
from .world import COLOUR_NAMES, DOWNSTREAM_STYLE, SHAPES, is_held_out, render, sample_attributes

#: class k = (colour, shape), k = 0 is the head class of the long-tailed splits
CLASS_NAMES: tuple[str, ...] = (
    "purple star", "purple circle", "yellow ring", "blue cross", "green circle", "green diamond",
    "orange diamond", "orange square", "purple diamond", "yellow triangle", "orange star",
    "cyan ring", "cyan star", "pink ring", "yellow crescent", "pink crescent", "pink square",
    "blue crescent", "red triangle", "green cross", "cyan square", "blue triangle", "red cross",
    "red circle",
)
NUM_CLASSES = len(CLASS_NAMES)
TRAIN_PER_CLASS = 300  # pool the split engine draws labeled + unlabeled images from
TEST_PER_CLASS = 100  # balanced test set
TASK_SEED = 20250508  # fixes every pixel of the task
#: the fine-tuning strategies this task has a chosen recipe for (configs/recipes/microworld.yaml)
STRATEGIES: tuple[str, ...] = ("lp", "lft", "fft")


def strategy_overrides(finetune: str) -> tuple[str, ...]:
    """``finetune=...`` plus this task's chosen recipe for that strategy (learning rate, adapter
    scale; ``configs/recipes/microworld.yaml``, chosen on a validation split, docs/microworld.md
    7.1): what every method of the strategy runs with in the demo, the benchmark and the study."""
    return (f"finetune={finetune}", *recipe_overrides("microworld", "strategy", finetune))


def class_attributes(name: str) -> tuple[int, int]:
    """(colour index, shape index) of a class name such as ``"red star"``."""
    colour, shape = name.split()
    return COLOUR_NAMES.index(colour), SHAPES.index(shape)


def held_out_classes() -> list[int]:
    """Indices of the classes whose colour/shape pair pretraining never showed."""
    return [k for k, name in enumerate(CLASS_NAMES) if is_held_out(*class_attributes(name))]


def make_split(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` images of every class (class-major order), uint8 (N, 32, 32, 3) and labels."""
    rng = np.random.default_rng(seed)
    pairs = np.array([class_attributes(n) for n in CLASS_NAMES], dtype=np.int64)
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), per_class)
    attrs = sample_attributes(rng, len(labels), DOWNSTREAM_STYLE, pairs[labels, 0], pairs[labels, 1])
    chunks = [
        render(_slice(attrs, i, i + 2048), DOWNSTREAM_STYLE) for i in range(0, len(labels), 2048)
    ]
    return np.concatenate(chunks), labels


def _slice(attrs, a: int, b: int):  # noqa: ANN001, ANN202 - Attributes, kept private
    from dataclasses import fields, replace

    return replace(attrs, **{f.name: getattr(attrs, f.name)[a:b] for f in fields(attrs)})


@lru_cache(maxsize=2)
def task_arrays(
    train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels), read-only, cached per process."""
    x_tr, y_tr = make_split(train_per_class, TASK_SEED)
    x_te, y_te = make_split(test_per_class, TASK_SEED + 1)
    for arr in (x_tr, y_tr, x_te, y_te):
        arr.setflags(write=False)
    return x_tr, y_tr, x_te, y_te
