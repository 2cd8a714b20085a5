"""How fast the app feels, measured the way a person meets it: through Debian's Chromium (Playwright).

    python benchmarks/app.py [--repeats 5] [--url http://127.0.0.1:8501]

Starts `streamlit run app.py` on a free port (or uses --url), warms it with one visit, then times:

1. first view: a new browser session opens the page until the islands are drawn (overlay loaded);
2. upload -> islands: a photograph never seen before is uploaded until its islands are drawn at the
   default settings (goal: under 2 s on the 2-core machine);
3. one-step scrub: a key press on the focused step slider until the new step's overlay is loaded (goal:
   under 0.3 s as a person sees it), with the server's own "drawn in" time beside it (goal: well
   under 100 ms).

Beside each, the same measure on a bare Streamlit page (a slider and a 448 px image, BASELINE_PAGE) on the
same machine at the same time: the floor that Streamlit, the browser and the machine's load set.

Prints one line per measure: median, min and max over the repeats. Speed is never asserted in tests.

    python benchmarks/app.py --seed-size [--repeats 5]

does the same with the seed's GLOM (224 px, patch 14, dim 512, 6 levels: "Random weights" in the sidebar,
12 iterations by default) instead of the shipped model, and first times, in this process, the server's own
work for one upload (GLOM's run, the islands of all 78 maps, one level's measures, the overlay), so that the
rest of the browser's time is Streamlit, the transfer and the browser.

    GLOM_VIZ_RUNS=runs python benchmarks/app.py --screenshots docs/screenshots

takes the README's screenshots instead (1400 px wide): each view of the default picture, and a photograph; the
Over training view shows the newest run under GLOM_VIZ_RUNS.

    python benchmarks/app.py --photographs DIR

takes one screenshot per bundled photograph with every level's islands side by side (1400 px wide), to
judge by eye whether a uniform sky stays one island and an object one island at the top levels.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

import torch

from explorer import serve
from explorer.settings import PHOTOS, SOURCES

REPEATS = 5
# the seed's GLOM (glom-pytorch's README), set in the sidebar's random-weights fields in this order (the image
# size before the patch size would ask for more patches than the app runs)
SEED_CONFIG = (("patch_size", 14), ("image_size", 224), ("dim", 512), ("levels", 6))
SCRUBS_PER_VISIT = 3
WAIT_MS = 120_000
VIEWPORT = {"width": 1400, "height": 1000}
BASELINE_PAGE = """
import numpy as np
import streamlit as st

step = st.slider("Step", 0, 8, 8)
picture = np.random.default_rng(step).integers(0, 256, (448, 448, 3), dtype=np.uint8)
st.image(picture, caption=f"baseline · level 1 · step {step} of 8")
"""


def photo(index: int) -> bytes:
    """A photograph never uploaded before: skimage's coffee, cropped differently each time."""
    rgb = data.coffee()[index * 7:, index * 11:]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_shown(page, caption: str) -> None:
    """Wait until the overlay whose caption starts with `caption` has loaded in the browser."""
    page.wait_for_function(
        """caption => [...document.querySelectorAll('[data-testid="stImage"]')].some(element =>
               element.innerText.startsWith(caption) && [...element.querySelectorAll('img')].some(
                   img => img.complete && img.naturalWidth > 0))""",
        arg=caption, timeout=WAIT_MS)


def open_timed(browser, url: str, shown: str):
    """A new page in a fresh context, and the seconds until the overlay captioned `shown` is loaded."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    start = time.perf_counter()
    page.goto(url)
    overlay_shown(page, shown)
    return context, page, time.perf_counter() - start


def baseline(url: str, repeats: int, chromium_path: str, chromium_args: list[str]) -> list[str]:
    """First view and one-step scrub of BASELINE_PAGE, timed as measure() times the app."""
    from playwright.sync_api import sync_playwright

    first_view, scrub = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=chromium_args)
        for _ in range(repeats):
            context, page, seconds = open_timed(browser, url, "baseline · level 1 · step 8")
            first_view.append(seconds)
            page.locator("[data-testid='stSlider']").get_by_role("slider").focus()
            for step in range(7, 7 - SCRUBS_PER_VISIT, -1):
                start = time.perf_counter()
                page.keyboard.press("ArrowLeft")
                overlay_shown(page, f"baseline · level 1 · step {step}")
                scrub.append(time.perf_counter() - start)
            context.close()
        browser.close()
    return [summary("baseline page: first view", first_view), summary("baseline page: one-step scrub", scrub)]


def drawn_ms(page) -> float:
    text = page.get_by_text(re.compile(r"drawn in \d+ ms")).first.inner_text()
    return float(re.search(r"drawn in (\d+) ms", text).group(1))


def summary(name: str, values: list[float], unit: str = "s", goal: str = "") -> str:
    return (f"{name:<34} median {statistics.median(values):7.3f} {unit}  min {min(values):7.3f}  "
            f"max {max(values):7.3f}  (n={len(values)}){'  goal ' + goal if goal else ''}")


def use_seed_model(page) -> None:
    """Switch the page to a random GLOM of the seed's size and wait until its islands of scene 1 are drawn."""
    page.get_by_text(SOURCES["random"]).click()
    for name, value in SEED_CONFIG:
        field = page.get_by_label(name.replace("_", " "), exact=True)  # the sidebar's labels are the config's names
        field.fill(str(value))
        field.press("Enter")
        page.wait_for_timeout(300)
    seed = dict(SEED_CONFIG)
    badge = f"{seed['image_size']} px · {seed['levels']} levels · dim {seed['dim']}"
    page.get_by_text(badge).first.wait_for(timeout=WAIT_MS)
    overlay_shown(page, "scene 1 · level")


def server_work(repeats: int) -> list[str]:
    """The server's own work for one upload with the seed's GLOM, timed in this process on the server's torch
    threads (wall and CPU seconds), and beside it what the upload does not wait for (UMAP of one level)."""
    from explorer.limits import TORCH_THREADS
    from explorer.pictures import DISPLAY_PX
    from explorer.settings import RANDOM_SEED
    from glom_viz import Glom, islands, project, render, runs
    from glom_viz.images import load_image, to_model_input
    from glom_viz.model import run_path

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = Glom(**dict(SEED_CONFIG)).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    names = ("picture decoded and fitted", "GLOM run", "islands of every step and level", "measures of one level",
             "overlay drawn", "(not waited for) UMAP of one level, warm")
    times = {name: [] for name in names}
    cpu_times = {name: [] for name in names}
    path = run_path(model.config.dim, "fast")
    project.warm_up_umap()
    try:
        for index in range(repeats + 1):  # the first warms up (packs the int8 nets, compiles UMAP)
            marks = [(time.perf_counter(), time.process_time())]

            def mark():
                marks.append((time.perf_counter(), time.process_time()))
            picture = load_image(photo(index), "coffee.png")
            tensor, _, _ = to_model_input(picture.rgb, model.config.image_size)
            _, display, _ = to_model_input(picture.rgb, max(DISPLAY_PX, model.config.image_size))  # as the app draws
            mark()
            run = runs.run(model, tensor, 2 * model.config.levels, precision="fast")
            mark()
            labels = islands.find_islands_all_levels(run.states, model.grid)
            mark()
            islands.island_measures(run.states[:, :, 2], labels[:, 2], model.grid)
            mark()
            render.draw_islands(display, labels[-1, 2], model.grid)
            mark()
            project.project(run.states[:, :, 2], method="umap")
            mark()
            if index:
                for name, begun, ended in zip(names, marks, marks[1:]):
                    times[name].append(ended[0] - begun[0])
                    cpu_times[name].append(ended[1] - begun[1])
    finally:
        torch.set_num_threads(threads)
    steps, levels = run.states.shape[0], model.config.levels
    return ([f"server's work for one upload, in this process on {TORCH_THREADS} torch thread(s) as the server runs "
             f"(GLOM {path}, {steps} steps x {levels} levels = {steps * levels} maps clustered; load average "
             f"{os.getloadavg()[0]:.1f}):"]
            + [summary("  " + name, times[name]) + f"  CPU median {statistics.median(cpu_times[name]):.3f} s"
               for name in names])


def measure(url: str, repeats: int, chromium_path: str, chromium_args: list[str], seed_size: bool = False) -> list[str]:
    from playwright.sync_api import sync_playwright

    first_view, upload, scrub, scrub_server = [], [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=chromium_args)
        warm = browser.new_page(viewport=VIEWPORT)
        warm.goto(url)
        overlay_shown(warm, "scene 1 · level")
        if seed_size:  # the seed model's runs of scene 1 are then in the server's cache
            use_seed_model(warm)
        warm.close()
        for index in range(repeats):
            context, page, seconds = open_timed(browser, url, "scene 1 · level")
            first_view.append(seconds)
            if seed_size:
                use_seed_model(page)

            name = f"coffee-{index}.png"
            uploader = page.locator("[data-testid='stFileUploader']").filter(has_text="Your images")
            picture = photo(index)
            start = time.perf_counter()
            uploader.locator("input[type='file']").set_input_files(
                {"name": name, "mimeType": "image/png", "buffer": picture})
            overlay_shown(page, f"{name} · level")
            upload.append(time.perf_counter() - start)
            if seed_size:  # the upload is what the seed's size measures; scrubbing is the shipped model's
                context.close()
                continue

            slider = page.locator("[data-testid='stSlider']").filter(has_text="Step").get_by_role("slider")
            caption = page.get_by_text(re.compile(re.escape(name) + r" · level \d+ · step \d+ of \d+")).first
            last = int(re.search(r"of (\d+)", caption.inner_text()).group(1))
            slider.focus()
            for step in range(last - 1, last - 1 - SCRUBS_PER_VISIT, -1):
                start = time.perf_counter()
                page.keyboard.press("ArrowLeft")
                page.wait_for_function(
                    """step => [...document.querySelectorAll('[data-testid="stImage"]')].some(element =>
                           element.innerText.includes(`step ${step} of`) &&
                           [...element.querySelectorAll('img')].some(img => img.complete && img.naturalWidth > 0))""",
                    arg=step, timeout=WAIT_MS)
                scrub.append(time.perf_counter() - start)
                scrub_server.append(drawn_ms(page))
            context.close()
        browser.close()
    lines = [summary("first view (warm server)" + (", shipped model" if seed_size else ""), first_view),
             summary("upload -> islands (new photo)", upload, goal="< 1 s" if seed_size else "< 2 s")]
    if seed_size:
        return lines
    return lines + [summary("one-step scrub, as seen", scrub, goal="< 0.3 s"),
                    summary("one-step scrub, server time", scrub_server, unit="ms", goal="well < 100 ms")]


def click_view(page, view: str) -> None:
    page.get_by_role("radiogroup", name="View").get_by_role("radio", name=view, exact=True).click()


def settle(page, view_text: str) -> None:
    """Until the viewer's last line is back (the fragment has run) and `view_text` shows; then a moment for plotly."""
    page.get_by_text(re.compile(r"· step \d+ · drawn in")).first.wait_for(timeout=WAIT_MS)
    page.get_by_text(view_text).first.wait_for(timeout=WAIT_MS)
    page.wait_for_timeout(1500)


def screenshots(url: str, folder: Path, chromium_path: str, chromium_args: list[str]) -> list[Path]:
    """The README's screenshots: every view of scene 1 at the default settings, and a photograph."""
    from playwright.sync_api import sync_playwright

    folder.mkdir(parents=True, exist_ok=True)
    taken = []

    def shoot(page, name: str) -> None:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        taken.append(path)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=chromium_args)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url)
        overlay_shown(page, "scene 1 · level")
        settle(page, "Score islands against")
        shoot(page, "islands")
        page.get_by_role("radiogroup", name="Level").get_by_role("radio", name="all levels").click()
        settle(page, "level 0 ·")
        shoot(page, "all-levels")
        page.get_by_role("radiogroup", name="Level").get_by_role("radio", name=str(2), exact=True).click()
        for view, name, text in (("Levels × steps", "sheet", "levels × steps"), ("Measures", "measures", "ARI"),
                                 ("Parse tree", "parse-tree", "Purity")):
            click_view(page, view)
            settle(page, text)
            shoot(page, name)
        click_view(page, "Projection")
        settle(page, "Select points")
        # lasso the left half of the points (plotly's drag mode here is lasso)
        boxes = [box for box in (point.bounding_box() for point in
                                 page.locator("[data-testid='stPlotlyChart'] .scatterlayer .point").all()) if box]
        left, right = min(b["x"] for b in boxes) - 5, max(b["x"] for b in boxes) + 5
        top, bottom = min(b["y"] for b in boxes) - 5, max(b["y"] for b in boxes) + 5
        middle = (left + right) / 2
        page.mouse.move(left, top)
        page.mouse.down()
        for x, y in ((middle, top), (middle, bottom), (left, bottom), (left, top)):
            page.mouse.move(x, y, steps=8)
        page.mouse.up()
        settle(page, "selected patches highlighted")
        shoot(page, "projection")
        click_view(page, "Column")
        page.get_by_role("button", name=re.compile("Compute attention")).click()
        settle(page, "Click a patch")
        shoot(page, "column")
        click_view(page, "Over training")  # the newest run under the server's GLOM_VIZ_RUNS
        settle(page, re.compile(r"training step \d+"))
        shoot(page, "training")
        click_view(page, "Compare models")  # with the untrained model of its shape
        settle(page, "Between the two")
        shoot(page, "compare")
        click_view(page, "Islands")
        page.locator("[data-testid='stSelectbox']").filter(has_text="Image").first.click()
        page.get_by_role("option", name="china", exact=True).click()
        overlay_shown(page, "china · level")
        settle(page, "cropped")
        shoot(page, "photograph")
        browser.close()
    return taken


def photographs(url: str, folder: Path, chromium_path: str, chromium_args: list[str]) -> list[Path]:
    """Every bundled photograph at every level (the islands view's "all levels"), one screenshot each."""
    from playwright.sync_api import sync_playwright

    folder.mkdir(parents=True, exist_ok=True)
    taken = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=chromium_args)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url)
        overlay_shown(page, "scene 1 · level")
        page.get_by_role("radiogroup", name="Level").get_by_role("radio", name="all levels").click()
        settle(page, "level 0 ·")
        for name in PHOTOS:
            page.locator("[data-testid='stSelectbox']").filter(has_text="Image").first.click()
            page.get_by_role("option", name=name, exact=True).click()
            page.get_by_text(f"{name} · all levels").first.wait_for(timeout=WAIT_MS)
            overlay_shown(page, "level 0")
            settle(page, "level 0 ·")
            path = folder / f"photo-{name}.png"
            page.screenshot(path=str(path), full_page=True)
            taken.append(path)
        browser.close()
    return taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--url", help="a running app to measure (default: start one)")
    parser.add_argument("--screenshots", type=Path, help="take the README's screenshots into this folder instead")
    parser.add_argument("--photographs", type=Path,
                        help="take every bundled photograph at every level into this folder instead")
    parser.add_argument("--seed-size", action="store_true",
                        help="upload with the seed's GLOM (224 px, dim 512, 6 levels) instead of the shipped model")
    args = parser.parse_args()
    if args.seed_size:
        for line in server_work(args.repeats):
            print(line)
    server = contextlib.nullcontext(args.url) if args.url else serve.serve_app()
    with server as url:
        for folder, take in ((args.screenshots, screenshots), (args.photographs, photographs)):
            if folder:
                for path in take(url, folder, serve.CHROMIUM, serve.CHROMIUM_ARGS):
                    print(path)
                return
        for line in measure(url, args.repeats, serve.CHROMIUM, serve.CHROMIUM_ARGS, args.seed_size):
            print(line)
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "baseline.py"
        page.write_text(BASELINE_PAGE)
        with serve.serve_app(script=page) as url:
            for line in baseline(url, args.repeats, serve.CHROMIUM, serve.CHROMIUM_ARGS):
                print(line)


if __name__ == "__main__":
    main()
