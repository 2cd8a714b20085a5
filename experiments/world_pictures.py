"""Windows of the photographs scikit-image ships, other than the bundled five, as a training folder.

    python experiments/world_pictures.py --out runs/world

The app's five photographs (scikit-learn's china and flower, scikit-image's astronaut, coffee and chelsea) score
how islands hold outside the scenes (``glom_viz.invariance``); none of them, nor their windows, is written here.
From each other picture (colour and grey: a rocket, a motorcycle, coins, a camera man, cells, textures, ...), --windows
square windows of 25-60 % of its shorter side at random places, resized to --size px, go to OUT/images/ as PNG: a
folder in ``glom_viz.data``'s layout, for ``python -m glom_viz.train --data OUT --data-share S`` beside the scenes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

# what scikit-image ships in its wheel (no download); chelsea, cat, coffee and astronaut are left out
PICTURES = ("rocket", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "camera", "coins", "moon",
            "clock", "brick", "grass", "gravel", "cell", "horse", "page", "text")


def picture(name: str) -> np.ndarray:
    """(H, W, 3) uint8."""
    image = np.asarray(getattr(data, name)())
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return image[:, :, :3]


def windows(image: np.ndarray, count: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    height, width = image.shape[:2]
    shorter = min(height, width)
    found = []
    for _ in range(count):
        side = int(rng.uniform(0.25, 0.6) * shorter)
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        window = Image.fromarray(image[top:top + side, left:left + side])
        found.append(np.asarray(window.resize((size, size), Image.Resampling.LANCZOS)))
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--windows", type=int, default=48, help="windows per picture")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = args.out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for name in PICTURES:
        for index, window in enumerate(windows(picture(name), args.windows, args.size, rng)):
            Image.fromarray(window).save(folder / f"{name}-{index:03d}.png")
    print(f"{len(PICTURES) * args.windows} windows in {folder}")


if __name__ == "__main__":
    main()
