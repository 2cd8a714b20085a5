"""The Measures view: island measures over the steps (agreement within islands and between neighbours,
change, and scores against the ground truth where there is one), one line per level."""

from __future__ import annotations

import streamlit as st

from explorer import derived, state
from explorer.context import ViewContext
from explorer.views.common import truth_choice
from glom_viz import render
from glom_viz.text import plain_html

STEP_MARKER = {"line_dash": "dot", "line_color": "#888"}


def view(context: ViewContext):
    truth_name = truth_choice(context, state.TRUTH_MEASURES)
    measures = derived.measures_of(context.frame, context.run, context.labels, context.page.island_settings,
                                   context.grid, truth_name)
    figure = render.measures_figure(measures, title=f"{plain_html(context.frame.picture.name)}: island measures over steps")
    figure.add_vline(x=context.step, **STEP_MARKER)
    st.plotly_chart(figure, width="stretch", key=state.MEASURES_CHART)
    return lambda: figure
