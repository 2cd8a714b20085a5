"""Every key of a visitor's ``st.session_state`` in one place, typed accessors, and the play state machine.

Widget keys are listed with the panel or view that draws the widget; widgets keep their values under
them across reruns. The page's own keys (what is playing, which patch is chosen, what was seen) are read
and written only through the functions below.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import streamlit as st

from explorer.limits import REMEMBERED_KEYS

# the model panel
MODEL_SOURCE = "model_source"
MODEL_SEED = "model_seed"
MODEL_DIM = "model_dim"
MODEL_LEVELS = "model_levels"
MODEL_IMAGE_SIZE = "model_image_size"
MODEL_PATCH_SIZE = "model_patch_size"
MODEL_SELF = "model_self"
MODEL_RADIUS = "model_radius"
MODEL_CHECKPOINT = "model_checkpoint"
MODEL_CHECKPOINT_SELF = "model_checkpoint_self"
CHECKPOINT_FORM = "checkpoint_config_form"  # a checkpoint's config, asked for when its tensors do not tell it
CHECKPOINT_FIELD_PREFIX = "checkpoint_field_"
CHECKPOINT_CONFIG = "checkpoint_config"  # (the upload's file id, the fields given) once the form is sent
MODEL_PRECISION = "model_precision"
MODEL_PRECISION_DEFAULT = "model_precision_default"  # the precision the page last chose by itself
# the images panel; a picture's own ground-truth mask is under mask_key(picture key)
IMAGES_BUNDLED = "images_bundled"
IMAGES_UPLOAD = "images_upload"
IMAGES_FIT = "images_fit"
IMAGES_FRAMES = "images_frames"
IMAGES_SEQUENCE = "images_sequence"
IMAGES_LET_GO = "images_let_go"
IMAGES_SET = "images_set"
# the run panel: one iterations slider per number of levels (its default is 2 x levels)
ITERATIONS_PREFIX = "iterations_"
# the islands panel
ISLANDS_METHOD = "islands_method"
ISLANDS_AUTO = "islands_auto"
ISLANDS_COUNT_BY = "islands_count_by"
ISLANDS_MAX = "islands_max"
ISLANDS_COUNT = "islands_count"
ISLANDS_CONNECTIVITY = "islands_connectivity"
ISLANDS_THRESHOLD_AUTO = "islands_threshold_auto"
ISLANDS_THRESHOLD = "islands_threshold"
ISLANDS_MIN_SIZE = "islands_min_size"
ISLANDS_MIN_CLUSTER = "islands_min_cluster"
# the header and the viewer's controls
PICTURE = "picture"  # index of the picture shown (not in a sequence)
FRAME = "frame"  # the frame shown in a sequence, counted from 1 as its captions count
STEP = "step"  # the step shown: the Step slider's, or the in-page scrubber's (explorer.scrubber)
PLAY = "play"
SCRUBBER = "scrubber"
LEVEL = "level"  # a level index or ALL_LEVELS
VIEW = "view"
# the views' widgets (charts keep their selections under their keys)
TRUTH_ISLANDS = "truth_islands"
TRUTH_MEASURES = "truth_measures"
TRUTH_COMPARE = "truth_compare"
PROJECTION_METHOD = "projection_method"
PROJECTION_DIMS = "projection_dims"
PROJECTION_FIXED = "projection_fixed"
PROJECTION_CHART_PREFIX = "projection_"  # + the dimensions: a 2-D and a 3-D chart keep separate selections
SHEET_CHART = "sheet"
MEASURES_CHART = "measures"
PARSE_TREE_CHART = "parse_tree"
ATTENTION_CHART = "attention"
CONTRIBUTIONS_CHART = "contributions"
PROBE = "probe"
TRAINING_RUN = "training_run"  # the Training view: a run's name under the runs folder
TRAINING_STEP = "training_step"
TRAINING_LOSSES_CHART = "training_losses"
COMPARE_WITH = "compare_with"  # the Compare view: what the page's model is compared with
COMPARE_RUN = "compare_run"
COMPARE_SHIPPED = "compare_shipped"  # which shipped model, when it is one
COMPARE_STEP = "compare_step"
COMPARE_CHECKPOINT = "compare_checkpoint"
EXPORT_MENU = "export_menu"
EXPORT_PNG = "export_png"
EXPORT_SVG = "export_svg"
EXPORT_HTML = "export_html"
EXPORT_LABELS = "export_labels"
EXPORT_MEASURES_CSV = "export_measures_csv"
EXPORT_MEASURES_JSON = "export_measures_json"
EXPORT_BUNDLE = "export_bundle"
# the page's own
STEP_SHOWN = "step_shown"  # (last step, model key) the step slider was drawn for
PLAY_FROM_START = "play_from_start"  # play was pressed at the last step: show step 0 before moving on
PROBING = "probing"  # the Column view computes attention and contributions for every step once asked
PLAYING = "playing"
PATCH = "patch"  # the column chosen in the Column view (a patch index), or absent
SEEN_UPLOADS = "seen_uploads"  # pictures uploaded before, so a new one can be switched to


def iterations_key(levels: int) -> str:
    return f"{ITERATIONS_PREFIX}{levels}"


def mask_key(picture_key: str) -> str:
    return f"mask_{picture_key}"


def clamp(key: str, low: int, high: int, default: int) -> None:
    """Keep a slider's stored value inside its current range (iterations or frames may have changed)."""
    value = st.session_state.get(key)
    if not isinstance(value, int) or not low <= value <= high:
        st.session_state[key] = min(max(value if isinstance(value, int) else default, low), high)


def probing() -> bool:
    """Whether the Column view was asked to compute attention and contributions (then for every step)."""
    return bool(st.session_state.get(PROBING, False))


def start_probing() -> None:
    st.session_state[PROBING] = True


def checkpoint_field_key(name: str) -> str:
    return f"{CHECKPOINT_FIELD_PREFIX}{name}"


def give_checkpoint_config(file_id: str, names: tuple[str, ...]) -> None:
    """The config form was sent: keep its fields for the checkpoint it was asked for."""
    given = tuple((name, st.session_state[checkpoint_field_key(name)]) for name in names
                  if checkpoint_field_key(name) in st.session_state)
    st.session_state[CHECKPOINT_CONFIG] = (file_id, given)


def checkpoint_config(file_id: str) -> tuple[tuple[str, object], ...]:
    """The fields given for this upload in its config form, or none."""
    given = st.session_state.get(CHECKPOINT_CONFIG)
    return given[1] if given and given[0] == file_id else ()


def keep_step(last_step: int, model_key: str) -> None:
    """Where the step slider stands when the run under it changes (before the slider is drawn).

    A slider whose range changes is a new widget to Streamlit and would start at 0, the initial state,
    which makes any model look as if it did nothing. So: another model opens at its last step (the
    settled columns); other iterations keep the step, following the end if it stood at the old last step.
    """
    shown = st.session_state.get(STEP_SHOWN)
    if shown == (last_step, model_key):
        return
    step = st.session_state.get(STEP)
    if shown is None or shown[1] != model_key or not isinstance(step, int) or step >= shown[0]:
        step = last_step
    st.session_state[STEP] = min(max(step, 0), last_step)
    st.session_state[STEP_SHOWN] = (last_step, model_key)


def step() -> int:
    return st.session_state.get(STEP, 0)


def choose_step(chosen: int) -> None:
    st.session_state[STEP] = chosen


def hold_step() -> None:
    """Keep the step while no Step slider is drawn (the in-page scrubber shows it): a widget's key not
    drawn in a run is dropped from the session's state, a value the page writes is kept."""
    st.session_state[STEP] = step()


def pause() -> None:
    st.session_state[PLAYING] = False


def keep_choice(key: str, options: list, default) -> None:
    """Reset a choice to ``default`` when its stored value is not among the current options."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = default


def show_picture(index: int) -> None:
    st.session_state[PICTURE] = index


def chosen_patch(patches: int) -> int | None:
    """The patch chosen in the Column view, or None when none is (or it lies outside this model's grid)."""
    patch = st.session_state.get(PATCH)
    return patch if isinstance(patch, int) and 0 <= patch < patches else None


def choose_patch(patch: int) -> None:
    st.session_state[PATCH] = int(patch)


# ---------------------------------------------------------------------------------------------------
# play: paused -> (the button) playing, from step 0 when at the last step (shown first) -> one step per
# tick of the viewer's timer -> paused at the last step, or by the button


PLAY_INTERVAL_S = 0.7  # a step this often while playing, on the viewer's timer or in the in-page scrubber


def playing() -> bool:
    return bool(st.session_state.get(PLAYING, False))


def toggle_play(last_step: int) -> None:
    """The play button's callback."""
    now_playing = not playing()
    st.session_state[PLAYING] = now_playing
    if now_playing and st.session_state.get(STEP, 0) >= last_step:
        st.session_state[STEP] = 0
        st.session_state[PLAY_FROM_START] = True


def tick(last_step: int) -> None:
    """One tick of the timer while playing: the next step, and pause at the last. Play started over
    from the end shows step 0 on its first tick."""
    if not playing():
        return
    if st.session_state.pop(PLAY_FROM_START, False):
        return
    step = st.session_state.get(STEP, 0) + 1
    st.session_state[STEP] = min(step, last_step)
    if step >= last_step:
        st.session_state[PLAYING] = False


# ---------------------------------------------------------------------------------------------------
# bounded sets: what a page remembers grows with what a visitor does, so the oldest entries go first


class BoundedSet:
    """A set that keeps its ``most`` latest entries (insertion order; adding again refreshes)."""

    def __init__(self, most: int = REMEMBERED_KEYS):
        self.most = most
        self._entries: dict[Hashable, None] = {}

    def add(self, item: Hashable) -> None:
        self._entries.pop(item, None)
        self._entries[item] = None
        while len(self._entries) > self.most:
            del self._entries[next(iter(self._entries))]

    def update(self, items: Iterable[Hashable]) -> None:
        for item in items:
            self.add(item)

    def __contains__(self, item: Hashable) -> bool:
        return item in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def remembered(key: str) -> BoundedSet:
    """The bounded set kept under ``key`` (SEEN_UPLOADS), made on first use."""
    found = st.session_state.get(key)
    if not isinstance(found, BoundedSet):
        found = st.session_state[key] = BoundedSet()
    return found
