"""The app in a real browser (Debian's Chromium through Playwright), the way a person uses it: open the page
and see islands, upload a photo, scrub with the keyboard, download exports; and several people at once on
one server, each getting exactly what they would get alone. Every result is checked against glom_viz run
directly on the same picture."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from glom_viz import render
from glom_viz.data import load_zip
from glom_viz.evaluate import score_dataset
from glom_viz.images import sample_images, to_model_input

from conftest import (default_model, moving_square, reference_labels, reference_run, scene_rgb, serve_app, sprite_zip,
                      sprites, video_bytes)
from explorer.context import DEFAULT_LEVEL
from explorer.pictures import DISPLAY_PX
from glom_viz.model import REDUCED_PRECISION_ENV

pytestmark = pytest.mark.browser
PlaywrightError = pytest.importorskip("playwright.sync_api").Error
expect = pytest.importorskip("playwright.sync_api").expect

VIEWPORT = {"width": 1400, "height": 1000}
SCRUBBER_PICTURE = ".glom-scrubber-picture"
JPEG_ERROR = 3.0  # mean absolute error (0-255) within which a JPEG of an overlay is that overlay
WAIT_MS = 120_000  # a cold server loads the model and runs the first picture


# ---------------------------------------------------------------------------------------------------
# reading the page


def wait_for_islands(page, name: str | None = None, step: int | None = None, level: int | None = None) -> None:
    """Until the viewer's last line names this picture, level and step (or any): the page is drawn up to
    its end, export buttons included."""
    pattern = r"{} · level {} · step {} · drawn in".format(
        r".+" if name is None else re.escape(name), r"\d+" if level is None else level, r"\d+" if step is None else step)
    page.get_by_text(re.compile(pattern)).first.wait_for(timeout=WAIT_MS)


def chosen_column(page, wanted: tuple[int, int] | None = None) -> tuple[int, int]:
    """The (row, column) the column view's number inputs show, once they show `wanted` (or settle).

    During a rerun Streamlit briefly keeps the old inputs beside the new ones, so the inputs are read
    only while exactly one of each is on the page, and again until they show `wanted`.
    """
    deadline = time.monotonic() + WAIT_MS / 1000
    shown = None
    while time.monotonic() < deadline:
        rows, cols = page.get_by_label("Row", exact=True), page.get_by_label("Column", exact=True)
        try:
            if rows.count() == 1 and cols.count() == 1:
                shown = (int(rows.input_value(timeout=1000)), int(cols.input_value(timeout=1000)))
                if wanted is None or shown == wanted:
                    return shown
        except PlaywrightError:  # an input went stale between the count and the read
            pass
        page.wait_for_timeout(100)
    raise AssertionError(f"the row and column inputs show {shown}, not {wanted}")


def legend(page) -> dict[int, int]:
    """island id -> patches, read from the legend as the browser shows it."""
    text = page.locator("div[data-testid='stMarkdownContainer']").filter(has_text=re.compile(r"island \d+ · \d+"))
    found = re.findall(r"(?:island (\d+)|no island) · (\d+)", text.first.inner_text())
    return {(-1 if not island else int(island)): int(count) for island, count in found}


def expected_legend(labels: np.ndarray) -> dict[int, int]:
    ids, counts = np.unique(labels, return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist()))


def choose_image(page, name: str, tries: int = 3) -> None:
    box = page.locator("[data-testid='stSelectbox']").filter(has_text="Image").first
    option = page.get_by_role("option", name=name, exact=True)
    for _ in range(tries - 1):
        box.click()
        try:
            option.click(timeout=10_000)
            return
        except PlaywrightError:  # the list closed before it was read (a click while the page reran)
            page.keyboard.press("Escape")
    box.click()
    option.click()


def upload_photo(page, name: str, data: bytes) -> None:
    uploader = page.locator("[data-testid='stFileUploader']").filter(has_text="Your images")
    uploader.locator("input[type='file']").set_input_files({"name": name, "mimeType": "image/png", "buffer": data})


def download(page, label: str) -> bytes:
    with page.expect_download(timeout=WAIT_MS) as info:
        page.get_by_role("button", name=label).click()
    with open(info.value.path(), "rb") as file:
        return file.read()


def export(page, label: str) -> bytes:
    """A file from the viewer's Export popover: opened, the download clicked, closed again."""
    page.locator("[data-testid='stPopover']").filter(has_text="Export").get_by_role("button").click()
    data = download(page, label)
    page.keyboard.press("Escape")
    page.get_by_role("button", name=label).wait_for(state="hidden", timeout=WAIT_MS)
    return data


def labels_from_csv(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    labels = np.full(shape, -2, dtype=np.int64)
    for row in csv.DictReader(io.StringIO(data.decode())):
        labels[int(row["step"]), int(row["level"]), int(row["patch"])] = int(row["island"])
    return labels


# ---------------------------------------------------------------------------------------------------
# one person


def test_open_upload_scrub_with_keys_and_export(app_server, browser, photo_rgb, photo_png):
    model = default_model()
    level = min(DEFAULT_LEVEL, model.config.levels - 1)
    last = 2 * model.config.levels
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(app_server)
        wait_for_islands(page, "scene 1", step=last, level=level)
        scene = reference_labels(reference_run(model, scene_rgb(0, model.config.image_size)).states, model.grid)
        assert legend(page) == expected_legend(scene[last, level])
        overlay = page.locator(SCRUBBER_PICTURE)
        assert overlay.evaluate("img => img.complete && img.naturalWidth") >= DISPLAY_PX

        upload_photo(page, "astronaut.png", photo_png)  # a new upload is shown at once
        size = model.config.image_size
        wait_for_islands(page, "astronaut.png", step=last, level=level)
        page.get_by_text(f"cropped 160x120 to 120x120, resized to {size}x{size}").wait_for(timeout=WAIT_MS)
        photo = reference_labels(reference_run(model, photo_rgb).states, model.grid)
        assert legend(page) == expected_legend(photo[last, level])

        slider = page.get_by_role("slider", name="Step", exact=True)  # the in-page scrubber's
        slider.focus()
        for step in (last - 1, last - 2):
            page.keyboard.press("ArrowLeft")
            wait_for_islands(page, "astronaut.png", step=step, level=level)
            assert legend(page) == expected_legend(photo[step, level])

        exported = labels_from_csv(export(page, "Labels CSV"), photo.shape)
        np.testing.assert_array_equal(exported, photo)
        bundle = zipfile.ZipFile(io.BytesIO(export(page, "Bundle (zip)")))
        manifest = json.loads(bundle.read("manifest.json"))
        assert manifest["image_sha256"] == hashlib.sha256(photo_png).hexdigest()
        assert manifest["step"] == last - 2 and manifest["level"] == level
        listed = {entry["name"]: entry["sha256"] for entry in manifest["files"]}
        assert set(listed) == set(bundle.namelist()) - {"manifest.json"}
        for name, digest in listed.items():
            assert hashlib.sha256(bundle.read(name)).hexdigest() == digest
        np.testing.assert_array_equal(labels_from_csv(bundle.read("labels.csv"), photo.shape), photo)

        slider.focus()
        page.keyboard.press("Home")
        wait_for_islands(page, "astronaut.png", step=0, level=level)
        # every step the viewer's last line names, as the page draws it: a busy machine may paint two
        # ticks of the timer at once, so the test asks for a rising run of steps, not every one
        # every step the scrubber's caption names as play shows it in the page: a busy machine may skip a
        # paint, so the test asks for a rising run of steps, not every one
        page.evaluate("""() => {
            window.stepsShown = [];
            const caption = document.querySelector('.glom-scrubber-caption');
            new MutationObserver(() => {
                const step = Number(caption.textContent.match(/ · step (\\d+) of/)[1]);
                if (window.stepsShown.at(-1) !== step) window.stepsShown.push(step);
            }).observe(caption, {subtree: true, childList: true, characterData: true});
        }""")
        page.get_by_role("button", name=re.compile("Play")).click()  # plays on from here to the last step
        wait_for_islands(page, "astronaut.png", step=last, level=level)  # the server told once play stops
        page.get_by_role("button", name=re.compile("Play")).wait_for(timeout=WAIT_MS)  # and stops there
        shown = page.evaluate("() => window.stepsShown")
        assert shown == sorted(set(shown)) and shown[-1] == last, shown
        assert len(set(shown) - {0, last}) >= 3, shown  # it played through the steps, not jumped to the end
        assert legend(page) == expected_legend(photo[last, level])
    finally:
        page.close()


def scrubber_picture(page) -> np.ndarray:
    """The (H, W, 3) pixels the in-page scrubber shows now (the picture it holds for its step, as the server
    serves it at the URL the page shows)."""
    url = page.locator(SCRUBBER_PICTURE).evaluate("picture => picture.src")
    response = page.request.get(url)
    assert response.ok, (url, response.status)
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"), dtype=np.float64)


def test_the_scrubber_swaps_each_steps_overlay_in_the_page_and_the_page_follows_once_it_stops(app_server, browser):
    """Scrubbing with the keys shows each step's overlay (the one render.draw_islands draws for that step),
    captioned with its step, at once; the legend and the viewer's last line follow when scrubbing stops."""
    model = default_model()
    size, grid = model.config.image_size, model.grid
    level = min(DEFAULT_LEVEL, model.config.levels - 1)
    last = 2 * model.config.levels
    rgb = scene_rgb(0, size)
    labels = reference_labels(reference_run(model, rgb).states, grid)
    shown = to_model_input(rgb, size, "crop")[1]
    display = shown.repeat(DISPLAY_PX // size, axis=0).repeat(DISPLAY_PX // size, axis=1)  # the scene, enlarged

    def overlay(step: int) -> np.ndarray:
        return render.draw_islands(display, labels[step, level], grid).astype(np.float64)

    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(app_server)
        wait_for_islands(page, "scene 1", step=last, level=level)
        caption = page.locator(".glom-scrubber-caption")
        slider = page.get_by_role("slider", name="Step", exact=True)
        slider.focus()
        for key, step in (("Home", 0), ("ArrowRight", 1), ("End", last), ("ArrowLeft", last - 1)):
            page.keyboard.press(key)
            expect(caption).to_have_text(f"scene 1 · level {level} · step {step} of {last}")
            expect(slider).to_have_attribute("aria-valuetext", f"step {step} of {last}")
            picture = scrubber_picture(page)
            error = np.abs(picture - overlay(step)).mean()
            assert error < JPEG_ERROR, (step, error)  # this step's overlay, as JPEG carries it
            # and not another step's, where that one looks different
            for other in {0, last} - {step}:
                if np.abs(overlay(other) - overlay(step)).mean() > 4 * JPEG_ERROR:
                    assert np.abs(picture - overlay(other)).mean() > 2 * JPEG_ERROR, (step, other)
        wait_for_islands(page, "scene 1", step=last - 1, level=level)  # the server told, the page drawn for it
        assert legend(page) == expected_legend(labels[last - 1, level])
        page.keyboard.press("Home")
        wait_for_islands(page, "scene 1", step=0, level=level)
        assert legend(page) == {0: model.num_patches}  # step 0: every column alike, one island
        expect(caption).to_have_text(f"scene 1 · level {level} · step 0 of {last}")
    finally:
        page.close()


def wait_for_loaded(page, picture) -> None:
    """Until the <img> ``picture`` (a locator) has loaded its picture."""
    page.wait_for_function("picture => picture.complete && picture.naturalWidth > 0", arg=picture.element_handle(),
                           timeout=WAIT_MS)


def test_a_scrubber_picture_the_server_no_longer_had_is_fetched_again(app_server, browser):
    """The server keeps a picture while a page's last script run names it, so another visitor's run can free
    one that this page's rerun is about to name again before the page has fetched it: the scrubber asks
    again and shows it. Here every picture is missing the first time it is asked for."""
    model = default_model()
    size, grid = model.config.image_size, model.grid
    level = min(DEFAULT_LEVEL, model.config.levels - 1)
    last = 2 * model.config.levels
    labels = reference_labels(reference_run(model, scene_rgb(0, size)).states, grid)
    display = to_model_input(scene_rgb(0, size), size, "crop")[1].repeat(DISPLAY_PX // size, axis=0).repeat(
        DISPLAY_PX // size, axis=1)
    refused = set()

    def missing_the_first_time(route):
        path = route.request.url.split("?")[0]
        if path in refused:
            route.continue_()
        else:
            refused.add(path)
            route.fulfill(status=404, body="no such file")

    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.route("**/media/**", missing_the_first_time)
        page.goto(app_server)
        wait_for_islands(page, "scene 1", step=last, level=level)
        shown = page.locator(SCRUBBER_PICTURE)
        page.get_by_role("slider", name="Step", exact=True).focus()
        for key, step in (("End", last), ("Home", 0)):
            page.keyboard.press(key)
            caption = f"scene 1 · level {level} · step {step} of {last}"
            expect(page.locator(".glom-scrubber-caption")).to_have_text(caption)
            wait_for_loaded(page, shown)
            assert shown.evaluate("picture => picture.src").split("?")[0] in refused  # missing once, then shown
            drawn = render.draw_islands(display, labels[step, level], grid).astype(np.float64)
            assert np.abs(scrubber_picture(page) - drawn).mean() < JPEG_ERROR, step
    finally:
        page.close()


def test_the_scrubber_shows_its_pictures_on_a_server_under_a_base_path(browser):
    """Behind a proxy the app may be served under a path of its own (server.baseUrlPath): the scrubber's
    pictures are fetched from under it, at the page's address with and without its closing slash."""
    with serve_app(env={REDUCED_PRECISION_ENV: "0"}, base_path="glom") as url:
        page = browser.new_page(viewport=VIEWPORT)
        try:
            for address in (url + "/", url):
                page.goto(address)
                wait_for_islands(page, "scene 1")
                picture = page.locator(SCRUBBER_PICTURE)
                wait_for_loaded(page, picture)
                assert picture.evaluate("picture => picture.src").startswith(url + "/media/")
        finally:
            page.close()


# ---------------------------------------------------------------------------------------------------
# several people at once


def test_sessions_at_once_each_get_what_they_would_alone(app_server, browser, photo_rgb, photo_png):
    """Three pages on one server, different pictures, working at the same time; each result equals a
    single run of glom_viz on that picture, and nothing of one session shows in another."""
    model = default_model()
    level = min(DEFAULT_LEVEL, model.config.levels - 1)
    last = 2 * model.config.levels
    expected = {
        "scene 2": reference_labels(reference_run(model, scene_rgb(1, model.config.image_size)).states, model.grid),
        "china": reference_labels(reference_run(model, sample_images()["china"]).states, model.grid),
        "astronaut.png": reference_labels(reference_run(model, photo_rgb).states, model.grid),
    }
    contexts = [browser.new_context(viewport=VIEWPORT) for _ in expected]
    pages = [context.new_page() for context in contexts]
    try:
        for page in pages:
            page.goto(app_server)
        for page in pages:
            wait_for_islands(page)
        # all three ask for their picture before any of them is waited for
        for page, name in zip(pages, expected):
            if name == "astronaut.png":
                upload_photo(page, name, photo_png)  # shown at once
            else:
                choose_image(page, name)
        for page, (name, labels) in zip(pages, expected.items()):
            wait_for_islands(page, name, step=last, level=level)
            assert legend(page) == expected_legend(labels[last, level]), name
        # downloads once every session has settled: Streamlit stores a deferred download's file
        # unreferenced, and two script runs ending in any session delete it, so a file made while
        # the other sessions still compute can vanish before the browser fetches it (docs/LIMITS.md)
        for page, (name, labels) in zip(pages, expected.items()):
            np.testing.assert_array_equal(labels_from_csv(export(page, "Labels CSV"), labels.shape), labels)
        # the photo uploaded in the third session is nowhere in the others
        for page in pages[:2]:
            page.locator("[data-testid='stSelectbox']").filter(has_text="Image").first.click()
            assert page.get_by_role("option", name="astronaut.png").count() == 0
            page.keyboard.press("Escape")
    finally:
        for context in contexts:
            context.close()


# ---------------------------------------------------------------------------------------------------
# selecting in the figures


PLOT = "[data-testid='stPlotlyChart'] .js-plotly-plot"


def click_view(page, view: str) -> None:
    # the current run's switcher: while the page reruns, Streamlit keeps the last run's faded beside it
    current = page.locator('[data-testid="stElementContainer"]:not([data-stale="true"])')
    current.get_by_role("radiogroup", name="View").get_by_role("radio", name=view, exact=True).click()


def image_captioned(page, caption: str | re.Pattern) -> np.ndarray:
    """The (H, W, 3) pixels of the st.image whose caption matches, as the server sent them."""
    element = page.locator("[data-testid='stImage']").filter(has_text=caption).first
    element.wait_for(timeout=WAIT_MS)
    source = element.locator("img").first.get_attribute("src")
    response = page.request.get(source if source.startswith("http") else page.url.rstrip("/") + source)
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"), dtype=np.float64)


def highlighted_patches(plain: np.ndarray, highlighted: np.ndarray, grid: tuple[int, int]) -> set[int]:
    """The patches that render.draw_islands left at full brightness (it dims the others by HIGHLIGHT_DIM),
    read from each patch's interior (away from island borders and the highlight outline)."""
    h, w = grid
    cell_h, cell_w = plain.shape[0] // h, plain.shape[1] // w
    margin = max(2, cell_h // 4)
    full = (1 + render.HIGHLIGHT_DIM) / 2
    patches = set()
    for patch in range(h * w):
        row, col = divmod(patch, w)
        window = (slice(row * cell_h + margin, (row + 1) * cell_h - margin),
                  slice(col * cell_w + margin, (col + 1) * cell_w - margin))
        if highlighted[window].sum() > full * plain[window].sum():
            patches.add(patch)
    return patches


def test_lasso_in_projection_highlights_the_lassoed_patches(app_server, browser):
    """Lasso the left part of the projection's points: the caption counts exactly the patches of the points
    inside the lasso, and the picture beside it keeps exactly those patches bright."""
    model = default_model()
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(app_server)
        wait_for_islands(page, "scene 1")
        click_view(page, "Projection")
        hint = "Select points (click, box or lasso) to light up their patches here."
        page.get_by_text(hint).wait_for(timeout=WAIT_MS)
        page.locator(f"{PLOT} .scatterlayer .point").first.wait_for(timeout=WAIT_MS)
        plain = image_captioned(page, hint)
        # every point's centre on the screen and its patch (plotly's customdata, as the app reads it)
        points = page.locator(PLOT).first.evaluate("""plot => [...plot.querySelectorAll('.scatterlayer .trace')]
            .flatMap(trace => {
                const data = trace.__data__[0].trace;
                return [...trace.querySelectorAll('.point')].map(point => {
                    const box = point.getBoundingClientRect();
                    const custom = data.customdata[point.__data__.i];
                    return {x: box.x + box.width / 2, y: box.y + box.height / 2,
                            patch: Array.isArray(custom) ? custom[0] : custom};
                });
            })""")
        assert len({p["patch"] for p in points}) == model.num_patches
        xs = sorted(p["x"] for p in points)
        # cut at the widest gap between neighbouring points (leaving out the outermost 5 % on each side),
        # so no point sits near the lasso's edge: plotly rounds the lasso to pixels, and a 1.5 px gap
        # once lost two points
        middle = xs[len(xs) // 20: 19 * len(xs) // 20 + 1]
        gap, cut = max((b - a, (a + b) / 2) for a, b in zip(middle, middle[1:]))
        assert gap > 4, "no gap between the points to lasso along"
        left, top = xs[0] - 6, min(p["y"] for p in points) - 6
        bottom = max(p["y"] for p in points) + 6
        lassoed = {p["patch"] for p in points if p["x"] < cut}
        assert 0 < len(lassoed) < model.num_patches

        page.mouse.move(left, top)
        page.mouse.down()
        for x, y in ((cut, top), (cut, bottom), (left, bottom), (left, top)):
            page.mouse.move(x, y, steps=8)
        page.mouse.up()

        caption = f"{len(lassoed)} selected patches highlighted"
        page.get_by_text(caption, exact=True).wait_for(timeout=WAIT_MS)
        highlighted = image_captioned(page, caption)
        assert highlighted.shape == plain.shape
        assert highlighted_patches(plain, highlighted, model.grid) == lassoed
    finally:
        page.close()


def test_clicking_a_patch_on_the_attention_map_chooses_its_column(app_server, browser):
    """Column view: a click on a patch of the attention map makes that patch the chosen column (row and
    column inputs, the map's title and its outline all follow)."""
    model = default_model()
    h, w = model.grid
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(app_server)
        wait_for_islands(page, "scene 1")
        click_view(page, "Column")
        page.get_by_role("button", name=re.compile("Compute attention")).click()
        page.get_by_text("Click a patch on the map to look at its column.").wait_for(timeout=WAIT_MS)
        start = chosen_column(page)
        assert start == (h // 2, w // 2)  # nothing chosen yet: the middle of the picture

        for target in ((2, 3), (h - 2, w - 1)):
            assert target != start
            chart = page.locator("[data-testid='stPlotlyChart']").filter(
                has_text=re.compile(r"whom patch \(\d+, \d+\) agrees with")).first
            # the centre of the heat map's cell for `target`, in page pixels (plotly's own axes)
            x, y = chart.locator(".js-plotly-plot").evaluate("""(plot, [row, col]) => {
                const layout = plot._fullLayout, cells = plot._fullData.find(t => t.type === 'heatmap');
                const box = plot.getBoundingClientRect();
                return [box.left + layout.xaxis._offset + layout.xaxis.l2p(cells.x0 + col * cells.dx),
                        box.top + layout.yaxis._offset + layout.yaxis.l2p(cells.y0 + row * cells.dy)];
            }""", list(target))
            page.mouse.click(x, y)
            page.get_by_text(f"whom patch ({target[0]}, {target[1]}) agrees with").first.wait_for(timeout=WAIT_MS)
            assert chosen_column(page, target) == target
            start = target
    finally:
        page.close()


# ---------------------------------------------------------------------------------------------------
# a set with masks, and a video


def test_a_set_zip_and_a_video_uploaded_in_the_browser(app_server, browser):
    """A zip of the dataset layout: its scores over the set (those of evaluate --data, downloaded as
    JSON), what was skipped, and each picture's islands scored against its own masks; then a clip,
    which becomes a sequence of frames."""
    model = default_model()
    seeds = sprites().TEST_SEEDS[:3]
    data = sprite_zip(seeds, extra={"sprites/images/notes.png": b"not a picture"})
    expected = score_dataset(model, load_zip(data, "sprites.zip", model.config.image_size), per_picture=True)
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(app_server)
        wait_for_islands(page)
        uploader = page.locator("[data-testid='stFileUploader']").filter(has_text="A set with masks")
        uploader.locator("input[type='file']").set_input_files(
            {"name": "sprites.zip", "mimeType": "application/zip", "buffer": data})
        page.get_by_text("Set sprites.zip", exact=True).wait_for(timeout=WAIT_MS)
        skipped = re.compile(r"1 file of the set was skipped: 'images/notes\.png' is a text file")
        page.get_by_text(skipped).wait_for(timeout=WAIT_MS)
        found = json.loads(download(page, "Set scores (JSON)"))
        for ours, theirs in zip(found["levels"], expected["levels"]):
            assert ours["fg_ari_objects"] == pytest.approx(theirs["fg_ari_objects"], abs=1e-6)
            assert ours["mbo_parts"] == pytest.approx(theirs["mbo_parts"], abs=1e-6)
        assert [p["name"] for p in found["pictures"]] == [str(seed) for seed in seeds]

        choose_image(page, f"sprites/{seeds[1]}")
        wait_for_islands(page, f"sprites/{seeds[1]}")
        page.locator("[data-testid='stMetric']").filter(has_text="FG-ARI").first.wait_for(timeout=WAIT_MS)

        uploader = page.locator("[data-testid='stFileUploader']").filter(has_text="Your images")
        uploader.locator("input[type='file']").set_input_files(
            {"name": "walk.mp4", "mimeType": "video/mp4", "buffer": video_bytes(moving_square(4))})
        wait_for_islands(page, "walk.mp4 · frame 1")
        page.locator("[data-testid='stSelectbox']").filter(has_text="Image").first.click()
        for frame in range(1, 5):
            page.get_by_role("option", name=f"walk.mp4 · frame {frame}", exact=True).wait_for(timeout=WAIT_MS)
        page.keyboard.press("Escape")
    finally:
        page.close()


# ---------------------------------------------------------------------------------------------------
# a new visitor's walk: exports, iterations, a 6-level checkpoint, a sequence, a training run, two models


def fits(locator) -> list:
    """What of an element's text does not fit: its own overflow and each button's, as [text, scroll, client]."""
    return locator.evaluate("""el => [el, ...el.querySelectorAll('button, [role=radio]')]
        .filter(e => e.scrollWidth > e.clientWidth + 1)
        .map(e => [e.innerText, e.scrollWidth, e.clientWidth])""")


def sidebar_slider(page, label: str):
    return page.locator("[data-testid='stSidebar'] [data-testid='stSlider']").filter(has_text=label).get_by_role("slider")


@pytest.fixture(scope="module")
def walk_server(tmp_path_factory):
    """A server whose runs folder holds one short training run of the default model's grid."""
    from glom_viz.train import main as train
    from glom_viz.training_runs import RUNS_ENV

    root = tmp_path_factory.mktemp("runs")
    assert train(["--dim", "16", "--levels", "4", "--image-size", "64", "--patch-size", "4", "--iters", "2",
                  "--batch-size", "2", "--steps", "3", "--checkpoint-every", "1", "--warmup", "1", "--quiet",
                  "--out", str(root / "short")]) == 0
    with serve_app(env={REDUCED_PRECISION_ENV: "0", RUNS_ENV: str(root)},
                   log_path=tmp_path_factory.mktemp("walk") / "server.log") as url:
        yield url


def test_a_new_visitors_walk(walk_server, browser, tmp_path):
    import torch
    from glom_viz.checkpoints import SHIPPED_CHECKPOINT, checkpoint_hash
    from glom_viz.export import find_browser

    model = default_model()
    levels, last = model.config.levels, 2 * model.config.levels
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(walk_server)
        wait_for_islands(page, "scene 1", step=last, level=min(DEFAULT_LEVEL, levels - 1))
        level_control = page.locator("[data-testid='stButtonGroup']").filter(has_text="all levels").first
        assert fits(level_control) == [] and fits(page.get_by_role("button", name=re.compile("Play"))) == []

        # the bundle says what it was made from: the picture's full sha256 and no seed for a checkpoint
        manifest = json.loads(zipfile.ZipFile(io.BytesIO(export(page, "Bundle (zip)"))).read("manifest.json"))
        scene = scene_rgb(0, model.config.image_size)
        assert manifest["image_sha256"] == hashlib.sha256(np.ascontiguousarray(scene).tobytes()).hexdigest()
        assert "seed" not in manifest and "model_seed" not in manifest and manifest["islands_seed"] == 0
        if SHIPPED_CHECKPOINT.is_file():
            assert manifest["checkpoint_sha256"] == checkpoint_hash(SHIPPED_CHECKPOINT)

        # all levels at one step: the PNG holds every level at a readable size, and the whole title
        level_control.get_by_role("radio", name="all levels").click()
        page.get_by_text(re.compile(r"scene 1 · all levels · step \d+ · drawn in")).first.wait_for(timeout=WAIT_MS)
        if find_browser() is not None:
            exported = Image.open(io.BytesIO(export(page, "Figure PNG")))
            tile = render.ROW_TILE_PX
            assert exported.width >= 2 * levels * tile and exported.height >= 2 * tile, exported.size

        # more iterations: the step follows the end instead of falling back to step 0
        iterations = sidebar_slider(page, "Iterations")
        iterations.focus()
        page.keyboard.press("ArrowRight")
        page.get_by_text(re.compile(rf"scene 1 · all levels · step {last + 1} · drawn in")).first.wait_for(
            timeout=WAIT_MS)

        # a 6-level checkpoint: its level control fits, and it opens settled at its last step
        glom_pytorch = pytest.importorskip("glom_pytorch")
        buffer = io.BytesIO()
        torch.save(glom_pytorch.Glom(dim=16, levels=6, image_size=64, patch_size=4).state_dict(), buffer)
        page.get_by_text("Upload a checkpoint", exact=True).click()
        page.locator("[data-testid='stFileUploader']").filter(has_text="Checkpoint").locator(
            "input[type='file']").set_input_files({"name": "six-levels.pt", "mimeType": "application/octet-stream",
                                                   "buffer": buffer.getvalue()})
        page.get_by_text(re.compile(r"scene 1 · all levels · step 12 · drawn in")).first.wait_for(timeout=WAIT_MS)
        six = page.locator("[data-testid='stButtonGroup']").filter(has_text="Level (0 bottom, 5 top)").first
        assert six.get_by_role("radio").count() == 7 and fits(six) == []
        six.get_by_role("radio", name="5", exact=True).click()
        wait_for_islands(page, "scene 1", step=12, level=5)
        # the content-only and balanced models, each said what it is, and back to the scenes model
        for source, said in (("Trained, content only", "no position told"), ("Trained, balanced", "told once")):
            page.get_by_text(source, exact=True).click()
            page.locator("[data-testid='stSidebar']").get_by_text(re.compile(said)).first.wait_for(timeout=WAIT_MS)
            wait_for_islands(page, "scene 1")
        page.get_by_text("Trained (shipped)", exact=True).click()
        wait_for_islands(page, "scene 1")

        # a sequence of an uploaded animation: its own frames only, counted from 1; play's label fits
        frames = [Image.fromarray(np.full((40, 40, 3), (60 * i, 200 - 60 * i, 90), np.uint8)) for i in range(3)]
        gif = io.BytesIO()
        frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100)
        page.get_by_text("Animated files: all frames").click()
        page.locator("[data-testid='stFileUploader']").filter(has_text="Your images").locator(
            "input[type='file']").set_input_files({"name": "square.gif", "mimeType": "image/gif",
                                                   "buffer": gif.getvalue()})
        wait_for_islands(page, "square.gif · frame 1")
        page.get_by_text("Sequence: carry state from frame to frame").click()
        page.get_by_text(re.compile("Sequence\\*\\* of 3 uploaded frames|Sequence of 3 uploaded frames")).first.wait_for(
            timeout=WAIT_MS)
        frame = page.locator("[data-testid='stSlider']").filter(has_text="Frame")
        ends = frame.get_by_test_id("stSliderTickBar").inner_text().split()
        assert ends == ["1", "3"], ends
        assert fits(page.get_by_role("button", name=re.compile("Play"))) == []
        page.get_by_text("Sequence: carry state from frame to frame").click()
        page.get_by_text(re.compile("Sequence.* of 3 uploaded frames")).first.wait_for(state="detached", timeout=WAIT_MS)
        wait_for_islands(page)

        # the training run: its checkpoints scrubbed, beside its losses
        click_view(page, "Over training")
        page.get_by_text(re.compile(r"training step 3 \(patches per island\)|training step 3:")).first.wait_for(
            timeout=WAIT_MS)
        training = page.locator("[data-testid='stSlider']").filter(has_text="Training step").get_by_role("slider")
        training.focus()
        page.keyboard.press("Home")
        page.get_by_text(re.compile(r"training step 0 \(patches per island\)|training step 0:")).first.wait_for(
            timeout=WAIT_MS)
        page.locator("[data-testid='stPlotlyChart']").filter(has_text="run short: losses").first.wait_for(timeout=WAIT_MS)

        # two models side by side: the shipped one and the run's last checkpoint, islands matched
        wait_for_islands(page)
        click_view(page, "Compare models")
        page.get_by_text("a checkpoint of a training run").click()
        page.get_by_text(re.compile(r"run short at step 3 · level \d+ · step \d+")).first.wait_for(timeout=WAIT_MS)
        page.get_by_text(re.compile("Between the two: ARI")).first.wait_for(timeout=WAIT_MS)
        assert len(page.locator("div[data-testid='stMarkdownContainer']").filter(
            has_text=re.compile(r"^(island \d+|no island) · \d+")).all()) >= 2
    finally:
        page.close()
