"""Overlays checked pixel by pixel against an independent nearest-neighbour reference; figures checked
for the traces, colours and geometry the app and export rely on."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from glom_viz import render
from glom_viz.errors import GlomInputError, StatesError

ALPHA = render.OVERLAY_ALPHA


def reference_label_map(labels, grid, height, width):
    """(H, W) island id under each pixel, by explicit nearest-neighbour loops (no shared code)."""
    h, w = grid
    out = np.empty((height, width), dtype=int)
    for y in range(height):
        for x in range(width):
            out[y, x] = labels[int(y * h / height) * w + int(x * w / width)]
    return out


def expected_blend(image, label_map, alpha=ALPHA):
    """The island colour over the picture's luminance (BT.601), mapped into GREY_RANGE of white."""
    colors = np.array([render.PALETTE_RGB[i % len(render.PALETTE)] if i >= 0 else render.NOISE_RGB
                       for i in label_map.ravel()]).reshape(*label_map.shape, 3)
    low, high = render.GREY_RANGE
    luminance = 0.299 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2]
    grey = (255 * low + (high - low) * luminance)[..., None]
    return np.rint(grey * (1 - alpha) + colors * alpha)


def decode_layout_image(fig):
    source = fig.layout.images[0].source
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).convert("RGB"))


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)


@pytest.fixture
def labels():
    return np.random.default_rng(1).integers(-1, 30, 16)  # grid (4, 4), ids past the palette's end


def test_palette_is_large_and_distinct():
    assert len(render.PALETTE) >= 20
    assert len({tuple(c) for c in render.PALETTE_RGB}) == len(render.PALETTE)
    assert tuple(render.NOISE_RGB) not in {tuple(c) for c in render.PALETTE_RGB}


def test_island_colors_are_a_pure_function_of_the_id():
    ids = np.array([0, 1, 5, -1, 24, 25, 49, -1])
    colors = render.island_colors(ids)
    assert colors.shape == (8, 3) and colors.dtype == np.uint8
    for i, c in zip(ids, colors):
        expected = render.NOISE_RGB if i < 0 else render.PALETTE_RGB[i % len(render.PALETTE)]
        np.testing.assert_array_equal(c, expected)
    # the same id gets the same colour whatever else is in the call, and hex agrees with RGB
    np.testing.assert_array_equal(render.island_colors([5])[0], colors[2])
    assert render.island_hex([5, -1]) == [render.PALETTE[5], render.NOISE_COLOR]


@pytest.mark.parametrize("size,grid", [((32, 32), (4, 4)), ((50, 70), (5, 7)), ((45, 30), (4, 4))])
def test_draw_islands_matches_nearest_neighbour_blend(size, grid):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    labels = rng.integers(-1, 40, grid[0] * grid[1])
    out = render.draw_islands(image, labels, grid, alpha=ALPHA, borders=False)
    assert out.shape == (*size, 3) and out.dtype == np.uint8
    expected = expected_blend(image.astype(np.float64), reference_label_map(labels, grid, *size))
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_an_island_reads_as_its_own_colour_on_any_picture():
    """Under an island's colour a yellow picture must not read pink nor a blue one beige: over the grey
    base the overlay's hue is the island's whatever the picture's; a light island stays visible on a
    light picture."""
    import colorsys

    def hue(rgb):
        return colorsys.rgb_to_hsv(*(np.asarray(rgb, dtype=float) / 255))[0]

    purple, light_blue = 1, 3  # PALETTE[1] "#875692", PALETTE[3] "#A1CAF1"
    for picture in ((243, 195, 0), (0, 103, 165), (250, 250, 250), (20, 20, 20)):
        image = np.full((16, 16, 3), picture, dtype=np.uint8)
        out = render.draw_islands(image, np.full(16, purple), (4, 4), borders=False)[8, 8]
        assert abs(hue(out) - hue(render.PALETTE_RGB[purple])) < 0.01, picture
    white = np.full((16, 16, 3), 255, dtype=np.uint8)
    island = render.draw_islands(white, np.full(16, light_blue), (4, 4), borders=False)[8, 8].astype(int)
    noise = render.draw_islands(white, np.full(16, -1), (4, 4), borders=False)[8, 8].astype(int)
    assert np.abs(island - noise).max() >= 30


def test_borders_lie_exactly_on_label_changes():
    image = np.full((32, 32, 3), 100, dtype=np.uint8)
    labels = np.array([0, 0, 3, 3] * 4)  # left half island 0, right half island 3: one vertical border
    plain = render.draw_islands(image, labels, (4, 4), borders=False)
    bordered = render.draw_islands(image, labels, (4, 4), borders=True)
    changed = np.any(plain != bordered, axis=-1)
    expected = np.zeros((32, 32), dtype=bool)
    expected[:, 15:17] = True  # the pixel each side of x = 15.5
    np.testing.assert_array_equal(changed, expected)
    np.testing.assert_array_equal(bordered[:, 15], np.broadcast_to(render.BORDER_DARK_RGB, (32, 3)))
    np.testing.assert_array_equal(bordered[:, 16], np.broadcast_to(render.BORDER_LIGHT_RGB, (32, 3)))


def test_borders_on_random_labels_only_touch_changes(image, labels):
    plain = render.draw_islands(image, labels, (4, 4), borders=False)
    bordered = render.draw_islands(image, labels, (4, 4), borders=True)
    changed = np.any(plain != bordered, axis=-1)
    label_map = reference_label_map(labels, (4, 4), 32, 32)
    padded = np.pad(label_map, 1, mode="edge")
    near_change = ((padded[1:-1, 1:-1] != padded[:-2, 1:-1]) | (padded[1:-1, 1:-1] != padded[2:, 1:-1])
                   | (padded[1:-1, 1:-1] != padded[1:-1, :-2]) | (padded[1:-1, 1:-1] != padded[1:-1, 2:]))
    assert changed.any()
    assert not (changed & ~near_change).any()
    one_island = render.draw_islands(image, np.full(16, 7), (4, 4), borders=True)
    np.testing.assert_array_equal(one_island, render.draw_islands(image, np.full(16, 7), (4, 4), borders=False))


def test_colour_of_an_island_is_stable_across_calls(image):
    first = np.array([5] * 8 + [1] * 8)
    second = np.array([5] * 8 + [-1] * 4 + [9] * 4)  # island 5 unchanged, the others renamed or noise
    a = render.draw_islands(image, first, (4, 4), borders=False)
    b = render.draw_islands(image, second, (4, 4), borders=False)
    np.testing.assert_array_equal(a[:16], b[:16])
    assert (a[16:] != b[16:]).any()


def test_highlight_outlines_selected_patches_and_dims_the_rest(image, labels):
    plain = render.draw_islands(image, labels, (4, 4))
    lit = render.draw_islands(image, labels, (4, 4), highlight={5})  # row 1, col 1: pixels 8..15
    inner = (slice(10, 14), slice(10, 14))
    np.testing.assert_array_equal(lit[inner], plain[inner])
    np.testing.assert_array_equal(lit[8, 8:16], np.broadcast_to(render.HIGHLIGHT_RGB, (8, 3)))
    far = (slice(24, 32), slice(24, 32))
    assert lit[far].astype(int).sum() < plain[far].astype(int).sum()
    np.testing.assert_array_equal(render.draw_islands(image, labels, (4, 4), highlight=set()), plain)
    with pytest.raises(StatesError, match="patch indices"):
        render.draw_islands(image, labels, (4, 4), highlight=[16])


def test_bad_inputs_say_what_would_be_right(image):
    with pytest.raises(StatesError, match=r"grid=\(4, 4\)"):
        render.draw_islands(image, np.zeros(16, int), (3, 5))
    with pytest.raises(GlomInputError, match="uint8"):
        render.draw_islands(image / 255.0, np.zeros(16, int), (4, 4))
    with pytest.raises(StatesError, match="integer"):
        render.draw_islands(image, np.full(16, 0.5), (4, 4))


def test_island_map_figure_has_hover_per_patch(image, labels):
    similarity = np.linspace(0, 1, 16)
    fig = render.island_map_figure(image, labels, (4, 4), similarity=similarity)
    np.testing.assert_array_equal(decode_layout_image(fig), render.draw_islands(image, labels, (4, 4)))
    (heatmap,) = fig.data
    assert heatmap.type == "heatmap"
    np.testing.assert_array_equal(np.asarray(heatmap.customdata), np.arange(16).reshape(4, 4))
    text = np.asarray(heatmap.text)
    assert "patch 6 (row 1, col 2)" in text[1, 2]
    assert (render.NO_ISLAND if labels[6] < 0 else f"island {labels[6]}") in text[1, 2]
    assert f"{similarity[6]:.3f}" in text[1, 2]
    # heatmap cells sit on the patches: centre of patch column 2 of a 32 px image is x = 19.5 - 0.5
    assert heatmap.x0 + 2 * heatmap.dx == pytest.approx(19.5)


def test_sheet_figure_puts_the_top_level_at_the_top():
    ramp = np.linspace(0, 255, 32).astype(np.uint8)
    image = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 128), axis=-1).astype(np.uint8)
    steps, levels = 5, 3
    stacked = np.zeros((steps, levels, 16), dtype=int)
    stacked[:, levels - 1] = 4  # top level in one colour, the rest another
    fig = render.sheet_figure(image, stacked, (4, 4), steps=[0, 2, 4], tile_px=24)
    assert len(fig.data) == 0 and len(fig.layout.images) == 1
    sheet = decode_layout_image(fig).astype(int)
    pitch = 24 + render.SHEET_GAP_PX
    assert sheet.shape == (levels * pitch - render.SHEET_GAP_PX, 3 * pitch - render.SHEET_GAP_PX, 3)
    tile = render._thumbnail(image, 24)
    top = render.draw_islands(tile, stacked[0, levels - 1], (4, 4)).astype(int)
    low = render.draw_islands(tile, stacked[0, 0], (4, 4)).astype(int)
    first_tile = sheet[:24, :24]
    assert np.abs(first_tile - top).mean() < 4 < np.abs(first_tile - low).mean()
    assert list(fig.layout.yaxis.ticktext) == ["level 2", "level 1", "level 0"]
    assert list(fig.layout.xaxis.ticktext) == ["step 0", "step 2", "step 4"]
    with pytest.raises(StatesError, match="steps"):
        render.sheet_figure(image, stacked, (4, 4), steps=[5])


def test_islands_row_shows_every_level_side_by_side_with_its_whole_title():
    """All levels at one step: one tile per level in a row at a readable size, not a 96 px strip whose
    title is cut."""
    image = np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8)
    labels = np.stack([np.full(16, 2), np.arange(16) % 3, np.full(16, -1), np.zeros(16, dtype=int)])
    title = "scene 1: all levels at step 8, trained GLOM (shipped), k-means"
    captions = ["level 3 (top) · 1 island", "level 2 · 0 islands", "level 1 · 3 islands", "level 0 · 1 island"]
    fig = render.islands_row_figure(image, labels, (4, 4), captions, title=title)
    row = decode_layout_image(fig).astype(int)
    tile = render.ROW_TILE_PX
    assert row.shape == (tile, 4 * tile + 3 * render.SHEET_GAP_PX, 3)
    for k in range(4):
        expected = render.draw_islands(render._thumbnail(image, tile), labels[k], (4, 4)).astype(int)
        start = k * (tile + render.SHEET_GAP_PX)
        assert np.abs(row[:, start:start + tile] - expected).mean() < 3, k
    assert fig.layout.width >= 4 * tile and fig.layout.width >= render.TITLE_CHAR_PX * len(title)
    assert list(fig.layout.xaxis.ticktext) == captions and fig.layout.title.text == title
    narrow = render.sheet_figure(image, labels[None], (4, 4), title=title)  # one step of the sheet
    assert narrow.layout.width >= render.TITLE_CHAR_PX * len(title)
    with pytest.raises(StatesError, match="one caption per row"):
        render.islands_row_figure(image, labels, (4, 4), captions[:2])


def test_losses_figure_draws_each_loss_and_marks_the_checkpoints():
    curves = {"total": ([1, 2, 3], [1.0, 0.5, 0.25]), "reconstruction": ([1, 2, 3], [0.8, 0.4, 0.2])}
    fig = render.losses_figure(curves, checkpoints=[0, 2], step=2)
    assert [trace.name for trace in fig.data] == ["total", "reconstruction"]
    assert list(fig.data[0].y) == [1.0, 0.5, 0.25] and fig.layout.yaxis.type == "log"
    lines = [shape.x0 for shape in fig.layout.shapes]
    assert sorted(lines) == [0, 2, 2]
    signed = render.losses_figure({"contrast": ([1, 2], [0.3, -0.1])})
    assert signed.layout.yaxis.type == "linear"
    with pytest.raises(StatesError, match="no losses"):
        render.losses_figure({})


def test_projection_figure_colours_by_island_and_keeps_patch_indices():
    rng = np.random.default_rng(3)
    labels = np.array([0, 0, 2, 2, 2, -1, 26, 26])
    fig = render.projection_figure(rng.normal(size=(8, 2)), labels, frame=rng.normal(size=(4, 8, 2)) * 10)
    assert fig.layout.dragmode == "lasso"
    assert {t.type for t in fig.data} == {"scatter"}
    assert sorted(np.concatenate([t.customdata for t in fig.data]).tolist()) == list(range(8))
    for trace in fig.data:
        ids = set(labels[np.asarray(trace.customdata)])
        assert len(ids) == 1
        assert trace.marker.color == render.island_hex(list(ids))[0]
    assert fig.layout.xaxis.range[1] - fig.layout.xaxis.range[0] > 10
    fig3 = render.projection_figure(rng.normal(size=(8, 3)), labels)
    assert {t.type for t in fig3.data} == {"scatter3d"}
    with pytest.raises(StatesError):
        render.projection_figure(rng.normal(size=(8, 4)), labels)


def test_measures_figure_has_one_line_per_level_per_measure():
    measures = {
        level: [{"n_islands": 4 - level, "within_cosine": 0.5 + 0.1 * t, "change": None if t == 0 else 0.1,
                 "ari": float("nan")} for t in range(6)]
        for level in range(3)
    }
    fig = render.measures_figure(measures)
    assert len(fig.data) == 3 * 3  # ari is all NaN: left out
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["islands", "within-island cosine", "change from previous step"]
    change = [t for t in fig.data if t.xaxis == "x3"][0]
    assert change.y[0] is None and change.y[1] == pytest.approx(0.1)
    with pytest.raises(StatesError):
        render.measures_figure({0: [{"unknown": 1}]})


def test_parse_tree_figure_layers_levels_and_colours_islands():
    tree = {
        "nodes": [{"level": 0, "island": i, "size": 4} for i in range(4)]
        + [{"level": 1, "island": i, "size": 8} for i in (7, 3)],
        "edges": [{"level": 0, "child": i, "parent": (7, 3)[i // 2], "purity": 1.0 - 0.1 * i} for i in range(4)]
        + [{"level": 0, "child": 9, "parent": None, "purity": 0.0}],  # all noise above: no edge
        "purity": [0.85],
    }
    tree["nodes"].append({"level": 0, "island": 9, "size": 2})
    fig = render.parse_tree_figure(tree)
    lines = [t for t in fig.data if t.mode == "lines"]
    (nodes,) = [t for t in fig.data if t.mode == "markers+text"]
    assert len(lines) == 4
    assert list(nodes.y) == [0, 0, 0, 0, 0, 1, 1]
    assert list(nodes.marker.color) == render.island_hex([0, 1, 2, 3, 9, 3, 7])
    x = {tuple(k): v for k, v in zip(nodes.customdata.tolist(), nodes.x)}
    for line in lines:  # every edge joins a child's node to its parent's node one level up
        assert line.y == (0, 1)
        assert line.x[0] in [x[(0, i)] for i in range(4)] and line.x[1] in (x[(1, 7)], x[(1, 3)])
    # children sit under their parent: 0, 1 under island 7, 2, 3 under island 3
    assert max(x[(0, 2)], x[(0, 3)]) < min(x[(0, 0)], x[(0, 1)]) and x[(1, 3)] < x[(1, 7)]


def test_attention_figure_heat_and_patch_mark(image):
    attention = np.random.default_rng(4).dirichlet(np.ones(16))
    fig = render.attention_figure(image, attention, (4, 4), patch=6)
    heatmap, patches = fig.data
    np.testing.assert_allclose(np.asarray(heatmap.z), attention.reshape(4, 4))
    # the click targets: one per patch, on its centre (8 px patches), carrying the patch index
    assert list(patches.customdata) == list(range(16))
    assert (patches.x[6], patches.y[6]) == (19.5, 11.5)
    (rect,) = fig.layout.shapes
    assert (rect.x0, rect.x1, rect.y0, rect.y1) == (15.5, 23.5, 7.5, 15.5)  # row 1, col 2 of 8 px patches
    with pytest.raises(StatesError):
        render.attention_figure(image, attention[:8], (4, 4), patch=6)


def test_contributions_figure_bars_in_glom_order():
    contrib = {"consensus": [3, 2, 1], "previous": [1, 1, 1], "top_down": [0, 1, 2], "bottom_up": [2, 2, 2]}
    fig = render.contributions_figure(contrib)
    assert [t.name for t in fig.data] == ["previous", "bottom-up", "top-down", "consensus"]
    assert list(fig.data[3].y) == [3, 2, 1]
    with pytest.raises(StatesError):
        render.contributions_figure({"previous": [1, 2], "consensus": [1, 2, 3]})


def test_figures_take_the_islands_engine_outputs_as_they_are():
    """Contract with glom_viz.islands: its parse tree and measures draw without reshaping."""
    islands = pytest.importorskip("glom_viz.islands")
    rng = np.random.default_rng(5)
    labels = np.stack([np.repeat(np.arange(4 >> level), 16 // (4 >> level)) for level in range(3)])  # (3, 16)
    labels[0, :2] = -1
    tree = islands.parse_tree(labels)
    fig = render.parse_tree_figure(tree)
    (nodes,) = [t for t in fig.data if t.mode == "markers+text"]
    assert len(nodes.x) == len(tree["nodes"])
    states = rng.normal(size=(4, 16, 8))
    measures = {level: islands.island_measures(states, np.tile(labels[level], (4, 1)), (4, 4)) for level in range(3)}
    fig = render.measures_figure(measures)
    # one line per level in each measure's subplot, holding that level's values step by step
    def finite(value):
        return value is not None and np.isfinite(value)
    present = [key for key in render.MEASURE_TITLES if any(finite(m.get(key)) for level in measures
                                                           for m in measures[level])]
    assert len(present) >= 3 and len(fig.data) == len(present) * 3
    for trace, (key, level) in zip(fig.data, [(key, level) for key in present for level in range(3)]):
        assert trace.name == f"level {level}"
        expected = [m[key] if finite(m.get(key)) else None for m in measures[level]]
        assert list(trace.y) == pytest.approx(expected, nan_ok=True)
