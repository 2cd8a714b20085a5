"""Shared by the app's tests: references computed by glom_viz directly, pictures as upload bytes, and a real
`streamlit run app.py` (explorer.serve) with Debian's Chromium for the browser tests."""

from __future__ import annotations

import io
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from explorer.serve import APP, CHROMIUM, CHROMIUM_ARGS, serve_app
from explorer.settings import RANDOM_CONFIG, RANDOM_SEED, SCENE_SEEDS
from glom_viz import islands
from glom_viz.checkpoints import SHIPPED_CHECKPOINT, load_shipped
from glom_viz.images import to_model_input
from glom_viz.model import REDUCED_PRECISION_ENV, Glom
from glom_viz.runs import Run, run
from glom_viz.scenes import make_scene

ITERATE = Glom.iterate  # references run through this, outside any count of the app's runs


def default_model() -> Glom:
    """The model the app opens on: the shipped one, or its seeded stand-in."""
    if SHIPPED_CHECKPOINT.is_file():
        return load_shipped()
    torch.manual_seed(RANDOM_SEED)
    return Glom.from_config(RANDOM_CONFIG).eval()


def scene_rgb(index: int, image_size: int) -> np.ndarray:
    return np.rint(make_scene(SCENE_SEEDS[index], image_size).image * 255).astype(np.uint8)


def reference_run(model: Glom, rgb: np.ndarray, iters: int | None = None, start=None) -> Run:
    """glom_viz.runs.run of the model on a picture, fp32, as the app's input (centre crop)."""
    tensor, _, _ = to_model_input(rgb, model.config.image_size, "crop")
    with mock.patch.object(Glom, "iterate", ITERATE):
        return run(model, tensor, iters, start=start)


def reference_labels(states: np.ndarray, grid, **settings) -> np.ndarray:
    """(T, L, N) islands of the states (as a Run stores them), default settings."""
    settings = {"method": "kmeans", "n_islands": None, **settings}
    if settings["method"] in islands.COUNT_METHODS and settings["n_islands"] is None:
        settings.setdefault("max_islands", islands.MAX_ISLANDS)
    return islands.find_islands_all_levels(states, grid, **settings)


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
