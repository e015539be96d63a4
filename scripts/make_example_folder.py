#!/usr/bin/env python
"""Write a small long-tailed image folder for the README's practitioner example (offline, seconds).

The images are 32 px PNGs of eight classes of ulfine's micro world (the shipped tiny CLIP,
``model.pretrained=micro``, was pretrained on that world), laid out as a user's own folder::

    OUT/labeled/<class>/*.png   long-tailed: 60, 36, 22, 13, 8, 5, 3, 2 images (head to tail)
    OUT/unlabeled/*.png         twice as many, same imbalance, labels NOT written (as in real life)
    OUT/test/<class>/*.png      20 per class
    OUT/new_images/*.png        one more image per class, to run `ulfine predict` on (the file
                                name says the true class, so predictions can be checked)

    python scripts/make_example_folder.py example_data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from ulfine.microworld.task import class_attributes
from ulfine.microworld.world import DOWNSTREAM_STYLE, render, sample_attributes

CLASSES = ("purple star", "yellow ring", "blue cross", "green circle", "orange square", "cyan star",
           "pink crescent", "red triangle")
LABELED = (60, 36, 22, 13, 8, 5, 3, 2)
UNLABELED_PER_LABELED = 2
TEST_PER_CLASS = 20


def images_of(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uint8 (32, 32, 3) images of the micro-world class ``name``."""
    colour, shape = class_attributes(name)
    attrs = sample_attributes(rng, n, DOWNSTREAM_STYLE, np.full(n, colour), np.full(n, shape))
    return render(attrs, DOWNSTREAM_STYLE)


def save(images: np.ndarray, folder: Path, stem: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{stem}_{i:03d}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to create (e.g. example_data)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    unlabeled = []
    for name, n in zip(CLASSES, LABELED):
        folder_name = name.replace(" ", "_")  # CLIP reads "purple star"
        save(images_of(name, n, rng), args.out / "labeled" / folder_name, folder_name)
        save(images_of(name, TEST_PER_CLASS, rng), args.out / "test" / folder_name, folder_name)
        unlabeled.append(images_of(name, UNLABELED_PER_LABELED * n, rng))
    pool = np.concatenate(unlabeled)
    save(pool[rng.permutation(len(pool))], args.out / "unlabeled", "img")  # file names say nothing of the class
    for name in CLASSES:
        save(images_of(name, 1, rng), args.out / "new_images", name.replace(" ", "_"))
    print(f"wrote {args.out}: {sum(LABELED)} labeled images in {len(CLASSES)} classes, {len(pool)} unlabeled, "
          f"{TEST_PER_CLASS * len(CLASSES)} test, {len(CLASSES)} new")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
