"""Drawing the islands of agreement: overlays as numpy arrays, views as plotly figures.

Everything here builds and returns; nothing is shown. An island's colour is a pure function of its id
(`id mod len(PALETTE)`, noise grey), so an island keeps its colour while the user scrubs through steps
and is the same colour in every figure: the overlay, the sheet, the projection and the parse tree.

Overlays lay the island colours over the picture in grey (its luminance, kept within GREY_RANGE), not
over its colours: a tint over colour changes what the picture shows (a yellow flower under a purple
island reads pink) and hides light island colours on similar photographs; over grey every colour on
the map is an island's and reads the same on any picture.

Shapes: images are `(H, W, 3)` uint8 at their own resolution; labels are `(patches,)` ints in the
row-major patch order of a `grid = (h, w)`; `-1` is noise.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from glom_viz.columns import grid_shape, pixel_patches
from glom_viz.errors import GlomInputError, StatesError
from glom_viz.model import CONTRIBUTIONS

# Kelly's colours of maximum contrast (white, black and grey left out: grey is noise), in his order so
# that the first ids are the most distinct, then five bright colours Kelly's list lacks.
PALETTE = (
    "#F3C300", "#875692", "#F38400", "#A1CAF1", "#BE0032", "#C2B280", "#008856", "#E68FAC",
    "#0067A5", "#F99379", "#604E97", "#F6A600", "#B3446C", "#DCD300", "#882D17", "#8DB600",
    "#654522", "#E25822", "#2B3D26", "#2ED9FF", "#FE00FA", "#16FF32", "#325A9B", "#DEA0FD",
)
NOISE_COLOR = "#808080"
NO_ISLAND = "no island"  # what -1 is called: HDBSCAN's noise, a threshold island too small, disagreeing columns
PALETTE_RGB = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in PALETTE], dtype=np.uint8)
NOISE_RGB = np.array([128, 128, 128], dtype=np.uint8)

# the overlay's base: the picture's luminance (ITU-R BT.601 weights) mapped into this share of white, so
# that dark and light island colours both stay visible on it
LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)
GREY_RANGE = (0.2, 0.9)
OVERLAY_ALPHA = 0.55

# island borders: a dark line on the low side of a label change and a light one on the high side, so
# the border reads on dark and bright images alike
BORDER_DARK_RGB = np.array([24, 24, 24], dtype=np.uint8)
BORDER_LIGHT_RGB = np.array([255, 255, 255], dtype=np.uint8)
# selected patches: a wide outline, everything else dimmed
HIGHLIGHT_RGB = np.array([255, 255, 255], dtype=np.uint8)
HIGHLIGHT_WIDTH_PX = 2
HIGHLIGHT_DIM = 0.45

SHEET_TILE_PX = 96
ROW_TILE_PX = 256  # the tiles of a row of overlays (all levels at one step, two models side by side)
SHEET_GAP_PX = 4
TITLE_CHAR_PX = 9  # about the width of a title character at plotly's default 17 px title font
SHEET_BACKGROUND_RGB = (255, 255, 255)
SHEET_JPEG_QUALITY = 92  # the sheet is large: JPEG encodes it ~7x faster than PNG at the same size

MEASURE_TITLES = {
    "n_islands": "islands",
    "within_cosine": "within-island cosine",
    "neighbour_agreement": "neighbour agreement",
    "silhouette": "silhouette",
    "change": "change from previous step",
    "ari": "ARI",
    "fg_ari": "FG-ARI",
    "mbo": "mBO",
}
LEVEL_COLORSCALE = "Viridis"

CONTRIBUTION_COLORS = {"previous": "#7F7F7F", "bottom_up": "#1F77B4", "top_down": "#FF7F0E",
                       "consensus": "#2CA02C"}

ATTENTION_COLORSCALE = "Inferno"
ATTENTION_OPACITY = 0.6
PATCH_MARK_COLOR = "#00FFFF"

PROJECTION_MARKER_PX = 7
PROJECTION_MARKER_3D_PX = 3
TREE_MARKER_PX = (10, 40)  # smallest and largest island in the parse tree
FIGURE_MARGIN = dict(l=10, r=10, t=40, b=10)


# ---------------------------------------------------------------------------------------------------
# colours and checks


def island_colors(ids) -> np.ndarray:
    """Island ids (K,) -> (K, 3) uint8 RGB: `PALETTE[id mod len(PALETTE)]`, noise (-1) grey."""
    ids = np.asarray(ids)
    colors = PALETTE_RGB[np.mod(ids, len(PALETTE))]
    colors[ids < 0] = NOISE_RGB
    return colors


def island_hex(ids) -> list[str]:
    """Island ids (K,) -> K CSS colours, the same colours as `island_colors`."""
    return [NOISE_COLOR if i < 0 else PALETTE[i % len(PALETTE)] for i in np.asarray(ids).ravel().tolist()]


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise GlomInputError(
            f"an image to draw on must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}: "
            "convert with (np.clip(x, 0, 1) * 255).astype(np.uint8) and drop any alpha channel"
        )
    return image


def _check_labels(labels, grid: tuple[int, int], ndim: int = 1) -> np.ndarray:
    """Integer labels whose last axis holds the h * w patches of `grid`."""
    labels = np.asarray(labels)
    if labels.ndim != ndim:
        raise StatesError(f"labels must have {ndim} dimension(s) ending in patches, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind != "f" or not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise StatesError(f"labels must be integer island ids (-1 for noise), got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
    h, w = grid_shape(grid)
    if labels.shape[-1] != h * w:
        side = math.isqrt(labels.shape[-1])
        hint = f": pass grid=({side}, {side})" if side * side == labels.shape[-1] else ""
        raise StatesError(f"labels hold {labels.shape[-1]} patches but grid {grid} has {h * w}{hint}")
    return labels


def _change_masks(label_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., H, W) maps -> (low, high) side masks of every change between 4-neighbours in each map."""
    low = np.zeros(label_map.shape, dtype=bool)
    high = np.zeros(label_map.shape, dtype=bool)
    across = label_map[..., :, 1:] != label_map[..., :, :-1]
    down = label_map[..., 1:, :] != label_map[..., :-1, :]
    low[..., :, :-1] |= across
    high[..., :, 1:] |= across
    low[..., :-1, :] |= down
    high[..., 1:, :] |= down
    return low, high


# ---------------------------------------------------------------------------------------------------
# overlays (numpy)


def _overlays(image: np.ndarray, labels: np.ndarray, grid: tuple[int, int], alpha: float,
              borders: bool) -> np.ndarray:
    """image (H, W, 3) uint8, labels (..., patches) -> (..., H, W, 3) uint8, every map in one pass."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha is the weight of the island colour and must be in [0, 1], got {alpha}")
    patch_map = pixel_patches(image.shape[:2], grid).reshape(image.shape[:2])
    # np.take along an axis is ~3x faster here than fancy indexing
    blended = np.take(island_colors(labels).astype(np.float32), patch_map, axis=-2)
    blended *= alpha
    blended += grey_base(image)[..., None] * (1.0 - alpha)
    out = np.rint(blended).astype(np.uint8)
    if borders:
        low, high = _change_masks(np.take(labels, patch_map, axis=-1))
        out[low] = BORDER_DARK_RGB
        out[high] = BORDER_LIGHT_RGB
    return out


def grey_base(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) float32: the picture's luminance, within GREY_RANGE of white (0-255)."""
    low, high = GREY_RANGE
    return (image.astype(np.float32) @ LUMINANCE) * (high - low) + 255.0 * low


def draw_islands(image, labels, grid, alpha: float = OVERLAY_ALPHA, borders: bool = True,
                 highlight=None) -> np.ndarray:
    """The islands of one (step, level) laid over an image in grey, at the image's own resolution.

    Args:
        image: (H, W, 3) uint8 RGB; any size, the patch grid is stretched over it (nearest).
        labels: (patches,) island ids in row-major patch order, -1 for noise (left grey).
        grid: (h, w) patch grid, h * w == patches.
        alpha: weight of the island colour against the grey picture (``grey_base``).
        borders: draw island borders (a dark and a light pixel on either side of each label change).
        highlight: patch indices to outline (e.g. selected in the projection); other patches are dimmed.

    Returns:
        (H, W, 3) uint8.
    """
    image = _check_image(image)
    labels = _check_labels(labels, grid)
    grid = grid_shape(grid)
    out = _overlays(image, labels, grid, alpha, borders)
    if highlight is None or len(highlight) == 0:
        return out
    selected_patches = np.asarray(list(highlight), dtype=np.int64)
    if selected_patches.min() < 0 or selected_patches.max() >= labels.shape[0]:
        raise StatesError(f"highlight must hold patch indices in [0, {labels.shape[0]}), "
                          f"got {selected_patches.min()}..{selected_patches.max()}")
    selected = np.zeros(labels.shape[0], dtype=bool)
    selected[selected_patches] = True
    selected_map = np.take(selected, pixel_patches(image.shape[:2], grid).reshape(image.shape[:2]))
    dim = np.where(selected_map, np.float32(1.0), np.float32(HIGHLIGHT_DIM))
    out = np.rint(out * dim[..., None]).astype(np.uint8)
    low, high = _change_masks(selected_map)
    outline = low | high
    for _ in range(HIGHLIGHT_WIDTH_PX - 1):
        grown = outline.copy()
        grown[1:] |= outline[:-1]
        grown[:-1] |= outline[1:]
        grown[:, 1:] |= outline[:, :-1]
        grown[:, :-1] |= outline[:, 1:]
        outline = grown
    out[outline] = HIGHLIGHT_RGB
    return out


def _data_uri(rgb: np.ndarray, lossy: bool = False) -> str:
    """(H, W, 3) uint8 -> a PNG (or JPEG) data URI: far smaller and faster in a figure than a z list."""
    buffer = io.BytesIO()
    if lossy:
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=SHEET_JPEG_QUALITY)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _image_figure(rgb: np.ndarray, title: str | None, lossy: bool = False) -> go.Figure:
    """A figure showing one image on pixel axes: y downwards, square pixels, no ticks.

    The image is a layout image, not an Image trace: kaleido exports a 600 x 1300 Image trace in ~12 s
    (plotly.js reads back every pixel of a `source` for hover) and the same layout image in ~1.5 s.
    """
    height, width = rgb.shape[:2]
    axis = dict(showticklabels=False, showgrid=False, zeroline=False, constrain="domain")
    return go.Figure(layout=dict(
        images=[dict(source=_data_uri(rgb, lossy), xref="x", yref="y", x=-0.5, y=-0.5, sizex=width,
                     sizey=height, sizing="stretch", layer="below", xanchor="left", yanchor="top")],
        title=title, margin=FIGURE_MARGIN, plot_bgcolor="white", dragmode=False,
        xaxis=dict(range=[-0.5, width - 0.5], **axis),
        yaxis=dict(range=[height - 0.5, -0.5], scaleanchor="x", **axis),
    ))


def _patch_cell_geometry(height: int, width: int, grid: tuple[int, int]) -> dict:
    """x0, dx, y0, dy that put a (h, w) heatmap's cells on the patches of an (H, W) image."""
    h, w = grid
    return dict(x0=width / w / 2 - 0.5, dx=width / w, y0=height / h / 2 - 0.5, dy=height / h)


# ---------------------------------------------------------------------------------------------------
# plotly figures


def island_map_figure(image, labels, grid, similarity=None, title: str | None = "islands",
                      alpha: float = OVERLAY_ALPHA, highlight=None) -> go.Figure:
    """The island overlay with hover per patch: patch index, row, column, island, similarity.

    Args:
        image: (H, W, 3) uint8.
        labels: (patches,) island ids, -1 noise.
        grid: (h, w).
        similarity: optional (patches,) cosine of each column to its island's mean vector.
        title: figure title.
        alpha, highlight: as in `draw_islands`.

    Returns:
        A figure with the overlay as its layout image and one transparent Heatmap trace whose customdata
        is the patch index (so a click or selection tells the app which patch).
    """
    image = _check_image(image)
    labels = _check_labels(labels, grid)
    h, w = grid_shape(grid)
    height, width = image.shape[:2]
    if similarity is not None:
        similarity = np.asarray(similarity, dtype=np.float64)
        if similarity.shape != labels.shape:
            raise StatesError(f"similarity must be one value per patch {labels.shape}, got {similarity.shape}")

    patches = np.arange(h * w)
    hover = [
        f"patch {i} (row {i // w}, col {i % w})<br>"
        + (NO_ISLAND if labels[i] < 0 else f"island {labels[i]}")
        + ("" if similarity is None else f"<br>similarity to island mean {similarity[i]:.3f}")
        for i in patches
    ]
    fig = _image_figure(draw_islands(image, labels, grid, alpha=alpha, highlight=highlight), title)
    fig.add_trace(go.Heatmap(
        z=labels.reshape(h, w), customdata=patches.reshape(h, w), text=np.array(hover).reshape(h, w),
        hovertemplate="%{text}<extra></extra>", showscale=False, name="patches",
        colorscale=[[0, "rgba(0,0,0,0)"], [1, "rgba(0,0,0,0)"]],
        **_patch_cell_geometry(height, width, (h, w)),
    ))
    return fig


def _thumbnail(image: np.ndarray, tile_px: int) -> np.ndarray:
    """Downscale so the longer side is tile_px (never upscale)."""
    height, width = image.shape[:2]
    scale = min(1.0, tile_px / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def sheet_figure(image, labels, grid, steps: Sequence[int] | None = None, tile_px: int = SHEET_TILE_PX,
                 alpha: float = OVERLAY_ALPHA, title: str | None = "islands: levels x steps") -> go.Figure:
    """Small multiples of island overlays: levels in rows (top level at the top), steps in columns.

    The tiles are composed into one image, which stays fast at 6 levels x 13 steps (78 subplots do not).

    Args:
        image: (H, W, 3) uint8.
        labels: (steps, levels, patches) island ids.
        grid: (h, w).
        steps: which steps to show (default all).
        tile_px: longer side of each tile in pixels.

    Returns:
        A figure whose one layout image is the whole sheet; axis ticks name the steps and levels.
    """
    image = _check_image(image)
    labels = _check_labels(labels, grid, ndim=3)
    n_steps, n_levels, _ = labels.shape
    steps = list(range(n_steps)) if steps is None else [int(s) for s in steps]
    if not steps or min(steps) < -n_steps or max(steps) >= n_steps:
        raise StatesError(f"steps must index the {n_steps} steps of the labels, got {steps}")
    tile = _thumbnail(image, tile_px)
    tile_h, tile_w = tile.shape[:2]
    pitch_h, pitch_w = tile_h + SHEET_GAP_PX, tile_w + SHEET_GAP_PX
    rows = labels[steps][:, ::-1].transpose(1, 0, 2)  # (levels, steps, patches), top level first
    tiles = np.empty((n_levels, len(steps), pitch_h, pitch_w, 3), dtype=np.uint8)
    tiles[:] = SHEET_BACKGROUND_RGB
    tiles[:, :, :tile_h, :tile_w] = _overlays(tile, rows, grid_shape(grid), alpha, borders=True)
    canvas = tiles.transpose(0, 2, 1, 3, 4).reshape(n_levels * pitch_h, len(steps) * pitch_w, 3)
    canvas = canvas[:-SHEET_GAP_PX, :-SHEET_GAP_PX]

    height, width = canvas.shape[:2]
    fig = _image_figure(canvas, title, lossy=True)
    fig.update_layout(
        xaxis=dict(showticklabels=True, side="top", ticks="", ticktext=[f"step {s % n_steps}" for s in steps],
                   tickvals=[c * pitch_w + tile_w / 2 for c in range(len(steps))]),
        yaxis=dict(showticklabels=True, ticks="", ticktext=[f"level {level}" for level in reversed(range(n_levels))],
                   tickvals=[r * pitch_h + tile_h / 2 for r in range(n_levels)]),
        margin=dict(l=70, r=10, t=70, b=10), width=_fitting_width(width + 80, title), height=height + 80,
        hovermode=False,
    )
    return fig


def islands_row_figure(image, labels, grid, captions: Sequence[str] | None = None, tile_px: int = ROW_TILE_PX,
                       alpha: float = OVERLAY_ALPHA, title: str | None = None) -> go.Figure:
    """Island overlays of one picture side by side, each captioned: all levels at one step (top level
    first, as the page shows them), or one level under two models.

    Args:
        image: (H, W, 3) uint8.
        labels: (K, patches) island ids, one row per tile, left to right.
        grid: (h, w).
        captions: K strings under the tiles (default "1", "2", ...).
        tile_px: longer side of each tile in pixels.

    Returns:
        A figure whose one layout image is the row, sized to show every tile and the whole title.
    """
    image = _check_image(image)
    labels = _check_labels(labels, grid, ndim=2)
    count = labels.shape[0]
    captions = [str(k + 1) for k in range(count)] if captions is None else [str(c) for c in captions]
    if len(captions) != count:
        raise StatesError(f"give one caption per row of labels: {count} rows, {len(captions)} captions")
    tile = _thumbnail(image, tile_px) if max(image.shape[:2]) > tile_px else np.asarray(
        Image.fromarray(image).resize((tile_px, round(tile_px * image.shape[0] / image.shape[1])),
                                      Image.Resampling.NEAREST))
    tile_h, tile_w = tile.shape[:2]
    pitch = tile_w + SHEET_GAP_PX
    tiles = np.empty((count, tile_h, pitch, 3), dtype=np.uint8)
    tiles[:] = SHEET_BACKGROUND_RGB
    tiles[:, :, :tile_w] = _overlays(tile, labels, grid_shape(grid), alpha, borders=True)
    canvas = tiles.transpose(1, 0, 2, 3).reshape(tile_h, count * pitch, 3)[:, :-SHEET_GAP_PX]
    fig = _image_figure(canvas, title)
    fig.update_layout(
        xaxis=dict(showticklabels=True, ticks="", ticktext=captions,
                   tickvals=[k * pitch + tile_w / 2 for k in range(count)]),
        margin=dict(l=10, r=10, t=60 if title else 10, b=40),
        width=_fitting_width(canvas.shape[1] + 20, title, captions, count), height=tile_h + (100 if title else 50),
        hovermode=False,
    )
    return fig


def _fitting_width(width: int, title: str | None, captions: Sequence[str] = (), tiles: int = 1) -> int:
    """A figure width at least `width` that shows its whole title and every tile's caption."""
    needed = [width, TITLE_CHAR_PX * len(title or "") + 40]
    if captions:
        needed.append(tiles * (TITLE_CHAR_PX * 0.8 * max(len(c) for c in captions) + SHEET_GAP_PX) + 20)
    return int(math.ceil(max(needed)))


def projection_figure(coords, labels, hover: Sequence[str] | None = None, frame=None,
                      title: str | None = "projection") -> go.Figure:
    """Columns as points, one trace per island in the island's colour.

    Args:
        coords: (patches, 2 | 3) projected vectors of one step.
        labels: (patches,) island ids, -1 noise.
        hover: optional (patches,) hover strings; default patch index and island.
        frame: optional (..., 2 | 3) coordinates of the shared frame (e.g. all steps); the axes span it
            so that scrubbing moves the points, not the axes.

    Returns:
        2-D: Scatter traces with customdata = patch index, drag mode lasso (selection-friendly).
        3-D: Scatter3d traces with customdata = patch index.
    """
    coords = np.asarray(coords, dtype=np.float64)
    labels = np.asarray(labels)
    if coords.ndim != 2 or coords.shape[1] not in (2, 3):
        raise StatesError(f"coords must be (patches, 2) or (patches, 3), got {coords.shape}")
    if labels.shape != (coords.shape[0],):
        raise StatesError(f"labels must be one island id per point, ({coords.shape[0]},), got {labels.shape}")
    if hover is not None and len(hover) != coords.shape[0]:
        raise StatesError(f"hover must hold one string per point ({coords.shape[0]}), got {len(hover)}")
    dims = coords.shape[1]
    patches = np.arange(coords.shape[0])
    fig = go.Figure()
    for island in np.unique(labels):
        members = patches[labels == island]
        name = NO_ISLAND if island < 0 else f"island {island}"
        text = ([hover[i] for i in members] if hover is not None
                else [f"patch {i}<br>{name}" for i in members])
        common = dict(name=name, customdata=members, text=text, hovertemplate="%{text}<extra></extra>",
                      mode="markers", legendgroup=name)
        color = island_hex([island])[0]
        if dims == 2:
            fig.add_trace(go.Scatter(x=coords[members, 0], y=coords[members, 1],
                                     marker=dict(color=color, size=PROJECTION_MARKER_PX,
                                                 line=dict(width=0.5, color="white")), **common))
        else:
            fig.add_trace(go.Scatter3d(x=coords[members, 0], y=coords[members, 1], z=coords[members, 2],
                                       marker=dict(color=color, size=PROJECTION_MARKER_3D_PX), **common))
    fig.update_layout(title=title, margin=FIGURE_MARGIN, legend=dict(itemsizing="constant"),
                      uirevision="projection")
    ranges = _frame_ranges(frame, dims)
    if dims == 2:
        fig.update_layout(dragmode="lasso", clickmode="event+select")
        if ranges is not None:
            fig.update_xaxes(range=ranges[0])
            fig.update_yaxes(range=ranges[1])
    elif ranges is not None:
        fig.update_layout(scene=dict(xaxis=dict(range=ranges[0]), yaxis=dict(range=ranges[1]),
                                     zaxis=dict(range=ranges[2]), aspectmode="cube"))
    return fig


def _frame_ranges(frame, dims: int) -> list[list[float]] | None:
    """Axis ranges spanning a shared frame, with 5% margin on each side."""
    if frame is None:
        return None
    frame = np.asarray(frame, dtype=np.float64).reshape(-1, np.shape(frame)[-1])
    if frame.shape[1] != dims:
        raise StatesError(f"frame must have the {dims} dims of coords, got {frame.shape[1]}")
    low, high = frame.min(axis=0), frame.max(axis=0)
    pad = 0.05 * np.maximum(high - low, 1e-9)
    return [[float(lo), float(hi)] for lo, hi in zip(low - pad, high + pad)]


def measures_figure(measures, title: str | None = "island measures over steps") -> go.Figure:
    """The island measures over steps, one subplot per measure, one line per level.

    Args:
        measures: level -> list (one per step) of dicts from `islands.island_measures`, holding some of
            n_islands, within_cosine, neighbour_agreement, silhouette, change, ari, fg_ari (None or NaN
            where undefined; a "step" key gives the x value, else the list position). A bare list is
            taken as level 0.

    Returns:
        A figure with one subplot per measure present and len(levels) lines in each.
    """
    if not isinstance(measures, Mapping):
        measures = {0: measures}
    levels = sorted(measures)
    present = [key for key in MEASURE_TITLES
               if any(_finite(step.get(key)) for level in levels for step in measures[level])]
    if not present:
        raise StatesError(f"measures hold none of {list(MEASURE_TITLES)}: pass the output of island_measures")
    cols = 2 if len(present) > 1 else 1
    rows = math.ceil(len(present) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[MEASURE_TITLES[k] for k in present],
                        vertical_spacing=0.12 if rows > 1 else 0.1)
    level_colors = sample_colorscale(LEVEL_COLORSCALE, [i / max(1, len(levels) - 1) * 0.9 for i in range(len(levels))])
    for k, key in enumerate(present):
        row, col = k // cols + 1, k % cols + 1
        for level, color in zip(levels, level_colors):
            per_step = measures[level]
            x = [step.get("step", t) for t, step in enumerate(per_step)]
            y = [float(step[key]) if _finite(step.get(key)) else None for step in per_step]
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"level {level}",
                                     legendgroup=f"level {level}", showlegend=k == 0,
                                     line=dict(color=color), marker=dict(size=4)), row=row, col=col)
        fig.update_xaxes(title_text="step" if row == rows else None, row=row, col=col)
    fig.update_layout(title=title, margin=dict(l=10, r=10, t=60, b=10), height=260 * rows + 60,
                      hovermode="x unified")
    return fig


def losses_figure(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], checkpoints: Sequence[int] = (),
                  step: int | None = None, title: str | None = "training losses") -> go.Figure:
    """A training run's losses over its steps, with its checkpoints marked and the one in view lit.

    Args:
        curves: loss name -> (steps, values), e.g. ``glom_viz.training_runs.TrainingRun.losses()``; "total" is drawn
            thickest, the other terms thin, on a log scale when every value is positive.
        checkpoints: the training steps that have a checkpoint (dotted lines).
        step: the checkpoint in view (a solid line).

    Returns:
        A figure with one Scatter line per loss.
    """
    if not curves:
        raise StatesError("the run logged no losses yet: pass name -> (steps, values), e.g. TrainingRun.losses()")
    fig = go.Figure()
    positive = True
    for name, (steps, values) in curves.items():
        total = name == "total"
        positive &= all(v > 0 for v in values)
        fig.add_trace(go.Scatter(x=list(steps), y=list(values), mode="lines", name=name,
                                 line=dict(width=3 if total else 1.5, color="#222" if total else None)))
    for kept in checkpoints:
        fig.add_vline(x=kept, line_width=1, line_dash="dot", line_color="#BBB")
    if step is not None:
        fig.add_vline(x=step, line_width=2, line_color="#D62728",
                      annotation_text=f"step {step}", annotation_position="bottom right")
    fig.update_layout(title=title, margin=dict(l=10, r=10, t=60, b=10), hovermode="x unified",
                      xaxis=dict(title="training step"), yaxis=dict(type="log" if positive else "linear"),
                      legend=dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom"))
    return fig


def _finite(value) -> bool:
    return value is not None and np.isscalar(value) and bool(np.isfinite(float(value)))


def parse_tree_figure(tree: Mapping, title: str | None = "parse tree: islands across levels") -> go.Figure:
    """The part-whole hierarchy as a layered node-link diagram: one row per level, top level at the top.

    Args:
        tree: `islands.parse_tree` output: {"nodes": [{"level", "island", "size"}], "edges":
            [{"level", "child", "parent", "purity"}]}, where an edge joins island `child` of `level` to
            island `parent` of `level + 1` (None: no parent, drawn without edge), and purity is the share
            of the child's patches inside it.

    Returns:
        A figure with one Scatter line per edge (width by purity) and one Scatter of nodes (size by
        island size, colour by island id, customdata = (level, island)).
    """
    nodes, edges = list(tree.get("nodes", [])), list(tree.get("edges", []))
    if not nodes:
        raise StatesError("the parse tree has no nodes: pass the output of islands.parse_tree")
    levels = sorted({int(n["level"]) for n in nodes})
    by_level = {level: sorted(int(n["island"]) for n in nodes if int(n["level"]) == level) for level in levels}
    size = {(int(n["level"]), int(n["island"])): int(n["size"]) for n in nodes}
    # a child whose patches are all noise one level up has parent None: no edge
    parent_of = {(int(e["level"]), int(e["child"])): (int(e["parent"]), float(e["purity"]))
                 for e in edges if e.get("parent") is not None}

    # top level evenly spaced by id; each level below ordered under its parents to avoid crossings
    x = {}
    for level in reversed(levels):
        above = {i: x[(level + 1, i)] for i in by_level.get(level + 1, [])}
        order = sorted(by_level[level], key=lambda i: (above.get(parent_of.get((level, i), (None,))[0], 2.0), i))
        for k, island in enumerate(order):
            x[(level, island)] = (k + 0.5) / len(order)

    fig = go.Figure()
    for (level, child), (parent, purity) in parent_of.items():
        if (level, child) not in x or (level + 1, parent) not in x:
            continue
        fig.add_trace(go.Scatter(
            x=[x[(level, child)], x[(level + 1, parent)]], y=[level, level + 1], mode="lines",
            line=dict(color=_rgba(island_hex([parent])[0], 0.35 + 0.5 * purity), width=1 + 5 * purity),
            hoverinfo="skip", showlegend=False,
        ))
    keys = [(level, island) for level in levels for island in by_level[level]]
    largest = max(size.values()) or 1
    marker_px = [TREE_MARKER_PX[0] + (TREE_MARKER_PX[1] - TREE_MARKER_PX[0]) * math.sqrt(size[k] / largest)
                 for k in keys]
    hover = []
    for level, island in keys:
        text = f"level {level}, {NO_ISLAND if island < 0 else f'island {island}'}<br>{size[(level, island)]} patches"
        if (level, island) in parent_of:
            parent, purity = parent_of[(level, island)]
            text += f"<br>inside island {parent} of level {level + 1} (purity {purity:.2f})"
        hover.append(text)
    fig.add_trace(go.Scatter(
        x=[x[k] for k in keys], y=[k[0] for k in keys], mode="markers+text", name="islands",
        text=[str(k[1]) for k in keys], textposition="middle center", hovertext=hover,
        hovertemplate="%{hovertext}<extra></extra>", customdata=np.array(keys),
        marker=dict(size=marker_px, color=island_hex([k[1] for k in keys]), line=dict(width=1, color="#333")),
        showlegend=False,
    ))
    fig.update_xaxes(visible=False, range=[0, 1])
    fig.update_yaxes(tickvals=levels, ticktext=[f"level {level}" for level in levels], showgrid=False,
                     zeroline=False, range=[levels[0] - 0.5, levels[-1] + 0.5])
    fig.update_layout(title=title, margin=FIGURE_MARGIN, plot_bgcolor="white", height=110 * len(levels) + 80)
    return fig


PATCH_TARGET_PX = 18  # the invisible click target on each patch of the attention map


def attention_figure(image, attention, grid, patch: int, title: str | None = None) -> go.Figure:
    """One patch's consensus attention over the other columns, as a heat map over the image.

    Args:
        image: (H, W, 3) uint8.
        attention: (patches,) attention weights of `patch` over all patches (one row of the softmax).
        grid: (h, w).
        patch: the attending patch, outlined.

    Returns:
        A figure with the image as layout image, a Heatmap trace of the weights, a rectangle shape
        around `patch`, and a Scatter trace of invisible points on the patch centres (customdata =
        patch index) that carries the hover and the click: plotly selects no heat map cells, so a
        click on the map can choose a patch only through these points.
    """
    image = _check_image(image)
    h, w = grid_shape(grid)
    attention = np.asarray(attention, dtype=np.float64)
    if attention.shape != (h * w,) or not np.all(np.isfinite(attention)):
        raise StatesError(f"attention must be {h * w} finite weights (one row of the consensus attention), "
                          f"got shape {attention.shape}")
    if not 0 <= patch < h * w:
        raise StatesError(f"patch must be in [0, {h * w}), got {patch}")
    height, width = image.shape[:2]
    geometry = _patch_cell_geometry(height, width, (h, w))
    row, col = divmod(patch, w)
    fig = _image_figure(image, title or f"consensus attention of patch {patch} (row {row}, col {col})")
    fig.add_trace(go.Heatmap(
        z=attention.reshape(h, w), opacity=ATTENTION_OPACITY, colorscale=ATTENTION_COLORSCALE, zmin=0,
        colorbar=dict(title="weight", thickness=12), hoverinfo="skip", name="attention", **geometry,
    ))
    rows, cols = np.divmod(np.arange(h * w), w)
    invisible = dict(marker=dict(opacity=0))
    fig.add_trace(go.Scatter(
        x=geometry["x0"] + cols * geometry["dx"], y=geometry["y0"] + rows * geometry["dy"], mode="markers",
        marker=dict(size=PATCH_TARGET_PX, opacity=0), selected=invisible, unselected=invisible,
        customdata=np.arange(h * w), text=[f"patch {i} ({r}, {c})<br>weight {a:.4f}"
                                           for i, (r, c, a) in enumerate(zip(rows, cols, attention))],
        hovertemplate="%{text}<extra></extra>", showlegend=False, name="patches",
    ))
    fig.add_shape(type="rect", x0=col * geometry["dx"] - 0.5, x1=(col + 1) * geometry["dx"] - 0.5,
                  y0=row * geometry["dy"] - 0.5, y1=(row + 1) * geometry["dy"] - 0.5,
                  line=dict(color=PATCH_MARK_COLOR, width=3))
    return fig


def contributions_figure(contributions: Mapping[str, Sequence[float]],
                         title: str | None = "how far each contribution moved the column") -> go.Figure:
    """Grouped bars, one group per level: the size of each of GLOM's four contributions.

    Args:
        contributions: name -> (levels,) magnitudes (e.g. the norm of each contribution's move), for
            previous, bottom_up, top_down, consensus (any subset; other names are drawn after them).

    Returns:
        A figure with one Bar trace per contribution, x = level.
    """
    names = [n for n in CONTRIBUTIONS if n in contributions] + [n for n in contributions if n not in CONTRIBUTIONS]
    if not names:
        raise StatesError(f"contributions is empty: pass name -> (levels,) magnitudes for {CONTRIBUTIONS}")
    values = {n: np.asarray(contributions[n], dtype=np.float64).ravel() for n in names}
    n_levels = {v.shape[0] for v in values.values()}
    if len(n_levels) != 1:
        raise StatesError(f"every contribution needs one magnitude per level, got lengths {sorted(n_levels)}")
    levels = np.arange(n_levels.pop())
    fig = go.Figure([
        go.Bar(x=levels, y=values[n], name=n.replace("_", "-"), marker_color=CONTRIBUTION_COLORS.get(n),
               hovertemplate=f"{n} at level %{{x}}: %{{y:.4f}}<extra></extra>")
        for n in names
    ])
    fig.update_layout(barmode="group", title=title, margin=FIGURE_MARGIN, xaxis=dict(title="level", dtick=1),
                      yaxis=dict(title="magnitude"))
    return fig
