"""Text from a file is text on the page: every name, tensor name and message quoting one reaches it escaped.

Headless (AppTest), every element of the page is walked, in every view, after uploads whose names and
tensor names carry Markdown, HTML and links: wherever that text shows, it renders as its own characters
(no image, no link, no bold). In a real browser, a page with such an upload fetches nothing from the
URL in its name.
"""

from __future__ import annotations

import html
import http.server
import io
import json
import re
import threading

import numpy as np
import pytest
import streamlit as st
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import APP, png_bytes
from explorer.views import VIEWS
from glom_viz.model import Glom
from glom_viz.text import WORD_JOINER

markdown_it = pytest.importorskip("markdown_it")
RENDERER = markdown_it.MarkdownIt("gfm-like")
MARKER = "zq"  # in every hostile name, so the walk finds where names went
NAME = f"{MARKER} ![i](http://127.0.0.1:9/{MARKER}.png) **b** <b>h</b> [l](http://127.0.0.1:9/) www.{MARKER}.example.png"
TENSOR = f"{MARKER} ![t](http://127.0.0.1:9/tensor.png) **bold tensor**"
# where a page shows text as it is (no Markdown): a select box's options, JSON, figure specs (their titles
# are Plotly's HTML subset, checked apart), plain text
PLAIN_FIELDS = {"options", "body", "spec", "default_values", "raw_values", "value"}


def strings(message, path=()):
    """(field path, text) of every string field in a protobuf message, nested ones too."""
    for field, value in message.ListFields():
        items = value if field.is_repeated else [value]
        if field.type == field.TYPE_MESSAGE:
            for item in items:
                yield from strings(item, (*path, field.name))
        elif field.type == field.TYPE_STRING:
            for item in items:
                yield (*path, field.name), item


def page_texts(at: AppTest):
    """(element type, field path, text) of every string on the page that came from a hostile name."""
    def walk(node):
        proto = getattr(node, "proto", None)
        if proto is not None:
            for path, text in strings(proto):
                if MARKER in text:
                    yield type(node).__name__, path, text
        for child in getattr(node, "children", {}).values():
            yield from walk(child)
    yield from walk(at._tree)


def assert_shown_as_text(at: AppTest) -> int:
    """Every place a hostile name reached renders it as characters; returns how many places were walked."""
    places = 0
    for element, path, text in page_texts(at):
        places += 1
        where = f"{element} {'.'.join(path)}: {text[:120]!r}"
        if path[-1] == "spec":  # a Plotly figure: titles are HTML, so the name must arrive escaped
            decoded = json.dumps(json.loads(text), ensure_ascii=False)  # Plotly writes < as \u003c
            assert "<b>h</b>" not in decoded and "&lt;b&gt;h&lt;/b&gt;" in decoded, where
            continue
        if path[-1] in PLAIN_FIELDS:
            continue
        if element == "UnknownElement" and path == ("json",):  # the in-page scrubber's data: its captions are
            continue  # set as text (textContent), never parsed; the browser test below shows them, fetching nothing
        out = RENDERER.render(text)
        assert "<img" not in out and "<a " not in out, where
        shown = html.unescape(re.sub(r"<[^>]+>", "", out)).replace(WORD_JOINER, "")
        assert "![i](http" in shown or "![t](http" in shown or "…" in shown, where  # the name itself, as text
        assert "<strong>b</strong>" not in out and "<strong>bold tensor</strong>" not in out, where
    return places


@pytest.fixture
def at(monkeypatch):
    monkeypatch.setenv("GLOM_VIZ_WARM_UP", "0")
    st.cache_data.clear()
    st.cache_resource.clear()
    return AppTest.from_file(str(APP), default_timeout=120)


def checkpoint_with_a_hostile_tensor_name() -> bytes:
    state = Glom(dim=16, levels=2, image_size=32, patch_size=4).state_dict()
    state[TENSOR] = torch.zeros(2)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_every_place_a_name_reaches_shows_it_as_text(at):
    at.session_state["model_precision"] = "fp32"
    at.run()
    picture = np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)
    uploads = [(NAME, png_bytes(picture), "image/png"),
               (f"refused {NAME}", b"not a picture", "image/png")]  # its refusal quotes the name
    at.file_uploader(key="images_upload").set_value(uploads).run()
    assert not at.exception
    mask = next(u for u in at.sidebar.file_uploader if u.key.startswith("mask_"))
    mask.set_value((f"mask {NAME}", png_bytes(np.zeros((8, 8, 3), np.uint8)), "image/png")).run()  # wrong size
    places = assert_shown_as_text(at)
    for view in VIEWS:
        if view == "Column":
            continue  # draws no name
        at.button_group(key="view").set_value(view).run()
        assert not at.exception
        places += assert_shown_as_text(at)
    assert places >= 10  # captions, alerts, labels, progress texts, figure titles
    assert any("![i](http" in html.unescape(RENDERER.render(e.value)) for e in at.error)  # the refusals quote it

    at.radio(key="model_source").set_value("upload").run()
    at.file_uploader(key="model_checkpoint").set_value(
        (f"model {NAME}.pt", checkpoint_with_a_hostile_tensor_name(), "application/octet-stream")).run()
    assert not at.exception
    refusal = next(e.value for e in at.error if "Could not use the checkpoint" in e.value)
    assert "unexpected" in refusal and "bold tensor" in refusal
    assert assert_shown_as_text(at) >= 1


# ---------------------------------------------------------------------------------------------------
# in a real browser: nothing is fetched


class Trap(http.server.BaseHTTPRequestHandler):
    """A local HTTP server that records every request: the page must send it none."""

    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        Trap.requests.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def trap():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trap)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Trap.requests = []
    yield server.server_address[1]
    server.shutdown()


def wait_for_text(page, text: str) -> None:
    """Until the page shows `text` (the word joiners that break autolinks are invisible, so left out)."""
    page.wait_for_function("text => document.body.innerText.replaceAll('\\u2060', '').includes(text)", arg=text,
                           timeout=120_000)


def upload_pictures(browser, url: str, names: list[str]):
    """A fresh page that has uploaded a small picture under each name; returns (context, page)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(url)
    page.get_by_text(re.compile(r"· step \d+ · drawn in")).first.wait_for(timeout=120_000)
    picture = png_bytes(np.asarray(Image.new("RGB", (48, 40), (30, 120, 200))))
    uploader = page.locator("[data-testid='stFileUploader']").filter(has_text="Your images")
    uploader.locator("input[type='file']").set_input_files(
        [{"name": name, "mimeType": "image/png", "buffer": picture} for name in names])
    return context, page


@pytest.mark.browser
def test_a_name_with_an_image_link_fetches_nothing_in_a_browser(app_server, browser, trap):
    name = f"x ![i](http://127.0.0.1:{trap}/name.png) **b**.png"
    context, page = upload_pictures(browser, app_server, [name])
    wait_for_text(page, f"{name} · level")
    assert page.locator("strong", has_text=re.compile(r"^b$")).count() == 0  # "**b**" stayed two asterisks
    # a checkpoint whose tensor name carries the same image
    page.get_by_text("Upload a checkpoint").click()
    state = Glom(dim=16, levels=2, image_size=32, patch_size=4).state_dict()
    state[f"![t](http://127.0.0.1:{trap}/tensor.png)"] = torch.zeros(2)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    checkpoints = page.locator("[data-testid='stFileUploader']").filter(has_text="Checkpoint")
    checkpoints.locator("input[type='file']").set_input_files(
        {"name": f"m ![c](http://127.0.0.1:{trap}/file.png).pt", "mimeType": "application/octet-stream",
         "buffer": buffer.getvalue()})
    page.get_by_text("Could not use the checkpoint").first.wait_for(timeout=120_000)
    page.get_by_text(re.compile(r"· step \d+ · drawn in")).first.wait_for(timeout=120_000)
    wait_for_text(page, f"![t](http://127.0.0.1:{trap}/tensor.png)")  # shown, as text
    page.wait_for_timeout(1500)  # time for any image the page might load
    context.close()
    assert Trap.requests == []


@pytest.mark.browser
def test_a_name_too_long_for_streamlits_upload_breaks_nothing_else(app_server, browser):
    """Streamlit's upload route refuses a file whose name is over ~2,090 bytes of UTF-8 (python-multipart's
    limit on a part's header, docs/LIMITS.md) with its own "AxiosError ... 400" in the uploader; the files
    beside it and the page keep working, and the uploader's help says why and what to do."""
    context, page = upload_pictures(browser, app_server, ["é" * 1500 + ".png", "beside.png"])  # 3,004 bytes
    page.get_by_text(re.compile(r"beside\.png · level \d+ · step \d+ of")).first.wait_for(timeout=120_000)
    assert page.get_by_text(re.compile("status code 400")).count() >= 1  # Streamlit's own words, in the uploader
    uploader = page.locator("[data-testid='stFileUploader']").filter(has_text="Your images")
    uploader.get_by_test_id("stTooltipHoverTarget").first.hover()
    tooltip = page.get_by_test_id("stTooltipContent").filter(has_text="rename it and upload it again")
    tooltip.first.wait_for(timeout=30_000)
    assert "longer than about 2,000 bytes" in tooltip.first.inner_text()
    context.close()
