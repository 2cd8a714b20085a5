"""Drawing and export timings at the real default size: a 224 px image, 16 x 16 patches, 6 levels,
13 steps. Each of ours runs beside the obvious alternative, in one process.

    python benchmarks/render.py [--repeats 20] [--no-export]

Goals: an overlay under 20 ms, so a scrub is never waiting on drawing; repeated static exports well under a
second.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from plotly.subplots import make_subplots
import plotly.graph_objects as go
import plotly.io as pio
from sklearn.datasets import load_sample_image

from glom_viz import export, render

IMAGE_SIZE = 224
GRID = (16, 16)
LEVELS = 6
STEPS = 13


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median, min) seconds of fn over repeats calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.min(times))


def spaced(fn, repeats: int, pause_s: float) -> float:
    """Median seconds of fn called repeats times with a pause between calls, as a user clicks."""
    times = []
    for _ in range(repeats):
        time.sleep(pause_s)
        times.append(once(fn))
    return float(np.median(times))


def once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def report(name: str, seconds: float, note: str = "") -> None:
    print(f"{name:58s} {seconds * 1e3:10.1f} ms  {note}")


def blobby_labels(rng: np.random.Generator, n_islands: int) -> np.ndarray:
    """(patches,) islands as contiguous blobs: nearest of n random centres on the grid."""
    h, w = GRID
    centres = rng.uniform(0, [h, w], size=(n_islands, 2))
    rows, cols = np.divmod(np.arange(h * w), w)
    d = (rows[:, None] - centres[:, 0]) ** 2 + (cols[:, None] - centres[:, 1]) ** 2
    return d.argmin(axis=1)


def sheet_as_subplots(image, labels) -> go.Figure:
    """The alternative to one composed sheet: one subplot per (level, step)."""
    fig = make_subplots(rows=LEVELS, cols=STEPS, horizontal_spacing=0.005, vertical_spacing=0.01)
    for row, level in enumerate(reversed(range(LEVELS))):
        for col in range(STEPS):
            fig.add_trace(go.Image(z=render.draw_islands(image, labels[col, level], GRID)), row=row + 1, col=col + 1)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-export", action="store_true", help="skip the Chromium exports")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    image = np.ascontiguousarray(load_sample_image("china.jpg")[:IMAGE_SIZE, :IMAGE_SIZE])
    big = np.ascontiguousarray(load_sample_image("china.jpg")[:420, :640])
    labels = np.stack([np.stack([blobby_labels(rng, 2 + 2 * level) for level in range(LEVELS)])
                       for _ in range(STEPS)])  # (steps, levels, patches)
    one = labels[-1, 2]

    print(f"drawing ({IMAGE_SIZE} px image, grid {GRID}, {LEVELS} levels x {STEPS} steps)")
    report("draw_islands 224 x 224 (target < 20 ms)", timed(lambda: render.draw_islands(image, one, GRID),
                                                             args.repeats)[0])
    report("draw_islands 224 x 224, highlight 40 patches",
           timed(lambda: render.draw_islands(image, one, GRID, highlight=range(40)), args.repeats)[0])
    report("draw_islands 420 x 640 (shown at another size)",
           timed(lambda: render.draw_islands(big, one, GRID), args.repeats)[0])
    report("island_map_figure (overlay + hover heatmap)",
           timed(lambda: render.island_map_figure(image, one, GRID, similarity=rng.random(256)), args.repeats)[0])
    report("sheet_figure 6 x 13, one composed image", timed(lambda: render.sheet_figure(image, labels, GRID),
                                                            max(3, args.repeats // 4))[0])
    report("  alternative: 78 go.Image subplots", timed(lambda: sheet_as_subplots(image, labels), 2)[0])
    coords = rng.normal(size=(256, 2))
    report("projection_figure 256 points", timed(lambda: render.projection_figure(coords, one), args.repeats)[0])
    if args.no_export:
        return

    print("\nexport (kaleido + Chromium)")
    small = render.projection_figure(coords, one)
    island_map = render.island_map_figure(image, one, GRID)
    sheet = render.sheet_figure(image, labels, GRID)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report("  alternative: plotly.io.to_image, no server (each call)",
               once(lambda: pio.to_image(small, format="png")), "starts a browser every time")
    report("figure_to_png first call (starts the warm server)", once(lambda: export.figure_to_png(small)))
    report("figure_to_png repeated back to back, projection", timed(lambda: export.figure_to_png(small), 5)[0])
    report("figure_to_png repeated 1 s apart, projection", spaced(lambda: export.figure_to_png(small), 5, 1.0))
    report("figure_to_svg repeated, projection", timed(lambda: export.figure_to_svg(small), 5)[0])
    report("figure_to_png repeated, island map", timed(lambda: export.figure_to_png(island_map), 5)[0])
    report("figure_to_png, sheet 6 x 13 (scale 2)", timed(lambda: export.figure_to_png(sheet), 2)[0])
    as_trace = go.Figure(go.Image(source=sheet.layout.images[0].source), layout=dict(width=sheet.layout.width,
                                                                                     height=sheet.layout.height))
    report("  alternative: sheet as a go.Image trace (scale 1)", once(lambda: export.figure_to_png(as_trace, scale=1)))
    report("  ours: sheet as a layout image (scale 1)", once(lambda: export.figure_to_png(sheet, scale=1)))
    export.stop_export_server()


if __name__ == "__main__":
    main()
