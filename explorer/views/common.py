"""Small pieces that more than one view draws: number formats, the ground-truth choice, chart selections."""

from __future__ import annotations

import numpy as np
import streamlit as st

from explorer import state
from explorer.context import ViewContext
from explorer.settings import IslandSettings
from glom_viz import islands
from glom_viz.errors import RunError
from glom_viz.text import plain
from glom_viz.training_runs import TrainingRun, find_runs, open_run, runs_root


def fmt(value) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.3f}"


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


def islands_summary(labels: np.ndarray, level: int, step: int, measures: dict, settings: IslandSettings,
                    where: str | None = None) -> str:
    """How many islands one map (N,) has, and where it has none, why: in GLOM's words, not the engine's."""
    count = np.unique(labels[labels >= 0]).size
    place = f"at level {level}, step {step}" + (f", {where}" if where else "")
    if count:
        return f"**{plural(count, 'island')}** {place} (patches per island)"
    if settings.method in islands.COUNT_METHODS:
        why = (f"the columns disagree (neighbours' cosine {fmt(measures.get('neighbour_agreement'))}) and no "
               "count splits them into separated islands")
    else:
        why = "with these settings every column is in none"
    return f"**No islands** {place}: {why}."


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


def choose_run(key: str, place) -> TrainingRun | None:
    """A training run under the server's runs folder, picked in a selectbox drawn at ``place``; what could
    not be read of it is said (warnings), and None (with a message) when there is no run to open."""
    root = runs_root()
    names = find_runs(root)
    if not names:
        st.info(f"No training runs in this server's runs folder ({plain(root)}). Train one there with "
                f"`python -m glom_viz.train --out {plain(root)}/NAME` (it keeps a checkpoint every "
                "checkpoint_every steps), or start the server with GLOM_VIZ_RUNS naming the folder of yours.")
        return None
    state.keep_choice(key, names, names[0])
    name = place.selectbox("Training run", names, key=key,
                           help=f"The runs under this server's runs folder ({plain(root)}), newest first.")
    try:
        run = open_run(name, root)
    except RunError as error:
        st.error(plain(error))
        return None
    for problem in run.problems:
        st.warning(plain(problem))
    return run
