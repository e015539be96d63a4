"""One fingerprint of model weights, for every cache keyed by what a tower computes."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def weights_fingerprint(module: nn.Module, skip_prefix: str | None = None) -> str:
    """Hash of every parameter and buffer of ``module`` (names, shapes, dtypes and values),
    except those whose name starts with ``skip_prefix`` (e.g. ``visual.`` for the text tower).

    Why: a pretrained tag does not identify weights (random weights, local files, re-downloads);
    hashing the tensors does, for about one second per 100M parameters.
    """
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(module.state_dict().items()):
        if skip_prefix is not None and name.startswith(skip_prefix):
            continue
        t = t.detach()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        if t.numel() == 0:
            continue
        t = t.to("cpu").contiguous()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw 16-bit words
            t = t.view(torch.int16)
        h.update(memoryview(t.numpy()).cast("B"))
    return h.hexdigest()


__all__ = ["weights_fingerprint"]
