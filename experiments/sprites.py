"""A scene family glom-viz never trained on: flat sprites and tetrominoes on plain backgrounds, two frames.

In the style of the published Multi-dSprites and Tetrominoes benchmarks, and unlike the training scenes
of ``glom_viz.scenes`` (textured backgrounds, part-whole objects of several colours, integer shifts):

- a plain background of one colour;
- 2 to 5 sprites, painted in order so that later ones occlude earlier ones (each keeps at least
  MIN_VISIBLE of its area): squares, ellipses, hearts, triangles, diamonds, stars (one part each),
  crosses (two bars) and the seven tetrominoes (four cells each);
- each sprite one flat colour, drawn at random (two sprites may share a colour, as in Multi-dSprites);
  the cells of a tetromino differ slightly in brightness, so its parts can be seen but barely;
- edges anti-aliased (SUPERSAMPLE x SUPERSAMPLE samples per pixel), sizes and angles continuous;
- a second frame in which every sprite has moved its own way by a non-integer translation and a small
  rotation, over the still background: real motion, not an integer shift of the pixels.

    import sys; sys.path.insert(0, "experiments")
    from sprites import make_sprites, write_split
    scene = make_sprites(seed)      # .image, .next (S, S, 3) float32; .objects, .parts (S, S) int32
    write_split("runs/sprites/test", TEST_SEEDS[:256])   # the folder layout of glom_viz.data

The command line writes a training split and a held-out split with disjoint seeds:

    python experiments/sprites.py --out runs/sprites --train 2000 --test 256

Masks are ids per pixel (0 = background), the object or part most of a pixel's samples show; they are
written as 8-bit grey PNGs, read back by ``glom_viz.data`` as they are.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

TRAIN_SEEDS = range(0, 1_000_000_000)
TEST_SEEDS = range(2_000_000_000, 2_001_000_000)  # never a training seed, nor one of glom_viz.scenes'

SHAPES = ("square", "ellipse", "heart", "triangle", "diamond", "star", "cross", "tetromino")
TETROMINOES = {  # cells (row, column) of the seven pieces
    "I": ((0, 0), (1, 0), (2, 0), (3, 0)), "O": ((0, 0), (0, 1), (1, 0), (1, 1)),
    "T": ((0, 0), (0, 1), (0, 2), (1, 1)), "S": ((0, 1), (0, 2), (1, 0), (1, 1)),
    "Z": ((0, 0), (0, 1), (1, 1), (1, 2)), "J": ((0, 1), (1, 1), (2, 1), (2, 0)),
    "L": ((0, 0), (1, 0), (2, 0), (2, 1)),
}
SPRITES_PER_SCENE = (2, 5)  # inclusive
SPRITE_SIZE = (0.22, 0.42)  # a sprite's extent as a share of the image side
MIN_VISIBLE = 0.4  # a sprite is placed only where at least this share of it stays visible, in both frames
PLACEMENT_TRIES = 40
MIN_BACKGROUND_CONTRAST = 0.35  # RGB distance of every sprite's colour from the background
CELL_BRIGHTNESS = 0.08  # a tetromino's cells differ by up to this much in value
# the second frame: each sprite moves by this many pixels (at 64 px; scaled with the image) in a random
# direction, and turns by up to MAX_TURN degrees; two sprites' moves differ by MIN_MOVE_GAP px at least
MOVE = (1.5, 4.0)
MAX_TURN = 6.0
MIN_MOVE_GAP = 1.5
SUPERSAMPLE = 3
MIN_IMAGE_SIZE = 16


@dataclass(frozen=True)
class SpriteScene:
    """image, next: (S, S, 3) float32 in [0, 1]; objects, parts (and next_objects, next_parts): (S, S)
    int32 ids, 0 = background, objects numbered in painting order, parts across the scene; part_objects:
    the object of every part id (entry 0 the background); shapes: each sprite's shape."""

    image: np.ndarray
    next: np.ndarray
    objects: np.ndarray
    parts: np.ndarray
    next_objects: np.ndarray
    next_parts: np.ndarray
    part_objects: np.ndarray
    shapes: tuple[str, ...]


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + (h % 360) / 60.0) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _shape_parts(shape: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Boolean masks of a sprite's parts on sprite coordinates u (down), v (across), both in [-1, 1]."""
    if shape == "square":
        return [(np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)]
    if shape == "ellipse":
        return [(u / 0.95) ** 2 + (v / rng.uniform(0.5, 0.95)) ** 2 <= 1]
    if shape == "heart":
        x, y = v * 1.25, -u * 1.25 + 0.25  # the classic implicit heart, point down
        return [(x ** 2 + y ** 2 - 1) ** 3 - x ** 2 * y ** 3 <= 0]
    if shape == "triangle":
        t = (u + 0.9) / 1.8
        return [(t >= 0) & (t <= 1) & (np.abs(v) <= 0.95 * t)]
    if shape == "diamond":
        return [np.abs(u) + np.abs(v) <= 0.95]
    if shape == "star":
        angle, radius = np.arctan2(u, v), np.hypot(u, v)
        return [radius <= 0.45 + 0.5 * (0.5 + 0.5 * np.cos(5 * angle))]
    if shape == "cross":
        width = rng.uniform(0.25, 0.4)
        return [(np.abs(u) <= width) & (np.abs(v) <= 0.95), (np.abs(v) <= width) & (np.abs(u) <= 0.95)]
    if shape == "tetromino":
        cells = TETROMINOES[sorted(TETROMINOES)[rng.integers(len(TETROMINOES))]]
        rows, cols = max(r for r, _ in cells) + 1, max(c for _, c in cells) + 1
        side = 1.9 / max(rows, cols)
        top, left = -rows * side / 2, -cols * side / 2
        return [(u >= top + r * side) & (u < top + (r + 1) * side) & (v >= left + c * side) & (v < left + (c + 1) * side)
                for r, c in cells]
    raise ValueError(f"unknown sprite shape {shape!r}; shapes are {SHAPES}")


def _sprite_masks(sprite: dict, size: int, offset=None, turn=None) -> list[np.ndarray]:
    """The supersampled (S * SUPERSAMPLE, S * SUPERSAMPLE) part masks of one sprite, moved and turned."""
    n = size * SUPERSAMPLE
    rows, cols = (np.mgrid[0:n, 0:n] + 0.5) / SUPERSAMPLE  # sample centres, in pixels
    centre = sprite["centre"] + (0 if offset is None else offset)
    angle = np.deg2rad(sprite["angle"] + (turn or 0))
    dr, dc = rows - centre[0], cols - centre[1]
    u = (np.cos(angle) * dr - np.sin(angle) * dc) / sprite["radius"]
    v = (np.sin(angle) * dr + np.cos(angle) * dc) / sprite["radius"]
    return _shape_parts(sprite["shape"], u, v, np.random.default_rng(sprite["shape_seed"]))


def _paint(sprites: list[dict], masks: list[list[np.ndarray]]):
    """Sprites painted in order from their part masks: per-sample object ids, part ids and colours."""
    n = masks[0][0].shape[0]
    object_ids = np.zeros((n, n), np.int32)
    part_ids = np.zeros((n, n), np.int32)
    colour = np.zeros((n, n, 3))
    part_count = 0
    for k, (sprite, parts) in enumerate(zip(sprites, masks)):
        for mask, part_colour in zip(parts, sprite["colours"]):
            part_count += 1
            object_ids[mask] = k + 1
            part_ids[mask] = part_count
            colour[mask] = part_colour
    return object_ids, part_ids, colour


def _downsample(object_ids, part_ids, colour, background, size):
    """Supersampled ids and colours -> (S, S, 3) float image (anti-aliased) and (S, S) majority ids."""
    s = SUPERSAMPLE
    painted = object_ids > 0
    rgb = np.where(painted[..., None], colour, background)
    image = rgb.reshape(size, s, size, s, 3).mean((1, 3))

    def majority(ids):
        blocks = ids.reshape(size, s, size, s).transpose(0, 2, 1, 3).reshape(size, size, s * s)
        top = ids.max() + 1
        counts = np.stack([(blocks == i).sum(-1) for i in range(top)], -1)
        return counts.argmax(-1).astype(np.int32)

    return image.astype(np.float32), majority(object_ids), majority(part_ids)


def make_sprites(seed: int, image_size: int = 64) -> SpriteScene:
    """The two frames of one seed's scene and their masks: same seed and size, same scene."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE} px, got {image_size}")
    rng = np.random.default_rng([int(seed), 7])
    size = image_size
    scale = size / 64
    background = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.5), rng.uniform(0.1, 0.6))
    layout: list[dict] = []
    still: list[list[np.ndarray]] = []  # each placed sprite's part masks in the first frame
    moved: list[list[np.ndarray]] = []  # and in the second
    offsets: list[np.ndarray] = []
    part_objects = [0]
    for _ in range(rng.integers(SPRITES_PER_SCENE[0], SPRITES_PER_SCENE[1] + 1)):
        shape = SHAPES[rng.integers(len(SHAPES))]
        radius = rng.uniform(*SPRITE_SIZE) * size / 2
        while True:
            hue_colour = _hsv(rng.uniform(0, 360), rng.uniform(0.5, 1.0), rng.uniform(0.55, 1.0))
            if np.linalg.norm(hue_colour - background) >= MIN_BACKGROUND_CONTRAST:
                break
        for _ in range(PLACEMENT_TRIES):
            while True:  # a move unlike the other sprites' (common fate tells them apart)
                length, direction = rng.uniform(*MOVE) * scale, rng.uniform(0, 2 * np.pi)
                offset = length * np.array([np.sin(direction), np.cos(direction)])
                if all(np.abs(offset - o).max() >= MIN_MOVE_GAP * scale for o in offsets):
                    break
            candidate = {"shape": shape, "radius": radius, "shape_seed": int(rng.integers(2**31)),
                         "centre": rng.uniform(radius * 0.6, size - radius * 0.6, 2), "angle": rng.uniform(0, 360)}
            count = len(_shape_parts(shape, np.zeros(1), np.zeros(1), np.random.default_rng(candidate["shape_seed"])))
            brightness = 1 + rng.uniform(-CELL_BRIGHTNESS, CELL_BRIGHTNESS, count) if count > 1 else np.ones(1)
            candidate["colours"] = [np.clip(hue_colour * b, 0, 1) for b in brightness]
            turn = rng.uniform(-MAX_TURN, MAX_TURN)
            here, there = _sprite_masks(candidate, size), _sprite_masks(candidate, size, offset, turn)
            if _visible(still + [here]) and _visible(moved + [there]):
                layout.append(candidate)
                still.append(here)
                moved.append(there)
                offsets.append(offset)
                part_objects += [len(layout)] * count
                break
    frames = []
    for masks in (still, moved):
        frames.append(_downsample(*_paint(layout, masks), background, size))
    (image, objects, parts), (second, next_objects, next_parts) = frames
    return SpriteScene(image, second, objects, parts, next_objects, next_parts, np.asarray(part_objects, np.int32),
                       tuple(s["shape"] for s in layout))


def _visible(masks: list[list[np.ndarray]]) -> bool:
    """Whether every sprite, painted in order from its part masks, keeps MIN_VISIBLE of its area."""
    object_ids, _, _ = _paint([{"colours": [0] * len(parts)} for parts in masks], masks)
    areas = [np.logical_or.reduce(parts).sum() for parts in masks]
    return all(area > 0 and (object_ids == k + 1).sum() >= MIN_VISIBLE * area for k, area in enumerate(areas))


def write_split(out: str | Path, seeds, image_size: int = 64) -> Path:
    """Write scenes of `seeds` in glom_viz.data's layout: images/, next/, masks/, parts/ (PNG, NAME = seed)."""
    out = Path(out)
    for folder in ("images", "next", "masks", "parts"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        scene = make_sprites(int(seed), image_size)
        name = f"{int(seed)}.png"
        Image.fromarray(_to_uint8(scene.image)).save(out / "images" / name)
        Image.fromarray(_to_uint8(scene.next)).save(out / "next" / name)
        Image.fromarray(scene.objects.astype(np.uint8), mode="L").save(out / "masks" / name)
        Image.fromarray(scene.parts.astype(np.uint8), mode="L").save(out / "parts" / name)
    return out


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="writes OUT/train and OUT/test in the folder layout")
    parser.add_argument("--train", type=int, default=2000, help="training scenes (seeds 0, 1, ...)")
    parser.add_argument("--test", type=int, default=256, help="held-out scenes (seeds from 2,000,000,000)")
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args(argv)
    write_split(Path(args.out) / "train", TRAIN_SEEDS[:args.train], args.image_size)
    write_split(Path(args.out) / "test", TEST_SEEDS[:args.test], args.image_size)
    print(f"wrote {args.train} training and {args.test} held-out scenes to {args.out}/train and {args.out}/test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
