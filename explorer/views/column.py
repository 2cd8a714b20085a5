"""The Column view: one column (one patch's vectors at every level) at the chosen step — whom it agrees
with (consensus attention over the picture) and what moved it (the pull of each of GLOM's contributions).

Attention and contributions are not kept during a run (they are ~4x the states): a button asks for
them once, and from then on ``glom_viz.runs.probe_column`` recomputes each step shown (cached per run
and step), so scrubbing needs no more clicks.
"""

from __future__ import annotations

import streamlit as st

from explorer import cache, state
from explorer.context import ViewContext
from explorer.views.common import patches_of
from glom_viz import render
from glom_viz.runs import probe_column

PROBE_IMAGE_PX = 360  # the picture with the chosen patch, before the probe is asked for
# plotly's toolbar floats over a chart's top right, where these titles run; a click picks a patch and
# the export row saves the figure, so the toolbar has nothing to offer here
NO_TOOLBAR = {"displayModeBar": False}


def pick_patch() -> None:
    """The attention map was clicked: look at the clicked patch's column."""
    chosen = patches_of(st.session_state.get(state.ATTENTION_CHART))
    if chosen:
        state.choose_patch(chosen[0])


def choose(context: ViewContext, place) -> tuple[int, int, int]:
    """Row and column inputs for the patch, defaulting to the last one clicked (or the middle): (patch, row, col)."""
    h, w = context.grid
    patch = state.chosen_patch(h * w)
    if patch is None:  # none chosen yet (or another model): the middle of the picture
        patch = (h // 2) * w + w // 2
    # no keys: the defaults follow the patch last clicked on the attention map
    row = int(place[0].number_input("Row", 0, h - 1, patch // w))
    col = int(place[1].number_input("Column", 0, w - 1, patch % w))
    patch = row * w + col
    state.choose_patch(patch)
    return patch, row, col


def view(context: ViewContext):
    frame, step, grid = context.frame, context.step, context.grid
    level = context.level_index
    page = context.page
    pick = st.columns([1, 1, 4], vertical_alignment="bottom")
    patch, row, col = choose(context, pick)
    if step == 0:
        pick[2].info("Step 0 is the initial state: nothing has moved the columns yet. Pick a step of 1 or more.")
        return None
    probe_key = cache.content_key(frame.run_key, step)
    if not state.probing():
        st.image(render.draw_islands(frame.display, context.labels[step, level], grid, highlight=[patch]),
                 width=PROBE_IMAGE_PX, caption=f"patch ({row}, {col}) at level {level}, step {step}")
        pick[2].caption("Attention and contributions are not kept during the run (they are ~4× the states); "
                        "once asked for, they are recomputed for each step you look at.")
        pick[2].button(f"Compute attention and contributions at step {step}", key=state.PROBE, type="primary",
                       on_click=state.start_probing)
        return None
    index = page.frames.index(frame)
    start = page.runs[index - 1]() if page.sequence and index > 0 else None
    before = page.frames[index - 1].tensor if start is not None else None
    release = page.release if start is not None else None
    with st.spinner(f"Recomputing step {step} with attention and contributions…"):
        probe = cache.derived("column", probe_key, lambda: probe_column(
            page.model.model, frame.tensor, step, start=start, before=before, release=release,
            precision=page.run_settings.precision))
    left, right = st.columns(2, gap="large")
    figure = render.attention_figure(frame.display, probe.attention[level, patch], grid, patch,
                                     title=f"level {level}, step {step}: whom patch ({row}, {col}) agrees with")
    left.plotly_chart(figure, width="stretch", key=state.ATTENTION_CHART, on_select=pick_patch,
                      selection_mode=("points",), config=NO_TOOLBAR)
    left.caption("Click a patch on the map to look at its column.")
    pulls = {name: values[patch] for name, values in probe.pulls.items()}
    right.plotly_chart(render.contributions_figure(
        pulls, title=f"what moved patch ({row}, {col}) at step {step}, per level"), width="stretch",
        key=state.CONTRIBUTIONS_CHART, config=NO_TOOLBAR)
    right.caption("Each bar is how far one contribution pulled the column this step: its weight times its "
                  "distance from the previous value. The net move is the length of the whole step (after any "
                  "normalisation of the levels).")
    return lambda: figure
