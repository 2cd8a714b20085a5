"""Shared by the app's tests: app.py's constants, references computed by glom_viz directly, pictures as upload
bytes, and a real `streamlit run app.py` with Debian's Chromium for the browser tests."""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glom_viz import islands
from glom_viz.checkpoints import SHIPPED_CHECKPOINT, load_shipped
from glom_viz.images import to_model_input
from glom_viz.model import REDUCED_PRECISION_ENV, Glom
from glom_viz.scenes import make_scene

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
SERVER_START_TIMEOUT_S = 90
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
# no UMAP compile or export browser in the background while tests run: they would only compete for the cores
APP_ENV = {"GLOM_VIZ_WARM_UP": "0"}


@functools.cache
def app_module():
    """app.py as a module (its page only runs as __main__): its constants and small helpers."""
    spec = importlib.util.spec_from_file_location("glom_viz_app", APP)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


ITERATE = Glom.iterate  # references run through this, outside any count of the app's runs


def default_model() -> Glom:
    """The model the app opens on: the shipped one, or its seeded stand-in."""
    if SHIPPED_CHECKPOINT.is_file():
        return load_shipped()
    torch.manual_seed(app_module().RANDOM_SEED)
    return Glom.from_config(app_module().RANDOM_CONFIG).eval()


def scene_rgb(index: int, image_size: int) -> np.ndarray:
    return np.rint(make_scene(app_module().SCENE_SEEDS[index], image_size).image * 255).astype(np.uint8)


def reference_run(model: Glom, rgb: np.ndarray, iters: int | None = None, levels=None) -> np.ndarray:
    """(T, N, L, D) float32 states of glom_viz's model on a picture, fp32, as the app's input."""
    tensor, _, _ = to_model_input(rgb, model.config.image_size, "crop")
    with torch.inference_mode():
        return np.stack([s.levels[0].numpy() for s in ITERATE(model, tensor, iters, levels)])


def reference_labels(states: np.ndarray, grid, **settings) -> np.ndarray:
    """(T, L, N) islands of the states as the app stores them (float16), default settings."""
    settings = {"method": "kmeans", "n_islands": None, **settings}
    if settings["method"] in islands.COUNT_METHODS and settings["n_islands"] is None:
        settings.setdefault("max_islands", islands.MAX_ISLANDS)
    return islands.find_islands_all_levels(states.astype(app_module().STATES_DTYPE), grid, **settings)


def video_bytes(frames, container: str = "mp4", codec: str = "mpeg4", rate: int = 10, **options) -> bytes:
    """(T, H, W, 3) uint8 frames -> a video file's bytes, encoded by PyAV (FFmpeg) in memory.

    ``options`` are the muxer's, e.g. ``movflags="frag_keyframe+empty_moov"`` for an MP4 whose index
    comes first, so that a cut file keeps the frames before the cut.
    """
    import av

    frames = np.asarray(frames)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container, options=options) as output:
        stream = output.add_stream(codec, rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for rgb in frames:
            output.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        output.mux(stream.encode())
    return buffer.getvalue()


INDEX_BITS = 7  # moving_square writes its frame index in binary, one 8 x 8 block per bit, along the bottom


def moving_square(count: int, size: tuple[int, int] = (48, 64), step: int = 2) -> np.ndarray:
    """(count, H, W, 3) uint8: a white square moving right by `step` px a frame on black, with the
    frame's index written in blocks along the bottom (``frame_index`` reads it back through a codec)."""
    height, width = size
    frames = np.zeros((count, height, width, 3), np.uint8)
    for index in range(count):
        left = (index * step) % (width - 12)
        frames[index, 8:20, left:left + 12] = 255
        for bit in range(INDEX_BITS):
            if index >> bit & 1:
                frames[index, height - 8:, bit * 8:bit * 8 + 8] = 255
    return frames


def frame_index(rgb: np.ndarray) -> int:
    """The index moving_square wrote into a frame."""
    height = rgb.shape[0]
    return sum(1 << bit for bit in range(INDEX_BITS) if rgb[height - 6:height - 2, bit * 8 + 2:bit * 8 + 6].mean() > 128)


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def photo_rgb() -> np.ndarray:
    """A real photograph (skimage's astronaut), 160 x 120, so crop and resize both happen."""
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((160, 120)))


@pytest.fixture(scope="session")
def photo_png(photo_rgb) -> bytes:
    return png_bytes(photo_rgb)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve_app(env: dict | None = None, log_path: Path | None = None, script: Path = APP):
    """`streamlit run app.py` (or another script) headless on a free localhost port; yields its URL, stops it after."""
    port = free_port()
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env={**os.environ, **APP_ENV, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {process.returncode} before serving")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not answer on {url} within {SERVER_START_TIMEOUT_S} s")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log is not subprocess.DEVNULL:
            log.close()


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """One app server for the browser tests of a session, opening on exact fp32.

    The tests compare its islands with fp32 references (reference_run). On a CPU with native bf16 the
    app would open on its fast path, whose states differ within bf16 rounding, enough to move k-means
    where two counts score alike; test_app covers the fast path.
    """
    with serve_app(env={REDUCED_PRECISION_ENV: "0"},
                   log_path=tmp_path_factory.mktemp("streamlit") / "server.log") as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by Playwright (skipped, saying why, where either is missing)."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
