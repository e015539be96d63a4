"""Helpers the method tests share: losses computed by hand in plain Python (the reference the
methods' tensors are checked against) and a simulated second process."""

from __future__ import annotations

import math

import torch


def softmax(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def ce(z, y):
    return math.log(sum(math.exp(v) for v in z)) - z[y]


def soft_ce(z, q):
    lse = math.log(sum(math.exp(v) for v in z))
    return sum(-p * (v - lse) for p, v in zip(q, z))


def argmax(z):
    return max(range(len(z)), key=lambda k: z[k])


class SummingPeer:
    """all_reduce_sum of a simulated 2-process run: the other rank's tensor is given beforehand
    (``other``); a method that only sums never gathers."""

    def __init__(self) -> None:
        self.other: torch.Tensor | None = None

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t + self.other

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        raise AssertionError("this method only sums")
