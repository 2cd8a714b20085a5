"""Everything the explorer shows, written out: figures as PNG/SVG/HTML, labels and measures as CSV/JSON,
states as NPZ, and a zip bundle whose manifest says how it was made (provenance) and hashes every file.

Static images come from kaleido 1.x driving the system Chromium. Starting Chromium costs seconds, so one
export server is kept warm for the whole process: the first export pays the start, later ones take a
fraction of a second. We hold kaleido's `Kaleido` on our own event-loop thread rather than through
`kaleido.start_sync_server`, because that server hangs forever when the browser fails to start and
hands results back through a shared queue that concurrent callers (Streamlit sessions are threads)
could swap; here each export has its own future and a timeout.
"""

from __future__ import annotations

import asyncio
import atexit
import csv
import datetime as dt
import hashlib
import importlib.metadata
import io
import json
import math
import platform
import re
import threading
import zipfile
from collections.abc import Mapping

import numpy as np
from PIL import Image

from glom_viz.errors import ExportError

EXPORT_START_TIMEOUT_S = 60
EXPORT_TIMEOUT_S = 60
PNG_SCALE = 2
MANIFEST_NAME = "manifest.json"
# a fixed timestamp inside the zip keeps bundles of the same files byte-identical
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
# distribution names whose versions go into the provenance
PACKAGES = ("glom-viz", "torch", "numpy", "scipy", "scikit-learn", "umap-learn", "plotly", "kaleido",
            "streamlit", "einops", "safetensors", "Pillow", "glom-pytorch")
LABEL_COLUMNS = ("step", "level", "patch", "row", "col", "island")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
NO_BROWSER = ("static export (PNG, SVG) needs a Chromium-based browser and none was found: install one "
              "(apt-get install chromium), or set BROWSER_PATH to its executable; HTML export works without it")


# ---------------------------------------------------------------------------------------------------
# figures


def find_browser() -> str | None:
    """The Chromium kaleido would drive (BROWSER_PATH, then PATH, then the usual places), or None."""
    from choreographer.browsers.chromium import Chromium

    return Chromium.find_browser(skip_local=False)


async def _open_kaleido(browser: str):
    """A started kaleido renderer, made inside the loop that will drive it."""
    import kaleido

    class Renderer(kaleido.Kaleido):
        """Kaleido that reloads a used tab after handing the image back, not before.

        Kaleido reloads its tab before `calc_fig` returns: ~40% of a repeated small export here. The
        reload now runs in the background and the next export waits for the tab as before. (If a later
        kaleido renames this private hook, the override is simply unused and exports stay correct.)
        """

        async def _return_kaleido_tab(self, *args, **kwargs):
            task = asyncio.create_task(super()._return_kaleido_tab(*args, **kwargs))
            _TAB_RETURNS.add(task)
            task.add_done_callback(_TAB_RETURNS.discard)

    # mathjax=False: the default loads MathJax from a CDN, which stalls without network
    renderer = Renderer(n=1, timeout=EXPORT_TIMEOUT_S, mathjax=False, path=browser)
    await renderer.open()
    return renderer


async def _close_kaleido(renderer) -> None:
    await asyncio.gather(*_TAB_RETURNS, return_exceptions=True)
    await renderer.close()


_TAB_RETURNS: set[asyncio.Task] = set()  # tab reloads in flight, held so they are not collected


class _ExportServer:
    """One kaleido renderer (one Chromium, one tab) on a background event loop, started on first use."""

    def __init__(self):
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kaleido = None

    @property
    def running(self) -> bool:
        return self._kaleido is not None

    def start(self) -> None:
        with self._lock:
            if self._kaleido is not None:
                return
            browser = find_browser()
            if browser is None:
                raise ExportError(NO_BROWSER)
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="glom-viz-export", daemon=True).start()
            try:
                renderer = asyncio.run_coroutine_threadsafe(_open_kaleido(browser), loop).result(
                    EXPORT_START_TIMEOUT_S)
            except Exception as error:
                loop.call_soon_threadsafe(loop.stop)
                reason = error.args[0] if error.args else error
                raise ExportError(f"could not start the browser at {browser} for static export ({reason}); "
                                  f"check that `{browser} --headless --dump-dom about:blank` runs") from error
            self._loop, self._kaleido = loop, renderer

    def render(self, fig, opts: dict) -> bytes:
        self.start()
        future = asyncio.run_coroutine_threadsafe(self._kaleido.calc_fig(fig, opts=opts), self._loop)
        try:
            return future.result(EXPORT_TIMEOUT_S)
        except TimeoutError as error:
            future.cancel()
            raise ExportError(f"static export took over {EXPORT_TIMEOUT_S} s and was stopped: "
                              "try a smaller figure or scale") from error
        except Exception as error:
            raise ExportError(f"the browser could not render the figure: {error}") from error

    def stop(self) -> None:
        with self._lock:
            if self._kaleido is None:
                return
            try:
                asyncio.run_coroutine_threadsafe(_close_kaleido(self._kaleido), self._loop).result(
                    EXPORT_START_TIMEOUT_S)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._loop, self._kaleido = None, None


_SERVER = _ExportServer()
atexit.register(_SERVER.stop)


def start_export_server() -> None:
    """Start the warm export browser now (e.g. off the user's path); raises ExportError if none."""
    _SERVER.start()


def stop_export_server() -> None:
    """Close the export browser; the next static export starts a new one."""
    _SERVER.stop()


def export_server_running() -> bool:
    """Whether a warm export browser is up."""
    return _SERVER.running


def _static(fig, fmt: str, scale: float, width: int | None, height: int | None) -> bytes:
    opts = {"format": fmt, "scale": scale}
    if width:
        opts["width"] = width
    if height:
        opts["height"] = height
    return _SERVER.render(fig, opts)


def figure_to_png(fig, scale: float = PNG_SCALE, width: int | None = None, height: int | None = None) -> bytes:
    """A plotly figure as PNG bytes, `scale` times the layout size (layout width/height, else 700 x 500)."""
    return _static(fig, "png", scale, width, height)


def figure_to_svg(fig, width: int | None = None, height: int | None = None) -> bytes:
    """A plotly figure as SVG bytes (vector; embedded images stay raster)."""
    return _static(fig, "svg", 1, width, height)


def figure_to_html(fig) -> bytes:
    """A plotly figure as one self-contained interactive HTML page (plotly.js inline, works offline)."""
    return fig.to_html(full_html=True, include_plotlyjs=True).encode("utf-8")


def image_to_png(rgb) -> bytes:
    """(H, W, 3) uint8 RGB (or (H, W) grey) -> PNG bytes."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim not in (2, 3) or (rgb.ndim == 3 and rgb.shape[2] not in (3, 4)):
        raise ExportError(f"image_to_png takes (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}: "
                          "convert with (np.clip(x, 0, 1) * 255).astype(np.uint8)")
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# data


def labels_to_csv(labels, grid, level: int | None = None) -> bytes:
    """Island labels as long-format CSV: one row per (step, level, patch).

    Args:
        labels: (steps, levels, patches) or (steps, patches) island ids, -1 noise.
        grid: (h, w) patch grid, h * w == patches; gives each patch's row and col.
        level: for (steps, patches) labels, the level they belong to (written in the level column).

    Returns:
        UTF-8 CSV with header step,level,patch,row,col,island (level empty when 2-D and not given).
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[:, None, :]
        levels = ["" if level is None else int(level)]
    elif labels.ndim == 3:
        levels = list(range(labels.shape[1]))
    else:
        raise ExportError(f"labels must be (steps, levels, patches) or (steps, patches), got {labels.shape}")
    h, w = int(grid[0]), int(grid[1])
    if labels.shape[-1] != h * w:
        raise ExportError(f"labels hold {labels.shape[-1]} patches but grid {tuple(grid)} has {h * w}")
    steps, n_levels, patches = labels.shape
    step_idx, level_idx, patch_idx = (a.ravel() for a in np.indices(labels.shape))
    level_col = np.asarray(levels, dtype=object)[level_idx]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LABEL_COLUMNS)
    writer.writerows(zip(step_idx.tolist(), level_col.tolist(), patch_idx.tolist(), (patch_idx // w).tolist(),
                         (patch_idx % w).tolist(), labels.ravel().tolist()))
    return buffer.getvalue().encode("utf-8")


def _per_level(measures) -> dict:
    """level -> list of per-step dicts; a bare list is one level (0)."""
    if isinstance(measures, Mapping):
        return dict(measures)
    return {0: list(measures)}


def measures_to_csv(measures) -> bytes:
    """Island measures as CSV, one row per (level, step), one column per measure.

    Args:
        measures: level -> list (one per step) of dicts of measures, or one such list.

    Returns:
        UTF-8 CSV with header level,step,<measures in first-seen order>; missing or NaN values empty.
    """
    per_level = _per_level(measures)
    keys = []
    for steps in per_level.values():
        for row in steps:
            keys += [k for k in row if k not in keys and k not in ("level", "step")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["level", "step", *keys])
    for level, steps in per_level.items():
        for t, row in enumerate(steps):
            values = [_jsonable(row.get(k)) for k in keys]
            writer.writerow([level, row.get("step", t), *("" if v is None else v for v in values)])
    return buffer.getvalue().encode("utf-8")


def _jsonable(value):
    """numpy and torch values -> plain JSON values; NaN and infinities -> None (JSON has neither)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def measures_to_json(measures, **extra) -> bytes:
    """Island measures (level -> per-step dicts, or one list) as JSON: {"measures": {level: [...]}, **extra}.

    NaN and infinities become null; level keys become strings, as JSON requires.
    """
    document = {"measures": _jsonable(_per_level(measures)), **_jsonable(extra)}
    return json.dumps(document, indent=1, allow_nan=False).encode("utf-8")


def to_json(document) -> bytes:
    """Any dict of numbers, arrays and strings as strict JSON bytes (NaN -> null)."""
    return json.dumps(_jsonable(document), indent=1, allow_nan=False).encode("utf-8")


def _numpy(array, name: str) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu()
        if str(array.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            array = array.float()
        array = array.numpy()
    array = np.asarray(array)
    if array.dtype == object:
        raise ExportError(f"{name} is an object array, which NPZ can only hold through pickle: pass numbers")
    return array


def states_to_npz(states, labels=None, **arrays) -> bytes:
    """States (and labels and any other arrays) as a compressed NPZ, readable with allow_pickle=False.

    Args:
        states: (steps, b, patches, levels, dim) or any shape, numpy or torch.
        labels: optional island labels, stored as "labels".
        **arrays: more named arrays (e.g. coords=..., image=...).

    Returns:
        The bytes of `np.savez_compressed`.
    """
    named = {"states": states, **({} if labels is None else {"labels": labels}), **arrays}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{name: _numpy(a, name) for name, a in named.items()})
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# provenance and bundle


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def package_versions(packages=PACKAGES) -> dict[str, str | None]:
    """Installed versions by distribution name (None where not installed); imports nothing."""
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(model_config: Mapping, checkpoint_hash: str | None, image_hash: str, seed: int, iters: int,
               method: str, params: Mapping, *, model_seed: int | None = None, **extra) -> dict:
    """What a bundle's results came from, enough to make them again.

    Args:
        model_config: the model's configuration (e.g. dataclasses.asdict(model.config)).
        checkpoint_hash: sha256 (hex) of the checkpoint's bytes, or None for weights drawn from a seed.
        image_hash: sha256 (hex) of the image: the file's bytes, or a bundled picture's pixels.
        seed: the seed of what draws at random after the model: UMAP (islands in UMAP space, projections).
        iters: GLOM iterations run.
        method: clustering method.
        params: the clustering method's parameters.
        model_seed: the seed the model's weights were drawn from, for a model without a checkpoint.
        **extra: anything else worth keeping (level, projection, ...).

    Returns:
        A JSON-ready dict with a UTC timestamp, Python and platform, and package versions. Its
        "islands_seed" is `seed`; "model_seed" appears only for seeded weights.

    Raises:
        ExportError: a hash that is not a full sha256 (64 hex digits), or a seeded model with a checkpoint.
    """
    for name, value in (("checkpoint_hash", checkpoint_hash), ("image_hash", image_hash)):
        if not (value is None and name == "checkpoint_hash") and not (
                isinstance(value, str) and SHA256_HEX.fullmatch(value)):
            raise ExportError(f"{name} must be a full sha256 in hex (64 digits), got {value!r}: hash the bytes "
                              "with hashlib.sha256(...).hexdigest()"
                              + (", or pass None for weights drawn from a seed" if name == "checkpoint_hash" else ""))
    if (checkpoint_hash is None) != (model_seed is not None):
        raise ExportError("pass model_seed for weights drawn from a seed (checkpoint_hash None), and a "
                          "checkpoint_hash otherwise")
    model = {"checkpoint_sha256": checkpoint_hash} if model_seed is None else {
        "checkpoint_sha256": None, "model_seed": int(model_seed)}
    return _jsonable({
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model_config": dict(model_config),
        **model,
        "image_sha256": image_hash,
        "islands_seed": int(seed),
        "iters": int(iters),
        "method": method,
        "params": dict(params),
        **extra,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
    })


def _safe_name(name: str) -> str:
    parts = name.replace("\\", "/").split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or name == MANIFEST_NAME:
        raise ExportError(f"bundle file name {name!r} must be a relative path without '..' and not "
                          f"{MANIFEST_NAME!r}: rename it, e.g. 'labels.csv' or 'figures/islands.png'")
    return name


def make_bundle(files: Mapping[str, bytes], manifest: Mapping) -> bytes:
    """A zip of `files` plus manifest.json: `manifest` with "files" listing every name, size and sha256.

    Args:
        files: name -> bytes, names relative paths (e.g. "figures/islands.png").
        manifest: provenance and anything else to record (see `provenance`).

    Returns:
        The zip's bytes; identical inputs give identical bytes.
    """
    entries = []
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, data in files.items():
            if not isinstance(data, (bytes, bytearray)):
                raise ExportError(f"bundle file {name!r} must be bytes, got {type(data).__name__}: "
                                  "use the *_to_* functions of glom_viz.export to make them")
            bundle.writestr(zipfile.ZipInfo(_safe_name(name), ZIP_DATE_TIME), bytes(data),
                            compress_type=zipfile.ZIP_DEFLATED)
            entries.append({"name": name, "bytes": len(data), "sha256": sha256_bytes(bytes(data))})
        document = {**_jsonable(dict(manifest)), "files": entries}
        bundle.writestr(zipfile.ZipInfo(MANIFEST_NAME, ZIP_DATE_TIME), to_json(document),
                        compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def run_bundle(states, labels, grid, measures, *, image, overlay, step: int, level: int, provenance: Mapping,
               truth: str | None = None) -> bytes:
    """One picture's run as a zip, with a manifest saying how it was made.

    Args:
        states: (T, N, L, D) the run's states; labels: (T, L, N) its islands; grid: (h, w) patches.
        measures: level -> per-step measures (``islands.island_measures``).
        image: (S, S, 3) uint8, the model's input; overlay: (H, W, 3) uint8, the islands at (step, level).
        step, level: what the overlay shows; provenance: ``provenance(...)``'s record of the run;
        truth: the ground truth the measures were scored against, if any.

    Returns:
        The zip's bytes: input.png, the overlay, labels.csv, measures.csv, measures.json, states.npz and
        manifest.json.
    """
    files = {
        "input.png": image_to_png(image),
        f"islands-level{level}-step{step}.png": image_to_png(overlay),
        "labels.csv": labels_to_csv(labels, grid),
        "measures.csv": measures_to_csv(measures),
        "measures.json": measures_to_json(measures, truth=truth),
        "states.npz": states_to_npz(states, labels=labels, image=image),
    }
    manifest = {**provenance, "step": int(step), "level": int(level), "truth": truth,
                "states_dtype": str(np.asarray(states).dtype)}
    return make_bundle(files, manifest)
