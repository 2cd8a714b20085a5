"""The viewer's views, one module each. A view takes the ``ViewContext`` (explorer.context), draws itself,
and returns a function that builds the figure in view for the exports (or None when it has none)."""

from __future__ import annotations

from collections.abc import Callable

from explorer.context import ALL_LEVELS, ViewContext
from explorer.views import column, compare, islands, measures, parse_tree, projection, sheet, training

View = Callable[[ViewContext], Callable[[], object] | None]

# name on the view switcher -> the view, in the switcher's order
VIEWS: dict[str, View] = {
    "Islands": islands.view,
    "Levels × steps": sheet.view,
    "Projection": projection.view,
    "Measures": measures.view,
    "Parse tree": parse_tree.view,
    "Column": column.view,
    "Over training": training.view,
    "Compare models": compare.view,
}
# the views that run other models than the page's on its picture (a run's checkpoints, a second model)
OTHER_MODELS = ("Over training", "Compare models")


def scrubbed_in_page(view: str, level) -> bool:
    """Whether this view at this level holds every step's picture in the in-page scrubber
    (explorer.scrubber), which then is its step control, in place of the viewer's Step slider and Play."""
    return view == "Islands" and level != ALL_LEVELS
