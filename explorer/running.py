"""GLOM's runs for the page's frames: one ``glom_viz.runs.run`` per frame, cached, with a progress bar.

Each frame's run is a lookup (``explorer.cache.run``) that computes what is missing; in a sequence a
frame starts from the previous frame's final columns, so asking for frame 3 runs frames 1 and 2 first
if they were evicted. While a run goes, the islands of the steps done are found in niced workers of their
own (``StepIslands``), so that they are ready soon after the run.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
import streamlit as st

from explorer import cache, derived
from explorer.models import LoadedModel
from explorer.pictures import Frame
from explorer.settings import IslandSettings, RunSettings
from glom_viz import islands, runs
from glom_viz.errors import StatesError
from glom_viz.runs import FLOAT16_SAFE, STATES_DTYPE, Run
from glom_viz.text import plain_name

RunLookup = Callable[[], Run]
POLL_S = 0.1  # how often the page's thread looks at a run's progress


class Cancelled(Exception):
    """The page that asked for a run went away (closed, or rerun): the run stops at its next step."""


class StepIslands:
    """The islands of a run's steps, found in the server's niced island workers (``cache.island_workers``) as the
    run worker hands each step over (on the second core while GLOM runs on its own), so that when the run ends
    only its last steps and the matching of ids across steps and levels are left
    (``islands.find_islands_all_levels(clustered=...)``).

    Only where that gives the same islands as clustering the stored run: islands in the columns' own space
    (not UMAP's), each step rounded as the run stores it (``STATES_DTYPE``), used only if the whole run is
    stored so; a step it cannot cluster is left to be clustered from the stored run as usual.
    """

    def __init__(self, settings: IslandSettings, grid):
        self.settings, self.grid = settings, grid
        self.vectors = settings.keywords().get("space", "vectors") == "vectors"
        self.pending: dict[int, Future] = {}

    def add(self, step: int, columns) -> None:
        if self.vectors:
            self.pending[step] = cache.island_workers().submit(self._cluster, columns)

    def _cluster(self, columns):
        if not (np.isfinite(columns).all() and np.abs(columns).max() < FLOAT16_SAFE):  # not stored as float16
            return None
        try:
            return islands.cluster_step(columns.astype(STATES_DTYPE), self.grid, **self.settings.keywords())
        except (StatesError, ValueError, FloatingPointError):
            return None

    def cancel(self) -> None:
        for future in self.pending.values():
            future.cancel()

    def labels(self, frame: Frame, run: Run):
        """The run's (T, L, N) islands, cached where the viewer looks for them (``derived.labels_of``)."""
        def find():
            clustered = {}
            if run.states.dtype == STATES_DTYPE and run.finite:
                found = {step: future.result() for step, future in self.pending.items()}
                clustered = {step: labels for step, labels in found.items() if labels is not None}
            else:
                self.cancel()
            return islands.find_islands_all_levels(run.states, self.grid, clustered=clustered,
                                                   **self.settings.keywords())
        return cache.labels(derived.labels_key(frame, self.settings), find)


def compute(loaded: LoadedModel, frame: Frame, previous: RunLookup | None, settings: RunSettings,
            label: str, before: Frame | None = None, release: float | None = None,
            island_settings: IslandSettings | None = None) -> Run:
    """Run GLOM on one frame with a progress bar (in a sequence the previous frame's run first, its
    columns letting go where `before`, the previous frame, differs: ``Glom.let_go`` from `release` on);
    with `island_settings`, the islands of its steps are found while it runs, and cached."""
    start = previous() if previous is not None else None
    bar = st.progress(0.0, text=f"{label}: step 0 of {settings.iterations}")
    steps: queue.SimpleQueue = queue.SimpleQueue()
    cancelled = threading.Event()
    found = None if island_settings is None else StepIslands(island_settings, loaded.model.grid)

    def progress(step: int, total: int) -> None:  # in the worker: report, or stop if nobody waits
        if cancelled.is_set():
            raise Cancelled
        steps.put(("progress", step, total))

    def on_step(step: int, columns) -> None:  # in the worker: hand the step's columns to the page's thread
        steps.put(("columns", step, columns))

    # in one of the server's niced run workers (explorer.cache.run_workers), while this thread, the
    # page's own, draws the progress and hands the steps done to the island workers; Streamlit stops it here
    # when the page goes away
    future = cache.run_workers().submit(runs.run, loaded.model, frame.tensor, settings.iterations, start=start,
                                        before=None if before is None else before.tensor,
                                        release=release if start is not None else None,
                                        precision=settings.precision, progress=progress,
                                        on_step=None if found is None else on_step)
    future.add_done_callback(lambda _: steps.put(("done", 0, 0)))  # wakes this thread at once
    try:
        while True:
            try:
                kind, step, value = steps.get(timeout=POLL_S)  # the timeout lets Streamlit stop this thread
            except queue.Empty:
                continue
            if kind == "done":
                break
            if kind == "progress":
                bar.progress(step / value, text=f"{label}: step {step} of {value}")
            else:
                found.add(step, value)
        result = future.result()
    except BaseException:
        cancelled.set()
        future.cancel()
        if found is not None:
            found.cancel()
        raise
    finally:
        bar.empty()
    if found is not None and result.finite:
        found.labels(frame, result)
    return result


def runs_for(loaded: LoadedModel, frames: list[Frame], sequence: bool, settings: RunSettings,
             release: float | None = None, island_settings: IslandSettings | None = None) -> tuple[RunLookup, ...]:
    """One cache lookup per frame; in a sequence each frame starts from the previous one's final state,
    let go from `release` on where the picture changed (None: carried as it is); with `island_settings` a
    frame's islands are found as its run goes."""
    lookups: list[RunLookup] = []
    for index, frame in enumerate(frames):
        previous = lookups[index - 1] if sequence and index > 0 else None
        before = frames[index - 1] if previous is not None else None
        name = plain_name(frame.picture.name)  # the progress bar's text is Markdown
        label = f"frame {index + 1} of {len(frames)} · {name}" if sequence else name

        def lookup(frame=frame, previous=previous, label=label, before=before) -> Run:
            return cache.run(frame.run_key, lambda: compute(loaded, frame, previous, settings, label, before,
                                                                    release, island_settings))
        lookups.append(lookup)
    return tuple(lookups)
