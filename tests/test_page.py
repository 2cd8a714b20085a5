"""What a new visitor meets on the page, headless (streamlit's AppTest): controls that keep their place
and fit, words that say what the islands are, a checkpoint's config asked for in the page, and the two
views over models: islands over a training run's checkpoints, and two models side by side.

Results are checked against glom_viz called directly, as in test_app.
"""

from __future__ import annotations

import io
import json
import re
import shutil

import numpy as np
import pytest
import streamlit as st
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import (APP, default_model, reference_labels, reference_run, scene_rgb, scrubber_data, set_step, shown,
                      shown_step)
from explorer.models import SHIPPED_TITLES
from glom_viz import islands
from glom_viz.checkpoints import SHIPPED_CHECKPOINT, SHIPPED_KINDS, load_shipped, shipped_path
from glom_viz.images import sample_images
from glom_viz.train import KEPT_DIR, LOG_FILE, kept_checkpoint_name, main as train
from glom_viz.training_runs import RUNS_ENV, open_run

TIMEOUT_S = 180
# a run the page's default model can be compared with: the same 16 x 16 patch grid
SAME_GRID = ["--dim", "16", "--levels", "4", "--image-size", "64", "--patch-size", "4", "--iters", "2",
             "--batch-size", "2", "--steps", "3", "--checkpoint-every", "1", "--warmup", "1", "--quiet"]
# and one it cannot: 32 px in 4 px patches is an 8 x 8 grid
OTHER_GRID = [*SAME_GRID[:4], "--image-size", "32", *SAME_GRID[6:]]


@pytest.fixture(scope="module")
def runs_folder(tmp_path_factory):
    """A runs folder: two finished runs, one still training (a checkpoint and a log line cut short) and
    one with no checkpoint yet."""
    root = tmp_path_factory.mktemp("runs")
    assert train(SAME_GRID + ["--out", str(root / "same-grid")]) == 0
    assert train(OTHER_GRID + ["--out", str(root / "other-grid")]) == 0
    training = root / "still-training"
    shutil.copytree(root / "same-grid", training)
    cut = training / KEPT_DIR / kept_checkpoint_name(3)
    cut.write_bytes(cut.read_bytes()[:1000])
    (training / "model.safetensors").unlink()
    with open(training / LOG_FILE, "a") as log:
        log.write('{"step": 4, "reconstruction": 0.')
    (root / "no-checkpoint").mkdir()
    shutil.copy(root / "same-grid" / LOG_FILE, root / "no-checkpoint" / LOG_FILE)
    return root


@pytest.fixture
def at(monkeypatch, runs_folder):
    """A fresh app on exact fp32, its runs folder the one above."""
    monkeypatch.setenv("GLOM_VIZ_WARM_UP", "0")
    monkeypatch.setenv(RUNS_ENV, str(runs_folder))
    st.cache_data.clear()
    st.cache_resource.clear()
    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    app.session_state["model_precision"] = "fp32"
    return app


def run(element) -> AppTest:
    """Run the app (after an interaction with one of its widgets); no exception may reach the page."""
    at = element.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def legends(at: AppTest) -> list[dict[int, int]]:
    """island id -> patches, for each legend on the page (-1: in no island)."""
    found = []
    for chips in (m.value for m in at.markdown if "line-height:1.9" in m.value):
        pairs = re.findall(r"(island (\d+)|no island) · (\d+)", chips)
        found.append({(-1 if name == "no island" else int(island)): int(count) for name, island, count in pairs})
    return found


def expected_legend(labels: np.ndarray) -> dict[int, int]:
    ids, counts = np.unique(labels, return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist()))


def markdown_with(at: AppTest, words: str) -> str:
    return next(m.value for m in at.markdown if words in m.value)


def texts(elements) -> list[str]:
    """The elements' text as a visitor reads it: the page escapes what came from a file (glom_viz.text.plain)."""
    return [shown(e.value) for e in elements]


# ---------------------------------------------------------------------------------------------------
# controls that keep their place and fit


def test_the_step_stays_at_the_settled_state_when_iterations_or_the_model_change(at):
    run(at)
    levels = default_model().config.levels
    assert shown_step(at) == 2 * levels
    run(at.slider(key=f"iterations_{levels}").set_value(12))
    assert scrubber_data(at)["last"] == 12 and shown_step(at) == 12, "it followed the end"
    run(set_step(at, 5))
    run(at.slider(key=f"iterations_{levels}").set_value(10))
    assert shown_step(at) == 5 and scrubber_data(at)["step"] == 5, "a step the visitor chose is kept"
    run(at.radio(key="model_source").set_value("random"))  # another model opens settled, not at step 0
    assert shown_step(at) == 10


def test_a_six_level_model_gets_a_level_control_of_short_names(at):
    run(at)
    run(at.radio(key="model_source").set_value("random"))
    run(at.number_input(key="model_levels").set_value(6))
    control = at.button_group(key="level")
    assert control.label == "Level (0 bottom, 5 top)"
    assert list(control.options) == ["0", "1", "2", "3", "4", "5", "all"]


def test_play_from_the_last_step_starts_at_step_0(at):
    run(at)
    run(at.button_group(key="view").set_value("Measures"))  # a view under the Step slider and Play
    run(at.button(key="play").click())
    assert at.slider(key="step").value == 0, "step 0 is shown, not skipped"
    run(at)
    assert at.slider(key="step").value == 1


def test_a_sequence_of_uploaded_frames_leaves_the_bundled_pictures_out(at):
    frames = [Image.fromarray(np.full((40, 40, 3), (60 * i, 200 - 60 * i, 90), np.uint8)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    run(at)  # the bundled pictures are selected, as the page opens
    run(at.toggle(key="images_frames").set_value(True))
    run(at.file_uploader(key="images_upload").set_value(("square.gif", buffer.getvalue(), "image/gif")))
    run(at.toggle(key="images_sequence").set_value(True))
    frame = at.slider(key="frame")
    assert (frame.min, frame.max, frame.value) == (1, 3, 1), "the three uploaded frames, counted from 1"
    assert any("Sequence** of 3 uploaded frames" in c and "bundled pictures are left out" in c
               for c in texts(at.caption))
    run(at.slider(key="frame").set_value(3))
    assert any(c.startswith("square.gif · frame 3") for c in texts(at.caption))


# ---------------------------------------------------------------------------------------------------
# what the islands are, in words and colours


def test_an_untrained_model_shows_no_islands_where_its_columns_disagree(at):
    run(at)
    run(at.radio(key="model_source").set_value("random"))
    run(at.button_group(key="level").set_value(1))
    heading = markdown_with(at, "at level 1, step")
    assert heading.startswith("**No islands** at level 1") and "the columns disagree (neighbours' cosine 0." in heading
    assert legends(at) == [{-1: 256}]
    neighbours = next(m for m in at.metric if m.label == "neighbours")
    assert float(neighbours.value) < 0.6


def test_an_island_keeps_its_colour_from_level_to_level(at):
    """The shipped model's objects at levels 2 and 3 of a scene: each level-3 island has the id of the
    level-2 island it overlaps most, and the page shows exactly those ids."""
    model = default_model()
    labels = reference_labels(reference_run(model, scene_rgb(0, model.config.image_size)).states, model.grid)[-1]
    shared = 0
    for island in np.unique(labels[3]):
        below, counts = np.unique(labels[2][labels[3] == island], return_counts=True)
        shared += below[counts.argmax()] == island
    assert shared >= len(np.unique(labels[3])) - 1
    run(at)
    for level in (2, 3):
        run(at.button_group(key="level").set_value(level))
        assert legends(at) == [expected_legend(labels[level])]
    assert any("the picture" in c for image in at.main.image for c in image.captions), "and in its own colours"


def test_threshold_islands_are_not_confetti_and_a_hint_says_what_to_change(at):
    model = default_model()
    states = reference_run(model, sample_images()["chelsea"]).states
    at.session_state["images_bundled"] = ["chelsea"]
    run(at)
    run(at.selectbox(key="islands_method").set_value("threshold"))
    run(at.button_group(key="level").set_value(0))
    shown = legends(at)[0]
    assert shown == expected_legend(reference_labels(states, model.grid, method="threshold")[-1, 0])
    assert sum(count for island, count in shown.items() if island < 0) <= islands.TINY_SHARE * model.num_patches
    assert len(shown) < 16
    run(at.selectbox(key="islands_method").set_value("hdbscan"))
    run(at.button_group(key="level").set_value(2))
    # at its defaults HDBSCAN leaves under half of the cat in no island (not "mostly noise")
    noise = legends(at)[0].get(-1, 0)
    assert legends(at)[0] == expected_legend(reference_labels(states, model.grid, method="hdbscan")[-1, 2])
    assert noise < model.num_patches / 2
    run(at.number_input(key="islands_min_cluster").set_value(120))
    assert any("patches are in no island (grey)" in i and "min_cluster_size, now 120" in i for i in texts(at.info))


def test_what_the_shipped_model_knows_is_said(at):
    if not SHIPPED_CHECKPOINT.is_file():
        pytest.skip("the shipped model is not here")
    at.session_state["images_bundled"] = ["china"]
    run(at)
    assert any("64 px synthetic part-whole scenes" in c for c in texts(at.sidebar.caption))
    assert any(c.startswith("**What this model knows.**") and "content-only model" in c for c in texts(at.caption))


@pytest.mark.parametrize("kind, title, knows, others", [
    ("content", "trained GLOM, content only (shipped)", "no position told", ["scenes", "balanced"]),
    ("balanced", "trained GLOM, balanced (shipped)", "told once", ["content", "scenes"]),
])
def test_a_shipped_model_for_pictures_is_offered_and_compared_with_the_other_shipped_ones(at, kind, title, knows,
                                                                                         others):
    if not all(shipped_path(other).is_file() for other in SHIPPED_KINDS):
        pytest.skip("the shipped models are not here")
    model, first_other = load_shipped(kind), load_shipped(others[0])
    rgb = sample_images()["china"]
    at.session_state["images_bundled"] = ["china"]
    run(at)
    run(at.radio(key="model_source").set_value(kind))
    assert any(title in c for c in texts(at.sidebar.caption))
    assert any(c.startswith("**What this model knows.**") and knows in c for c in texts(at.caption))
    mine = reference_labels(reference_run(model, rgb).states, model.grid)
    assert legends(at) == [expected_legend(mine[shown_step(at), at.button_group(key="level").value])]

    run(at.button_group(key="view").set_value("Compare models"))
    run(at.radio(key="compare_with").set_value("shipped"))
    # the shipped models it is not, the first of them picked
    assert at.radio(key="compare_shipped").options == [SHIPPED_TITLES[other] for other in others]
    level, step = at.button_group(key="level").value, at.slider(key="step").value
    theirs = reference_labels(reference_run(first_other, rgb).states, first_other.grid)
    matched = islands.match_islands(theirs[:, level], mine[:, level])
    assert legends(at) == [expected_legend(mine[step, level]), expected_legend(matched[step])]
    assert SHIPPED_TITLES[others[0]] in shown(markdown_with(at, "| in-island cos |"))


# ---------------------------------------------------------------------------------------------------
# checkpoints, the column view


def test_a_checkpoint_whose_tensors_do_not_tell_its_config_gets_the_fields_to_give(at):
    glom_pytorch = pytest.importorskip("glom_pytorch")
    state = glom_pytorch.Glom(dim=16, levels=2, image_size=32, patch_size=4).state_dict()
    state["pos_emb.weight"] = torch.zeros(20, 16)  # 20 positions: no square grid, so no image size
    buffer = io.BytesIO()
    torch.save(state, buffer)
    run(at)
    run(at.radio(key="model_source").set_value("upload"))
    run(at.file_uploader(key="model_checkpoint").set_value(("odd.pt", buffer.getvalue(), "application/octet-stream")))
    error = next(e for e in texts(at.error) if "odd.pt" in e)
    assert "image_size cannot be read" in error and "Give the config it was trained with in the sidebar" in error
    assert "pass " not in error, "no advice for the Python API the page cannot follow"
    assert at.number_input(key="checkpoint_field_dim").value == 16  # read from the tensors
    assert at.number_input(key="checkpoint_field_patch_size").value == 4
    at.number_input(key="checkpoint_field_image_size").set_value(32)  # a form sends its fields on submit only
    run(next(b for b in at.button if b.label == "Load with this config").click())
    error = next(e for e in texts(at.error) if "odd.pt" in e)
    assert "pos_emb.weight" in error and "(20, 16)" in error and "pass " not in error
    assert legends(at), "the default model's islands are still drawn"

    torch.save(glom_pytorch.Glom(dim=16, levels=2, image_size=32, patch_size=4).state_dict(), buffer := io.BytesIO())
    run(at.file_uploader(key="model_checkpoint").set_value(("theirs.pt", buffer.getvalue(), "application/octet-stream")))
    note = next(i for i in texts(at.info) if "read from the tensor shapes" in i)
    assert "feedforward_mult=4" in note and "pass " not in note


def test_the_column_view_follows_the_step_once_asked_and_its_toolbar_hides(at):
    run(at)
    run(at.button_group(key="view").set_value("Column"))
    run(at.button(key="probe").click())
    assert len(at.get("plotly_chart")) == 2
    run(at.slider(key="step").set_value(5))
    charts = at.get("plotly_chart")
    assert len(charts) == 2 and not [b for b in at.button if b.key == "probe"], "no second click"
    for chart in charts:
        assert json.loads(chart.proto.config)["displayModeBar"] is False


# ---------------------------------------------------------------------------------------------------
# islands over training time


def test_islands_over_a_training_run_keep_their_ids_from_checkpoint_to_checkpoint(at, runs_folder):
    run(at)
    run(at.button_group(key="view").set_value("Over training"))
    assert set(at.selectbox(key="training_run").options) >= {"same-grid", "other-grid", "still-training",
                                                             "no-checkpoint"}
    run(at.selectbox(key="training_run").set_value("same-grid"))
    training = open_run("same-grid", runs_folder)
    assert list(at.select_slider(key="training_step").options) == [str(s) for s in training.steps] == ["0", "1", "2", "3"]
    # the package's own answer: every checkpoint on the picture, ids aligned from one to the next
    found = [reference_labels(reference_run(training.checkpoint(step).model, scene_rgb(0, 64)).states, (16, 16))
             for step in training.steps]
    level = at.button_group(key="level").value
    settled = np.arange(found[0].shape[0])[:, None] == found[0].shape[0] - 1
    aligned = [labels[:, None] for labels in islands.align_checkpoints([labels[:, level] for labels in found],
                                                                        where=settled)]
    for index, step in enumerate(training.steps):
        run(at.select_slider(key="training_step").set_value(step))
        heading = markdown_with(at, "training step")
        count = np.unique(aligned[index][-1, 0][aligned[index][-1, 0] >= 0]).size
        assert heading.startswith(f"**{count} island") or (count == 0 and heading.startswith("**No islands"))
        assert legends(at) == [expected_legend(aligned[index][-1, 0])], "the ids the package keeps"
    captions = [c for image in at.main.image for c in image.captions if re.fullmatch(r"step \d+ · .*", c)]
    assert captions == [f"step {s} · {np.unique(a[-1, 0][a[-1, 0] >= 0]).size} island"
                        + ("s" if np.unique(a[-1, 0][a[-1, 0] >= 0]).size != 1 else "")
                        for s, a in zip(training.steps, aligned)]
    assert len(at.get("plotly_chart")) == 1, "the run's losses beside the islands"


def test_a_run_still_training_or_without_checkpoints_says_so_and_the_rest_works(at):
    run(at)
    run(at.button_group(key="view").set_value("Over training"))
    run(at.selectbox(key="training_run").set_value("still-training"))
    warnings = texts(at.warning)
    assert any("checkpoint at step 3" in w and "still training" in w for w in warnings)
    assert any("log could not be read" in w for w in warnings)
    assert list(at.select_slider(key="training_step").options) == ["0", "1", "2"]
    run(at.selectbox(key="training_run").set_value("no-checkpoint"))
    assert any("has no checkpoint to load yet" in w for w in texts(at.warning))
    assert len(at.get("plotly_chart")) == 1, "its losses are shown meanwhile"
    run(at.button_group(key="view").set_value("Islands"))
    assert legends(at)


def test_without_runs_the_view_says_where_they_would_be(at, monkeypatch, tmp_path):
    monkeypatch.setenv(RUNS_ENV, str(tmp_path / "nothing-here"))
    run(at)
    run(at.button_group(key="view").set_value("Over training"))
    assert any("No training runs in this server's runs folder" in i for i in texts(at.info))


# ---------------------------------------------------------------------------------------------------
# two models side by side


def test_two_models_side_by_side_with_their_islands_matched(at):
    model = default_model()
    states = reference_run(model, scene_rgb(0, model.config.image_size)).states
    mine = reference_labels(states, model.grid)
    torch.manual_seed(0)  # the untrained model of its shape: seed 0, as random_model draws it
    untrained = type(model).from_config(model.config).eval()
    theirs = reference_labels(reference_run(untrained, scene_rgb(0, model.config.image_size)).states, model.grid)
    run(at)
    run(at.button_group(key="view").set_value("Compare models"))
    level, step = at.button_group(key="level").value, at.slider(key="step").value
    matched = islands.match_islands(theirs[:, level], mine[:, level])
    assert legends(at) == [expected_legend(mine[step, level]), expected_legend(matched[step])]
    table = shown(markdown_with(at, "| in-island cos |"))
    assert "untrained GLOM (seed 0)" in table
    between = islands.compare_islands(mine[step, level], matched[step])
    assert any(f"ARI **{between['ari']:.3f}**" in c for c in texts(at.caption))


def test_a_run_of_another_grid_cannot_be_compared_and_says_why(at):
    run(at)
    run(at.button_group(key="view").set_value("Compare models"))
    run(at.radio(key="compare_with").set_value("run"))
    run(at.selectbox(key="compare_run").set_value("other-grid"))
    assert any("16x16 patch grid" in e and "8x8" in e and "same image size and patch size" in e
               for e in texts(at.error))
    run(at.selectbox(key="compare_run").set_value("same-grid"))
    assert not at.error and len(legends(at)) == 2
    assert any("run same-grid at step 3" in m for m in texts(at.markdown) if "| in-island cos |" in m)
