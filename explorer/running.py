"""GLOM's runs for the page's frames: one ``glom_viz.runs.run`` per frame, cached, with a progress bar.

Each frame's run is a lookup (``explorer.cache.run``) that computes what is missing; in a sequence a
frame starts from the previous frame's final columns, so asking for frame 3 runs frames 1 and 2 first
if they were evicted.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import TimeoutError as NotYet

import streamlit as st

from explorer import cache
from explorer.models import LoadedModel
from explorer.pictures import Frame
from explorer.settings import RunSettings
from glom_viz import runs
from glom_viz.runs import Run
from glom_viz.text import plain_name

RunLookup = Callable[[], Run]
POLL_S = 0.1  # how often the page's thread looks at a run's progress


class Cancelled(Exception):
    """The page that asked for a run went away (closed, or rerun): the run stops at its next step."""


def compute(loaded: LoadedModel, frame: Frame, previous: RunLookup | None, settings: RunSettings,
            label: str, before: Frame | None = None, release: float | None = None) -> Run:
    """Run GLOM on one frame with a progress bar (in a sequence the previous frame's run first, its
    columns letting go where `before`, the previous frame, differs: ``Glom.let_go`` from `release` on)."""
    start = previous() if previous is not None else None
    bar = st.progress(0.0, text=f"{label}: step 0 of {settings.iterations}")
    steps: queue.SimpleQueue = queue.SimpleQueue()
    cancelled = threading.Event()

    def progress(step: int, total: int) -> None:  # in the worker: report, or stop if nobody waits
        if cancelled.is_set():
            raise Cancelled
        steps.put((step, total))

    # in one of the server's niced run workers (explorer.cache.run_workers), while this thread, the
    # page's own, draws the progress; Streamlit stops it here when the page goes away
    future = cache.run_workers().submit(runs.run, loaded.model, frame.tensor, settings.iterations, start=start,
                                        before=None if before is None else before.tensor,
                                        release=release if start is not None else None,
                                        precision=settings.precision, progress=progress)
    try:
        while True:
            try:
                return future.result(timeout=POLL_S)
            except NotYet:
                pass
            finally:
                while not steps.empty():
                    step, total = steps.get()
                    bar.progress(step / total, text=f"{label}: step {step} of {total}")
    except BaseException:
        cancelled.set()
        future.cancel()
        raise
    finally:
        bar.empty()


def runs_for(loaded: LoadedModel, frames: list[Frame], sequence: bool, settings: RunSettings,
             release: float | None = None) -> tuple[RunLookup, ...]:
    """One cache lookup per frame; in a sequence each frame starts from the previous one's final state,
    let go from `release` on where the picture changed (None: carried as it is)."""
    lookups: list[RunLookup] = []
    for index, frame in enumerate(frames):
        previous = lookups[index - 1] if sequence and index > 0 else None
        before = frames[index - 1] if previous is not None else None
        name = plain_name(frame.picture.name)  # the progress bar's text is Markdown
        label = f"frame {index + 1} of {len(frames)} · {name}" if sequence else name

        def lookup(frame=frame, previous=previous, label=label, before=before) -> Run:
            return cache.run(frame.run_key, lambda: compute(loaded, frame, previous, settings, label, before,
                                                                    release))
        lookups.append(lookup)
    return tuple(lookups)
