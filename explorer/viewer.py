"""The viewer: a fragment under the header, so scrubbing steps, switching level or view only redraws it.

It draws the controls (frame, step, play, level), finds the islands of the frame's run (cached: the shown
level's first), hands a ``ViewContext`` to the chosen view (explorer.views), then the export row and a last
line saying what is shown. Play runs on the fragment's own timer. The Islands view at one level scrubs and
plays in the page instead (explorer.scrubber): it draws its own step control, and the viewer reruns once
scrubbing stops.
"""

from __future__ import annotations

import time

import streamlit as st

from explorer import derived, state
from explorer.context import ALL_LEVELS, DEFAULT_LEVEL, Page, ViewContext, level_name
from explorer.export_row import export_row
from explorer.views import VIEWS, scrubbed_in_page
from glom_viz.errors import StatesError
from glom_viz.text import plain_name

PLAY_INTERVAL_S = state.PLAY_INTERVAL_S
CONTROLS = [5.0, 1.4, 4.6]  # step, play, level
SEQUENCE_CONTROLS = [2.4, 3.8, 1.4, 4.4]  # frame, step, play, level
# the level (and frame) alone, where the view's in-page scrubber is the step control
IN_PAGE_CONTROLS = [4.6, 6.4]  # level, -
IN_PAGE_SEQUENCE_CONTROLS = [2.4, 4.4, 4.2]  # frame, level, -
STEP_HELP = ("Step 0 is the initial state; each step is one GLOM iteration. Focus the slider and use the arrow "
             "keys to scrub.")
NAMED_LEVELS = 4  # up to this many levels the level control names the bottom and top ("0 (bottom)")


def show(page: Page) -> None:
    """Run the viewer as a fragment, on play's timer while playing."""
    st.fragment(viewer, run_every=PLAY_INTERVAL_S if page.playing else None)(page)


def viewer(page: Page) -> None:
    started = time.perf_counter()
    grid = page.model.model.grid
    levels = page.model.model.config.levels
    last_step = page.iterations
    if state.playing() != page.playing:  # play or pause was pressed in here: set the timer up (or down) again
        st.rerun(scope="app")
    playing = state.playing()
    state.tick(last_step)

    level_options = [*range(levels), ALL_LEVELS]
    state.keep_choice(state.LEVEL, level_options, min(DEFAULT_LEVEL, levels - 1))
    state.keep_choice(state.VIEW, list(VIEWS), next(iter(VIEWS)))
    in_page = scrubbed_in_page(st.session_state[state.VIEW], st.session_state[state.LEVEL])
    if in_page and playing:  # play went on from another view: the scrubber plays in the page
        state.pause()
        st.rerun(scope="app")

    # at 1400 px the level control needs ~320 px for five named choices (more levels get short names) and
    # play ~110 px for its label and shortcut; narrower, their labels are cut
    layout = ((IN_PAGE_SEQUENCE_CONTROLS if page.sequence else IN_PAGE_CONTROLS) if in_page
              else SEQUENCE_CONTROLS if page.sequence else CONTROLS)
    controls = st.columns(layout, vertical_alignment="bottom")
    index = 0
    if page.sequence:
        state.clamp(state.FRAME, 1, len(page.frames), 1)
        index = controls[0].slider("Frame", 1, len(page.frames), key=state.FRAME,
                                   help="Each frame starts from the previous frame's final columns.") - 1
        controls = controls[1:]
    state.keep_step(last_step, page.model.key)
    if in_page:
        state.hold_step()
        step = state.step()
    else:
        step = controls[0].slider("Step", 0, last_step, key=state.STEP, help=STEP_HELP)
        controls[1].button("⏸ Pause" if playing else "▶ Play", key=state.PLAY, on_click=state.toggle_play,
                           args=(last_step,), width="stretch", help="Play the steps (shortcut: p)", shortcut="p")
        controls = controls[2:]
    compact = levels > NAMED_LEVELS
    level = controls[0].segmented_control(
        f"Level (0 bottom, {levels - 1} top)" if compact else "Level", level_options, key=state.LEVEL,
        required=True, format_func=lambda l: level_name(l, levels, compact))

    frame = page.frames[index]
    run = page.runs[index]()
    if not run.finite:
        bad_step, bad_level = run.first_nonfinite
        st.error(f"GLOM's columns for **{plain_name(frame.picture.name)}** became NaN or Inf at step {bad_step}, level "
                 f"{bad_level}, so no islands are drawn. This comes from the weights or an extreme input: try fp32 "
                 "precision, fewer iterations, or another checkpoint.")
        return
    found = derived.FrameIslands(frame, run, page.island_settings, grid)
    try:  # the shown level's islands (and the levels' above, whose ids its colours follow) before the rest
        found.from_level(levels - 1 if level == ALL_LEVELS else level)
    except StatesError as error:
        st.error(f"Islands could not be found with these settings: {error}")
        return

    view = st.segmented_control("View", list(VIEWS), key=state.VIEW, required=True, label_visibility="collapsed")
    context = ViewContext(page, frame, run, found, step, level, grid, [name for name, _ in frame.truth])
    figure = VIEWS[view](context)
    try:  # every level, once the view is drawn: the exports hold them all
        found.every_level()
    except StatesError as error:
        st.error(f"Islands could not be found with these settings: {error}")
        return
    export_row(context, figure, view)
    # last on the page: when it shows this step, everything above it (the export buttons too) is current
    where = f"{plain_name(frame.picture.name)} · " + ("all levels" if level == ALL_LEVELS else f"level {level}")
    st.caption(f"{where} · step {step} · drawn in {(time.perf_counter() - started) * 1000:.0f} ms on the server · "
               f"GLOM ran {run.seconds:.2f} s for this frame ({run.path}) · islands: "
               f"{page.island_settings.describe()}")
