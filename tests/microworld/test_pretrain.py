"""Pretraining lowers open_clip's contrastive loss and writes weights that reload exactly."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from ulfine.microworld.pretrain import DEFAULT_LOGIT_SCALE, build_micro_clip, contrastive_step_loss, pretrain
from ulfine.microworld.world import sample_pretrain_batch


def _fixed_batch_loss(model: torch.nn.Module) -> float:
    import open_clip

    from ulfine.models import MICRO_ARCH

    images, captions, _ = sample_pretrain_batch(12345, 32)
    model.eval()
    with torch.no_grad():
        return float(contrastive_step_loss(model, open_clip.get_tokenizer(MICRO_ARCH), images, captions))


def test_short_pretraining_lowers_the_contrastive_loss(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    before = _fixed_batch_loss(build_micro_clip(seed=0, logit_scale=DEFAULT_LOGIT_SCALE))
    out = tmp_path / "w.safetensors"
    pretrain(out, steps=15, batch_size=32, seed=0, lr=1e-3, eval_per_class=0, progress=False)
    after_model = build_micro_clip(seed=0)
    state = load_file(str(out))
    after_model.load_state_dict({k: v.float() for k, v in state.items()})
    after = _fixed_batch_loss(after_model)
    assert after < before - 0.05, (before, after)
    # fp16 file, every open_clip key present, and the JSON record matches the run
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert set(state) == set(build_micro_clip().state_dict())
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["steps"] == 15 and len(record["losses"]) == 15 and record["batch_size"] == 32
    # the contrastive scale is CLIP's 100, fixed through training (not learnt)
    assert record["logit_scale"] == DEFAULT_LOGIT_SCALE
    torch.testing.assert_close(state["logit_scale"].float().exp(), torch.tensor(100.0), rtol=1e-3, atol=0)
