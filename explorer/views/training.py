"""The Training view: islands over training time. A training run found under the server's runs folder
(``GLOM_VIZ_RUNS``, default ``runs/``; never a path a visitor types) is opened, and the same picture,
level and GLOM step are shown under each of its checkpoints, scrubbed by training step, with ids kept
from one checkpoint to the next (``glom_viz.islands.align_checkpoints``), beside the run's losses.

Each checkpoint runs GLOM once on the picture (cached like the page's runs); a checkpoint still being
written, or one that cannot be loaded, is left out with a sentence, and the rest keeps working.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from explorer import cache, state
from explorer.context import ViewContext
from explorer.models import LoadedModel, training_checkpoint
from explorer.pictures import frame_of
from explorer.running import runs_for
from explorer.views.common import choose_run, fmt, islands_summary, plural
from explorer.views.islands import legend_html
from glom_viz import islands, render, runs
from glom_viz.errors import CheckpointError, RunError
from glom_viz.text import plain, plain_html
from glom_viz.training_runs import TrainingRun

FILMSTRIP = 8  # checkpoints shown side by side under the chosen one, spread over the run
TILE_PX = 256


def checkpoint_islands(context: ViewContext, run: TrainingRun, step: int) -> np.ndarray | None:
    """One checkpoint's islands on the picture, (T, L, N) as the page finds them, cached by the checkpoint
    file and the page's settings; None (and a warning) when the checkpoint cannot be used.

    The model is loaded only to fill the cache: scrubbing the training steps only looks islands up.
    """
    page = context.page
    kept = next((c for c in run.readable if c.step == step), None)
    stat = kept.path.stat() if kept is not None else None
    key = cache.content_key("training islands", run.name, step, stat and (stat.st_size, stat.st_mtime_ns),
                            context.frame.picture.key, page.fit, page.run_settings, page.island_settings)

    def compute() -> np.ndarray | None:
        loaded = training_checkpoint(run, step)
        frame = training_frame(context, loaded)
        result = runs.run(loaded.model, frame.tensor, page.iterations, precision=page.run_settings.precision)
        if not result.finite:
            return None
        return islands.find_islands_all_levels(result.states, loaded.model.grid, **page.island_settings.keywords())
    try:
        return cache.derived("training islands", key, compute)
    except (CheckpointError, RunError) as error:
        st.warning(plain(f"The checkpoint at step {step} is left out: {error}"))
        return None


def training_frame(context: ViewContext, loaded: LoadedModel):
    """The page's picture made to fit a checkpoint's model (its own image size and grid)."""
    return frame_of(context.frame.picture, loaded, context.page.fit, "", cache.content_key(context.page.run_settings),
                    None)


def aligned_labels(context: ViewContext, run: TrainingRun) -> tuple[dict[int, np.ndarray], int]:
    """(training step -> (T, N) islands of the chosen level under every usable checkpoint, ids stable from
    one to the next; that level). Matched at the level shown, by the islands of the last step (where they
    have settled), so an island of this level keeps its colour from checkpoint to checkpoint wherever it
    persists; early steps, which split the columns differently under each checkpoint, do not decide."""
    with st.spinner(f"The picture under {len(run.steps)} checkpoints…"):
        found = {step: labels for step in run.steps
                 if (labels := checkpoint_islands(context, run, step)) is not None}
    if not found:
        return {}, 0
    # a run's checkpoints share one model; a folder that mixes shapes keeps those of the latest
    latest = found[max(found)].shape
    found = {step: labels for step, labels in found.items() if labels.shape == latest}
    level = min(context.level_index, latest[1] - 1)
    settled = np.arange(latest[0])[:, None] == latest[0] - 1  # the last step's islands decide the ids
    aligned = islands.align_checkpoints([labels[:, level] for labels in found.values()], where=settled)
    return dict(zip(found, aligned)), level


def view(context: ViewContext):
    choose = st.columns([2, 5], vertical_alignment="bottom")
    run = choose_run(state.TRAINING_RUN, choose[0])
    if run is None:
        return None
    name = run.name
    curves = run.losses()
    if not run.steps:
        if curves:
            figure = render.losses_figure(curves, title=f"run {name}: losses")
            st.plotly_chart(figure, width="stretch", key=state.TRAINING_LOSSES_CHART)
            return lambda: figure
        return None

    labels, level = aligned_labels(context, run)
    if not labels:
        st.error(plain(f"None of run {name}'s checkpoints could show this picture (see above)."))
        return None
    steps = list(labels)
    state.keep_choice(state.TRAINING_STEP, steps, steps[-1])
    training_step = choose[1].select_slider("Training step", steps, key=state.TRAINING_STEP,
                                            help="Scrub the run's checkpoints; the GLOM step and level above "
                                                 "stay as they are. An island keeps its id (and colour) from one "
                                                 "checkpoint to the next.")
    chosen = labels[training_step]
    glom_step = min(context.step, chosen.shape[0] - 1)
    loaded = training_checkpoint(run, training_step)
    frame = training_frame(context, loaded)
    left, right = st.columns([3, 4], gap="large")
    left.image(render.draw_islands(frame.display, chosen[glom_step], loaded.model.grid), width="stretch",
               caption=plain(f"{context.frame.picture.name} · run {name} at training step {training_step} · "
                             f"level {level} · GLOM step {glom_step}"))
    with right:
        result = runs_for(loaded, [frame], False, context.page.run_settings)[0]()
        measures = islands.island_measures(result.states[glom_step, :, level], chosen[glom_step],
                                           loaded.model.grid)[0]
        st.markdown(islands_summary(chosen[glom_step], level, glom_step, measures, context.page.island_settings,
                                    where=f"training step {training_step}"))
        ids, counts = np.unique(chosen[glom_step], return_counts=True)
        st.markdown(legend_html(ids, counts), unsafe_allow_html=True)
        metrics = st.columns(3)
        metrics[0].metric("in-island cos", fmt(measures.get("within_cosine")))
        metrics[1].metric("neighbours", fmt(measures.get("neighbour_agreement")))
        metrics[2].metric("silhouette", fmt(measures.get("silhouette")))
        if curves:
            losses = render.losses_figure(curves, checkpoints=steps, step=training_step,
                                          title=f"run {name}: losses")
            losses.update_layout(height=300)
            st.plotly_chart(losses, width="stretch", key=state.TRAINING_LOSSES_CHART)
    shown = [steps[i] for i in np.unique(np.linspace(0, len(steps) - 1, min(FILMSTRIP, len(steps))).round().astype(int))]
    captions = [f"step {step} · {plural(np.unique(labels[step][glom_step][labels[step][glom_step] >= 0]).size, 'island')}"
                for step in shown]
    strip = render.islands_row_figure(frame.display, np.stack([labels[step][glom_step] for step in shown]),
                                      loaded.model.grid, captions, tile_px=TILE_PX,
                                      title=f"{plain_html(context.frame.picture.name)}: level {level}, GLOM step "
                                            f"{glom_step}, over training (run {name})")
    columns = st.columns(len(shown))
    for step, column, caption in zip(shown, columns, captions):
        column.image(render.draw_islands(frame.display, labels[step][glom_step], loaded.model.grid),
                     width="stretch", caption=caption)
    return lambda: strip
