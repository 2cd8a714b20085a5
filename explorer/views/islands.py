"""The Islands view: the islands of the chosen level (or all levels) at the chosen step, over the picture,
with a legend, the island measures of this step and what the model sees.

At one level the overlay of every step is held in the page by the in-page scrubber (explorer.scrubber),
the view's step control, so a scrub or a play only swaps a picture there; all levels are plain images
(each drawn once per (step, level) and cached) under the viewer's Step slider. The interactive plotly
version with per-patch hover is what the figure exports hold.
"""

from __future__ import annotations

import html

import numpy as np
import streamlit as st

from explorer import derived, scrubber, state
from explorer.context import ALL_LEVELS, ViewContext
from explorer.views.common import fmt, islands_summary, plural, truth_choice
from glom_viz import islands, render
from glom_viz.text import plain, plain_html, plain_name, short_name

# the overlay goes to the browser as JPEG: ~1 ms to encode a 448 px photograph against ~75 ms for PNG
# (zlib), which was most of a scrub's server time; the exports stay lossless PNG
OVERLAY_FORMAT = "JPEG"
LEGEND_CHIP_PX = 14
MODEL_INPUT_PX = 96  # the model's input beside the legend
METRIC_PX = 110  # a measure's label and its help icon on one line; three to a row beside the overlay


def legend_html(ids: np.ndarray, counts: np.ndarray) -> str:
    """Colour chips for the islands of one map: id and how many patches."""
    chips = []
    for island, count, colour in zip(ids.tolist(), counts.tolist(), render.island_hex(ids)):
        name = render.NO_ISLAND if island < 0 else f"island {island}"
        chips.append(f'<span style="display:inline-flex;align-items:center;margin:0 10px 4px 0;white-space:nowrap">'
                     f'<span style="width:{LEGEND_CHIP_PX}px;height:{LEGEND_CHIP_PX}px;background:{colour};'
                     f'border:1px solid #333;border-radius:3px;margin-right:5px"></span>'
                     f'{html.escape(name)} · {count}</span>')
    return '<div style="line-height:1.9">' + "".join(chips) + "</div>"


def level_caption(labels: np.ndarray, level: int, levels: int) -> str:
    """"level 3 (top) · 4 islands" for one map (N,)."""
    count = np.unique(labels[labels >= 0]).size
    return f"level {level}{' (top)' if level == levels - 1 else ''} · {plural(count, 'island')}"


def all_levels(context: ViewContext):
    """Every level's islands side by side, the top level first."""
    frame, labels, step, grid = context.frame, context.labels, context.step, context.grid
    n_levels = labels.shape[1]
    order = list(reversed(range(n_levels)))
    captions = [level_caption(labels[step, level], level, n_levels) for level in order]
    for level, column, caption in zip(order, st.columns(n_levels), captions):
        column.image(derived.overlay(frame, labels[:, level], context.page.island_settings, grid, step, level),
                     width="stretch", output_format=OVERLAY_FORMAT, caption=caption)
    st.caption("An island that spans levels has one colour at all of them.")
    return lambda: render.islands_row_figure(frame.display, labels[step, order], grid, captions,
                                             title=f"{plain_html(frame.picture.name)}: all levels at step {step}")


def view(context: ViewContext):
    """The islands over the picture, and beside them their legend, measures and the model's input."""
    if context.level == ALL_LEVELS:
        return all_levels(context)
    frame, step, grid = context.frame, context.step, context.grid
    settings = context.page.island_settings
    level = int(context.level)
    shown = context.islands.of_level(level)  # (T, N): this level's islands, not yet those of the levels below
    level_labels = shown[step]
    left, right = st.columns([3, 2], gap="large")
    last = shown.shape[0] - 1
    with left:
        height, width = frame.display.shape[:2]
        scrubber.scrubber(derived.overlay_pictures(frame, shown, settings, grid, level),
                          [f"{short_name(frame.picture.name)} · level {level} · step {s} of {last}" for s in range(last + 1)],
                          (width, height), step, state.PLAY_INTERVAL_S)
    with right:
        ids, counts = np.unique(level_labels, return_counts=True)
        truth_name = truth_choice(context, state.TRUTH_ISLANDS)
        now = derived.measures_at(frame, context.run, shown, settings, grid, truth_name, level)[step]
        st.markdown(islands_summary(level_labels, level, step, now, settings))
        st.markdown(legend_html(ids, counts), unsafe_allow_html=True)
        hint = islands.islands_hint(level_labels, settings.method, **dict(settings.params))
        if hint:
            st.info(hint, icon=":material/tune:")
        # one row that wraps, not a grid of columns: fewer blocks for the browser to draw on every scrub
        metrics = st.container(horizontal=True, gap="small")
        metrics.metric("in-island cos", fmt(now.get("within_cosine")), width=METRIC_PX,
                       help="Mean cosine of each column to its island's mean direction")
        metrics.metric("neighbours", fmt(now.get("neighbour_agreement")), width=METRIC_PX,
                       help="Mean cosine between neighbouring columns")
        metrics.metric("change", fmt(now.get("change")), width=METRIC_PX, help="Mean 1 - cosine to the previous step")
        if truth_name is not None:
            metrics.metric("ARI", fmt(now.get("ari")), width=METRIC_PX,
                           help=f"Adjusted Rand index against {truth_name}")
            metrics.metric("FG-ARI", fmt(now.get("fg_ari")), width=METRIC_PX,
                           help=f"ARI against {truth_name} over the patches that are not background")
        st.divider()
        model_input(context)
    return lambda: render.island_map_figure(frame.display, level_labels, grid,
                                            title=f"{plain_html(frame.picture.name)} · level {level} · step {step}")


def model_input(context: ViewContext) -> None:
    """The picture in its own colours (the overlay shows it in grey), what the model sees, how it was fitted."""
    frame = context.frame
    inner = st.columns([3, 2])
    size = frame.shown.shape[0]
    inner[0].image(frame.display, caption="the picture", width="stretch")
    inner[1].image(frame.shown, caption=f"model input {size}×{size}", width=MODEL_INPUT_PX)
    height, width = frame.picture.rgb.shape[:2]
    inner[1].caption(f"**{plain_name(frame.picture.name)}** · {width}×{height} px · {plain(frame.info)}"
                     + (f" · {plain(frame.picture.note)}" if frame.picture.note else ""))
    if context.page.model.knows and not frame.truth:
        st.caption(f"**What this model knows.** {context.page.model.knows}")
