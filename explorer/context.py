"""What the viewer hands every view: the page's model, frames and settings, and one frame's run and islands
at the chosen step and level."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from explorer.derived import FrameIslands
from explorer.models import LoadedModel
from explorer.pictures import Frame
from explorer.running import RunLookup
from explorer.settings import IslandSettings, RunSettings
from glom_viz.runs import Run

ALL_LEVELS = "all"
DEFAULT_LEVEL = 2  # the shipped model's object islands (common fate) are at levels 2 and 3; parts at level 1


@dataclass(frozen=True, eq=False)
class Page:
    """Everything the viewer draws from; held by the viewer fragment between its reruns."""

    model: LoadedModel
    frames: tuple[Frame, ...]
    runs: tuple[RunLookup, ...]  # cache lookups, one per frame (recompute if evicted)
    sequence: bool
    run_settings: RunSettings
    fit: str
    island_settings: IslandSettings
    playing: bool  # whether the viewer was set up with play's timer
    release: float | None = None  # in a sequence, what carried columns let go from (ImageSettings.release)

    @property
    def iterations(self) -> int:
        return self.run_settings.iterations


@dataclass(frozen=True, eq=False)
class ViewContext:
    """What a view draws: one frame's run and islands at the chosen step and level."""

    page: Page
    frame: Frame
    run: Run
    islands: FrameIslands
    step: int
    level: int | str  # a level, or ALL_LEVELS
    grid: tuple[int, int]
    truth_names: list[str]

    @property
    def labels(self) -> np.ndarray:
        """(T, L, N) the islands of every step and level (found on first use)."""
        return self.islands.every_level()

    @property
    def level_index(self) -> int:
        """The chosen level, or the top level when all levels are shown."""
        return self.islands.levels - 1 if self.level == ALL_LEVELS else int(self.level)

    @property
    def truth_name(self) -> str | None:
        """The first ground truth, for what has no choice of its own (the exports)."""
        return self.truth_names[0] if self.truth_names else None


def level_name(level, levels: int, compact: bool = False) -> str:
    """A level's name on the level control; compact: bare numbers and "all", for many levels."""
    if level == ALL_LEVELS:
        return "all" if compact else "all levels"
    if compact:
        return str(level)
    return f"{level} (top)" if level == levels - 1 else f"{level} (bottom)" if level == 0 else str(level)
