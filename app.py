"""glom-viz: watch GLOM's columns settle into islands of agreement, level by level and step by step.

    streamlit run app.py

The page, composed from the ``explorer`` package: the sidebar's panels return settings, the model and
the pictures are loaded (cached), GLOM runs once per frame (cached, with progress), and the viewer, a
fragment, draws the chosen view from the cached states, so scrubbing steps or switching level or view
never runs the model again. docs/ARCHITECTURE.md maps the modules.
"""

from __future__ import annotations

import streamlit as st

from explorer import cache, dataset, page, pictures, sidebar, state, viewer
from explorer.context import Page
from explorer.limits import WARM_UP, run_size_problem
from explorer.models import load_model
from explorer.running import runs_for
from glom_viz.errors import GlomInputError
from glom_viz.text import plain


def main() -> None:
    page.set_up()
    model_settings = sidebar.model_panel()
    loaded, model_error = load_model(model_settings)
    if model_error:
        sidebar.checkpoint_config_form(model_error)
    sidebar.model_summary(loaded)
    config = loaded.model.config
    path = sidebar.precision_panel(config.dim)
    image_settings = sidebar.images_panel()
    run_settings = sidebar.run_panel(config.levels, path)
    island_settings = sidebar.islands_panel()
    chooser = page.header(loaded, run_settings, model_error)

    found, problems = pictures.gather(image_settings, config.image_size)
    for problem in problems:
        st.error(plain(problem))
    if not found:
        st.info("No images: pick bundled images or upload your own in the sidebar.")
        return
    chosen = page.choose_pictures(found, image_settings, chooser)
    too_big = run_size_problem(config, run_settings.iterations)
    if too_big:
        st.error(too_big)
        return
    frames = page.frames_of(chosen, loaded, image_settings, cache.content_key(run_settings))
    if frames is None:
        return
    runs = runs_for(loaded, frames, image_settings.sequence, run_settings, image_settings.release, island_settings)
    try:
        for run in runs:  # the runs show their progress here; later page runs find them cached
            run()
    except GlomInputError as error:
        st.error(plain(str(error)))
        return
    viewer.show(Page(loaded, tuple(frames), runs, image_settings.sequence, run_settings, image_settings.fit,
                     island_settings, state.playing(), image_settings.release))
    uploaded_set = dataset.usable(image_settings, config.image_size)  # read with the pictures above: cached
    if uploaded_set is not None:  # under the viewer: the islands are drawn first, the set is scored after
        dataset.panel(loaded, uploaded_set, run_settings)
    cache.heap_frozen()
    if WARM_UP:
        cache.warm_up()


if __name__ == "__main__":
    main()
