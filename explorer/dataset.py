"""A whole set at once: a zip of the dataset layout (images/, masks/, parts/, ...; glom_viz.data) uploaded,
its pictures added to the chooser with their masks as ground truth, and the set scored as
``python -m glom_viz.evaluate --data`` scores it: each level's mean over the set, and each picture's.

The zip is bounded like every upload (its size, each member's size and packing ratio, a path that
leaves the zip is not read) and never written to disk; ``glom_viz.data.load_zip`` does the checking.
"""

from __future__ import annotations

import hashlib
import math

import streamlit as st

from explorer import cache
from explorer.limits import MAX_SET_PICTURES
from explorer.models import LoadedModel
from explorer.pictures import Picture
from explorer.settings import ImageSettings, RunSettings
from glom_viz.data import Dataset, load_zip
from glom_viz.errors import DataError
from glom_viz.evaluate import METRIC_TITLES, score_dataset
from glom_viz.export import to_json
from glom_viz.text import plain, plain_name

SET_METRICS = ("fg_ari_objects", "mbo_objects", "fg_ari_parts", "mbo_parts")
BASELINE_TITLES = {"pixels": "k-means on pixels", "untrained": "untrained model (best level)",
                   "denoise_only": "denoising only (best level)", "regions": "colour regions (Felzenszwalb)"}
SKIPPED_SHOWN = 5  # files named in the warning; the JSON's "dataset" names every one


def of(settings: ImageSettings, image_size: int) -> Dataset | None:
    """The uploaded set read at the model's input size (cached by its bytes and the fit); None without
    one. Raises DataError saying what is wrong with it."""
    if settings.dataset is None:
        return None
    name, data = settings.dataset
    key = cache.content_key("set", hashlib.sha256(data).hexdigest(), image_size, settings.fit)
    return cache.pictures(key, lambda: load_zip(data, name, image_size, settings.fit, max_pictures=MAX_SET_PICTURES))


def usable(settings: ImageSettings, image_size: int) -> Dataset | None:
    """``of``, or None where the set cannot be used (``pictures.gather`` has said why)."""
    try:
        return of(settings, image_size)
    except DataError:
        return None


def pictures_of(dataset: Dataset) -> list[Picture]:
    """The set's pictures as the page's: each as the model sees it, with its object and part masks as truth."""
    stem = dataset.name.removesuffix(".zip")
    found = []
    for sample in dataset.samples:
        masks = tuple((name, mask) for name, mask in (("objects", sample.objects), ("parts", sample.parts))
                      if mask is not None)
        key = cache.content_key("set picture", hashlib.sha256(sample.image.tobytes()).hexdigest(),
                                *(hashlib.sha256(m.tobytes()).hexdigest() for _, m in masks))
        found.append(Picture(f"{stem}/{sample.name}", key, sample.image, note=f"from the set {dataset.name}: "
                             f"{sample.source}", masks=masks))
    return found


def scores(loaded: LoadedModel, dataset: Dataset, run: RunSettings) -> dict:
    """The set scored with the page's model and iterations (glom_viz.evaluate.score_dataset), cached."""
    key = cache.content_key("set scores", loaded.key, [s.source for s in dataset.samples],
                            hashlib.sha256(dataset.images().numpy().tobytes()).hexdigest(), run.iterations)
    return cache.derived("set scores", key, lambda: score_dataset(loaded.model, dataset, run.iterations,
                                                                  baselines=True, per_picture=True))


def panel(loaded: LoadedModel, dataset: Dataset, run: RunSettings) -> None:
    """The set's scores over all its pictures and per picture, what was skipped, and its JSON."""
    # the set's name, its files' names and what was wrong with them came from the zip: shown as plain text
    with st.expander(f"**Set {plain_name(dataset.name)}**: {len(dataset)} pictures, "
                     f"{len(dataset.with_masks('objects'))} with object masks", expanded=True):
        if dataset.skipped:
            count = len(dataset.skipped)
            reasons = [plain(why if name in why else f"{name}: {why}") for name, why in dataset.skipped[:SKIPPED_SHOWN]]
            files = f"{count} files of the set were" if count > 1 else "1 file of the set was"
            st.warning(f"{files} skipped: " + "; ".join(reasons) + (" …" if count > SKIPPED_SHOWN else ""))
        for name, note in dataset.notes:
            if not name or name.endswith("/"):  # notes on the whole set (read as pictures at its top, cut short)
                st.info(plain(note))
        if not dataset.with_masks("objects"):
            st.info("None of the set's pictures has an object mask in masks/, so there is nothing to score: "
                    "its pictures are in the image chooser.")
            return
        with st.spinner("Scoring the set…"):
            try:
                found = scores(loaded, dataset, run)
            except DataError as error:
                st.error(plain(str(error)))
                return
        st.caption(f"Each level's final columns split by k-means into as many islands as the mask has segments, "
                   f"as `python -m glom_viz.evaluate --data` scores them ({run.iterations} iterations, exact fp32); "
                   f"mean over the {found['dataset']['scored_objects']} pictures with masks, ± one standard error. "
                   "Each picture's islands, as the app finds them, are in the image chooser.")
        over_set, each = st.tabs(["Over the set", "Each picture"])  # a popover is too narrow for every level
        over_set.dataframe(level_table(found), hide_index=True)
        each.caption("Objects FG-ARI of each picture at every level, scored as above.")
        each.dataframe(picture_table(found), hide_index=True)
        st.download_button("Set scores (JSON)", to_json(found), f"{dataset.name}-scores.json",
                           "application/json", on_click="ignore", icon=":material/download:",
                           help="Every level's scores over the set, the baselines, and each picture's")


def level_table(found: dict) -> list[dict]:
    """One row per level and per baseline: the mean of each metric over the set."""
    metrics = [m for m in SET_METRICS if m in found["levels"][0]]
    errors = {row["level"]: row for row in found["standard_errors"]}
    rows = [{"": f"level {row['level']}", **{METRIC_TITLES[m]: _cell(row[m], errors[row["level"]].get(m))
                                             for m in metrics}} for row in found["levels"]]
    for name, row in found.get("baselines", {}).items():
        rows.append({"": f"baseline: {BASELINE_TITLES.get(name, name)}",
                     **{METRIC_TITLES[m]: _cell(row.get(m)) for m in metrics}})
    return rows


def picture_table(found: dict) -> list[dict]:
    """One row per picture: objects FG-ARI at every level."""
    return [{"picture": picture["name"], **{f"level {row['level']}": _cell(row["fg_ari_objects"])
                                           for row in picture["levels"]}} for picture in found["pictures"]]


def _cell(value, error=None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.3f}" + (f" ± {error:.3f}" if error is not None and math.isfinite(error) else "")

