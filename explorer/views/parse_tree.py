"""The Parse tree view: how the islands of each level sit inside those of the level above at the chosen
step, and how purely (the share of a level's patches inside their island's parent)."""

from __future__ import annotations

import streamlit as st

from explorer import state
from explorer.context import ViewContext
from explorer.views.common import fmt
from glom_viz import islands, render


def view(context: ViewContext):
    tree = islands.parse_tree(context.labels[context.step])
    figure = render.parse_tree_figure(tree, title=f"parse tree at step {context.step}")
    left, right = st.columns([3, 1])
    left.plotly_chart(figure, width="stretch", key=state.PARSE_TREE_CHART)
    right.markdown("**Purity** (share of a level's patches inside their island's parent)")
    for level, purity in enumerate(tree["purity"]):
        right.markdown(f"level {level} → {level + 1}: **{fmt(purity)}**")
    return lambda: figure
