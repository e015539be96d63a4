#!/usr/bin/env python
"""Does a micro-CLIP meet the calibrated regime (docs/microworld.md section 0, R1, R3, R6)?

    python scripts/reproduce/calibrate_microworld.py                       # the shipped weights
    python scripts/reproduce/calibrate_microworld.py --weights my_clip.safetensors --out my.json

Measures, on the frozen image tower of a ``ulfine-micro-vit`` file:

- zero-shot test accuracy (all 2,400 test images; seen and held-out colour/shape pairs);
- R1: a linear probe on the whole balanced train pool (7,200 images) and the share of
  zero-shot's test error it removes (>= 40% wanted);
- R3: the same probe on the long-tailed labeled split of the consistent preset (seed 0) with
  post-hoc logit adjustment (``- log pi`` at test), against zero-shot (>= zero-shot wanted);
- R6: the model's logit scale (near 100 wanted).

The probe is multinomial logistic regression on L2-normalised features (L-BFGS, full batch); its
weight decay is chosen on a held-out fifth of the training images, never on the test set.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ulfine.config import load_config
from ulfine.data import build_ssl_data
from ulfine.microworld.pretrain import build_micro_clip, evaluate_zero_shot
from ulfine.microworld.task import CLASS_NAMES, NUM_CLASSES, task_arrays
from ulfine.microworld.zeroshot import as_uint8_nchw, micro_normalizer
from ulfine.models.archs import MICRO_ARCH
from ulfine.models.weights import MICRO_WEIGHTS

PRESET = "microworld_n100_m200_g20_consistent"
PROBE_SCALE = 20.0  # features are unit vectors; the probe's logits are scaled like a cosine head
WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2)


def load_micro_clip(path: Path) -> torch.nn.Module:
    """A ``ulfine-micro-vit`` open_clip model with the weights of ``path``, in eval mode."""
    from safetensors.torch import load_file

    model = build_micro_clip(0)
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.eval()


@torch.no_grad()
def image_features(model: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    """L2-normalised image features of uint8 (N, 32, 32, 3) images."""
    norm = micro_normalizer()
    chunks = [model.encode_image(norm(as_uint8_nchw(images[i:i + 512]))) for i in range(0, len(images), 512)]
    return F.normalize(torch.cat(chunks).float(), dim=-1)


def fit_probe(x: torch.Tensor, y: torch.Tensor, weight_decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (weights, bias) by full-batch L-BFGS."""
    w = torch.zeros(x.shape[1], NUM_CLASSES, requires_grad=True)
    b = torch.zeros(NUM_CLASSES, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(PROBE_SCALE * x @ w + b, y) + weight_decay * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def probe_logits(x: torch.Tensor, probe: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return PROBE_SCALE * x @ probe[0] + probe[1]


def tuned_probe(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], float]:
    """The probe refitted on all of (x, y) with the weight decay that did best on a held-out fifth
    (balanced accuracy, so that a long-tailed training set does not pick for the head)."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    val, train = perm[: len(y) // 5], perm[len(y) // 5:]

    def balanced(wd: float) -> float:
        pred = probe_logits(x[val], fit_probe(x[train], y[train], wd)).argmax(1)
        return float(np.nanmean([(pred[y[val] == k] == k).float().mean() for k in range(NUM_CLASSES)
                                 if (y[val] == k).any()]))

    best = max(WEIGHT_DECAYS, key=balanced)
    return fit_probe(x, y, best), best


def measure(weights: Path) -> dict[str, float]:
    """The regime figures of one weights file (see the module docstring)."""
    model = load_micro_clip(weights)
    import open_clip

    zs = evaluate_zero_shot(model, open_clip.get_tokenizer(MICRO_ARCH), per_class=100)
    x_tr, y_tr, x_te, y_te = task_arrays()
    f_tr, f_te = image_features(model, x_tr), image_features(model, x_te)
    y_tr_t, y_te_t = torch.as_tensor(np.array(y_tr)), torch.as_tensor(np.array(y_te))
    probe, wd = tuned_probe(f_tr, y_tr_t)
    lp_acc = float((probe_logits(f_te, probe).argmax(1) == y_te_t).float().mean())
    data = build_ssl_data(load_config(PRESET, ["seed=0"]).data, 0)
    f_lt, y_lt = image_features(model, np.asarray(data.labeled.images)), torch.as_tensor(data.labeled.labels)
    lt_probe, lt_wd = tuned_probe(f_lt, y_lt)
    prior = torch.bincount(y_lt, minlength=NUM_CLASSES).float().clamp_min(1)
    lt_logits = probe_logits(f_te, lt_probe)
    la_pred = (lt_logits - torch.log(prior / prior.sum())).argmax(1)
    z = zs["zero_shot_accuracy"]
    return {
        **zs,
        "logit_scale": float(model.logit_scale.detach().exp()),
        "lp_balanced_accuracy": lp_acc, "lp_balanced_weight_decay": wd,
        "lp_error_removed": (lp_acc - z) / (1 - z),
        "lp_lt_accuracy": float((lt_logits.argmax(1) == y_te_t).float().mean()),
        "lp_lt_la_accuracy": float((la_pred == y_te_t).float().mean()), "lp_lt_weight_decay": lt_wd,
        "classes": len(CLASS_NAMES),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=None, help="micro-CLIP safetensors (default: shipped)")
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    res = measure(args.weights or MICRO_WEIGHTS)
    text = json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    ok = {"R1": res["lp_error_removed"] >= 0.40, "R3": res["lp_lt_la_accuracy"] >= res["zero_shot_accuracy"],
          "R6": res["logit_scale"] >= 80}
    print("  ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in ok.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
