"""What the views derive from a frame's run, each computed once and cached by what it was made from:
the islands of every step and level (the shown level's first), a level's measures, an overlay, a level's
overlays for the in-page scrubber."""

from __future__ import annotations

import numpy as np

from explorer import cache, scrubber
from explorer.pictures import Frame
from explorer.settings import IslandSettings
from glom_viz import islands, render
from glom_viz.runs import Run


class FrameIslands:
    """A frame's islands, found as the views ask for them: ``from_level(l)`` (T, L - l, N) needs only levels
    l..top, whose ids a level's colours follow (``islands.align_levels`` matches from the top down), so the
    shown level is drawn before the levels below it are clustered; ``every_level()`` (T, L, N) finds the rest.

    Either equals ``islands.find_islands_all_levels(run.states, grid, **settings.keywords())`` where they
    overlap. Each level's islands are cached on their own, so finding the rest later clusters no level twice;
    what one page run found is kept here too, so that an export made on a click reads no cache.
    """

    def __init__(self, frame: Frame, run: Run, settings: IslandSettings, grid):
        self.frame, self.run, self.settings, self.grid = frame, run, settings, grid
        self.levels = run.states.shape[2]
        self._found: dict[int, np.ndarray] = {}  # from_level -> (T, L - from_level, N)

    def _key(self, *parts) -> str:
        return cache.content_key(self.frame.run_key, self.settings, *parts)

    def _level(self, level: int) -> np.ndarray:
        """(T, N) one level's islands, ids aligned across steps but not yet to the levels above."""
        return cache.derived("level islands", self._key("level", level), lambda: islands.find_islands(
            self.run.states[:, :, level], self.grid, **self.settings.keywords()))

    def _align(self, level: int) -> np.ndarray:
        every = self._found.get(0)
        if every is not None:
            return every[:, level:]
        return islands.align_levels(np.stack([self._level(l) for l in range(level, self.levels)], axis=1))

    def from_level(self, level: int) -> np.ndarray:
        """(T, L - level, N) the islands of levels level..top, with their ids among all levels."""
        if level not in self._found:
            self._found[level] = cache.labels(self._key("from level", level), lambda: self._align(level))
        return self._found[level]

    def of_level(self, level: int) -> np.ndarray:
        """(T, N) one level's islands, with its ids among all levels."""
        return self.from_level(level)[:, 0]

    def every_level(self) -> np.ndarray:
        """(T, L, N) the islands of every step and level."""
        return self.from_level(0)


def labels_of(frame: Frame, run: Run, settings: IslandSettings, grid) -> np.ndarray:
    """(T, L, N) island ids of every step and level, computed once per (run, island settings)."""
    return FrameIslands(frame, run, settings, grid).every_level()


def level_measures(frame: Frame, states: np.ndarray, level_labels: np.ndarray, grid, level: int,
                   truth_name: str | None) -> list[dict]:
    """One level's measures at every step (with ARI against the chosen truth): island_measures of its
    islands (T, N)."""
    truth = dict(frame.truth).get(truth_name)
    return islands.island_measures(states[:, :, level], level_labels, grid, truth=truth)


def measures_at(frame: Frame, run: Run, level_labels: np.ndarray, settings: IslandSettings, grid,
                truth_name: str | None, level: int) -> list[dict]:
    """One level's per-step measures from its islands (T, N), computed once and cached."""
    return cache.derived("measures", cache.content_key(frame.run_key, settings, truth_name, level),
                         lambda: level_measures(frame, run.states, level_labels, grid, level, truth_name))


def measures_of(frame: Frame, run: Run, labels: np.ndarray, settings: IslandSettings, grid,
                truth_name: str | None, levels: list[int] | None = None) -> dict[int, list[dict]]:
    """level -> per-step measures for the given levels (default all) of labels (T, L, N), each cached."""
    levels = range(labels.shape[1]) if levels is None else levels
    return {level: measures_at(frame, run, labels[:, level], settings, grid, truth_name, level) for level in levels}


def overlay(frame: Frame, level_labels: np.ndarray, settings: IslandSettings, grid, step: int,
            level: int) -> np.ndarray:
    """The islands of one (step, level) drawn over the picture (display size), drawn once and cached;
    level_labels: that level's islands (T, N)."""
    key = cache.content_key(frame.run_key, settings, step, level)
    return cache.derived("overlay", key, lambda: render.draw_islands(frame.display, level_labels[step], grid))


def overlay_pictures(frame: Frame, level_labels: np.ndarray, settings: IslandSettings, grid, level: int
                     ) -> list[bytes]:
    """The islands of one level drawn over the picture at every step, as the in-page scrubber holds them
    (encoded pictures, a few tens of KB each, not the arrays: they are kept once, encoded); level_labels:
    that level's islands (T, N)."""
    key = cache.content_key(frame.run_key, settings, level)
    return cache.derived("overlay_pictures", key, lambda: [
        scrubber.encode_picture(render.draw_islands(frame.display, level_labels[step], grid))
        for step in range(level_labels.shape[0])])
