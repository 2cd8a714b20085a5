"""The Levels × steps view: small multiples of every level at every step, islands forming and growing
upwards; an island keeps its colour from step to step."""

from __future__ import annotations

import streamlit as st

from explorer import cache, state
from explorer.context import ViewContext
from glom_viz import render
from glom_viz.text import plain_html


def view(context: ViewContext):
    frame = context.frame
    key = cache.content_key(frame.run_key, context.page.island_settings)
    figure = cache.derived("sheet", key, lambda: render.sheet_figure(
        frame.display, context.labels, context.grid, title=f"{plain_html(frame.picture.name)}: islands, levels × steps"))
    st.plotly_chart(figure, width="stretch", config={"displayModeBar": False}, key=state.SHEET_CHART)
    st.caption("Rows are levels (top level at the top), columns are steps. An island keeps its colour from step "
               "to step.")
    return lambda: figure
