"""The engine with data.augment_on=device: the same weights as the host path, exact resume."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny_config

from ulfine.engine import train


@pytest.mark.slow
def test_device_augmentation_trains_like_the_host_path_and_resumes_exactly(tmp_path):
    args = ("method=fixmatch", "finetune=lft", "ssl.tau=0.0", "train.epochs=2", "train.steps_per_epoch=2")
    host = train(tiny_config(tmp_path / "host", *args, "data.augment_on=host"))
    device = train(tiny_config(tmp_path / "device", *args, "data.augment_on=device"))
    first = train(tiny_config(tmp_path / "resumed", *args, "data.augment_on=device", "train.max_steps=3"))
    resumed = train(tiny_config(tmp_path / "resumed", *args, "data.augment_on=device", "resume=true"))
    assert first == resumed
    w_host, w_dev, w_res = (load_file(str(d / "weights.safetensors")) for d in (host, device, resumed))
    init = train(tiny_config(tmp_path / "init", *args, "data.augment_on=device", "train.max_steps=1",
                             "optim.lr=1e-12"))
    w_init = load_file(str(init / "weights.safetensors"))
    assert any(not torch.allclose(w_dev[k], w_init[k]) for k in w_dev)  # training changed the weights
    for k in w_host:
        torch.testing.assert_close(w_dev[k], w_host[k], rtol=0, atol=0)
        torch.testing.assert_close(w_res[k], w_dev[k], rtol=0, atol=0)
