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
work for one upload (GLOM's run, the islands of the shown level and the levels above it, one level's measures,
the overlay, then the islands of the levels below), so that the rest of the browser's time is Streamlit, the
transfer and the browser. Each upload is traced too: when the browser handed the file to the uploader, sent
it, asked for the rerun, when the script started, GLOM's run ended, the overlay was sent and drawn, and the
script run finished (Streamlit's websocket messages, decoded), how many script runs and messages it took,
how long the browser's main thread was busy, and the CPU seconds the server and the browser's processes spent
until the islands were drawn (from /proc: where they share the machine's cores, their sum over the cores is a
floor under the upload's wall time).

    GLOM_VIZ_RUNS=runs python benchmarks/app.py --screenshots docs/screenshots

takes the README's screenshots instead (1400 px wide): each view of the default picture, and a photograph; the
Over training view shows the newest run under GLOM_VIZ_RUNS.

    python benchmarks/app.py --photographs DIR [--checkpoint PATH]

takes one screenshot per bundled photograph with every level's islands side by side (1400 px wide), to
judge by eye whether a uniform sky stays one island and an object one island at the top levels; with
--checkpoint PATH, of that checkpoint, loaded in the sidebar as a visitor loads one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
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
    """Wait until the overlay whose caption starts with `caption` has loaded in the browser: an st.image, or the
    in-page scrubber's picture (explorer.scrubber), which the Islands view at one level shows."""
    page.wait_for_function(
        """caption => [...document.querySelectorAll('[data-testid="stImage"]')].some(element =>
               element.innerText.startsWith(caption) && [...element.querySelectorAll('img')].some(
                   img => img.complete && img.naturalWidth > 0))
            || [...document.querySelectorAll('.glom-scrubber-caption')].some(element =>
               element.textContent.startsWith(caption) && [...element.parentElement.querySelectorAll(
                   '.glom-scrubber-picture')].some(img => img.complete && img.naturalWidth > 0))""",
        arg=caption, timeout=WAIT_MS)


def open_timed(browser, url: str, shown: str, watch=None):
    """A new page in a fresh context, and the seconds until the overlay captioned `shown` is loaded; ``watch(page)``
    is called before the page opens."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    if watch is not None:
        watch(page)
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
    from explorer.context import DEFAULT_LEVEL
    from explorer.limits import run_threads
    from explorer.pictures import DISPLAY_PX
    from explorer.settings import RANDOM_SEED, precision_choices
    from glom_viz import Glom, islands, project, render, runs
    from glom_viz.images import load_image, to_model_input

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = Glom(**dict(SEED_CONFIG)).eval()
    threads, lone = torch.get_num_threads(), run_threads(model.config, 1)  # the server's threads for a run alone
    torch.set_num_threads(lone)
    levels = model.config.levels
    shown = range(DEFAULT_LEVEL, levels)  # the shown level and those above, whose ids its colours follow
    names = ("picture decoded and fitted", "GLOM run", f"islands of levels {DEFAULT_LEVEL}-{levels - 1}, all steps",
             "measures of one level", "overlay drawn", f"(after the overlay) islands of levels 0-{DEFAULT_LEVEL - 1}",
             "(not waited for) UMAP of one level, warm")
    times = {name: [] for name in names}
    cpu_times = {name: [] for name in names}
    offer = precision_choices(model.config.dim)  # what the page runs at its default precision
    precision = offer.default
    fast, path = offer.paths["fast"], offer.paths[precision]
    project.warm_up_umap()
    try:
        for index in range(repeats + 1):  # the first warms up (packs the int8 nets, compiles UMAP)
            uploaded = photo(index)  # the browser's file: its PNG encoding is no work of the server's
            marks = [(time.perf_counter(), time.process_time())]

            def mark():
                marks.append((time.perf_counter(), time.process_time()))
            picture = load_image(uploaded, "coffee.png")
            tensor, _, _ = to_model_input(picture.rgb, model.config.image_size)
            _, display, _ = to_model_input(picture.rgb, max(DISPLAY_PX, model.config.image_size))  # as the app draws
            mark()
            run = runs.run(model, tensor, 2 * model.config.levels, precision=precision)
            mark()
            # as the app finds them (explorer.derived.FrameIslands): the shown level's first, the rest after
            by_level = {level: islands.find_islands(run.states[:, :, level], model.grid) for level in shown}
            labels = islands.align_levels(np.stack([by_level[level] for level in shown], axis=1))
            mark()
            islands.island_measures(run.states[:, :, DEFAULT_LEVEL], labels[:, 0], model.grid)
            mark()
            render.draw_islands(display, labels[-1, 0], model.grid)
            mark()
            by_level.update({level: islands.find_islands(run.states[:, :, level], model.grid)
                             for level in range(DEFAULT_LEVEL)})
            islands.align_levels(np.stack([by_level[level] for level in range(levels)], axis=1))
            mark()
            project.project(run.states[:, :, DEFAULT_LEVEL], method="umap")
            mark()
            if index:
                for name, begun, ended in zip(names, marks, marks[1:]):
                    times[name].append(ended[0] - begun[0])
                    cpu_times[name].append(ended[1] - begun[1])
    finally:
        torch.set_num_threads(threads)
    steps = run.states.shape[0]
    return ([f"server's work for one upload, in this process on {lone} torch thread(s) as the server runs it alone "
             f"(GLOM {path}, the page's default; fast here: {fast}; {steps} steps x {levels} levels = "
             f"{steps * levels} maps clustered, "
             f"{steps * len(shown)} of them before the overlay; load average {os.getloadavg()[0]:.1f}):"]
            + [summary("  " + name, times[name]) + f"  CPU median {statistics.median(cpu_times[name]):.3f} s"
               for name in names])


# the moments of an upload the trace tells apart, in order: (name, what marks it)
UPLOAD_PHASES = (("file handed to the uploader", "the browser asks for upload URLs"),
                 ("file sent", "its PUT finished"), ("rerun asked", "the browser sends rerun_script"),
                 ("script started", "new_session arrives"), ("GLOM run started", "its progress bar arrives"),
                 ("GLOM run done", "its progress bar is emptied"),
                 ("overlay sent", "the overlay's image (or scrubber) element arrives"),
                 ("overlay loaded", "the image is drawn"),
                 ("script run finished", "script_finished arrives: the levels below, the export row"))


class UploadTrace:
    """What one upload sends and receives over Streamlit's websocket and HTTP, timed from the upload's start.

    Messages are decoded with Streamlit's own protobufs (ForwardMsg from the server, BackMsg from the browser).
    """

    def __init__(self, page):
        self.events: list[tuple[float, str, int]] = []  # (time, what, bytes)
        self.start = None
        page.on("websocket", self._websocket)
        page.on("requestfinished", lambda request: self._add(f"{request.method} {request.url.split('?')[0]}", 0))

    def _websocket(self, socket) -> None:
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        def received(payload):
            message = ForwardMsg.FromString(payload if isinstance(payload, bytes) else payload.encode())
            what = message.WhichOneof("type")
            if what == "delta":
                what = message.delta.WhichOneof("type")
                if what == "new_element":
                    what = message.delta.new_element.WhichOneof("type")
            self._add("in " + str(what), len(payload))

        def sent(payload):
            message = BackMsg.FromString(payload if isinstance(payload, bytes) else payload.encode())
            self._add("out " + str(message.WhichOneof("type")), len(payload))
        socket.on("framereceived", received)
        socket.on("framesent", sent)

    def _add(self, what: str, size: int) -> None:
        if self.start is not None:
            self.events.append((time.perf_counter() - self.start, what, size))

    def begin(self) -> None:
        self.events, self.start = [], time.perf_counter()

    def phases(self, total: float) -> dict[str, float]:
        """UPLOAD_PHASES' seconds from the upload's start (NaN where one was not seen)."""
        def first(match, after=0.0):
            return next((t for t, what, _ in self.events if t >= after and match(what)), float("nan"))
        asked = first(lambda what: what == "out file_urls_request")
        sent = first(lambda what: what.startswith("PUT "), asked)
        rerun = first(lambda what: what == "out rerun_script", sent)
        started = first(lambda what: what == "in new_session", rerun)
        run_started = first(lambda what: what == "in progress", started)
        run_done = first(lambda what: what == "in empty", run_started)
        overlay = first(lambda what: what in ("in imgs", "in bidi_component"), started)  # st.image or the scrubber
        finished = first(lambda what: what == "in script_finished", overlay)
        return dict(zip((name for name, _ in UPLOAD_PHASES),
                        (asked, sent, rerun, started, run_started, run_done, overlay, total, finished)))

    def finished(self) -> bool:
        """Whether the script run that sent the overlay has finished."""
        return not math.isnan(self.phases(0.0)["script run finished"])

    def traffic(self) -> tuple[int, int, int]:
        """(script runs, messages to the browser, their bytes)."""
        received = [(what, size) for _, what, size in self.events if what.startswith("in ")]
        return (sum(what == "in new_session" for what, _ in received), len(received), sum(size for _, size in received))


def measure(url: str, repeats: int, chromium_path: str, chromium_args: list[str], seed_size: bool = False) -> list[str]:
    from playwright.sync_api import sync_playwright

    first_view, upload, scrub, scrub_server = [], [], [], []
    phases, traffic, browser_cpu, cpu_until_drawn = [], [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=chromium_args)
        warm = browser.new_page(viewport=VIEWPORT)
        warm.goto(url)
        overlay_shown(warm, "scene 1 · level")
        if seed_size:  # the seed model's runs of scene 1 are then in the server's cache
            use_seed_model(warm)
        warm.close()
        for index in range(repeats):
            traces = []
            context, page, seconds = open_timed(browser, url, "scene 1 · level",
                                                (lambda page: traces.append(UploadTrace(page))) if seed_size else None)
            first_view.append(seconds)
            if seed_size:
                use_seed_model(page)
                trace = traces[0]
                devtools = context.new_cdp_session(page)
                devtools.send("Performance.enable")

            name = f"coffee-{index}.png"
            uploader = page.locator("[data-testid='stFileUploader']").filter(has_text="Your images")
            input_element = uploader.locator("input[type='file']")
            input_element.wait_for(state="attached", timeout=WAIT_MS)
            picture = photo(index)
            if seed_size:
                before = browser_seconds(devtools)
                cpu_before = cpu_by_group()
                trace.begin()
            start = time.perf_counter()
            input_element.set_input_files({"name": name, "mimeType": "image/png", "buffer": picture})
            overlay_shown(page, f"{name} · level")
            upload.append(time.perf_counter() - start)
            if seed_size:  # the upload is what the seed's size measures; scrubbing is the shipped model's
                cpu_until_drawn.append({name: seconds - cpu_before[name] for name, seconds in cpu_by_group().items()})
                waited = time.perf_counter() + WAIT_MS / 1000
                while not trace.finished() and time.perf_counter() < waited:  # what the page does after the overlay
                    page.wait_for_timeout(10)
                phases.append(trace.phases(upload[-1]))
                traffic.append(trace.traffic())
                browser_cpu.append(browser_seconds(devtools) - before)
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
        lines.append("  where an upload's time went, from the upload's start (median over the uploads):")
        previous = 0.0
        for (name, marker), seconds in zip(UPLOAD_PHASES, zip(*(list(p.values()) for p in phases))):
            at = statistics.median(seconds)
            lines.append(f"    {name:<30} at {at:6.3f} s  (+{at - previous:.3f} s: {marker})")
            previous = at
        runs, messages, size = (statistics.median(values) for values in zip(*traffic))
        lines.append(f"  script runs {runs:.0f}, {messages:.0f} messages to the browser ({size / 1000:.1f} kB); "
                     f"the browser's main thread busy {statistics.median(browser_cpu):.3f} s until the script "
                     "run finished")
        spent = {name: statistics.median(row[name] for row in cpu_until_drawn) for name in cpu_until_drawn[0]}
        lines.append(f"  CPU seconds from the upload's start until the islands were drawn (median), on "
                     f"{os.cpu_count()} cores: " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in spent.items())
                     + f"; together {sum(spent.values()):.2f}")
        return lines
    return lines + [summary("one-step scrub, as seen", scrub, goal="< 0.3 s"),
                    summary("one-step scrub, server time", scrub_server, unit="ms", goal="well < 100 ms")]


CPU_GROUPS = (("server", lambda comm, cmd: "streamlit" in cmd), ("browser", lambda comm, cmd: "chrom" in comm),
              ("Playwright's driver", lambda comm, cmd: comm == "node" and "playwright" in cmd))


def cpu_by_group() -> dict[str, float]:
    """CPU seconds (user + system) so far of the server, the browser's processes and Playwright's driver, read
    from /proc: on a machine of few cores they share them, so the upload's wall time is bounded below by their
    sum over the cores."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = dict.fromkeys((name for name, _ in CPU_GROUPS), 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        for name, match in CPU_GROUPS:
            if match(comm, cmd):
                totals[name] += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
                break
    totals["this benchmark"] = time.process_time()  # its trace decodes every websocket message
    return totals


def browser_seconds(devtools) -> float:
    """Seconds the page's main thread has been busy so far (Chromium's Performance.getMetrics TaskDuration)."""
    metrics = {metric["name"]: metric["value"] for metric in devtools.send("Performance.getMetrics")["metrics"]}
    return metrics["TaskDuration"]


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


def use_checkpoint(page, checkpoint: Path) -> None:
    """Load a checkpoint through the sidebar's uploader, as a visitor would, and wait until it runs."""
    page.get_by_text(SOURCES["upload"]).click()
    uploader = page.locator("[data-testid='stFileUploader']").filter(has_text="Checkpoint")
    uploader.locator("input[type='file']").set_input_files(str(checkpoint))
    page.locator("[data-testid='stCaptionContainer']").filter(has_text=checkpoint.name).first.wait_for(timeout=WAIT_MS)
    overlay_shown(page, "scene 1 · level")


def photographs(url: str, folder: Path, chromium_path: str, chromium_args: list[str],
                checkpoint: Path | None = None) -> list[Path]:
    """Every bundled photograph at every level (the islands view's "all levels"), one screenshot each, with
    the shipped model or a checkpoint loaded as a visitor loads one."""
    from playwright.sync_api import sync_playwright

    folder.mkdir(parents=True, exist_ok=True)
    taken = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=chromium_args)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url)
        overlay_shown(page, "scene 1 · level")
        if checkpoint is not None:
            use_checkpoint(page, checkpoint)
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
    parser.add_argument("--checkpoint", type=Path,
                        help="with --photographs: load this checkpoint in the sidebar first (default: the shipped model)")
    parser.add_argument("--seed-size", action="store_true",
                        help="upload with the seed's GLOM (224 px, dim 512, 6 levels) instead of the shipped model")
    args = parser.parse_args()
    if args.seed_size:
        for line in server_work(args.repeats):
            print(line)
    server = contextlib.nullcontext(args.url) if args.url else serve.serve_app()
    with server as url:
        if args.screenshots:
            for path in screenshots(url, args.screenshots, serve.CHROMIUM, serve.CHROMIUM_ARGS):
                print(path)
            return
        if args.photographs:
            for path in photographs(url, args.photographs, serve.CHROMIUM, serve.CHROMIUM_ARGS, args.checkpoint):
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
