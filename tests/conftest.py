"""Shared by the app's tests: references computed by glom_viz directly, pictures as upload bytes, and a real
`streamlit run app.py` (explorer.serve) with Debian's Chromium for the browser tests."""

from __future__ import annotations

import importlib
import io
import json
import re
import sys
import tempfile
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

from explorer import state
from explorer.scrubber import SCRUBBER_NAME
from explorer.serve import APP, CHROMIUM, CHROMIUM_ARGS, serve_app
from explorer.settings import RANDOM_CONFIG, RANDOM_SEED, SCENE_SEEDS
from glom_viz import islands
from glom_viz.checkpoints import SHIPPED_CHECKPOINT, load_shipped
from glom_viz.images import to_model_input
from glom_viz.model import REDUCED_PRECISION_ENV, Glom
from glom_viz.runs import ColumnProbe, Run, probe_column, run
from glom_viz.scenes import make_scene
from glom_viz.text import WORD_JOINER

ITERATE = Glom.iterate  # references run through this, outside any count of the app's runs


def default_model() -> Glom:
    """The model the app opens on: the shipped one, or its seeded stand-in."""
    if SHIPPED_CHECKPOINT.is_file():
        return load_shipped()
    torch.manual_seed(RANDOM_SEED)
    return Glom.from_config(RANDOM_CONFIG).eval()


def scene_rgb(index: int, image_size: int) -> np.ndarray:
    return np.rint(make_scene(SCENE_SEEDS[index], image_size).image * 255).astype(np.uint8)


def reference_run(model: Glom, rgb: np.ndarray, iters: int | None = None, start=None, before: np.ndarray | None = None,
                  release: float | None = None) -> Run:
    """glom_viz.runs.run of the model on a picture, fp32, as the app's input (centre crop); `before` the
    picture `start` settled on, as an (H, W, 3) picture too."""
    tensor, _, _ = to_model_input(rgb, model.config.image_size, "crop")
    previous = None if before is None else to_model_input(before, model.config.image_size, "crop")[0]
    with mock.patch.object(Glom, "iterate", ITERATE):
        return run(model, tensor, iters, start=start, before=previous, release=release)


def reference_probe(model: Glom, rgb: np.ndarray, step: int) -> ColumnProbe:
    """glom_viz.runs.probe_column of the model on a picture at one step, fp32, as the app's input."""
    tensor, _, _ = to_model_input(rgb, model.config.image_size, "crop")
    with mock.patch.object(Glom, "iterate", ITERATE):
        return probe_column(model, tensor, step)


def reference_labels(states: np.ndarray, grid, **settings) -> np.ndarray:
    """(T, L, N) islands of the states (as a Run stores them), default settings."""
    settings = {"method": "kmeans", "n_islands": None, **settings}
    if settings["method"] in islands.COUNT_METHODS and settings["n_islands"] is None:
        settings.setdefault("max_islands", islands.MAX_ISLANDS)
    return islands.find_islands_all_levels(states, grid, **settings)


EXPERIMENTS = Path(__file__).parent.parent / "experiments"


def sprites():
    """experiments/sprites.py: a scene family the package never trains on, written in the dataset layout."""
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    return importlib.import_module("sprites")


def sprite_zip(seeds, image_size: int = 64, extra: dict[str, bytes] | None = None) -> bytes:
    """A zip of sprite scenes in the dataset layout inside one top folder, as zipping a folder makes it,
    with ``extra`` members (name -> bytes) added as they are."""
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as folder, zipfile.ZipFile(buffer, "w") as archive:
        root = sprites().write_split(Path(folder) / "sprites", seeds, image_size)
        for path in sorted(root.rglob("*.png")):
            archive.write(path, f"sprites/{path.relative_to(root).as_posix()}")
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
    return buffer.getvalue()


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


def shown_step(at) -> int:
    """The step the page shows: the Step slider's or, where the view scrubs in the page, the scrubber's."""
    return at.session_state[state.STEP]


def set_step(at, step: int):
    """Choose a step the way scrubbing does once it stops (AppTest cannot drive the in-page scrubber)."""
    at.session_state[state.STEP] = step
    return at


def scrubber_data(at) -> dict:
    """What the page gave the in-page scrubber (explorer.scrubber): a picture and a caption per step, its step."""
    (component,) = [c for c in at.get("bidi_component") if c.proto.component_name == SCRUBBER_NAME]
    return json.loads(component.proto.json)


def picture_rgb(encoded: bytes) -> np.ndarray:
    """The (H, W, 3) pixels of an encoded picture."""
    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))


@pytest.fixture
def media(monkeypatch) -> dict[str, bytes]:
    """The files the app gives Streamlit's media files in its AppTest runs, by the URL the page is sent: AppTest
    makes a new media store for each run and drops it after, so the test keeps its own record."""
    served: dict[str, bytes] = {}
    load = MemoryMediaFileStorage.load_and_get_id

    def recorded(self, path_or_data, mimetype, kind, filename=None):
        file_id = load(self, path_or_data, mimetype, kind, filename)
        if isinstance(path_or_data, bytes):
            served[self.get_url(file_id)] = path_or_data
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", recorded)
    return served


def shown(markdown: str) -> str:
    """What a reader sees of Markdown that glom_viz.text.plain escaped: its backslashes and word joiners gone."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace(WORD_JOINER, "")


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
