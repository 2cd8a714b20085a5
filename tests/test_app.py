"""The app, headless: every control and view through streamlit's AppTest, results checked against glom_viz
called directly on the same picture (the app must show exactly what the package computes).

GLOM's runs are counted by wrapping ``Glom.iterate``: scrubbing, switching level, view or clustering
must never run the model again.
"""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import streamlit as st
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import (APP, default_model, moving_square, picture_rgb, png_bytes, reference_labels, reference_probe,
                      reference_run, scene_rgb, scrubber_data, set_step, shown, shown_step, sprite_zip, sprites,
                      video_bytes)
from explorer.context import ALL_LEVELS, DEFAULT_LEVEL
from explorer.limits import MAX_ITERATIONS, MAX_UPLOADS, run_size_problem
from explorer.pictures import DISPLAY_PX
from explorer.settings import SCENE_SEEDS
from explorer.views import OTHER_MODELS, VIEWS
from explorer.views.common import patches_of
from glom_viz import islands, render
from glom_viz import model as glom_model
from glom_viz.checkpoints import SHIPPED_CHECKPOINT, save_checkpoint
from glom_viz.images import to_model_input
from glom_viz.model import RELEASE, REDUCED_PRECISION_ENV, Glom, GlomConfig, reduced_precision_is_fast
from glom_viz.project import project
from glom_viz.scenes import make_scene


TIMEOUT_S = 120
TINY = GlomConfig(dim=16, levels=2, image_size=32, patch_size=4)


# ---------------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture
def at(monkeypatch):
    """A fresh app: empty caches (they are process-wide), no UMAP warm-up thread."""
    monkeypatch.setenv("GLOM_VIZ_WARM_UP", "0")
    st.cache_data.clear()
    st.cache_resource.clear()
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)


@pytest.fixture
def glom_runs(monkeypatch):
    """Every call of Glom.iterate the app makes: (levels given to start from, contributions asked)."""
    calls = []
    original = Glom.iterate

    def counted(self, img, iters=None, levels=None, **options):
        calls.append({"levels": None if levels is None else levels.detach().clone(),
                      "contributions": options.get("contributions", False), "iters": iters})
        return original(self, img, iters, levels, **options)

    monkeypatch.setattr(Glom, "iterate", counted)
    return calls


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def run(at: AppTest) -> AppTest:
    return ok(at.run())


def legend(at: AppTest) -> dict[int, int]:
    """island id -> patches, read from the legend beside the overlay."""
    chips = [m.value for m in at.markdown if "line-height:1.9" in m.value]
    assert len(chips) == 1, "no island legend on the page"
    found = re.findall(r"(island (\d+)|no island) · (\d+)", chips[0])
    return {(-1 if name == "no island" else int(island)): int(count) for name, island, count in found}


def expected_legend(labels: np.ndarray) -> dict[int, int]:
    ids, counts = np.unique(labels, return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist()))


def heading(at: AppTest) -> str:
    return next(m.value for m in at.markdown if " at level " in m.value)


def set_fp32(at: AppTest) -> None:
    """fp32, whatever this CPU's default: the references run in fp32."""
    at.session_state["model_precision"] = "fp32"


def mask_uploader(at: AppTest):
    return next(u for u in at.sidebar.file_uploader if u.key.startswith("mask_"))


JPEG_ERROR = 3.0  # mean absolute error (0-255) within which a JPEG of an overlay is that overlay


def main_images(at: AppTest) -> list:
    return [image for image in at.main.image]


# ---------------------------------------------------------------------------------------------------
# opening, scrubbing, caching


def test_opens_with_the_default_models_islands_drawn(at, glom_runs):
    set_fp32(at)
    run(at)
    model = default_model()
    levels = model.config.levels
    labels = reference_labels(reference_run(model, scene_rgb(0, model.config.image_size)).states, model.grid)

    assert len(glom_runs) == 1
    assert shown_step(at) == 2 * levels  # the last step, iterations = 2 x levels
    level = at.button_group(key="level").value
    assert level == min(DEFAULT_LEVEL, levels - 1)
    assert legend(at) == expected_legend(labels[-1, level])
    assert len(main_images(at)) >= 2  # the picture and the model's input, beside the scrubber's overlays
    if not SHIPPED_CHECKPOINT.is_file():
        assert any("Stand-in model" in w.value for w in at.warning)


def test_scrub_level_view_and_clustering_never_rerun_the_model(at, glom_runs):
    set_fp32(at)
    run(at)
    model = default_model()
    labels = reference_labels(reference_run(model, scene_rgb(0, model.config.image_size)).states, model.grid)

    run(set_step(at, 0))
    # step 0: every column holds the model's initial levels, so a level is one island of all patches
    assert legend(at) == {0: model.num_patches}
    assert "step 0" in heading(at)
    for step in (3, 5):
        for level in range(model.config.levels):
            run(set_step(at, step))
            run(at.button_group(key="level").set_value(level))
            assert legend(at) == expected_legend(labels[step, level])
    for view in VIEWS:
        if view not in OTHER_MODELS:  # those run a training run's checkpoints or a second model
            run(at.button_group(key="view").set_value(view))
    run(at.button_group(key="view").set_value("Islands"))
    for method in islands.METHODS:
        run(at.selectbox(key="islands_method").set_value(method))
        assert legend(at)
    assert len(glom_runs) == 1, "the model ran again for a change that only needs the cached states"

    run(at.slider(key=f"iterations_{model.config.levels}").set_value(3))
    assert len(glom_runs) == 2 and shown_step(at) <= 3


def test_the_scrubber_holds_every_steps_overlay_and_the_page_follows_the_chosen_step(at, media):
    """The in-page scrubber is given each step's overlay as render.draw_islands draws it, served by URL and
    captioned with its step; a step chosen (as scrubbing does once it stops) is the step of the whole page, and
    its rerun sends the same URLs again."""
    set_fp32(at)
    run(at)
    model = default_model()
    size, grid, last = model.config.image_size, model.grid, 2 * model.config.levels
    rgb = scene_rgb(0, size)
    labels = reference_labels(reference_run(model, rgb).states, grid)
    level = at.button_group(key="level").value
    pixels = to_model_input(rgb, size, "crop")[1]
    display = pixels.repeat(DISPLAY_PX // size, axis=0).repeat(DISPLAY_PX // size, axis=1)  # the scene, enlarged

    data = scrubber_data(at)
    assert (data["step"], data["last"], len(data["pictures"])) == (last, last, last + 1)
    assert data["captions"] == [f"scene 1 · level {level} · step {step} of {last}" for step in range(last + 1)]
    for step, url in enumerate(data["pictures"]):
        drawn = render.draw_islands(display, labels[step, level], grid).astype(float)
        assert np.abs(picture_rgb(media[url]) - drawn).mean() < JPEG_ERROR, step  # that step's overlay, as a JPEG
    assert not [s for s in at.slider if s.key == "step"], "the scrubber is the step control here"

    run(set_step(at, 2))
    assert scrubber_data(at)["step"] == 2 and "step 2" in heading(at)
    assert scrubber_data(at)["pictures"] == data["pictures"], "the pictures the page holds, not new ones"
    assert legend(at) == expected_legend(labels[2, level])
    run(at.button_group(key="level").set_value(ALL_LEVELS))  # all levels: the Step slider, at the same step
    assert at.slider(key="step").value == 2 and not at.get("bidi_component")
    run(at.slider(key="step").set_value(3))
    run(at.button_group(key="level").set_value(level))
    assert scrubber_data(at)["step"] == 3


def test_island_controls_change_the_islands_as_glom_viz_finds_them(at):
    set_fp32(at)
    run(at)
    model = default_model()
    states = reference_run(model, scene_rgb(0, model.config.image_size)).states
    run(at.button_group(key="level").set_value(1))
    davies_bouldin = reference_labels(states, model.grid)[-1, 1]
    assert legend(at) == expected_legend(davies_bouldin)
    run(at.selectbox(key="islands_count_by").set_value("silhouette"))
    silhouette = reference_labels(states, model.grid, count_by="silhouette")[-1, 1]
    assert legend(at) == expected_legend(silhouette)
    # the scene the app opens on: the silhouette keeps its wholes at level 1, Davies-Bouldin its parts
    assert len(np.unique(davies_bouldin)) > len(np.unique(silhouette))
    run(at.button_group(key="level").set_value(0))

    run(at.toggle(key="islands_auto").set_value(False))
    run(at.number_input(key="islands_count").set_value(3))
    assert legend(at) == expected_legend(reference_labels(states, model.grid, n_islands=3)[-1, 0])

    run(at.selectbox(key="islands_method").set_value("threshold"))
    picked = reference_labels(states, model.grid, method="threshold")  # per map, islands of 4 patches or more
    assert legend(at) == expected_legend(picked[-1, 0])
    run(at.toggle(key="islands_threshold_auto").set_value(False))
    run(at.slider(key="islands_threshold").set_value(0.95))
    run(at.number_input(key="islands_min_size").set_value(1))
    expected = reference_labels(states, model.grid, method="threshold", threshold=0.95, min_size=1)
    assert legend(at) == expected_legend(expected[-1, 0])

    run(at.selectbox(key="islands_method").set_value("agglomerative"))  # the count is automatic again
    connected = reference_labels(states, model.grid, method="agglomerative", connectivity=True)
    assert legend(at) == expected_legend(connected[-1, 0])
    run(at.checkbox(key="islands_connectivity").uncheck())
    free = reference_labels(states, model.grid, method="agglomerative", connectivity=False)
    assert legend(at) == expected_legend(free[-1, 0])
    run(at.selectbox(key="islands_method").set_value("hdbscan"))
    run(at.number_input(key="islands_min_cluster").set_value(8))
    expected = reference_labels(states, model.grid, method="hdbscan", min_cluster_size=8)
    assert legend(at) == expected_legend(expected[-1, 0])  # noise (-1) counted apart, as the legend does


def test_all_levels_and_play(at):
    run(at)
    levels = default_model().config.levels
    run(at.button_group(key="level").set_value(ALL_LEVELS))
    captions = [c for image in at.main.image for c in image.captions if c.startswith("level ")]
    assert len(captions) == levels

    last = at.slider(key="step").value
    run(at.button(key="play").click())  # at the last step, play starts again from step 0, shown first
    assert at.slider(key="step").value == 0
    assert at.button(key="play").label.startswith("⏸")
    run(at)  # the timer's next tick
    assert at.slider(key="step").value == 1
    run(at.button(key="play").click())
    assert at.button(key="play").label.startswith("▶") and at.slider(key="step").value == 1
    assert last > 1


# ---------------------------------------------------------------------------------------------------
# views


def decoded(value):
    """Plotly JSON with its typed arrays ({"dtype", "bdata", "shape"}) as numpy arrays."""
    if isinstance(value, dict):
        if set(value) >= {"dtype", "bdata"}:
            array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
            shape = value.get("shape")
            return array.reshape([int(n) for n in str(shape).split(",")]) if shape else array
        return {key: decoded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decoded(item) for item in value]
    return value


def chart(at: AppTest, index: int = 0) -> dict:
    """The plotly figure a chart on the page shows, as plotly JSON with numpy arrays."""
    return decoded(json.loads(at.get("plotly_chart")[index].proto.spec))


def figure_json(figure) -> dict:
    return decoded(json.loads(figure.to_json()))


def values(array) -> np.ndarray:
    """A trace's numbers as float64, None as NaN."""
    return np.array([np.nan if v is None else v for v in np.ravel(np.asarray(array, dtype=object))], dtype=float)


def test_every_view_draws_what_glom_viz_computes(at, glom_runs):
    """Each view's figure is the one glom_viz builds from the same picture's run, islands and measures."""
    set_fp32(at)
    run(at)
    model = default_model()
    size, levels, grid = model.config.image_size, model.config.levels, model.grid
    rgb = scene_rgb(0, size)
    reference = reference_run(model, rgb)
    labels = reference_labels(reference.states, grid)
    step, level = shown_step(at), at.button_group(key="level").value
    pixels = to_model_input(rgb, size, "crop")[1]
    display = pixels.repeat(DISPLAY_PX // size, axis=0).repeat(DISPLAY_PX // size, axis=1)  # the scenes, enlarged

    run(at.button_group(key="view").set_value("Levels × steps"))
    expected = render.sheet_figure(display, labels, grid, title="scene 1: islands, levels × steps")
    assert chart(at)["layout"]["images"][0]["source"] == expected.layout.images[0].source

    run(at.button_group(key="view").set_value("Projection"))
    coords = project(reference.states[:, :, level].astype(np.float32), "pca", 2)[step]
    traces = chart(at)["data"]
    patches = [np.asarray(trace["customdata"], dtype=int) for trace in traces]
    assert sorted(np.concatenate(patches)) == list(range(model.num_patches))
    for trace, members in zip(traces, patches):
        np.testing.assert_allclose(np.c_[values(trace["x"]), values(trace["y"])], coords[members], atol=1e-5)
        assert len(set(labels[step, level, members])) == 1  # one island a trace
    assert any("Select points" in c for i in at.main.image for c in i.captions)
    run(at.toggle(key="projection_fixed").set_value(True))
    run(at.radio(key="projection_dims").set_value(3))
    assert {trace["type"] for trace in chart(at)["data"]} == {"scatter3d"}

    run(at.button_group(key="view").set_value("Measures"))  # scored against the scene's objects
    objects = islands.patch_truth(make_scene(SCENE_SEEDS[0], size).objects, grid)
    measures = {l: islands.island_measures(reference.states[:, :, l], labels[:, l], grid, truth=objects)
                for l in range(levels)}
    expected = figure_json(render.measures_figure(measures))["data"]
    shown_traces = chart(at)["data"]
    assert [t["name"] for t in shown_traces] == [t["name"] for t in expected]
    for got, want in zip(shown_traces, expected):
        np.testing.assert_allclose(values(got["y"]), values(want["y"]), atol=1e-6)

    run(at.button_group(key="view").set_value("Parse tree"))
    purity = islands.parse_tree(labels[step])["purity"]
    assert [m.value for m in at.markdown if re.match(r"level \d+ → \d+", m.value)] == [
        f"level {l} → {l + 1}: **{p:.3f}**" for l, p in enumerate(purity)]

    run(at.button_group(key="view").set_value("Column"))
    assert not at.get("plotly_chart") and at.button(key="probe")
    run(at.button(key="probe").click())
    assert not [b for b in at.button if b.key == "probe"]  # the request is answered, its button gone
    probes = [call for call in glom_runs if call["contributions"]]
    assert len(probes) == 1 and probes[0]["iters"] == step
    h, w = grid
    patch = (h // 2) * w + w // 2  # the middle column, chosen before any click
    probe = reference_probe(model, rgb, step)
    attention = chart(at, 0)["data"]
    (heatmap,) = [t for t in attention if t["type"] == "heatmap"]
    np.testing.assert_allclose(values(heatmap["z"]), probe.attention[level, patch], rtol=1e-5, atol=1e-7)
    expected = figure_json(render.contributions_figure({n: v[patch] for n, v in probe.pulls.items()}))["data"]
    got = chart(at, 1)["data"]
    assert [t["name"] for t in got] == [t["name"] for t in expected]
    for shown_bar, want in zip(got, expected):
        np.testing.assert_allclose(values(shown_bar["y"]), values(want["y"]), rtol=1e-5, atol=1e-6)
    download_labels = {b.label for b in at.get("download_button")}
    assert {"Figure PNG", "SVG", "HTML", "Labels CSV", "Measures CSV", "JSON", "Bundle (zip)"} <= download_labels
    run(at.slider(key="step").set_value(0))
    assert any("Step 0 is the initial state" in i.value for i in at.info)


@pytest.mark.slow
def test_umap_projection(at):
    run(at)
    run(at.button_group(key="view").set_value("Projection"))
    run(at.radio(key="projection_method").set_value("umap"))
    assert len(at.get("plotly_chart")) == 1


# ---------------------------------------------------------------------------------------------------
# images


def test_uploaded_photo_and_its_mask(at, photo_rgb, photo_png):
    set_fp32(at)
    run(at)
    run(at.file_uploader(key="images_upload").set_value(("astronaut.png", photo_png, "image/png")))
    names = at.selectbox(key="picture").options
    assert names[-1] == "astronaut.png"
    run(at.selectbox(key="picture").set_value(len(names) - 1))
    model = default_model()
    size = model.config.image_size
    assert any(f"cropped 160x120 to 120x120, resized to {size}x{size}" in shown(c.value) for c in at.caption)
    labels = reference_labels(reference_run(model, photo_rgb).states, model.grid)
    run(at.button_group(key="level").set_value(model.config.levels - 1))
    assert legend(at) == expected_legend(labels[-1, model.config.levels - 1])

    mask = np.zeros((120, 160, 3), np.uint8)
    mask[:, 80:] = (255, 0, 0)  # the right half is the object
    run(mask_uploader(at).set_value(("mask.png", png_bytes(mask), "image/png")))
    truth = islands.patch_truth(np.where(mask[:, 20:140, 0] > 0, 1, 0), model.grid)  # the centre crop
    states = reference_run(model, photo_rgb).states
    measures = islands.island_measures(states[:, :, -1], labels[:, -1], model.grid, truth=truth)
    ari = next(m for m in at.metric if m.label == "ARI")
    assert float(ari.value) == pytest.approx(measures[-1]["ari"], abs=1e-3)

    wrong = png_bytes(np.zeros((10, 10, 3), np.uint8))
    run(mask_uploader(at).set_value(("small.png", wrong, "image/png")))
    assert any("upload a label image of the picture's size" in shown(e.value) for e in at.error)
    assert legend(at)  # the islands are still drawn


def test_bad_uploads_are_refused_and_the_rest_keeps_working(at, photo_png):
    run(at)
    uploads = [("empty.png", b"", "image/png"),
               ("drawing.png", b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "image/png"),
               ("cut.png", photo_png[:200], "image/png"),
               ("notes.jpg", b"just some text, not a picture", "image/jpeg"),
               ("good.png", photo_png, "image/png")]
    run(at.file_uploader(key="images_upload").set_value(uploads))
    messages = [shown(e.value) for e in at.error]
    for name in ("empty.png", "drawing.png", "cut.png", "notes.jpg"):
        assert any(name in m for m in messages), f"no message names {name}: {messages}"
    assert not any("good.png" in m for m in messages)
    assert at.selectbox(key="picture").options[-1] == "good.png"
    assert legend(at)  # the page and the current picture are untouched


def test_too_many_uploads_are_cut_with_a_message(at):
    pictures = [(f"p{i}.png", png_bytes(np.full((8, 8, 3), i, np.uint8)), "image/png")
                for i in range(MAX_UPLOADS + 2)]
    run(at)
    bundled = len(at.selectbox(key="picture").options)
    run(at.file_uploader(key="images_upload").set_value(pictures))
    assert any(f"only the first {MAX_UPLOADS}" in e.value for e in at.error)
    assert len(at.selectbox(key="picture").options) == bundled + MAX_UPLOADS


def test_sequence_carries_each_frames_final_state_into_the_next(at, glom_runs):
    set_fp32(at)
    at.session_state["images_bundled"] = ["scene 1", "scene 2"]
    run(at)
    run(at.toggle(key="images_sequence").set_value(True))
    assert at.slider(key="frame").min == 1 and at.slider(key="frame").max == 2, "frames count from 1, as captions do"
    model = default_model()
    size = model.config.image_size
    first = reference_run(model, scene_rgb(0, size))
    sequence_calls = glom_runs[-2:]
    assert sequence_calls[0]["levels"] is None
    # by default the carried columns let go where the picture changed: here, another scene, nearly everywhere
    second = reference_run(model, scene_rgb(1, size), start=first, before=scene_rgb(0, size), release=RELEASE)
    assert not np.allclose(sequence_calls[1]["levels"][0].numpy(), first.final, atol=1e-3)
    frames = [to_model_input(scene_rgb(seed, size), size, "crop")[0] for seed in (0, 1)]
    with torch.no_grad():
        start = model.let_go(torch.from_numpy(first.final[None]), *frames, RELEASE)
    np.testing.assert_allclose(sequence_calls[1]["levels"].numpy(), start.numpy(), rtol=1e-5, atol=1e-6)
    run(at.slider(key="frame").set_value(2))
    level = at.button_group(key="level").value
    assert legend(at) == expected_legend(reference_labels(second.states, model.grid)[-1, level])

    # told not to let go, every column carries on from the first frame's final state (glom-pytorch's levels=)
    run(at.toggle(key="images_let_go").set_value(False))
    np.testing.assert_allclose(glom_runs[-1]["levels"][0].numpy(), first.final, rtol=1e-5, atol=1e-6)
    held = reference_run(model, scene_rgb(1, size), start=first).states
    assert legend(at) == expected_legend(reference_labels(held, model.grid)[-1, level])


def test_patch_selection_helper():
    event = {"selection": {"points": [{"customdata": 5}, {"customdata": [2, "x"]}, {"customdata": 5}, {}]}}
    assert patches_of(event) == [2, 5]
    assert patches_of(None) == []


# ---------------------------------------------------------------------------------------------------
# models


def checkpoint_bytes(model: Glom, tmp_path) -> bytes:
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path)
    return path.read_bytes()


def test_random_model_with_its_own_config(at):
    run(at)
    run(at.radio(key="model_source").set_value("random"))
    run(at.number_input(key="model_seed").set_value(3))
    run(at.number_input(key="model_levels").set_value(3))
    assert any("random GLOM (seed 3)" in shown(c.value) for c in at.caption)
    assert len(at.button_group(key="level").options) == 3 + 1  # three levels and "all"
    run(at.number_input(key="model_patch_size").set_value(5))  # 64 px is not a multiple of 5
    assert any("not divisible by patch_size" in e.value for e in at.sidebar.error)
    assert legend(at)
    run(at.number_input(key="model_patch_size").set_value(2))  # 32 x 32 = 1024 patches: the most allowed
    assert legend(at)
    run(at.number_input(key="model_image_size").set_value(72))  # 36 x 36 patches: refused before it is built
    assert any("has 1,296 patches" in shown(e.value) and "default model instead" in e.value for e in at.error)
    assert any("trained GLOM (shipped)" in shown(c.value) for c in at.caption) and legend(at)


def test_uploaded_checkpoints_ours_and_glom_pytorchs(at, tmp_path):
    set_fp32(at)
    run(at)
    run(at.radio(key="model_source").set_value("upload"))
    torch.manual_seed(7)
    ours = Glom.from_config(TINY).eval()
    run(at.file_uploader(key="model_checkpoint").set_value(("tiny.safetensors", checkpoint_bytes(ours, tmp_path),
                                                            "application/octet-stream")))
    assert any("checkpoint tiny.safetensors" in shown(c.value) for c in at.caption)
    labels = reference_labels(reference_run(ours, scene_rgb(0, TINY.image_size)).states, ours.grid)
    assert legend(at) == expected_legend(labels[-1, at.button_group(key="level").value])

    glom_pytorch = pytest.importorskip("glom_pytorch")
    theirs = glom_pytorch.Glom(dim=16, levels=2, image_size=32, patch_size=4)
    buffer = io.BytesIO()
    torch.save(theirs.state_dict(), buffer)
    run(at.file_uploader(key="model_checkpoint").set_value(("theirs.pt", buffer.getvalue(),
                                                            "application/octet-stream")))
    assert not at.error and any("checkpoint theirs.pt" in shown(c.value) for c in at.caption)

    run(at.file_uploader(key="model_checkpoint").set_value(("junk.pt", b"not a checkpoint at all",
                                                            "application/octet-stream")))
    assert any("Could not use the checkpoint" in e.value for e in at.error)
    assert legend(at)  # the default model stands in


def test_nonfinite_states_are_reported_not_drawn(at, tmp_path):
    torch.manual_seed(0)
    exploding = Glom.from_config(TINY).eval()
    with torch.no_grad():  # finite weights whose columns overflow float32 at the first step
        exploding.init_levels.mul_(1e30)
        exploding.bottom_up.net[1].weight.mul_(1e10)
    run(at)
    run(at.radio(key="model_source").set_value("upload"))
    run(at.file_uploader(key="model_checkpoint").set_value(("exploding.safetensors",
                                                            checkpoint_bytes(exploding, tmp_path),
                                                            "application/octet-stream")))
    assert any("became NaN or Inf" in e.value for e in at.error)
    assert not [m for m in at.markdown if "line-height:1.9" in m.value]  # no islands drawn


@pytest.mark.parametrize("forced, path", [("1", "bf16"), ("int8", "int8"), ("0", "fp32")])
def test_fast_precision_runs_the_path_glom_viz_picks(at, glom_runs, monkeypatch, forced, path):
    """"fast" runs bf16, or int8 nets where bf16 is not native; where neither applies it is fp32 and the
    model does not run again."""
    monkeypatch.setenv(REDUCED_PRECISION_ENV, forced)
    reduced_precision_is_fast.cache_clear()
    try:
        at.session_state["model_precision"] = "fp32"
        run(at)
        run(at.radio(key="model_source").set_value("random"))
        for key, value in (("model_dim", 16), ("model_levels", 2), ("model_image_size", 32)):
            run(at.number_input(key=key).set_value(value))
        before = len(glom_runs)
        run(at.radio(key="model_precision").set_value("fast"))
        assert legend(at)
        assert any(f"· {path}" in c.value for c in at.caption if "iterations" in c.value)
        assert len(glom_runs) == before + (path != "fp32")
    finally:
        reduced_precision_is_fast.cache_clear()


def test_every_precision_label_names_what_runs_for_this_models_dim(at, monkeypatch):
    """Where bf16 is not native, "fast" on a model narrower than the int8 nets pay for runs fp32: the
    radio, the header and the run's own line all say so."""
    monkeypatch.delenv(REDUCED_PRECISION_ENV, raising=False)
    monkeypatch.setattr(glom_model, "reduced_precision_is_fast", lambda device_type, dtype: False)
    at.session_state["model_precision"] = "fast"
    run(at)
    dim = default_model().config.dim
    path = "int8" if dim >= glom_model.INT8_MIN_DIM and glom_model.int8_is_fast(dim) else "fp32"
    assert at.radio(key="model_precision").options[0] == f"fast ({'int8 nets' if path == 'int8' else path})"
    assert any(c.value.endswith(f"iterations · {path}") for c in at.caption)
    assert any(f"for this frame ({path})" in c.value for c in at.caption)


def test_where_the_int8_nets_are_fast_the_page_opens_on_bf16_beside_them(at, glom_runs, monkeypatch):
    """Where bf16 beats fp32 and the int8 nets beat bf16, the page offers fast (int8 nets), bf16 and exact,
    and opens on bf16, which moves islands no more than a grey level of noise; a model too narrow for the
    int8 nets has no such choice, and fast is bf16 again."""
    monkeypatch.delenv(REDUCED_PRECISION_ENV, raising=False)
    monkeypatch.setattr(glom_model, "reduced_precision_is_fast", lambda device_type, dtype: True)
    monkeypatch.setattr(glom_model, "int8_is_fast", lambda dim, against="fp32": dim >= glom_model.INT8_MIN_DIM)
    run(at)
    run(at.radio(key="model_source").set_value("random"))
    for key, value in (("model_dim", glom_model.INT8_MIN_DIM), ("model_levels", 2), ("model_image_size", 32)):
        run(at.number_input(key=key).set_value(value))
    precision = at.radio(key="model_precision")
    assert precision.options == ["fast (int8 nets)", "bf16", "exact fp32"] and precision.value == "bf16"
    assert any(c.value.endswith("iterations · bf16") for c in at.caption)
    assert glom_runs and legend(at)
    run(precision.set_value("fast"))
    assert any(c.value.endswith("iterations · int8") for c in at.caption)
    run(at.number_input(key="model_dim").set_value(glom_model.INT8_MIN_DIM // 2))
    precision = at.radio(key="model_precision")
    assert precision.options == ["fast (bf16)", "exact fp32"] and precision.value == "fast"
    assert any(c.value.endswith("iterations · bf16") for c in at.caption)


def test_animation_frames_as_a_sequence(at, glom_runs):
    at.session_state["images_bundled"] = []
    run(at)
    assert any("No images" in i.value for i in at.info)
    frames = [Image.fromarray(np.full((40, 40, 3), (60 * i, 200 - 60 * i, 90), np.uint8)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    run(at.toggle(key="images_frames").set_value(True))
    run(at.file_uploader(key="images_upload").set_value(("walk.gif", buffer.getvalue(), "image/gif")))
    assert at.selectbox(key="picture").options == [f"walk.gif · frame {i}" for i in (1, 2, 3)]
    before = len(glom_runs)
    run(at.toggle(key="images_sequence").set_value(True))
    assert at.slider(key="frame").max == 3
    # frame 1 starts fresh, as it did alone (its run is reused); frames 2 and 3 start from the one before
    assert len(glom_runs) == before + 2
    assert all(call["levels"] is not None for call in glom_runs[-2:])
    run(at.slider(key="frame").set_value(3))
    assert legend(at) and len(glom_runs) == before + 2


def test_run_size_limits():
    glom_pytorch_default = GlomConfig()  # 224 px, 14 px patches, dim 512, 6 levels: ~20 MB for 12 iterations
    assert run_size_problem(glom_pytorch_default, 12) is None
    huge = GlomConfig(dim=1024, levels=8, image_size=448, patch_size=14)
    assert "MB of states per image" in run_size_problem(huge, MAX_ITERATIONS)
    assert "patches" in run_size_problem(GlomConfig(dim=8, levels=2, image_size=132, patch_size=4), 1)


# ---------------------------------------------------------------------------------------------------
# videos and sets


def test_a_video_upload_becomes_a_sequence_of_frames(at, glom_runs):
    at.session_state["images_bundled"] = []
    run(at)
    run(at.file_uploader(key="images_upload").set_value(("walk.mp4", video_bytes(moving_square(6)), "video/mp4")))
    assert at.selectbox(key="picture").options == [f"walk.mp4 · frame {i}" for i in range(1, 7)]
    assert legend(at)
    run(at.toggle(key="images_sequence").set_value(True))
    assert (at.slider(key="frame").min, at.slider(key="frame").max) == (1, 6)  # counted as the captions count
    assert all(call["levels"] is not None for call in glom_runs[-5:])  # each frame starts from the one before
    run(at.file_uploader(key="images_upload").set_value(("noise.mp4", bytes(range(256)) * 8, "video/mp4")))
    assert any("noise.mp4" in shown(e.value) and "MP4" in e.value for e in at.error)


def test_a_set_zip_is_scored_over_the_set_and_picture_by_picture(at):
    from glom_viz.data import load_zip
    from glom_viz.evaluate import score_dataset

    seeds = sprites().TEST_SEEDS[:3]
    set_fp32(at)
    at.session_state["images_bundled"] = []
    run(at)
    data = sprite_zip(seeds, extra={"sprites/images/notes.png": b"not a picture", "../escape.png": b"x"})
    run(at.file_uploader(key="images_set").set_value(("sprites.zip", data, "application/zip")))
    names = at.selectbox(key="picture").options
    assert names == [f"sprites/{seed}" for seed in seeds]
    warning = " ".join(shown(w.value) for w in at.warning)
    assert "2 files of the set were skipped" in warning and "notes.png" in warning and "escape.png" in warning
    # the set's table is evaluate --data's: the same scores, computed directly
    model = default_model()
    expected = score_dataset(model, load_zip(data, "sprites.zip", model.config.image_size),
                             at.session_state[f"iterations_{model.config.levels}"])
    table = at.dataframe[0].value
    for row, level in zip(table.itertuples(index=False), expected["levels"]):
        assert row[1].startswith(f"{level['fg_ari_objects']:.3f}")
    assert any(b.label == "Set scores (JSON)" for b in at.get("download_button"))
    # each picture of the set shows its islands scored against its own masks
    assert legend(at) and any(m.label == "FG-ARI" for m in at.metric)
    run(at.file_uploader(key="images_set").set_value(("broken.zip", b"PK\x03\x04 not really", "application/zip")))
    assert any("broken.zip cannot be used" in shown(e.value) and "not a readable zip" in e.value for e in at.error)
