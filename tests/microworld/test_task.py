"""The downstream task: readable class names, held-out classes, exact split counts per preset."""

from __future__ import annotations

import numpy as np
import pytest

from ulfine.config import list_presets, load_config
from ulfine.data import DATASETS, build_ssl_data, class_counts, plan_counts
from ulfine.microworld import task as T
from ulfine.microworld.world import COLOUR_NAMES, SHAPES, is_held_out

PRESETS = sorted(p for p in list_presets() if p.startswith("microworld_"))


def test_class_names_are_readable_colour_shape_pairs() -> None:
    assert T.NUM_CLASSES == 24 and len(set(T.CLASS_NAMES)) == 24
    for name in T.CLASS_NAMES:
        colour, shape = name.split()
        assert colour in COLOUR_NAMES and shape in SHAPES
    pairs = [T.class_attributes(n) for n in T.CLASS_NAMES]
    # every colour and every shape names exactly three classes
    assert sorted(np.bincount([c for c, _ in pairs]).tolist()) == [3] * 8
    assert sorted(np.bincount([s for _, s in pairs]).tolist()) == [3] * 8
    assert len(T.held_out_classes()) == 8
    assert T.held_out_classes() == [k for k, p in enumerate(pairs) if is_held_out(*p)]
    assert DATASETS.get("microworld").class_names == list(T.CLASS_NAMES)


def test_class_names_tokenise_to_the_same_words() -> None:
    import open_clip

    from ulfine.models import MICRO_ARCH

    tok = open_clip.get_tokenizer(MICRO_ARCH)
    ids = tok([f"a photo of a {c}." for c in T.CLASS_NAMES])
    assert ids.shape == (24, 32)
    assert len({tuple(r.tolist()) for r in ids}) == 24  # all prompts distinct after tokenising


def test_presets_exist_and_state_the_micro_model() -> None:
    orders = ("consistent", "reversed", "uniform")
    # two label regimes (docs/microworld.md 0): N1=100 (2 unlabeled per labeled image) and N1=25 (8)
    assert PRESETS == sorted(f"microworld_n{n1}_m200_g20_{o}" for n1 in (100, 25) for o in orders)
    for name in PRESETS:
        cfg = load_config(name)
        assert (cfg.model.arch, cfg.model.pretrained, cfg.data.dataset) == ("ulfine-micro-vit", "micro", "microworld")
        assert list_presets()[name].startswith("micro world")
        # the preset's default strategy (LFT) runs with the recipe the study chose for it
        recipe = load_config(name, list(T.strategy_overrides("lft")))
        assert cfg.finetune == "lft" and cfg.model_dump() == recipe.model_dump()


@pytest.mark.parametrize("name", PRESETS)
def test_split_counts_per_preset(name: str) -> None:
    cfg = load_config(name)
    plan = plan_counts(cfg.data)
    # hand formula N_k = floor(N1 * 20^(-(k-1)/23)), last class pinned to floor(N1/20)
    by_head = {100: [100, 87, 77, 67, 59, 52, 45, 40, 35, 30, 27, 23, 20, 18, 16, 14, 12, 10, 9, 8, 7, 6, 5, 5],
               25: [25, 21, 19, 16, 14, 13, 11, 10, 8, 7, 6, 5, 5, 4, 4, 3, 3, 2, 2, 2, 1, 1, 1, 1]}
    labeled = by_head[cfg.data.num_labeled_head]
    assert plan.labeled == labeled and sum(labeled) == {100: 772, 25: 184}[cfg.data.num_labeled_head]
    order = name.rsplit("_", 1)[1]
    expected_u = {"consistent": class_counts(200, 24, 20.0), "uniform": [200] * 24,
                  "reversed": class_counts(200, 24, 20.0)[::-1]}[order]
    assert plan.unlabeled == expected_u
    # the train pool can serve every class: labeled + unlabeled <= 300
    assert all(a + b <= T.TRAIN_PER_CLASS for a, b in zip(plan.labeled, plan.unlabeled))


def test_built_split_matches_the_plan_and_test_is_balanced() -> None:
    cfg = load_config("microworld_n100_m200_g20_reversed")
    data = build_ssl_data(cfg.data, seed=0)
    assert data.class_names == list(T.CLASS_NAMES)
    assert np.bincount(data.labeled.labels, minlength=24).tolist() == class_counts(100, 24, 20.0)
    assert np.bincount(data.unlabeled.labels, minlength=24).tolist() == class_counts(200, 24, 20.0)[::-1]
    assert np.bincount(data.test.labels, minlength=24).tolist() == [T.TEST_PER_CLASS] * 24
    assert data.labeled.images.shape[1:] == (32, 32, 3)


def test_task_images_are_fixed() -> None:
    """The task is the same bytes on every call (seeded), and classes differ in content."""
    x1, y1 = T.make_split(2, T.TASK_SEED)
    x2, y2 = T.make_split(2, T.TASK_SEED)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert y1.tolist() == np.repeat(np.arange(24), 2).tolist()
