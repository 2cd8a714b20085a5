"""The export menu under every view: the figure in view (PNG, SVG, HTML), the islands (CSV), the measures
(CSV, JSON) and a zip bundle of the whole run with a manifest of how it was made (glom_viz.export).

Every file is made on the click, in a thread of the server: nothing here reads st.cache. The buttons sit in
a popover: the browser mounts a closed popover's contents not at all, and the viewer, a fragment, is drawn
again on every scrub, where seven download buttons took about a sixth of the browser's time.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from explorer import cache, state
from explorer.context import ViewContext
from explorer.derived import level_measures
from glom_viz import export, render
from glom_viz.model import ALIKE, RELEASE_REACH
from glom_viz.text import short_name

EXPORT_MENU_PX = 460  # the export popover's buttons in two rows
STEM_CHARS = 60  # file systems take 255 bytes a name; a picture's name may be kilobytes

ISLANDS_SEED = 0  # the page's islands and projections draw with find_islands' and project's default seed


def stem_of(name: str) -> str:
    """A file name's stem from a picture's name: letters and digits, dashes between, at most STEM_CHARS."""
    return "".join(c if c.isalnum() else "-" for c in short_name(name, STEM_CHARS)).strip("-") or "image"


def all_measures(context: ViewContext) -> dict[int, list[dict]]:
    """level -> per-step measures, against the first ground truth."""
    run, labels = context.run, context.labels
    return {level: level_measures(context.frame, run.states, labels[:, level], context.grid, level,
                                  context.truth_name)
            for level in range(labels.shape[1])}


def bundle(context: ViewContext) -> bytes:
    """Everything about this picture's run, with a manifest saying how it was made."""
    frame, page, level, step = context.frame, context.page, context.level_index, context.step
    settings = page.island_settings
    picture = frame.picture
    provenance = export.provenance(
        page.model.model.config.to_dict(), page.model.checkpoint_sha, picture.sha256, seed=ISLANDS_SEED,
        iters=page.iterations, method=settings.method, params=settings.keywords(), model_seed=page.model.seed,
        model=page.model.title, picture=picture.name, image_frame=picture.frame, fit=page.fit, input=frame.info,
        precision=page.run_settings.path, sequence=page.sequence,
        let_go={"release": page.release, "reach": RELEASE_REACH, "alike": ALIKE} if page.release is not None else None)
    return export.run_bundle(context.run.states, context.labels, context.grid, all_measures(context),
                             image=frame.shown, overlay=render.draw_islands(frame.display, context.labels[step, level],
                                                                            context.grid),
                             step=step, level=level, provenance=provenance, truth=context.truth_name)


def export_row(context: ViewContext, figure: Callable[[], object] | None, view: str) -> None:
    """Download buttons in an "Export" popover: the figure in view, labels, measures, and the zip bundle
    with provenance."""
    stem = stem_of(context.frame.picture.name)
    kind = view.lower().replace(" × ", "-").replace(" ", "-")
    truth_name = context.truth_name
    menu = st.popover("Export", icon=":material/download:", key=state.EXPORT_MENU)
    menu.caption("The figure in view, the islands and measures of this picture's run, or all of it in a zip")
    row = menu.container(horizontal=True, vertical_alignment="center", width=EXPORT_MENU_PX)
    if figure is not None:  # figures are made only when a download asks for them
        no_browser = cache.static_export_browser() is None
        why = export.NO_BROWSER if no_browser else "The figure in view"
        row.download_button("Figure PNG", lambda: export.figure_to_png(figure()), f"{stem}-{kind}.png",
                            "image/png", key=state.EXPORT_PNG, on_click="ignore", icon=":material/image:",
                            disabled=no_browser, help=why)
        row.download_button("SVG", lambda: export.figure_to_svg(figure()), f"{stem}-{kind}.svg",
                            "image/svg+xml", key=state.EXPORT_SVG, on_click="ignore", disabled=no_browser, help=why)
        row.download_button("HTML", lambda: export.figure_to_html(figure()), f"{stem}-{kind}.html",
                            "text/html", key=state.EXPORT_HTML, on_click="ignore",
                            help="The figure in view, interactive")
    row.download_button("Labels CSV", lambda: export.labels_to_csv(context.labels, context.grid),
                        f"{stem}-labels.csv", "text/csv", key=state.EXPORT_LABELS, on_click="ignore",
                        icon=":material/table:", help="The island of every patch at every step and level")
    row.download_button("Measures CSV", lambda: export.measures_to_csv(all_measures(context)),
                        f"{stem}-measures.csv", "text/csv", key=state.EXPORT_MEASURES_CSV, on_click="ignore")
    row.download_button("JSON", lambda: export.measures_to_json(all_measures(context), truth=truth_name),
                        f"{stem}-measures.json", "application/json", key=state.EXPORT_MEASURES_JSON,
                        on_click="ignore")
    row.download_button("Bundle (zip)", lambda: bundle(context), f"{stem}-glom-viz.zip", "application/zip",
                        key=state.EXPORT_BUNDLE, on_click="ignore", icon=":material/folder_zip:", type="primary",
                        help="Input, overlay, labels, measures and states, with a manifest of how they were made")
