"""Every cache of the app, and nothing else: the library stays cache-free and pure.

Keys are content hashes (``content_key``) of what a result was made from: the model's checkpoint or
seed and config, the picture's bytes, the settings. A leading underscore keeps an argument out of the
key: it only computes a missing entry. ``st.cache_resource`` holds what every visitor shares and only
reads (the model, the warm-up thread); ``st.cache_data`` pickles what it keeps, so the typed results
(pictures, runs, labels) are cached as they are.
"""

from __future__ import annotations

import gc
import hashlib
import threading
from collections.abc import Callable
from typing import TypeVar

import streamlit as st

from explorer.limits import (DERIVED_CACHE_BYTES, DERIVED_CACHE_ENTRIES, MODEL_CACHE_ENTRIES, PICTURE_CACHE_BYTES,
                             PICTURE_CACHE_ENTRIES, RUN_CACHE_BYTES, RUN_CACHE_ENTRIES)
from glom_viz import export
from glom_viz.errors import ExportError
from glom_viz.project import warm_up_umap
from glom_viz.runs import Run

T = TypeVar("T")


def content_key(*parts) -> str:
    """A short sha256 over the repr of some hashable settings and hashes."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


@st.cache_resource(max_entries=MODEL_CACHE_ENTRIES, show_spinner="Loading the model…")
def model(key: str, _load: Callable[[], T]) -> T:
    """A loaded model (explorer.models.LoadedModel), shared by every visitor: read only."""
    loaded = _load()
    loaded.model.eval().requires_grad_(False)
    return loaded


@st.cache_resource(show_spinner=False)
def shared(key: str, _make: Callable[[], T]) -> T:
    """Something made once per server and only read after (the bundled photographs)."""
    return _make()


@st.cache_data(max_entries=PICTURE_CACHE_ENTRIES, max_size=PICTURE_CACHE_BYTES, show_spinner=False)
def pictures(key: str, _load: Callable[[], T]) -> T:
    """Pictures as loaded (a scene, or an upload's frames), keyed by the file's or scene's hash."""
    return _load()


@st.cache_data(max_entries=PICTURE_CACHE_ENTRIES, max_size=PICTURE_CACHE_BYTES, show_spinner=False)
def model_input(key: str, _make: Callable[[], T]) -> T:
    """A picture made to fit the model (explorer.pictures.ModelInput), keyed by picture, size and fit."""
    return _make()


@st.cache_data(max_entries=RUN_CACHE_ENTRIES, max_size=RUN_CACHE_BYTES, show_spinner=False)
def _stored_run(key: str, _run: Run | None = None) -> Run | None:
    """The run stored under a key, or None when there is none yet.

    Runs are computed outside the cache and then stored here (see ``run``): a function cached with
    st.cache_data replays every element it drew on each later hit, and a run draws a progress bar.
    """
    return _run


def run(key: str, compute: Callable[[], Run]) -> Run:
    """A frame's run from the cache, or computed (with its progress bar) and stored there."""
    stored = _stored_run(key)
    if stored is None:
        stored = compute()
        _stored_run.clear(key)  # the lookup above cached None under this key
        _stored_run(key, stored)
    return stored


@st.cache_data(max_entries=DERIVED_CACHE_ENTRIES, max_size=DERIVED_CACHE_BYTES, show_spinner=False)
def labels(key: str, _compute: Callable[[], T]) -> T:
    """A run's islands, (T, L, N), keyed by the run and the island settings."""
    return _compute()


@st.cache_data(max_entries=DERIVED_CACHE_ENTRIES, max_size=DERIVED_CACHE_BYTES, show_spinner=False)
def derived(kind: str, key: str, _compute: Callable[[], T]) -> T:
    """What the views derive from a run and its islands: measures, overlays, projections, figures, column probes."""
    return _compute()


# ---------------------------------------------------------------------------------------------------
# once per server


@st.cache_resource(show_spinner=False)
def warm_up() -> threading.Thread:
    """Off the visitors' path: compile UMAP, then start the export browser."""
    def work() -> None:
        warm_up_umap()
        if export.find_browser() is not None:
            try:
                export.start_export_server()
            except ExportError:
                pass  # the first PNG export will say why
        freeze_heap()  # what UMAP's import and compile left behind lives as long as the server
    thread = threading.Thread(target=work, name="glom-viz-warm-up", daemon=True)
    thread.start()
    return thread


def freeze_heap() -> None:
    """Move every object alive now out of the garbage collector's sight (gc.freeze).

    Streamlit runs a full collection after every script or fragment run (runner.postScriptGC). Over
    the heap that torch, scikit-learn, plotly and numba leave, that took ~270 ms of CPU per scrub,
    holding the GIL while the browser waited for the new overlay; frozen, it only walks what the runs
    made since. Called once the first page is drawn (the imports and the model are in) and again after
    the warm-up; whatever is alive then lives as long as the server anyway.
    """
    gc.collect()
    gc.freeze()


@st.cache_resource(show_spinner=False)
def heap_frozen() -> bool:
    """freeze_heap once per server, after the first page."""
    freeze_heap()
    return True


@st.cache_resource(show_spinner=False)
def static_export_browser() -> str | None:
    """The Chromium that PNG and SVG export drive, or None (then only HTML export is offered)."""
    return export.find_browser()
