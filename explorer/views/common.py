"""Small pieces that more than one view draws: number formats, the ground-truth choice, chart selections."""

from __future__ import annotations

import numpy as np
import streamlit as st

from explorer.context import ViewContext


def fmt(value) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.3f}"


def truth_choice(context: ViewContext, key: str) -> str | None:
    """The ground truth to score against (a radio), or None when the picture has none."""
    if not context.truth_names:
        return None
    return st.radio("Score islands against", context.truth_names, horizontal=True, key=key)


def patches_of(event) -> list[int]:
    """Patch indices chosen in a plotly selection event (each point's customdata is its patch)."""
    if not event:
        return []
    patches = []
    for point in event.get("selection", {}).get("points", []):
        custom = point.get("customdata")
        if isinstance(custom, (list, tuple)):
            custom = custom[0] if custom else None
        if isinstance(custom, (int, float)):
            patches.append(int(custom))
    return sorted(set(patches))
