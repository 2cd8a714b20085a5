"""Synthetic part-whole scenes with per-pixel ground truth, made from a seed.

A scene is a textured background with a few objects on it; every object is built of parts (a house is
a body, a roof and a door; a snowman two or three discs; a tree a trunk and a crown; ...). Objects are
painted in order, so later ones occlude earlier ones, and the masks say what is visible:

    objects (H, W) int: 0 = background, 1..K = the object painted k-th
    parts   (H, W) int: 0 = background, 1..P = a part, numbered across the whole scene

Every part belongs to exactly one object, so the object mask is the union of its parts' masks.
Everything is drawn with numpy on an (H, W) coordinate grid: a 64 px scene takes well under a
millisecond per shape, fast enough to make every training batch on the fly.

Seeds: training draws from ``TRAIN_SEEDS``; evaluation uses ``EVAL_SEEDS``, which never overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from glom_viz.errors import ConfigError

# training draws seeds from this range; held-out evaluation uses the disjoint range after it
TRAIN_SEEDS = range(0, 1_000_000_000)
EVAL_SEEDS = range(1_000_000_000, 1_001_000_000)

KINDS = ("house", "snowman", "tree", "car", "mushroom", "flower")
OBJECTS_PER_SCENE = (2, 4)  # inclusive range
# object height as a fraction of the image side; width follows the kind's aspect ratio
OBJECT_HEIGHT = (0.32, 0.46)
ASPECT = {"house": 0.85, "snowman": 0.65, "tree": 0.7, "car": 1.45, "mushroom": 0.9, "flower": 0.6}
# an object is placed only where at most this fraction of its box is already covered (some occlusion)
MAX_COVERED = 0.2
PLACEMENT_TRIES = 30
BACKGROUNDS = ("gradient", "stripes", "checker", "blotches")
# pixel noise on top of everything, and the shading across each part
PIXEL_NOISE = 0.025
PART_SHADING = 0.12
# parts of one object differ at least this much in RGB (Euclidean, colours in [0, 1])
MIN_PART_CONTRAST = 0.35
MIN_IMAGE_SIZE = 16
# moving scenes: each object shifts by up to MAX_SHIFT px per axis, objects' shifts differ by MIN_SHIFT_GAP px
MAX_SHIFT = 3
MIN_SHIFT_GAP = 2
# clips: every object glides at its own constant velocity, up to CLIP_SPEED px a frame per axis and at
# least CLIP_MIN_SPEED along some axis, a motion the two-frame jumps of training never show
CLIP_FRAMES = 8
CLIP_SPEED = 2.0
CLIP_MIN_SPEED = 0.5


@dataclass(frozen=True)
class Scene:
    """One scene and its truth.

    image: (H, W, 3) float32 in [0, 1].
    objects: (H, W) int32, 0 = background, k = the k-th object painted.
    parts: (H, W) int32, 0 = background, p = a part (numbered across the scene).
    part_objects: (P + 1,) int32, the object of every part id (entry 0 is the background, 0).
    kinds: the kind of each object, in painting order.
    """

    image: np.ndarray
    objects: np.ndarray
    parts: np.ndarray
    part_objects: np.ndarray
    kinds: tuple[str, ...]


# -- shapes: boolean masks on a grid of box coordinates (u down, v across, both 0..1 in the box) ----

def _rect(u, v, u0, u1, v0, v1):
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _ellipse(u, v, cu, cv, ru, rv):
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def _triangle(u, v, u0, u1, half_width):
    """An isosceles triangle with its apex at (u0, 0.5) and its base at u1."""
    t = (u - u0) / (u1 - u0)
    return (t >= 0) & (t <= 1) & (np.abs(v - 0.5) <= half_width * t)


def _parts_of(kind: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """The masks of one object's parts, back to front (a later part covers an earlier one)."""
    if kind == "house":
        eave = rng.uniform(0.35, 0.5)
        return [
            _rect(u, v, eave, 1.0, 0.08, 0.92),  # body
            _triangle(u, v, 0.0, eave, 0.5),  # roof
            _rect(u, v, rng.uniform(0.62, 0.72), 1.0, 0.38, 0.62),  # door
        ]
    if kind == "snowman":
        if rng.random() < 0.5:
            return [_ellipse(u, v, 0.71, 0.5, 0.29, 0.48), _ellipse(u, v, 0.22, 0.5, 0.22, 0.34)]
        return [
            _ellipse(u, v, 0.79, 0.5, 0.21, 0.48),
            _ellipse(u, v, 0.46, 0.5, 0.17, 0.38),
            _ellipse(u, v, 0.16, 0.5, 0.16, 0.3),
        ]
    if kind == "tree":
        crown = _ellipse(u, v, 0.36, 0.5, 0.36, 0.5) if rng.random() < 0.5 else _triangle(u, v, 0.0, 0.72, 0.5)
        return [_rect(u, v, 0.55, 1.0, 0.38, 0.62), crown]  # trunk, crown
    if kind == "car":
        return [
            _rect(u, v, 0.08, 0.45, 0.2, 0.72),  # cabin
            _rect(u, v, 0.4, 0.8, 0.0, 1.0),  # body
            _ellipse(u, v, 0.8, 0.22, 0.2, 0.14),  # wheel
            _ellipse(u, v, 0.8, 0.78, 0.2, 0.14),  # wheel
        ]
    if kind == "mushroom":
        return [_rect(u, v, 0.4, 1.0, 0.34, 0.66), _ellipse(u, v, 0.5, 0.5, 0.5, 0.5) & (u <= 0.5)]  # stem, cap
    if kind == "flower":
        return [
            _rect(u, v, 0.45, 1.0, 0.4, 0.6),  # stem
            _ellipse(u, v, 0.3, 0.5, 0.3, 0.5),  # petals
            _ellipse(u, v, 0.3, 0.5, 0.12, 0.2),  # heart
        ]
    raise ConfigError(f"unknown object kind {kind!r}; kinds are {KINDS}")


# colours: each kind's parts get a hue range (degrees), saturation and value ranges
PART_COLOURS = {
    "house": [((0, 360), (0.3, 0.7), (0.6, 0.95)), ((0, 40), (0.6, 0.9), (0.4, 0.8)), ((20, 50), (0.5, 0.9), (0.2, 0.45))],
    "snowman": [((180, 240), (0.0, 0.15), (0.85, 1.0)), ((180, 240), (0.15, 0.35), (0.7, 0.85)),
                ((0, 360), (0.0, 0.1), (0.9, 1.0))],
    "tree": [((20, 40), (0.5, 0.8), (0.25, 0.45)), ((80, 150), (0.5, 0.9), (0.35, 0.8))],
    "car": [((180, 220), (0.1, 0.4), (0.75, 0.95)), ((0, 360), (0.6, 1.0), (0.5, 0.95)),
            ((0, 360), (0.0, 0.2), (0.05, 0.2)), ((0, 360), (0.0, 0.2), (0.05, 0.2))],
    "mushroom": [((30, 50), (0.05, 0.25), (0.8, 0.95)), ((340, 380), (0.6, 1.0), (0.5, 0.9))],
    "flower": [((90, 140), (0.5, 0.9), (0.3, 0.6)), ((0, 360), (0.5, 1.0), (0.7, 1.0)), ((40, 60), (0.7, 1.0), (0.6, 1.0))],
}


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """Hue in degrees, saturation and value in [0, 1] -> (3,) RGB in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + (h % 360) / 60.0) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _part_colours(kind: str, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    colours = []
    for (h, s, v) in PART_COLOURS[kind][:count]:
        colour = None
        for _ in range(20):
            colour = _hsv_to_rgb(rng.uniform(*h), rng.uniform(*s), rng.uniform(*v))
            if all(np.linalg.norm(colour - c) >= MIN_PART_CONTRAST for c in colours):
                break
        colours.append(colour)
    return colours


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float textured background in muted colours."""
    y, x = np.mgrid[0:size, 0:size] / size
    a = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.05, 0.4), rng.uniform(0.35, 0.75))
    b = np.clip(a + rng.normal(0, 0.12, 3), 0, 1)
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    angle = rng.uniform(0, np.pi)
    along = np.cos(angle) * x + np.sin(angle) * y
    if kind == "gradient":
        t = (along - along.min()) / max(np.ptp(along), 1e-6)
    elif kind == "stripes":
        t = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 9) * along + rng.uniform(0, 2 * np.pi))
    elif kind == "checker":
        cells = rng.integers(4, 12)
        t = ((np.floor(y * cells) + np.floor(x * cells)) % 2).astype(float)
    else:  # blotches: smooth random field, bilinearly upsampled from a coarse grid
        coarse = rng.random((5, 5))
        grid = np.linspace(0, 4, size)
        i0 = np.minimum(grid.astype(int), 3)
        f = grid - i0
        rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
        t = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
    return a * (1 - t[..., None]) + b * t[..., None]


def make_scene(seed: int, image_size: int = 64) -> Scene:
    """The scene of one seed: same seed and size, same scene.

    Args:
        seed: any non-negative integer; training uses ``TRAIN_SEEDS``, evaluation ``EVAL_SEEDS``.
        image_size: side of the square image in pixels (at least 16).

    Returns:
        Scene with image (S, S, 3) float32 in [0, 1], objects and parts (S, S) int32.
    """
    return _compose(seed, image_size)


def object_shifts(seed: int, max_shift: int = MAX_SHIFT) -> np.ndarray:
    """(max objects, 2) integer (down, across) pixel shifts, one per object a scene may hold.

    Every shift is non-zero and differs from every other one, and from the still background, by at
    least MIN_SHIFT_GAP pixels along some axis, so each object moves in its own way (common fate).
    """
    if max_shift < MIN_SHIFT_GAP:
        raise ConfigError(f"max_shift must be at least {MIN_SHIFT_GAP} px for objects to move apart, got {max_shift}")
    rng = np.random.default_rng([int(seed), 1])
    chosen = [np.zeros(2, int)]  # the background stays still
    while len(chosen) <= OBJECTS_PER_SCENE[1]:
        shift = rng.integers(-max_shift, max_shift + 1, 2)
        if all(np.abs(shift - c).max() >= MIN_SHIFT_GAP for c in chosen):
            chosen.append(shift)
    return np.stack(chosen[1:])


def make_moving_scene(seed: int, image_size: int = 64, max_shift: int = MAX_SHIFT) -> tuple[Scene, Scene]:
    """Two frames of one scene: the first is ``make_scene(seed)``, in the second every object has moved
    by its own ``object_shifts(seed)`` over the still background, with fresh pixel noise.

    Training reads only the two images (motion is found from them by ``glom_viz.motion``); the masks of
    both frames are there for tests and evaluation.
    """
    return _compose(seed, image_size), _compose(seed, image_size, object_shifts(seed, max_shift))


def object_velocities(seed: int, max_speed: float = CLIP_SPEED) -> np.ndarray:
    """(max objects, 2) (down, across) velocities in px per frame, one per object a scene may hold:
    each axis uniform in [-max_speed, max_speed], at least CLIP_MIN_SPEED along some axis."""
    if not max_speed >= CLIP_MIN_SPEED:
        raise ConfigError(f"max_speed must be at least {CLIP_MIN_SPEED} px a frame for objects to move, got {max_speed}")
    rng = np.random.default_rng([int(seed), 3])
    velocities = []
    while len(velocities) < OBJECTS_PER_SCENE[1]:
        velocity = rng.uniform(-max_speed, max_speed, 2)
        if np.abs(velocity).max() >= CLIP_MIN_SPEED:
            velocities.append(velocity)
    return np.stack(velocities)


def make_clip(seed: int, frames: int = CLIP_FRAMES, image_size: int = 64, max_speed: float = CLIP_SPEED) -> list[Scene]:
    """A clip of one scene: frame 0 is ``make_scene(seed)``, and in frame t every object has glided
    t times its own ``object_velocities(seed)`` over the still background, with fresh pixel noise
    each frame. Objects may leave the picture; the masks say what each frame shows.
    """
    if frames < 2:
        raise ConfigError(f"a clip needs at least 2 frames for anything to move, got {frames}")
    velocities = object_velocities(seed, max_speed)
    return [_compose(seed, image_size)] + [_compose(seed, image_size, t * velocities, frame=t) for t in range(1, frames)]


def _compose(seed: int, image_size: int, shifts: np.ndarray | None = None, frame: int = 1) -> Scene:
    """The scene of a seed, with the k-th object drawn `shifts[k]` pixels away from its place (None: in place).

    The layout (placement, occlusion test, shapes, colours) is the same with or without shifts; only
    the drawing moves, and a shifted scene draws its pixel noise from a generator of its own, one per
    `frame` (frame 1 is the second frame of ``make_moving_scene``).
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"image_size must be at least {MIN_IMAGE_SIZE} px for objects to have parts, got {image_size}")
    if seed < 0:
        raise ConfigError(f"scene seeds are non-negative integers, got {seed}")
    rng = np.random.default_rng(int(seed))
    size = image_size
    image = _background(size, rng)
    objects = np.zeros((size, size), np.int32)
    parts = np.zeros((size, size), np.int32)
    covered = np.zeros((size, size), bool)
    part_objects = [0]
    kinds: list[str] = []
    rows, cols = np.mgrid[0:size, 0:size].astype(float) + 0.5

    for _ in range(rng.integers(OBJECTS_PER_SCENE[0], OBJECTS_PER_SCENE[1] + 1)):
        kind = KINDS[rng.integers(len(KINDS))]
        height = rng.uniform(*OBJECT_HEIGHT) * size
        width = min(height * ASPECT[kind] * rng.uniform(0.9, 1.1), size * 0.95)
        for _ in range(PLACEMENT_TRIES):
            top, left = rng.uniform(0, size - height), rng.uniform(0, size - width)
            u, v = (rows - top) / height, (cols - left) / width
            box = _rect(u, v, 0, 1, 0, 1)
            if (covered & box).sum() <= MAX_COVERED * box.sum():
                break
        else:
            continue  # no room left for this object
        before_shapes = rng.bit_generator.state
        masks = _parts_of(kind, u, v, rng)
        layout = masks
        if shifts is not None:  # draw the same shapes (same draws) where the object has moved to
            rng.bit_generator.state = before_shapes
            down, across = shifts[len(kinds)]
            u, v = (rows - top - down) / height, (cols - left - across) / width
            masks = _parts_of(kind, u, v, rng)
        colours = _part_colours(kind, len(masks), rng)
        object_id = len(kinds) + 1
        shade_axis = rng.uniform(-1, 1, 2)
        for mask, colour in zip(masks, colours):
            part_objects.append(object_id)
            parts[mask] = len(part_objects) - 1
            objects[mask] = object_id
            shading = 1 + PART_SHADING * ((u - 0.5) * shade_axis[0] + (v - 0.5) * shade_axis[1])
            image[mask] = colour * shading[mask][:, None]
        for mask in layout:
            covered |= mask
        kinds.append(kind)

    noise = rng if shifts is None else np.random.default_rng([int(seed), 1 + int(frame)])
    image = np.clip(image + noise.normal(0, PIXEL_NOISE, image.shape), 0, 1).astype(np.float32)
    return Scene(image, objects, parts, np.asarray(part_objects, np.int32), tuple(kinds))


def make_batch(seeds, image_size: int = 64) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Scenes of many seeds, ready for the model.

    Returns:
        images (B, 3, S, S) float32 tensor in [0, 1], objects (B, S, S) and parts (B, S, S) int32 arrays.
    """
    scenes = [make_scene(int(seed), image_size) for seed in seeds]
    if not scenes:
        raise ConfigError("make_batch needs at least one seed")
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).contiguous()
    return images, np.stack([s.objects for s in scenes]), np.stack([s.parts for s in scenes])
