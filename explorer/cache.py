"""Every cache of the app, and nothing else: the library stays cache-free and pure.

Keys are content hashes (``content_key``) of what a result was made from: the model's checkpoint or
seed and config, the picture's bytes, the settings. A leading underscore keeps an argument out of the
key: it only computes a missing entry. ``st.cache_resource`` holds what every visitor shares and only
reads (the model, the warm-up thread); ``st.cache_data`` pickles what it keeps, so the typed results
(pictures, runs, labels) are cached as they are.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import streamlit as st

from explorer.limits import (DERIVED_CACHE_BYTES, DERIVED_CACHE_ENTRIES, MODEL_CACHE_BYTES, MODEL_CACHE_ENTRIES,
                             PICTURE_CACHE_BYTES, PICTURE_CACHE_ENTRIES, RUN_CACHE_BYTES, RUN_CACHE_ENTRIES, RUN_NICE,
                             RUN_WORKERS)
from glom_viz import export
from glom_viz.errors import CheckpointError, ConfigError, ExportError
from glom_viz.model import run_path
from glom_viz.project import warm_up_umap
from glom_viz.runs import Run

T = TypeVar("T")
# the dims whose precision probes (glom_viz.model.run_path: a tenth of a second, once per process) the warm-up
# runs before a visitor asks: the shipped model's and glom-pytorch's default
PROBED_DIMS = (64, 512)


def content_key(*parts) -> str:
    """A short sha256 over the repr of some hashable settings and hashes."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def model_bytes(module) -> int:
    """What a model holds: its weights and buffers, in bytes."""
    return sum(t.numel() * t.element_size() for t in itertools.chain(module.parameters(), module.buffers()))


class ModelStore:
    """The models every visitor shares, bounded in bytes and in entries: the least recently used go first.

    ``st.cache_resource`` bounds entries only, and one upload may ask for a model of hundreds of MB. Each
    model is loaded once (visitors asking for the same one at once wait for the first), counted by its
    weights and buffers; refusals are remembered too, so a hostile or misfit checkpoint left in an
    uploader is not parsed again on every rerun.
    """

    def __init__(self, max_bytes: int, max_entries: int, max_refusals: int = 64):
        self.max_bytes, self.max_entries, self.max_refusals = max_bytes, max_entries, max_refusals
        self._models: OrderedDict[str, tuple[object, int]] = OrderedDict()
        self._refused: OrderedDict[str, Exception] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    @property
    def bytes(self) -> int:
        """What the models held now weigh."""
        return sum(size for _, size in self._models.values())

    def keys(self) -> list[str]:
        return list(self._models)

    def get(self, key: str, load: Callable[[], T], refusals: tuple[type[Exception], ...] = ()) -> T:
        """The model under ``key``, loaded with ``load`` when missing; ``refusals`` it raises are remembered."""
        with self._lock:
            found = self._held(key)
            if found is not None:
                return found
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one load per key at a time
            with self._lock:
                found = self._held(key)
                if found is not None:
                    return found
            try:
                loaded = load()
            except refusals as error:
                with self._lock:
                    self._refused[key] = copy.copy(error)  # without its traceback, which holds the file's tensors
                    while len(self._refused) > self.max_refusals:
                        self._refused.popitem(last=False)
                raise
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self._models[key] = (loaded, model_bytes(loaded.model))
                while len(self._models) > 1 and (len(self._models) > self.max_entries or self.bytes > self.max_bytes):
                    self._models.popitem(last=False)
            return loaded

    def _held(self, key: str):
        """The model under ``key`` (now the most recently used), None, or its refusal raised again."""
        if key in self._refused:  # a copy, with what the error carries beside its message (CheckpointError.fields)
            raise copy.copy(self._refused[key])
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key][0]
        return None


@st.cache_resource(show_spinner=False)
def models() -> ModelStore:
    """The server's one model store."""
    return ModelStore(MODEL_CACHE_BYTES, MODEL_CACHE_ENTRIES)


def model(key: str, _load: Callable[[], T]) -> T:
    """A loaded model (explorer.models.LoadedModel), shared by every visitor: read only."""
    def load() -> T:
        with st.spinner("Loading the model…"):
            loaded = _load()
        loaded.model.eval().requires_grad_(False)
        return loaded
    return models().get(key, load, refusals=(CheckpointError, ConfigError))


@st.cache_resource(show_spinner=False)
def shared(key: str, _make: Callable[[], T]) -> T:
    """Something made once per server and only read after (the bundled photographs)."""
    return _make()


@st.cache_data(max_entries=PICTURE_CACHE_ENTRIES, max_size=PICTURE_CACHE_BYTES, show_spinner=False)
def pictures(key: str, _load: Callable[[], T]) -> T:
    """Pictures as loaded (a scene, or an upload's frames), keyed by the file's or scene's hash."""
    return _load()


@st.cache_data(max_entries=PICTURE_CACHE_ENTRIES, max_size=PICTURE_CACHE_BYTES, show_spinner=False)
def masks(key: str, _read: Callable[[], T]) -> T:
    """An uploaded mask as read (its labels, or why it cannot be used), keyed by the file's hash and its picture."""
    return _read()


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
    """Off the visitors' path: time the precision paths, compile UMAP, then start the export browser."""
    def work() -> None:
        for dim in PROBED_DIMS:
            run_path(dim, "fast")
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


def _lower_priority() -> None:
    """A run worker's start: this thread (Linux schedules threads one by one) RUN_NICE below the server."""
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + RUN_NICE))
    except (AttributeError, OSError):
        pass  # no per-thread priorities here: runs compete at the server's own


@st.cache_resource(show_spinner=False)
def run_workers() -> ThreadPoolExecutor:
    """The threads GLOM runs in, once per server: at most RUN_WORKERS runs at once, at a lower priority."""
    return ThreadPoolExecutor(max_workers=RUN_WORKERS, thread_name_prefix="glom-run", initializer=_lower_priority)


@st.cache_resource(show_spinner=False)
def island_workers() -> ThreadPoolExecutor:
    """The threads that find the islands of a run's steps while the run goes (explorer.running), once per server,
    at the runs' lower priority: they are the runs' work, and a visitor scrubbing goes first."""
    return ThreadPoolExecutor(max_workers=RUN_WORKERS, thread_name_prefix="glom-islands", initializer=_lower_priority)


@st.cache_resource(show_spinner=False)
def heap_frozen() -> bool:
    """freeze_heap once per server, after the first page."""
    freeze_heap()
    return True


@st.cache_resource(show_spinner=False)
def static_export_browser() -> str | None:
    """The Chromium that PNG and SVG export drive, or None (then only HTML export is offered)."""
    return export.find_browser()
