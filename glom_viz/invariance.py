"""Do islands follow what the picture shows, or where it shows it? Two tests outside the training world.

**Translation.** Two windows of one picture, the second ``shift`` patches to the right of the first,
show the same content on their shared patches. Islands that content decides are the same there;
islands that a position code decides are not. Each window's final columns are cut into a fixed count
of islands (k-means, the app's clustering) and the two cuts are compared by the adjusted Rand index
over the shared patches, per level, beside the same test on k-means of the raw patch pixels. It runs
on held-out scenes and on the photographs that scikit-learn and scikit-image ship.

**Sequences.** Clips in which every object glides at its own constant velocity (``scenes.make_clip``;
training only ever sees two-frame jumps) are run three ways: each frame fresh, with the columns
carried from frame to frame as they are (``levels=``, glom-pytorch's use for slow video), and carried
but let go where the picture changed (``Glom.let_go``: a column let go starts from its most alike still
neighbour's state, or afresh). Each frame's objects FG-ARI, per level.
Islands that move with their objects score at least as well carried as fresh.

Both tests read ground truth for scoring only, never to make islands.

    translation_pairs(picture (H, W, 3), size, shift_px) -> (windows, 2, 3, size, size)
    shift_agreement(labels (2, N), grid, shift) -> ARI over the shared patches
    translation_test(model, pairs, shift, islands) -> {"levels": [...], "pixels": {...}, "pairs": n}
    sequence_test(model, images, objects) -> {"levels": [...], "pixels": {...}, "frames": F, "clips": n, ...}
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from glom_viz.errors import ConfigError
from glom_viz.islands import fg_ari, find_islands, patch_truth
from glom_viz.model import ALIKE, RELEASE, RELEASE_REACH, Glom
from glom_viz.runs import final_columns
from glom_viz.scenes import CLIP_FRAMES, CLIP_SPEED, EVAL_SEEDS, make_clip, make_scene

# the shift the test moves the second window by, in patches, and the islands each window is cut into
# (a fixed count, so that photographs, which have no truth, are cut like scenes)
SHIFT = 2
ISLANDS = 6
TRANSLATION_SCENES = 64
CLIPS = 32
# photographs: each is resized so that its height is each of these multiples of the model's image
# size, and windows are taken on a grid this many pixels apart (at scale 1 they share the whole height)
PHOTO_SCALES = (1.0, 1.5, 2.0)
WINDOW_STRIDE = 24
KMEANS_RESTARTS = 4  # restarts of the pixel baseline's k-means (sklearn)


def check_shift(shift: int, side: int) -> None:
    """Refuse a shift that leaves the two windows no patch in common."""
    if not 1 <= shift < side:
        raise ConfigError(f"the shift must be between 1 and {side - 1} patches for the two windows of a "
                          f"{side}-patch-wide image to share patches, got {shift}")


def translation_pairs(picture: np.ndarray, size: int, shift_px: int, stride: int = WINDOW_STRIDE) -> np.ndarray:
    """(H, W, 3) float picture -> (windows, 2, 3, size, size): on a grid of `stride` px, a size x size
    window and the one `shift_px` to its right, for every place where both fit."""
    height, width = picture.shape[:2]
    if height < size or width < size + shift_px:
        return np.zeros((0, 2, 3, size, size), np.float32)
    pairs = [np.stack([picture[top:top + size, left:left + size],
                       picture[top:top + size, left + shift_px:left + shift_px + size]])
             for top in range(0, height - size + 1, stride) for left in range(0, width - size - shift_px + 1, stride)]
    return rearrange(np.stack(pairs).astype(np.float32), "n two h w c -> n two c h w")


def scene_pairs(seeds, size: int, shift_px: int) -> np.ndarray:
    """Held-out scenes drawn shift_px wider than the model's size -> (scenes, 2, 3, size, size): the
    middle `size` rows, a window at the left edge and one `shift_px` to its right."""
    pairs = []
    for seed in seeds:
        image = make_scene(int(seed), size + shift_px).image
        top = shift_px // 2
        pairs.append(translation_pairs(image[top:top + size], size, shift_px)[:1])
    return np.concatenate(pairs)


def photograph_pairs(pictures: dict[str, np.ndarray], size: int, shift_px: int,
                     scales: tuple[float, ...] = PHOTO_SCALES) -> np.ndarray:
    """(H, W, 3) uint8 pictures -> (windows, 2, 3, size, size), every picture resized (bicubic) to
    each scale x size rows tall, keeping its aspect ratio."""
    pairs = []
    for rgb in pictures.values():
        height, width = rgb.shape[:2]
        for scale in scales:
            rows = round(scale * size)
            resized = Image.fromarray(rgb).resize((round(width * rows / height), rows), Image.BICUBIC)
            pairs.append(translation_pairs(np.asarray(resized, np.float32) / 255, size, shift_px))
    return np.concatenate(pairs)


def shared_patches(grid: tuple[int, int], shift: int) -> tuple[np.ndarray, np.ndarray]:
    """The shared patches' indices in the left window and in the right one, which starts `shift` patches on."""
    h, w = grid
    rows, cols = np.meshgrid(np.arange(h), np.arange(shift, w), indexing="ij")
    return (rows * w + cols).ravel(), (rows * w + cols - shift).ravel()


def shift_agreement(labels: np.ndarray, grid: tuple[int, int], shift: int) -> float:
    """labels (2, patches) of the left and the right window -> ARI between them over their shared patches."""
    left, right = shared_patches(grid, shift)
    return float(adjusted_rand_score(labels[0][left], labels[1][right]))


def pixel_vectors(images: np.ndarray, patch_size: int) -> np.ndarray:
    """(b, 3, s, s) -> (b, patches, p * p * 3) raw patch pixels, row-major."""
    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


def pixel_islands(pixels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """(patches, p * p * 3) -> (patches,) k-means (Euclidean, sklearn) on the raw pixels."""
    return KMeans(count, n_init=KMEANS_RESTARTS, random_state=seed).fit_predict(pixels)


def _summary(values: list[float]) -> dict[str, float]:
    values = np.asarray(values, float)
    values = values[~np.isnan(values)]
    error = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"ari": float(values.mean()) if len(values) else float("nan"), "standard_error": float(error)}


def translation_test(model: Glom, pairs: np.ndarray, shift: int, islands: int = ISLANDS,
                     iters: int | None = None) -> dict:
    """How far each level's islands stay put when the picture moves under the model.

    Args:
        model: a Glom; pairs: (n, 2, 3, s, s) windows in [0, 1], the second `shift` patches right of the first.
        shift: in patches; islands: the count each window is cut into; iters: settling steps.

    Returns:
        {"levels": [{"level", "ari", "standard_error"}], "pixels": {"ari", "standard_error"}, "pairs": n}:
        means over pairs of the ARI between the two windows' islands over their shared patches.
    """
    grid, side = model.grid, model.grid[1]
    check_shift(shift, side)
    if len(pairs) == 0:
        raise ConfigError(f"no pair of windows fits: the pictures must be at least {shift} patches wider than "
                          f"the model's {model.config.image_size} px")
    flat = torch.from_numpy(rearrange(pairs, "n two c h w -> (n two) c h w"))
    columns = rearrange(final_columns(model, flat, iters), "(n two) p l d -> n two l p d", two=2)
    per_level = [[shift_agreement(np.stack([find_islands(columns[i, view, level], grid, "kmeans", n_islands=islands,
                                                         seed=i) for view in range(2)]), grid, shift)
                  for i in range(len(pairs))] for level in range(columns.shape[2])]
    pixels = pixel_vectors(flat.numpy(), model.config.patch_size).reshape(len(pairs), 2, side * grid[0], -1)
    by_pixels = [shift_agreement(np.stack([pixel_islands(pixels[i, view], islands, i) for view in range(2)]),
                                 grid, shift) for i in range(len(pairs))]
    return {"levels": [{"level": level, **_summary(values)} for level, values in enumerate(per_level)],
            "pixels": _summary(by_pixels), "pairs": len(pairs)}


def translation(model: Glom, shift: int = SHIFT, scenes: int = TRANSLATION_SCENES, islands: int = ISLANDS,
                seed: int = EVAL_SEEDS.start, iters: int | None = None, pictures: dict | None = None) -> dict:
    """The translation test on `scenes` held-out scenes from `seed` and on photographs (default the
    bundled ones, ``images.sample_images()``): {"shift", "islands", "scenes": {...}, "photographs": {...}}."""
    from glom_viz.images import sample_images

    size, patch = model.config.image_size, model.config.patch_size
    check_shift(shift, model.grid[1])
    if scenes < 1:
        raise ConfigError(f"the translation test needs at least one scene, got {scenes}")
    shift_px = shift * patch
    pictures = sample_images() if pictures is None else pictures
    return {"shift": shift, "islands": islands,
            "scenes": translation_test(model, scene_pairs(range(seed, seed + scenes), size, shift_px), shift,
                                       islands, iters),
            "photographs": translation_test(model, photograph_pairs(pictures, size, shift_px), shift, islands, iters)}


def clip_batch(seeds, frames: int, size: int, max_speed: float = CLIP_SPEED) -> tuple[torch.Tensor, np.ndarray]:
    """Clips of many seeds -> images (clips, frames, 3, s, s) in [0, 1], objects (clips, frames, s, s)."""
    clips = [make_clip(int(seed), frames, size, max_speed) for seed in seeds]
    images = np.stack([[frame.image for frame in clip] for clip in clips])
    objects = np.stack([[frame.objects for frame in clip] for clip in clips])
    return torch.from_numpy(rearrange(images, "n t h w c -> n t c h w").copy()), objects


def carried_columns(model: Glom, images: torch.Tensor, iters: int | None = None,
                    release: float | None = None, reach: int = RELEASE_REACH,
                    alike: float | None = ALIKE) -> np.ndarray:
    """(clips, frames, 3, s, s) -> (clips, frames, patches, levels, dim): frame 0 fresh, every later
    frame continuing from the columns of the frame before it, `iters` steps each; with `release`, each
    column first lets go of them as far as its patch changed (``Glom.let_go`` with `reach` and `alike`)."""
    state, out = None, []
    for frame in range(images.shape[1]):
        if state is not None and release is not None:
            with torch.no_grad():
                state = model.let_go(torch.from_numpy(state), images[:, frame - 1], images[:, frame], release,
                                     reach, alike).numpy()
        state = final_columns(model, images[:, frame], iters, start=state)
        out.append(state)
    return np.stack(out, 1)


def sequence_test(model: Glom, images: torch.Tensor, objects: np.ndarray, iters: int | None = None,
                  release: float | None = RELEASE, reach: int = RELEASE_REACH, alike: float | None = ALIKE) -> dict:
    """Each frame's objects FG-ARI per level (and the ARI over every patch, background included), fresh and
    with the state carried; with `release`, also with the state carried and let go where a patch changed
    (``Glom.let_go``).

    Args:
        model: a Glom; images: (clips, frames, 3, s, s); objects: (clips, frames, s, s) truth, for scoring.
        iters: settling steps per frame, fresh or carried alike (default the model's).
        release, reach, alike: as ``Glom.let_go`` takes them (the RMS pixel change from which a carried
            column lets go fully, the patches around a changed one that let go with it, and the pixel
            difference from which a column let go takes nothing of a still neighbour's state; None: it
            starts afresh); release None: carried only.

    Returns:
        {"levels": [{"level", "fresh": [per frame], "carried": [per frame], "fresh_mean", "carried_mean",
        "carried_worst_frame", "fresh_ari_mean", "carried_ari_mean"}, with release also "released",
        "released_mean", "released_worst_frame", "released_ari_mean"], "pixels": {"fresh": [per frame], "mean",
        "ari_mean"}, "frames": F, "clips": n, "release", "reach", "alike"}, FG-ARI means over clips; *_ari_mean:
        the ARI over every patch, mean over frames.
    """
    clips, frames = images.shape[:2]
    if frames < 2:
        raise ConfigError(f"a clip needs at least 2 frames to carry the state from one to the next, got {frames}")
    grid = model.grid
    fresh = final_columns(model, images.flatten(0, 1), iters)
    fresh = fresh.reshape(clips, frames, *fresh.shape[1:])
    carried = {"carried": carried_columns(model, images, iters)}
    if release is not None:
        carried["released"] = carried_columns(model, images, iters, release, reach, alike)
    truths = [[patch_truth(objects[c, t], grid) for t in range(frames)] for c in range(clips)]

    def per_frame(columns: np.ndarray, level: int) -> tuple[list[float], list[float]]:
        """(FG-ARI, ARI over every patch) per frame, means over clips."""
        labels = [[find_islands(columns[c, t, :, level], grid, "kmeans", n_islands=len(np.unique(truths[c][t])),
                                seed=c) for t in range(frames)] for c in range(clips)]
        return _per_frame_scores(truths, labels)

    levels = []
    for level in range(fresh.shape[3]):
        row = {"level": level}
        for name, columns in {"fresh": fresh, **carried}.items():
            row[name], every_patch = per_frame(columns, level)
            row.update({f"{name}_mean": float(np.mean(row[name])), f"{name}_ari_mean": float(np.mean(every_patch))})
            if name != "fresh":
                row[f"{name}_worst_frame"] = float(np.min(row[name]))
        levels.append(row)
    pixels = pixel_vectors(images.flatten(0, 1).numpy(), model.config.patch_size).reshape(clips, frames, grid[0] * grid[1], -1)
    by_pixels, every_patch = _per_frame_scores(truths, [[pixel_islands(pixels[c, t], len(np.unique(truths[c][t])), c)
                                                        for t in range(frames)] for c in range(clips)])
    return {"levels": levels, "pixels": {"fresh": by_pixels, "mean": float(np.mean(by_pixels)),
                                         "ari_mean": float(np.mean(every_patch))},
            "frames": frames, "clips": clips, "release": release,
            "reach": None if release is None else reach, "alike": None if release is None else alike}


def _per_frame_scores(truths: list, labels: list) -> tuple[list[float], list[float]]:
    """truths and labels [clip][frame] (patches,) -> per frame, means over clips: FG-ARI (objects only) and
    ARI over every patch (background included: it sees an island that takes in background)."""
    frames = range(len(truths[0]))
    objects = [float(np.nanmean([_fg_ari(truth[t], label[t]) for truth, label in zip(truths, labels)])) for t in frames]
    every = [float(np.mean([adjusted_rand_score(truth[t], label[t]) for truth, label in zip(truths, labels)]))
             for t in frames]
    return objects, every


def _fg_ari(truth: np.ndarray, labels: np.ndarray) -> float:
    value = fg_ari(truth, labels)
    return float("nan") if value is None else float(value)


def sequences(model: Glom, clips: int = CLIPS, frames: int = CLIP_FRAMES, max_speed: float = CLIP_SPEED,
              seed: int = EVAL_SEEDS.start, iters: int | None = None, release: float | None = RELEASE,
              reach: int = RELEASE_REACH, alike: float | None = ALIKE) -> dict:
    """The sequence test on `clips` held-out clips from `seed`: ``sequence_test``'s result, with "max_speed"."""
    if clips < 1:
        raise ConfigError(f"the sequence test needs at least one clip, got {clips}")
    if frames < 2:
        raise ConfigError(f"a clip needs at least 2 frames to carry the state from one to the next, got {frames}")
    images, objects = clip_batch(range(seed, seed + clips), frames, model.config.image_size, max_speed)
    return {**sequence_test(model, images, objects, iters, release, reach, alike), "max_speed": max_speed}
