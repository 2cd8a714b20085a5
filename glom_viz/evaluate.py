"""How well GLOM's islands match the objects and parts of held-out scenes (``python -m glom_viz.evaluate``).

For every scene and every level, the columns' vectors at the final step are clustered with k-means into
as many islands as the truth has segments (objects + background, or parts + background), as
object-discovery papers do, and compared with the truth per patch (the majority label of the patch's
pixels) by the adjusted Rand index (FG-ARI over foreground patches only, ARI over all patches) and by
the mean best overlap (mBO: each true segment's best IoU with an island, averaged over segments).

The scenes are the project's held-out synthetic scenes, or any folder in ``glom_viz.data``'s layout
(``--data DIR``): its masks/ are scored, and its parts/ where there are any.

Baselines, scored the same way: k-means on the raw patch pixels, the untrained model, and the same
model trained with glom-pytorch's denoising objective alone (``assets/denoise_only.safetensors``).
One more, a classical segmenter: "regions", Felzenszwalb's regions of similar colour at the scale the
similarity term trains from (``motion.similarity_groups``), each patch labelled by the region most of
its pixels lie in, with no count given. On these scenes, whose parts are patches of one colour, it is
the strongest part baseline, and a model that learnt from it should be read beside it.

Outside the training world (``glom_viz.invariance``): ``--translation`` asks whether each level's islands
stay with the content when the picture moves a few patches under the model (held-out scenes and the
bundled photographs, beside k-means on the pixels), and ``--sequences`` whether they move with objects
gliding through a clip when the columns are carried from frame to frame, against each frame run fresh.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import sklearn
import torch
from sklearn.metrics import adjusted_rand_score

from glom_viz import invariance
from glom_viz.checkpoints import SHIPPED_CHECKPOINT, load_checkpoint
from glom_viz.columns import pixel_patches
from glom_viz.errors import CheckpointError, ConfigError, DataError
from glom_viz.islands import COUNT_CRITERIA, fg_ari, find_islands, mean_best_overlap, patch_truth
from glom_viz.model import ALIKE, RELEASE, RELEASE_REACH, Glom
from glom_viz.motion import SIMILARITY_SCALE, colour_regions
from glom_viz.runs import final_columns
from glom_viz.scenes import CLIP_MIN_SPEED, CLIP_SPEED, EVAL_SEEDS, make_batch

ASSETS = Path(__file__).parent / "assets"
SHIPPED = SHIPPED_CHECKPOINT  # the default --checkpoint
DENOISE_ONLY = ASSETS / "denoise_only.safetensors"
# one scene's FG-ARI ranges from below 0 to 1, so a mean over 32 scenes is good to about +-0.02 and
# cannot tell a model at 0.88 from one at 0.9; 256 give about +-0.008 and run in under a minute
# (43 s on this project's 2-core machine)
DEFAULT_SCENES = 256
UNTRAINED_SEED = 0
METRICS = ("fg_ari_objects", "fg_ari_parts", "ari_objects", "mbo_objects", "mbo_parts")
PART_METRICS = ("fg_ari_parts", "mbo_parts")


def score(vectors: np.ndarray, objects: np.ndarray, parts: np.ndarray | None, grid: tuple[int, int],
          seed: int = 0) -> dict[str, float]:
    """One scene at one level: vectors (patches, dim), objects and parts (patches,) truth -> the metrics.

    The vectors are split into as many islands as the truth has segments (background included) by the
    islands engine's k-means on directions, the clustering the app shows. Without parts (None) their
    metrics are NaN.
    """
    scores = {}
    for name, truth in (("objects", objects), ("parts", parts)):
        if truth is None:
            scores[f"fg_ari_{name}"] = scores[f"mbo_{name}"] = float("nan")
            continue
        labels = find_islands(vectors, grid, "kmeans", n_islands=len(np.unique(truth)), seed=seed)
        scores.update(_segment_scores(labels, truth, name))
        if name == "objects":
            scores["ari_objects"] = float(adjusted_rand_score(truth, labels))
    return scores


def _segment_scores(labels: np.ndarray, truth: np.ndarray, name: str) -> dict[str, float]:
    """FG-ARI and mBO of one labeling (patches,) against one truth (patches,), named by the truth."""
    return {f"fg_ari_{name}": _nan_if_none(fg_ari(truth, labels)),
            f"mbo_{name}": _nan_if_none(mean_best_overlap(truth, labels))}


def _scores_of(labels: np.ndarray, objects: np.ndarray, parts: np.ndarray | None) -> dict[str, float]:
    """One labeling (patches,) against both truths (patches,; parts may be None) -> the metrics."""
    scores = {**_segment_scores(labels, objects, "objects"),
              "ari_objects": float(adjusted_rand_score(objects, labels))}
    if parts is None:
        return {**scores, "fg_ari_parts": float("nan"), "mbo_parts": float("nan")}
    return {**scores, **_segment_scores(labels, parts, "parts")}


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _mean(rows: list[dict]) -> dict[str, float]:
    """Each metric's mean over the scenes that have it (NaN where none has: no parts to score)."""
    means = {}
    for key in METRICS:
        values = np.array([row[key] for row in rows], dtype=float)
        values = values[~np.isnan(values)]
        means[key] = float(values.mean()) if values.size else float("nan")
    return means


def _standard_error(rows: list[dict]) -> dict[str, float]:
    """Each metric's standard error over scenes (its spread / sqrt(scenes scored)), NaN from one scene."""
    errors = {}
    for key in METRICS:
        values = np.array([row[key] for row in rows], dtype=float)
        values = values[~np.isnan(values)]
        errors[key] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    return errors


def evaluate(model: Glom, images: torch.Tensor, objects: np.ndarray, parts: np.ndarray,
             iters: int | None = None) -> dict:
    """Score every level of a model on scenes.

    Args:
        model: a Glom whose image_size matches the images.
        images: (b, 3, s, s) in [0, 1]; objects, parts: (b, s, s) int masks (0 = background).
        iters: settling steps (default the model's 2 * levels).

    Returns:
        {"levels": [{"level": l, "fg_ari_objects", "fg_ari_parts", "ari_objects"}, ...]} means over scenes,
        and "standard_errors", the same rows holding each mean's standard error over scenes.
    """
    return score_columns(final_columns(model, images, iters), model.grid, objects, parts)


def patch_truths(objects, parts, grid: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Per scene, (objects, parts) truth per patch (``patch_truth``); parts None where a scene has none."""
    return [(patch_truth(o, grid), None if p is None else patch_truth(p, grid)) for o, p in zip(objects, parts)]


def score_columns(columns: np.ndarray, grid: tuple[int, int], objects, parts, per_scene: bool = False) -> dict:
    """``evaluate`` on columns already run: (b, patches, levels, dim) -> {"levels": [...], "standard_errors": [...]}.

    objects: (b, H, W) masks; parts: the same, or a list holding None for a scene without parts.
    With `per_scene`, also "per_scene": each scene's rows, one per level.
    """
    truths = patch_truths(objects, parts, grid)
    levels, errors = [], []
    scenes = [[] for _ in range(len(columns))]
    for level in range(columns.shape[2]):
        rows = [score(columns[i, :, level], *truths[i], grid, seed=i) for i in range(len(columns))]
        levels.append({"level": level, **_mean(rows)})
        errors.append({"level": level, **_standard_error(rows)})
        for scene, row in zip(scenes, rows):
            scene.append({"level": level, **row})
    if per_scene:
        return {"levels": levels, "standard_errors": errors, "per_scene": scenes}
    # scenes differ a lot (one scene's FG-ARI ranges from below 0 to 1): at 64 scenes a mean is good
    # to about +-0.02, so two checkpoints closer than that are not told apart
    return {"levels": levels, "standard_errors": errors}


def auto_count(columns: np.ndarray, grid: tuple[int, int], objects: np.ndarray, parts: np.ndarray) -> dict:
    """The islands the app shows by default, with no count given: columns (b, patches, levels, dim).

    For each way of picking the count (``islands.COUNT_CRITERIA``) and each level: the three metrics, and
    the mean number of islands found beside the truth's ("islands", "objects", "parts", background
    counted as one segment).
    """
    truths = patch_truths(objects, parts, grid)
    result = {}
    for count_by in COUNT_CRITERIA:
        levels = []
        for level in range(columns.shape[2]):
            rows, found = [], []
            for i, (object_truth, part_truth) in enumerate(truths):
                labels = find_islands(columns[i, :, level], grid, "kmeans", count_by=count_by)
                found.append(len(np.unique(labels)))
                rows.append(_scores_of(labels, object_truth, part_truth))
            levels.append({"level": level, **_mean(rows), "islands": float(np.mean(found))})
        result[count_by] = levels
    result["truth"] = {name: float(np.mean([len(np.unique(t[index])) for t in truths if t[index] is not None]
                                           or [np.nan]))
                       for index, name in enumerate(("objects", "parts"))}
    return result


def pixel_baseline(images: torch.Tensor, objects, parts, patch_size: int) -> dict:
    """The metrics of k-means (Euclidean, sklearn) on the raw patch pixels (p * p * 3 per patch)."""
    pixels = invariance.pixel_vectors(images.numpy(), patch_size)
    grid = (images.shape[2] // patch_size,) * 2
    rows = []
    for i, (object_truth, part_truth) in enumerate(patch_truths(objects, parts, grid)):
        scores = {"fg_ari_parts": float("nan"), "mbo_parts": float("nan")}
        for name, truth in (("objects", object_truth), ("parts", part_truth)):
            if truth is None:
                continue
            labels = invariance.pixel_islands(pixels[i], len(np.unique(truth)), seed=i)
            scores.update(_segment_scores(labels, truth, name))
            if name == "objects":
                scores["ari_objects"] = float(adjusted_rand_score(truth, labels))
        rows.append(scores)
    return _mean(rows)


def regions_baseline(images: torch.Tensor, objects, parts, patch_size: int, scale: float = SIMILARITY_SCALE) -> dict:
    """The metrics of Felzenszwalb's regions (scikit-image) at `scale`, each patch given its majority region."""
    grid = (images.shape[2] // patch_size,) * 2
    rows = []
    for image, (object_truth, part_truth) in zip(images.numpy(), patch_truths(objects, parts, grid)):
        labels = patch_truth(colour_regions(image.transpose(1, 2, 0), scale), grid)
        rows.append(_scores_of(labels, object_truth, part_truth))
    return _mean(rows)


def majority_share(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(H, W) int mask -> (patches,) the share of each patch's pixels that its truth label
    (``patch_truth``, the majority) holds: 1 inside a segment, down to about 1/3 on outlines."""
    mask = np.asarray(mask)
    patch = pixel_patches(mask.shape, grid)
    truth = patch_truth(mask, grid)
    same = mask.ravel() == truth[patch]
    return np.bincount(patch, weights=same, minlength=truth.size) / np.bincount(patch, minlength=truth.size)


# outline bins by majority share; the last holds the interior (every pixel one segment's)
SHARE_BINS = (0.0, 0.6, 0.8, 1.0)
SPLIT_SHARE = 0.75  # an object with less of its patches than this in its own island is split


def outline_errors(columns: np.ndarray, objects: np.ndarray, grid: tuple[int, int]) -> dict:
    """Where a level's object islands go wrong: columns (b, patches, dim) of one level, objects (b, H, W).

    A foreground patch is wrong when its island is not the island most of its object's patches are in
    (its object's home). Returns, per bin of majority share (``SHARE_BINS``; "interior" = share 1), the
    foreground patches and the share of them wrong; "fg_ari_objects" as scored; "fg_ari_outlines_right", the
    score with every foreground patch on an outline (share < 1) moved to its object's island, which is how
    much the outlines cost; and "objects", what went wrong per object, each counted once, in this order: its
    home is the background's ("with_background"), is another object's too ("merged"), or holds less than
    SPLIT_SHARE of its patches ("split"), out of "count" objects. At the true count of islands a merge frees
    an island that splits something else.
    """
    edges = np.array(SHARE_BINS)
    counts, wrongs = np.zeros(len(edges)), np.zeros(len(edges))
    scored, outlines_right = [], []
    per_object = dict.fromkeys(("count", "with_background", "merged", "split"), 0)
    for i, mask in enumerate(objects):
        truth = patch_truth(mask, grid)
        labels = find_islands(columns[i], grid, "kmeans", n_islands=len(np.unique(truth)), seed=i)
        islands_of = {t: np.bincount(labels[truth == t]) for t in np.unique(truth)}  # each segment's patches per island
        home = {t: found.argmax() for t, found in islands_of.items()}
        homes = [home[t] for t in home if t > 0]
        for t in (t for t in home if t > 0):
            per_object["count"] += 1
            if 0 in home and home[t] == home[0]:
                per_object["with_background"] += 1
            elif homes.count(home[t]) > 1:
                per_object["merged"] += 1
            elif islands_of[t].max() < SPLIT_SHARE * islands_of[t].sum():
                per_object["split"] += 1
        wrong = labels != np.array([home[t] for t in truth])
        share = majority_share(mask, grid)
        interior = share > 1 - 1e-9
        bins = np.where(interior, len(edges) - 1, np.clip(np.digitize(share, edges) - 1, 0, len(edges) - 2))
        foreground = truth > 0
        counts += np.bincount(bins[foreground], minlength=len(edges))
        wrongs += np.bincount(bins[foreground], weights=wrong[foreground], minlength=len(edges))
        mended = np.where(foreground & ~interior, [home[t] for t in truth], labels)
        scored.append(_nan_if_none(fg_ari(truth, labels)))
        outlines_right.append(_nan_if_none(fg_ari(truth, mended)))
    # outline bins [lo, hi), then the interior
    names = [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])] + ["interior"]
    return {"bins": [{"bin": name, "patches": int(n), "wrong": float(e / max(n, 1))}
                     for name, n, e in zip(names, counts, wrongs)],
            "fg_ari_objects": float(np.nanmean(scored)), "fg_ari_outlines_right": float(np.nanmean(outlines_right)),
            "objects": per_object}


def best_level(levels: list[dict], metric: str) -> dict:
    return max(levels, key=lambda row: row[metric])


def summary(result: dict) -> dict:
    """The goals checked: the best object level, the best part level below it, their margins over the
    baselines (the part entries None where nothing below the object level, or no parts, was scored)."""
    objects = best_level(result["levels"], "fg_ari_objects")
    lower = [row for row in result["levels"] if row["level"] < objects["level"] and "fg_ari_parts" in row]
    parts = best_level(lower, "fg_ari_parts") if lower else None
    baseline_objects = max(b["fg_ari_objects"] for b in result["baselines"].values())
    baseline_parts = max((b["fg_ari_parts"] for b in result["baselines"].values() if "fg_ari_parts" in b),
                         default=None)
    errors = {row["level"]: row for row in result.get("standard_errors", [])}
    return {
        "object_level": objects["level"], "fg_ari_objects": objects["fg_ari_objects"],
        "fg_ari_objects_standard_error": errors.get(objects["level"], {}).get("fg_ari_objects"),
        "mbo_objects": objects.get("mbo_objects"),
        "part_level": None if parts is None else parts["level"],
        "fg_ari_parts": None if parts is None else parts["fg_ari_parts"],
        "fg_ari_parts_standard_error": None if parts is None else errors.get(parts["level"], {}).get("fg_ari_parts"),
        "objects_margin_over_baselines": objects["fg_ari_objects"] - baseline_objects,
        "parts_margin_over_baselines": None if parts is None or baseline_parts is None
        else parts["fg_ari_parts"] - baseline_parts,
    }


def load_model(path: str | Path) -> Glom:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: train one with python -m glom_viz.train, or leave "
                              f"--checkpoint out for the shipped model")
    return load_checkpoint(path)


# every array handed to scikit-learn during a run is made here, finite and well-formed: its per-call
# argument checks (thousands of adjusted_rand_score calls) cost a tenth of the run
@sklearn.config_context(skip_parameter_validation=True, assume_finite=True)
def run(checkpoint: str | Path = SHIPPED, scenes: int = DEFAULT_SCENES, seed: int = EVAL_SEEDS.start,
        iters: int | None = None, baselines: bool = True, outlines: bool = False, auto: bool = False,
        translation: bool = False, shift: int = invariance.SHIFT, sequences: bool = False,
        clips: int = invariance.CLIPS, frames: int = invariance.CLIP_FRAMES, release: float = RELEASE,
        reach: int = RELEASE_REACH, alike: float | None = ALIKE, max_speed: float = CLIP_SPEED) -> dict:
    """The full evaluation of a checkpoint on `scenes` held-out scenes from `seed` on, with baselines;
    with `outlines`, also ``outline_errors`` at the best object level; with `auto`, also the islands
    found with no count given (``auto_count``); with `translation`, also the shift test
    (``invariance.translation``, `shift` patches); with `sequences`, also the clip test
    (``invariance.sequences``, `clips` clips of `frames` frames, objects gliding up to `max_speed` px a
    frame, the state carried as it is and let go where the picture changed, ``Glom.let_go`` with
    `release`, `reach` and `alike`)."""
    if scenes < 1:
        raise ConfigError(f"evaluate at least one scene, got --scenes {scenes}")
    model = load_model(checkpoint)
    config = model.config
    # the cheap refusals first, before a minute of scoring
    if translation:
        invariance.check_shift(shift, model.grid[1])
    if sequences and frames < 2:
        raise ConfigError(f"a clip needs at least 2 frames to carry the state from one to the next, got --frames {frames}")
    if sequences and clips < 1:
        raise ConfigError(f"the sequence test needs at least one clip, got --clips {clips}")
    if sequences and not (math.isfinite(release) and release > 0):
        raise ConfigError(f"--release is the RMS pixel change from which a carried column starts afresh, a number "
                          f"> 0 (pixels in [0, 1]), got {release}")
    if sequences and reach < 0:
        raise ConfigError(f"--reach counts the patches around a changed one that let go with it, 0 or more, got {reach}")
    if sequences and alike is not None and not (math.isfinite(alike) and alike > 0):
        raise ConfigError(f"--alike is the RMS pixel difference from which a column let go takes nothing of a still "
                          f"neighbour's state, a number > 0 (0: every column let go starts afresh), got {alike}")
    if sequences and not max_speed >= CLIP_MIN_SPEED:
        raise ConfigError(f"--max-speed must be at least {CLIP_MIN_SPEED} px a frame for the objects to move, "
                          f"got {max_speed}")
    images, objects, parts = make_batch(range(seed, seed + scenes), config.image_size)

    def denoiser_scenes(image_size: int):
        # the same scenes, drawn at the size the denoising model was trained for when the checkpoint's
        # differs (its position embedding fixes its grid)
        return (images, objects, parts) if image_size == config.image_size else \
            make_batch(range(seed, seed + scenes), image_size)

    result = score_model(model, images, objects, parts, iters, baselines, outlines, auto, denoiser_scenes)
    if translation:
        result["translation"] = invariance.translation(model, shift, scenes, seed=seed, iters=iters)
    if sequences:
        result["sequences"] = invariance.sequences(model, clips, frames, max_speed, seed=seed, iters=iters,
                                                   release=release, reach=reach, alike=alike)
    result["scenes"] = {"count": scenes, "first_seed": seed, "image_size": config.image_size}
    result["checkpoint"] = str(checkpoint)
    return result


@sklearn.config_context(skip_parameter_validation=True, assume_finite=True)
def run_data(data: str | Path, checkpoint: str | Path = SHIPPED, iters: int | None = None, baselines: bool = True,
             outlines: bool = False, auto: bool = False, fit: str = "crop") -> dict:
    """``run`` on a folder (or zip) in ``glom_viz.data``'s layout (``score_dataset``).

    Raises:
        DataError: no such folder, nothing usable in it, or no picture with an object mask.
    """
    from glom_viz.data import load_dataset

    model = load_model(checkpoint)
    dataset = load_dataset(data, model.config.image_size, fit=fit)
    result = score_dataset(model, dataset, iters, baselines, outlines, auto)
    result["checkpoint"] = str(checkpoint)
    return result


@sklearn.config_context(skip_parameter_validation=True, assume_finite=True)
def score_dataset(model: Glom, dataset, iters: int | None = None, baselines: bool = True, outlines: bool = False,
                  auto: bool = False, per_picture: bool = False) -> dict:
    """Every level of a model scored on a ``glom_viz.data.Dataset`` at the model's input size: its pictures
    with object masks are scored, the part metrics over those with part masks (left out where none
    has one); the baselines see the same pictures.

    The denoising-only baseline runs where its input size is the model's (its position embedding fixes
    its grid, and a folder's pictures are made to fit the model once). With `per_picture`, also
    "pictures": each scored picture's name and its metrics per level.

    Raises:
        DataError: no picture has an object mask.
    """
    config = model.config
    if dataset.image_size != config.image_size:
        raise DataError(f"the dataset was read at {dataset.image_size} px but the model takes {config.image_size} px: "
                        "read it again at the model's image_size")
    scored = dataset.with_masks("objects")
    if not scored:
        raise DataError(f"{dataset.path}: none of its {len(dataset)} pictures has an object mask, so there is "
                        f"nothing to score against: put a mask of the same name in masks/ (object ids per pixel, "
                        f"0 = background){_skipped_masks(dataset)}")
    images = dataset.images(scored)
    objects = dataset.masks(scored, "objects")
    parts = [dataset.samples[i].parts for i in scored]

    def denoiser_scenes(image_size: int):
        return (images, objects, parts) if image_size == config.image_size else None

    result = score_model(model, images, objects, parts, iters, baselines, outlines, auto, denoiser_scenes,
                         per_scene=per_picture)
    with_parts = sum(p is not None for p in parts)
    if per_picture:
        result["pictures"] = [{"name": dataset.samples[i].name, "levels": rows}
                              for i, rows in zip(scored, result.pop("per_scene"))]
    if not with_parts:  # no parts/ to score: the part metrics are left out, not reported as NaN
        for row in [*result["levels"], *result["standard_errors"], *result.get("baselines", {}).values(),
                    *(r for levels in result.get("baseline_levels", {}).values() for r in levels),
                    *(r for picture in result.get("pictures", []) for r in picture["levels"])]:
            for key in PART_METRICS:
                row.pop(key, None)
    result["dataset"] = {**dataset.describe(), "scored_objects": len(scored), "scored_parts": with_parts}
    return result


def _skipped_masks(dataset) -> str:
    masks = [(f, why) for f, why in dataset.skipped if f.startswith("masks/")]
    if not masks:
        return ""
    return f"; {len(masks)} masks were skipped, the first: {masks[0][0]}: {masks[0][1]}"


def score_model(model: Glom, images: torch.Tensor, objects, parts, iters: int | None, baselines: bool,
                outlines: bool, auto: bool, denoiser_scenes, per_scene: bool = False) -> dict:
    """Every level of a model scored on these scenes, with the baselines on the same scenes.

    ``denoiser_scenes(image_size)`` gives (images, objects, parts) at the denoising-only model's input
    size, or None where there are none (that baseline is then left out).
    """
    config = model.config
    columns = final_columns(model, images, iters)
    result = score_columns(columns, model.grid, objects, parts, per_scene=per_scene)
    if outlines:
        level = best_level(result["levels"], "fg_ari_objects")["level"]
        result["outlines"] = {"level": level, **outline_errors(columns[:, :, level], objects, model.grid)}
    if auto:
        result["auto_count"] = auto_count(columns, model.grid, objects, parts)
    if baselines:
        torch.manual_seed(UNTRAINED_SEED)
        untrained = Glom(**config.to_dict())
        per_level = {"untrained": evaluate(untrained, images, objects, parts, iters)["levels"]}
        if DENOISE_ONLY.exists():
            denoiser = load_model(DENOISE_ONLY)
            scenes_at = denoiser_scenes(denoiser.config.image_size)
            if scenes_at is not None:
                per_level["denoise_only"] = evaluate(denoiser, *scenes_at, iters)["levels"]
        result["baselines"] = {"pixels": pixel_baseline(images, objects, parts, config.patch_size),
                               **{name: _collapse(levels) for name, levels in per_level.items()},
                               "regions": regions_baseline(images, objects, parts, config.patch_size)}
        result["baseline_levels"] = per_level
    return result


def _collapse(levels: list[dict]) -> dict:
    """A model baseline's entry: each metric at its best level (the reading most favourable to it)."""
    return {metric: best_level(levels, metric)[metric] for metric in METRICS if metric in levels[0]}


def _cell(value, error=None) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.3f}" + (f" ±{error:.3f}" if error is not None and np.isfinite(error) else "")


def table(result: dict) -> str:
    """The results as a plain-text table, headed by what was scored."""
    lines = [_heading(result)]
    lines.append(f"{'':>16}" + "".join(f"{title:>15}" for title in METRIC_TITLES.values()))
    errors = result.get("standard_errors", [{}] * len(result["levels"]))
    for row, error in zip(result["levels"], errors):
        cells = [_cell(row.get(m), error.get(m)) for m in METRICS]
        lines.append(f"{'level ' + str(row['level']):>16}" + "".join(f"{c:>15}" for c in cells))
    for name, row in result.get("baselines", {}).items():
        lines.append(f"{name:>16}" + "".join(f"{_cell(row.get(m)):>15}" for m in METRICS))
    if "standard_errors" in result:
        count = result["scenes"]["count"] if "scenes" in result else result.get("dataset", {}).get("scored_objects")
        if count:
            lines.append(f"(± one standard error of the mean over the {count} "
                         f"{'scenes' if 'scenes' in result else 'pictures'})")
    if "outlines" in result:
        found = result["outlines"]
        lines.append(f"\nobject islands at level {found['level']}, foreground patches by the share of their pixels "
                     f"their object holds:")
        lines += [f"{row['bin']:>16} {row['patches']:>6} patches, {row['wrong']:.3f} wrong" for row in found["bins"]]
        lines.append(f"FG-ARI {found['fg_ari_objects']:.3f}; with every outline patch right "
                     f"{found['fg_ari_outlines_right']:.3f}")
        wrong = found["objects"]
        lines.append(f"of {wrong['count']} objects, {wrong['with_background']} in the background's island, "
                     f"{wrong['merged']} sharing an island with another, {wrong['split']} split (under "
                     f"{SPLIT_SHARE:.0%} in one island)")
    if "auto_count" in result:
        found = result["auto_count"]
        lines.append(f"\nwith no count given (the app's default), islands found per level; the truth has "
                     f"{found['truth']['objects']:.1f} objects and {found['truth']['parts']:.1f} parts "
                     f"(background included):")
        lines.append(f"{'':>16} {'count by':>15} {'islands':>8} {'FG-ARI objects':>15} {'FG-ARI parts':>15}")
        for count_by in COUNT_CRITERIA:
            for row in found[count_by]:
                lines.append(f"{'level ' + str(row['level']):>16} {count_by:>15} {row['islands']:>8.1f} "
                             f"{_cell(row['fg_ari_objects']):>15} {_cell(row['fg_ari_parts']):>15}")
    if "translation" in result:
        found = result["translation"]
        lines.append(f"\nislands of two windows {found['shift']} patches apart, {found['islands']} each: ARI over "
                     f"their shared patches (1: the islands stay with the content)")
        lines.append(f"{'':>16} {'scenes':>15} {'photographs':>15}")
        rows = [(f"level {row['level']}", row, photo) for row, photo in
                zip(found["scenes"]["levels"], found["photographs"]["levels"])]
        rows.append(("pixels", found["scenes"]["pixels"], found["photographs"]["pixels"]))
        for name, on_scenes, on_photos in rows:
            lines.append(f"{name:>16} {on_scenes['ari']:>8.3f} ±{on_scenes['standard_error']:.3f} "
                         f"{on_photos['ari']:>8.3f} ±{on_photos['standard_error']:.3f}")
        lines.append(f"({found['scenes']['pairs']} scene pairs, {found['photographs']['pairs']} photograph pairs)")
    if "sequences" in result:
        found = result["sequences"]
        lines.append(f"\nclips of {found['frames']} frames, objects gliding up to {found['max_speed']:g} px a frame "
                     f"({found['clips']} clips): objects FG-ARI, each frame fresh or with the state carried")
        ways = ["carried"] + (["released"] if found.get("release") is not None else [])
        for way in ways:
            if way == "released":
                start = ("afresh" if found.get("alike") is None else
                         f"from the most alike still neighbour, up to an RMS difference of {found['alike']:g}")
                lines.append(f"carried and let go where the picture changed (fully from an RMS change of "
                             f"{found['release']:g}, {found['reach']} patch(es) around; starting {start}):")
            shown_as = way if way == "carried" else "let go"
            lines.append(f"{'':>16} {'fresh':>8} {shown_as:>8} {'worst frame':>12} {'ARI: fresh':>11} {shown_as:>8}"
                         f"   {shown_as}, frame by frame")
            for row in found["levels"]:
                lines.append(f"{'level ' + str(row['level']):>16} {row['fresh_mean']:>8.3f} {row[way + '_mean']:>8.3f} "
                             f"{row[way + '_worst_frame']:>12.3f} {row['fresh_ari_mean']:>11.3f} "
                             f"{row[way + '_ari_mean']:>8.3f}   " + " ".join(f"{v:.2f}" for v in row[way]))
        lines.append(f"{'pixels':>16} {found['pixels']['mean']:>8.3f} {'':>8} {'':>12} {found['pixels']['ari_mean']:>11.3f}")
        lines.append("(FG-ARI over the objects' patches; ARI: over every patch, background included)")
    return "\n".join(lines)


METRIC_TITLES = {"fg_ari_objects": "FG-ARI objects", "fg_ari_parts": "FG-ARI parts", "ari_objects": "ARI objects",
                 "mbo_objects": "mBO objects", "mbo_parts": "mBO parts"}


def _heading(result: dict) -> str:
    """Which dataset, how many pictures, which model."""
    model = f" with {result['checkpoint']}" if "checkpoint" in result else ""
    if "dataset" in result:
        d = result["dataset"]
        parts = f", {d['scored_parts']} with part masks" if d["scored_parts"] else ", no part masks"
        skipped = f"; {len(d['skipped'])} files skipped" if d["skipped"] else ""
        return (f"dataset {d['name']} ({d['path']}): {d['scored_objects']} of {d['pictures']} pictures scored "
                f"against their object masks{parts}{skipped}; at {d['image_size']} px{model}")
    if "scenes" in result:
        sc = result["scenes"]
        return (f"dataset: the built-in synthetic scenes, {sc['count']} held-out scenes from seed {sc['first_seed']}, "
                f"at {sc['image_size']} px{model}")
    return f"scored{model}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glom_viz.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(SHIPPED), help="a glom-viz safetensors checkpoint")
    parser.add_argument("--data", help="score a folder (or .zip) in the dataset layout (images/, masks/, parts/, "
                                       "...) instead of the built-in scenes")
    parser.add_argument("--fit", default="crop", choices=["crop", "pad", "stretch"],
                        help="how --data pictures that are not square fit the model (the app's default: crop)")
    parser.add_argument("--scenes", type=int, default=DEFAULT_SCENES, help="held-out scenes to score")
    parser.add_argument("--seed", type=int, default=EVAL_SEEDS.start, help="first scene seed")
    parser.add_argument("--iters", type=int, default=None, help="settling steps (default 2 * levels)")
    parser.add_argument("--outlines", action="store_true",
                        help="also report where the object islands go wrong: outline or interior patches, "
                             "objects merged, split or lost in the background")
    parser.add_argument("--auto-count", action="store_true",
                        help="also score the islands found with no count given, as the app shows them")
    parser.add_argument("--translation", action="store_true",
                        help="also the shift test: do each level's islands stay with the content when two windows "
                             "of a picture are a few patches apart (held-out scenes and bundled photographs)")
    parser.add_argument("--shift", type=int, default=invariance.SHIFT,
                        help="patches between the two windows of the shift test")
    parser.add_argument("--sequences", action="store_true",
                        help="also the clip test: objects gliding at constant velocities, each frame run fresh "
                             "against the state carried from frame to frame")
    parser.add_argument("--clips", type=int, default=invariance.CLIPS, help="held-out clips of the clip test")
    parser.add_argument("--frames", type=int, default=invariance.CLIP_FRAMES, help="frames per clip")
    parser.add_argument("--release", type=float, default=RELEASE,
                        help="with --sequences, carried columns also let go as far as their patch changed: fully "
                             "from this RMS pixel change on (pixels in [0, 1]), not at all up to half of it")
    parser.add_argument("--reach", type=int, default=RELEASE_REACH,
                        help="with --sequences, the patches around a changed one whose columns let go with it")
    parser.add_argument("--alike", type=float, default=ALIKE,
                        help="with --sequences, a column let go starts from the state of the most alike still "
                             "column nearby, taking nothing of it from this RMS pixel difference between their "
                             "patches on, all of it up to half of it; 0: every column let go starts afresh")
    parser.add_argument("--max-speed", type=float, default=CLIP_SPEED,
                        help="with --sequences, the fastest an object glides, px a frame along each axis")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        if args.data is not None:
            result = run_data(args.data, args.checkpoint, args.iters, outlines=args.outlines, auto=args.auto_count,
                              fit=args.fit)
        else:
            result = run(args.checkpoint, args.scenes, args.seed, args.iters, outlines=args.outlines,
                         auto=args.auto_count, translation=args.translation, shift=args.shift,
                         sequences=args.sequences, clips=args.clips, frames=args.frames, release=args.release,
                         reach=args.reach, alike=args.alike or None, max_speed=args.max_speed)
    except (ConfigError, CheckpointError, DataError) as error:
        print(f"evaluation stopped: {error}", file=sys.stderr)
        return 2
    result["seconds"] = round(time.perf_counter() - started, 1)
    if "baselines" in result and result["baselines"]:
        result["summary"] = summary(result)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
