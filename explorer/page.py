"""The page around the viewer: its setup, the header (title, picture chooser, what runs), and the frames
of the chosen pictures. ``app.py`` composes these with the sidebar and the viewer."""

from __future__ import annotations

import streamlit as st
import torch

from explorer import cache, state
from explorer.limits import MAX_FRAMES, TORCH_THREADS
from explorer.models import LoadedModel, ModelProblem
from explorer.pictures import Frame, Picture, frame_of, show_new_upload
from explorer.settings import ImageSettings, RunSettings
from explorer.sidebar import mask_upload
from glom_viz.errors import ImageLoadError, StatesError
from glom_viz.text import plain, plain_name, short_name

TITLE = "glom-viz · islands of agreement"
PAGE_CSS = """
<style>
.block-container {padding-top: 2.2rem; padding-bottom: 1rem;}
[data-testid="stMetricValue"] {font-size: 1.35rem;}
[data-testid="stSidebar"] h2 {font-size: 1.05rem; margin-top: 0.6rem;}
</style>
"""


def set_up() -> None:
    """Torch's threads for this server, the page's title, layout and style."""
    if torch.get_num_threads() != TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)
    st.set_page_config(page_title=TITLE, page_icon="🏝️", layout="wide", initial_sidebar_state="expanded")
    st.markdown(PAGE_CSS, unsafe_allow_html=True)


def header(loaded: LoadedModel, run: RunSettings, model_error: ModelProblem | None):
    """The title and what runs (model, size, levels, iterations, precision path); returns the chooser's place."""
    config = loaded.model.config
    title, chooser, badge = st.columns([3, 3, 3], vertical_alignment="bottom")
    title.markdown("#### glom-viz")
    title.caption("Islands of agreement in GLOM (Hinton, 2021), level by level, step by step")
    badge.caption(f"**{plain_name(loaded.title)}** · {config.image_size} px · {config.levels} levels · dim {config.dim} · "
                  f"{run.iterations} iterations · {run.path}")
    if model_error:
        st.error(model_error.message + " Showing the default model instead.")
    if loaded.note:
        (st.warning if loaded.stand_in else st.info)(loaded.note)
    return chooser


def choose_pictures(pictures: list[Picture], settings: ImageSettings, chooser) -> list[Picture]:
    """The pictures this page runs: all frames of a sequence (at most MAX_FRAMES), else the one chosen."""
    if settings.sequence:
        own = pictures[len(settings.bundled):]
        left_out = bool(own) and len(own) < len(pictures)
        pictures = own or pictures  # the visitor's own frames make the sequence, never the bundled ones first
        if len(pictures) > MAX_FRAMES:
            st.warning(f"A sequence holds at most {MAX_FRAMES} frames; the first {MAX_FRAMES} of {len(pictures)} "
                       "are used.")
            pictures = pictures[:MAX_FRAMES]
        chooser.caption(f"**Sequence** of {len(pictures)} {'uploaded ' if own else ''}frames, in order: pick a "
                        "frame beside the step slider."
                        + (" The bundled pictures are left out of it." if left_out else ""))
        return pictures
    names = [short_name(p.name) for p in pictures]  # a select box's options are plain text
    show_new_upload(pictures, len(settings.bundled))
    state.clamp(state.PICTURE, 0, len(pictures) - 1, 0)
    chosen = chooser.selectbox("Image", range(len(pictures)), format_func=names.__getitem__, key=state.PICTURE)
    return [pictures[chosen]]


def frames_of(pictures: list[Picture], loaded: LoadedModel, settings: ImageSettings, settings_key: str
              ) -> list[Frame] | None:
    """Each picture as a frame, with the mask the user uploaded for it; None (an error shown) if one is unusable."""
    frames: list[Frame] = []
    previous = ""
    for picture in pictures:
        mask = mask_upload(picture)
        try:
            frame = frame_of(picture, loaded, settings.fit, previous, settings_key, mask)
        except (ImageLoadError, StatesError) as error:
            st.error(f"{plain_name(picture.name)} cannot be shown: {plain(str(error))}")
            return None
        frames.append(frame)
        # the next frame's run continues from this one's, letting go as the settings say
        previous = cache.content_key(frame.run_key, settings.release) if settings.sequence else ""
    return frames
