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
import zipfile

import numpy as np
import pytest

from glom_viz.images import sample_images

from conftest import app_module, default_model, reference_labels, reference_run, scene_rgb

pytestmark = pytest.mark.browser

VIEWPORT = {"width": 1400, "height": 1000}
WAIT_MS = 120_000  # a cold server loads the model and runs the first picture
app = app_module()


# ---------------------------------------------------------------------------------------------------
# reading the page


def wait_for_islands(page, name: str | None = None, step: int | None = None, level: int | None = None) -> None:
    """Until the viewer's last line names this picture, level and step (or any): the page is drawn up to
    its end, export buttons included."""
    pattern = r"{} · level {} · step {} · drawn in".format(
        r".+" if name is None else re.escape(name), r"\d+" if level is None else level, r"\d+" if step is None else step)
    page.get_by_text(re.compile(pattern)).first.wait_for(timeout=WAIT_MS)


def legend(page) -> dict[int, int]:
    """island id -> patches, read from the legend as the browser shows it."""
    text = page.locator("div[data-testid='stMarkdownContainer']").filter(has_text=re.compile(r"island \d+ · \d+"))
    found = re.findall(r"(?:island (\d+)|noise) · (\d+)", text.first.inner_text())
    return {(-1 if not island else int(island)): int(count) for island, count in found}


def expected_legend(labels: np.ndarray) -> dict[int, int]:
    ids, counts = np.unique(labels, return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist()))


def choose_image(page, name: str) -> None:
    page.locator("[data-testid='stSelectbox']").filter(has_text="Image").first.click()
    page.get_by_role("option", name=name, exact=True).click()


def upload_photo(page, name: str, data: bytes) -> None:
    uploader = page.locator("[data-testid='stFileUploader']").filter(has_text="Your images")
    uploader.locator("input[type='file']").set_input_files({"name": name, "mimeType": "image/png", "buffer": data})


def download(page, label: str) -> bytes:
    with page.expect_download(timeout=WAIT_MS) as info:
        page.get_by_role("button", name=label).click()
    with open(info.value.path(), "rb") as file:
        return file.read()


def labels_from_csv(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    labels = np.full(shape, -2, dtype=np.int64)
    for row in csv.DictReader(io.StringIO(data.decode())):
        labels[int(row["step"]), int(row["level"]), int(row["patch"])] = int(row["island"])
    return labels


# ---------------------------------------------------------------------------------------------------
# one person


def test_open_upload_scrub_with_keys_and_export(app_server, browser, photo_rgb, photo_png):
    model = default_model()
    level = min(app.DEFAULT_LEVEL, model.config.levels - 1)
    last = 2 * model.config.levels
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(app_server)
        wait_for_islands(page, "scene 1", step=last, level=level)
        scene = reference_labels(reference_run(model, scene_rgb(0, model.config.image_size)), model.grid)
        assert legend(page) == expected_legend(scene[last, level])
        overlay = page.locator("[data-testid='stImage'] img").first
        assert overlay.evaluate("img => img.complete && img.naturalWidth") >= app.DISPLAY_PX

        upload_photo(page, "astronaut.png", photo_png)  # a new upload is shown at once
        size = model.config.image_size
        wait_for_islands(page, "astronaut.png", step=last, level=level)
        page.get_by_text(f"cropped 160x120 to 120x120, resized to {size}x{size}").wait_for(timeout=WAIT_MS)
        photo = reference_labels(reference_run(model, photo_rgb), model.grid)
        assert legend(page) == expected_legend(photo[last, level])

        page.locator("[data-testid='stSlider']").filter(has_text="Step").get_by_role("slider").focus()
        for step in (last - 1, last - 2):
            page.keyboard.press("ArrowLeft")
            wait_for_islands(page, "astronaut.png", step=step, level=level)
            assert legend(page) == expected_legend(photo[step, level])

        exported = labels_from_csv(download(page, "Labels CSV"), photo.shape)
        np.testing.assert_array_equal(exported, photo)
        bundle = zipfile.ZipFile(io.BytesIO(download(page, "Bundle (zip)")))
        manifest = json.loads(bundle.read("manifest.json"))
        assert manifest["image_sha256"] == hashlib.sha256(photo_png).hexdigest()
        assert manifest["step"] == last - 2 and manifest["level"] == level
        listed = {entry["name"]: entry["sha256"] for entry in manifest["files"]}
        assert set(listed) == set(bundle.namelist()) - {"manifest.json"}
        for name, digest in listed.items():
            assert hashlib.sha256(bundle.read(name)).hexdigest() == digest
        np.testing.assert_array_equal(labels_from_csv(bundle.read("labels.csv"), photo.shape), photo)

        page.get_by_role("button", name=re.compile("Play")).click()  # plays on from here to the last step
        wait_for_islands(page, "astronaut.png", step=last - 1, level=level)
        wait_for_islands(page, "astronaut.png", step=last, level=level)
        page.get_by_role("button", name=re.compile("Play")).wait_for(timeout=WAIT_MS)  # and stops there
    finally:
        page.close()


# ---------------------------------------------------------------------------------------------------
# several people at once


def test_sessions_at_once_each_get_what_they_would_alone(app_server, browser, photo_rgb, photo_png):
    """Three pages on one server, different pictures, working at the same time; each result equals a
    single run of glom_viz on that picture, and nothing of one session shows in another."""
    model = default_model()
    level = min(app.DEFAULT_LEVEL, model.config.levels - 1)
    last = 2 * model.config.levels
    expected = {
        "scene 2": reference_labels(reference_run(model, scene_rgb(1, model.config.image_size)), model.grid),
        "china": reference_labels(reference_run(model, sample_images()["china"]), model.grid),
        "astronaut.png": reference_labels(reference_run(model, photo_rgb), model.grid),
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
            np.testing.assert_array_equal(labels_from_csv(download(page, "Labels CSV"), labels.shape), labels)
        # the photo uploaded in the third session is nowhere in the others
        for page in pages[:2]:
            page.locator("[data-testid='stSelectbox']").filter(has_text="Image").first.click()
            assert page.get_by_role("option", name="astronaut.png").count() == 0
            page.keyboard.press("Escape")
    finally:
        for context in contexts:
            context.close()
