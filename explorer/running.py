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
import torch

from explorer import cache
from explorer.limits import run_threads
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


class _InFlight:
    """How many runs the server's workers are running now, across all visitors."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0

    def __enter__(self):
        with self._lock:
            self.count += 1

    def __exit__(self, *_):
        with self._lock:
            self.count -= 1


_IN_FLIGHT = _InFlight()


def _run_in_worker(model, image, iterations: int, progress, **keywords) -> Run:
    """runs.run in a run worker, on the torch threads ``run_threads`` gives this run, asked again after every
    step: a big run alone takes every core and goes back to one once another run starts beside it."""
    def take_threads() -> None:
        torch.set_num_threads(run_threads(model.config, _IN_FLIGHT.count))  # this worker thread's own

    def each_step(step: int, total: int) -> None:
        take_threads()
        progress(step, total)

    with _IN_FLIGHT:
        take_threads()
        return runs.run(model, image, iterations, progress=each_step, **keywords)


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
    future = cache.run_workers().submit(_run_in_worker, loaded.model, frame.tensor, settings.iterations, progress,
                                        start=start,
                                        before=None if before is None else before.tensor,
                                        release=release if start is not None else None,
                                        precision=settings.precision)
    try:
        while True:
            try:
                return future.result(timeout=POLL_S)
            except NotYet:
                pass
            finally:
                latest = None
                while not steps.empty():  # the latest step only: one message per look, however many steps ran
                    latest = steps.get()
                if latest is not None:
                    step, total = latest
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
