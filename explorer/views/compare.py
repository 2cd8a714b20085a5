"""The Compare view: two models side by side on the same picture, level and step, with their islands'
ids matched where they overlap (``glom_viz.islands.match_islands``) and their measures next to each other.

The page's model is compared with an untrained model of its shape (what training started from), another
shipped model (position told, content only or balanced), a checkpoint of a training run under the server's runs folder,
or a checkpoint the visitor uploads. Two models whose patch grids differ cover different patches: that is
said, and the rest of the page works.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from explorer import cache, derived, state
from explorer.context import ViewContext
from explorer.limits import CHECKPOINT_UPLOAD_MB, run_size_problem
from explorer.models import (SHIPPED_TITLES, LoadedModel, shipped_model, state_dict_note, training_checkpoint,
                             untrained_like)
from explorer.pictures import frame_of
from explorer.running import runs_for
from explorer.views.common import choose_run, fmt, islands_summary, truth_choice
from explorer.views.islands import legend_html
from glom_viz import islands, render
from glom_viz.checkpoints import checkpoint_hash, read_checkpoint
from glom_viz.errors import CheckpointError, ConfigError, RunError, StatesError
from glom_viz.text import plain, plain_html

CHOICES = {"untrained": "an untrained model of its shape", "shipped": "another shipped model",
           "run": "a checkpoint of a training run", "upload": "a checkpoint you upload"}
# the shipped models in the order offered (the first the page is not showing is picked): the content-only
# one beside any other model, the scenes model beside it
COMPARE_ORDER = ("content", "scenes", "balanced")
MEASURES = (("islands", "n_islands"), ("in-island cos", "within_cosine"), ("neighbours", "neighbour_agreement"),
            ("silhouette", "silhouette"), ("change", "change"), ("ARI", "ari"), ("FG-ARI", "fg_ari"))


def other_model(context: ViewContext) -> LoadedModel | None:
    """The model to compare with, as the visitor picks it; None (a message shown) until there is one."""
    choice = st.radio("Compare the page's model with", list(CHOICES), format_func=CHOICES.get, horizontal=True,
                      key=state.COMPARE_WITH)
    if choice == "untrained":
        return untrained_like(context.page.model.model.config)
    if choice == "shipped":  # one of the shipped models the page is not showing
        others = [kind for kind in COMPARE_ORDER if kind != context.page.model.shipped_kind]
        state.keep_choice(state.COMPARE_SHIPPED, others, others[0])
        kind = st.radio("Which shipped model", others, format_func=SHIPPED_TITLES.get, horizontal=True,
                        key=state.COMPARE_SHIPPED)
        return shipped_model(kind)
    if choice == "run":
        pick = st.columns([2, 5], vertical_alignment="bottom")
        run = choose_run(state.COMPARE_RUN, pick[0])
        if run is None:
            return None
        if not run.steps:
            return None
        state.keep_choice(state.COMPARE_STEP, run.steps, run.steps[-1])
        step = pick[1].select_slider("Its checkpoint at training step", run.steps, key=state.COMPARE_STEP)
        try:
            return training_checkpoint(run, step)
        except (CheckpointError, RunError) as error:
            st.error(plain(error))
            return None
    upload = st.file_uploader("Checkpoint to compare with (.safetensors from glom-viz, or a glom-pytorch .pt state dict)",
                              type=["safetensors", "pt", "pth"], key=state.COMPARE_CHECKPOINT,
                              max_upload_size=CHECKPOINT_UPLOAD_MB)
    if upload is None:
        return None
    data = upload.getvalue()
    sha = checkpoint_hash(data)

    def load() -> LoadedModel:
        checkpoint = read_checkpoint(data, assume={"consensus_self": False})
        return LoadedModel(checkpoint.model, cache.content_key(sha, checkpoint.config),
                           f"checkpoint {upload.name}", state_dict_note(checkpoint), sha)
    try:
        loaded = cache.model(cache.content_key("compare", sha), load)
    except (CheckpointError, ConfigError) as error:
        st.error(f"Could not use the checkpoint **{plain(upload.name)}**: {plain(error)}")
        return None
    if loaded.note:
        st.caption(loaded.note)
    return loaded


def view(context: ViewContext):
    page = context.page
    other = other_model(context)
    if other is None:
        return None
    try:
        grid = islands.same_grid(context.grid, other.model.grid, names=(page.model.title, other.title))
    except StatesError as error:
        st.error(f"{plain(error)}.")
        return None
    too_big = run_size_problem(other.model.config, page.iterations)
    if too_big:
        st.error(too_big)
        return None
    level = context.level_index
    if level >= other.model.config.levels:
        st.error(f"{plain(other.title)} has {other.model.config.levels} levels, so it has no level {level}: pick a level "
                 f"below {other.model.config.levels} to compare.")
        return None
    frame = frame_of(context.frame.picture, other, page.fit, "", cache.content_key(page.run_settings), None)
    result = runs_for(other, [frame], False, page.run_settings)[0]()
    if not result.finite:
        st.error(f"{plain(other.title)}'s columns became NaN or Inf at step {result.first_nonfinite[0]}: nothing to compare.")
        return None
    other_labels = derived.labels_of(frame, result, page.island_settings, grid)
    step = min(context.step, other_labels.shape[0] - 1)
    mine = context.labels[:, level]
    theirs = islands.match_islands(other_labels[:, level], mine)  # ids of the page's model where they overlap
    truth_name = truth_choice(context, state.TRUTH_COMPARE)
    measures = (derived.measures_of(context.frame, context.run, context.labels, page.island_settings, grid,
                                    truth_name, levels=[level])[level][step],
                derived.measures_of(frame, result, other_labels, page.island_settings, grid, truth_name,
                                    levels=[level])[level][step])
    titles = (page.model.title, other.title)
    *columns, table = st.columns([3, 3, 3], gap="medium")
    for column, title, labels, display, now in zip(columns, titles, (mine[step], theirs[step]),
                                                   (context.frame.display, frame.display), measures):
        with column:
            st.image(render.draw_islands(display, labels, grid), width="stretch",
                     caption=f"{plain(title)} · level {level} · step {step}")
            st.markdown(islands_summary(labels, level, step, now, page.island_settings))
            ids, counts = np.unique(labels, return_counts=True)
            st.markdown(legend_html(ids, counts), unsafe_allow_html=True)
    between = islands.compare_islands(mine[step], theirs[step])
    rows = [f"| | {plain(titles[0])} | {plain(titles[1])} |", "|---|---:|---:|"]
    for name, key in MEASURES:
        if any(now.get(key) is not None for now in measures):
            rows.append(f"| {name} | " + " | ".join(
                str(now[key]) if key == "n_islands" else fmt(now.get(key)) for now in measures) + " |")
    table.markdown("\n".join(rows))
    table.caption(f"Between the two: ARI **{fmt(between['ari'])}**; **{between['same_island']:.0%}** of the patches "
               f"are in the island of the same id; **{between['matched']}** of its islands matched one of the "
               "page's model (the same colour where they overlap most).")
    figure_title = f"{plain_html(context.frame.picture.name)}: level {level}, step {step}"
    return lambda: render.islands_row_figure(context.frame.display, np.stack([mine[step], theirs[step]]), grid,
                                             [plain_html(title) for title in titles], title=figure_title)
