"""The in-page scrubber: the step slider, play and the shown level's overlay at every step in one small
component (explorer/assets/scrubber.js, scrubber.css), so a scrub or a play only swaps a picture in the
visitor's browser, and the server hears of the step once, when scrubbing stops.

A rerun of the viewer costs the browser several times what it costs the server (React draws every element
of the page again, the websocket's messages are decoded, the page laid out and painted); a swap in the
page is one image's source and one caption's text.
The pictures reach the page by URL, as st.image sends its own: each is registered with Streamlit's media
files under an id that is the hash of its bytes, so a rerun for the same run and level sends the same short
URLs again (a few hundred bytes) and the page keeps the pictures it decoded, where data URLs sent every
step's picture again on every rerun (~40 KB a step, each one parsed and compared in the page).
The page's step stays ``state.STEP``: the scrubber's "chosen" trigger writes it there before the viewer
reruns, and headless tests, which cannot drive a component, set it there too.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image
from streamlit import runtime

from explorer import state

ASSETS = Path(__file__).parent / "assets"
# JPEG as st.image sends it: a few ms a step to encode, ~40 KB a 448 px overlay
PICTURE_FORMAT, PICTURE_MIME, PICTURE_QUALITY = "JPEG", "image/jpeg", 90
SCRUBBER_NAME = "glom_viz_scrubber"
REPORT_MS = 350  # quiet after the last key or drag before the server is told: a held arrow key is one scrub

_component = st.components.v2.component(
    SCRUBBER_NAME, css=(ASSETS / "scrubber.css").read_text(), js=(ASSETS / "scrubber.js").read_text(),
    isolate_styles=False)  # in the page's own DOM: its theme, and tests and load benchmarks see it


def encode_picture(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 picture encoded as the scrubber holds it."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=PICTURE_FORMAT, quality=PICTURE_QUALITY)
    return buffer.getvalue()


def picture_urls(pictures: list[bytes]) -> list[str]:
    """The URLs the page fetches ``pictures`` (encoded, one per step) from: Streamlit's media files, one
    place each in this session (a later rerun's picture for a step replaces the last one, which is freed once
    no page shows it). Data URLs where no server runs."""
    if not runtime.exists():
        return [f"data:{PICTURE_MIME};base64," + base64.b64encode(picture).decode("ascii") for picture in pictures]
    media = runtime.get_instance().media_file_mgr
    return [media.add(picture, PICTURE_MIME, f"{SCRUBBER_NAME}.{step}") for step, picture in enumerate(pictures)]


def _chosen() -> None:
    """Scrubbing stopped: the step the visitor chose becomes the page's step."""
    chosen = st.session_state[state.SCRUBBER].get("chosen")
    if isinstance(chosen, int) and not isinstance(chosen, bool):
        state.choose_step(chosen)


def scrubber(pictures: list[bytes], captions: list[str], size: tuple[int, int], step: int, play_interval_s: float
             ) -> None:
    """Draw the scrubber here: ``pictures`` (encoded, see ``encode_picture``) and ``captions`` one per step
    (0 .. last), ``size`` the pictures' (width, height), starting at ``step``; play shows a step every
    ``play_interval_s``."""
    width, height = size
    _component(key=state.SCRUBBER, on_chosen_change=_chosen,
               data={"pictures": picture_urls(pictures), "captions": captions, "width": width, "height": height,
                     "step": step, "last": len(pictures) - 1, "play_ms": round(play_interval_s * 1000),
                     "report_ms": REPORT_MS})
