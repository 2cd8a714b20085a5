"""The Projection view: the columns of one level projected (PCA or UMAP), coloured by island; points
selected on the chart light up their patches on the picture beside it."""

from __future__ import annotations

import numpy as np
import streamlit as st

from explorer import cache, state
from explorer.context import ViewContext
from explorer.limits import WARM_UP
from explorer.views.common import patches_of
from glom_viz import render
from glom_viz.project import PROJECTIONS, project

PROJECTION_LABELS = {"pca": "PCA", "umap": "UMAP"}
CHART_HEIGHT_PX = 520


def view(context: ViewContext):
    frame, step, grid = context.frame, context.step, context.grid
    level = context.level_index
    left, right = st.columns([3, 2], gap="large")
    with right:
        options = st.columns(2)
        method = options[0].radio("Projection", PROJECTIONS, format_func=PROJECTION_LABELS.get, horizontal=True,
                                  key=state.PROJECTION_METHOD)
        dims = options[1].radio("Dimensions", (2, 3), format_func=lambda d: f"{d}-D", horizontal=True,
                                key=state.PROJECTION_DIMS)
        fixed_axes = st.toggle("Same axes for every step", key=state.PROJECTION_FIXED,
                               help="Keep the axes of the whole run while scrubbing, so the points move and the "
                                    "frame stays; off, the axes fit the step in view.")
    if method == "umap" and WARM_UP and cache.warm_up().is_alive():
        st.info("UMAP is still being compiled in the background (once per server, ~20 s); this first projection "
                "waits for it.")
    with st.spinner(f"{PROJECTION_LABELS[method]} of level {level}…"):
        coords = cache.derived("projection", cache.content_key(frame.run_key, level, method, dims),
                               lambda: project(context.run.states[:, :, level].astype(np.float32), method, dims))
    step_labels = context.labels[step, level]
    figure = render.projection_figure(coords[step], step_labels, frame=coords if fixed_axes else None,
                                      title=f"level {level} at step {step} · {PROJECTION_LABELS[method]}")
    figure.update_layout(height=CHART_HEIGHT_PX)
    with left:
        event = st.plotly_chart(figure, width="stretch", key=f"{state.PROJECTION_CHART_PREFIX}{dims}",
                                on_select="rerun", selection_mode=("points", "box", "lasso"))
    chosen = patches_of(event)
    with right:
        st.image(render.draw_islands(frame.display, step_labels, grid, highlight=chosen or None),
                 width="stretch",
                 caption=(f"{len(chosen)} selected patches highlighted" if chosen
                          else "Select points (click, box or lasso) to light up their patches here."))
    return lambda: figure
