"""What the views derive from a frame's run, each computed once and cached by what it was made from:
the islands of every step and level, a level's measures, an overlay, a level's overlays for the in-page
scrubber."""

from __future__ import annotations

import numpy as np

from explorer import cache, scrubber
from explorer.pictures import Frame
from explorer.settings import IslandSettings
from glom_viz import islands, render
from glom_viz.runs import Run


def labels_of(frame: Frame, run: Run, settings: IslandSettings, grid) -> np.ndarray:
    """(T, L, N) island ids of every step and level, computed once per (run, island settings)."""
    return cache.labels(cache.content_key(frame.run_key, settings),
                        lambda: islands.find_islands_all_levels(run.states, grid, **settings.keywords()))


def level_measures(frame: Frame, states: np.ndarray, labels: np.ndarray, grid, level: int,
                   truth_name: str | None) -> list[dict]:
    """One level's measures at every step (with ARI against the chosen truth): island_measures."""
    truth = dict(frame.truth).get(truth_name)
    return islands.island_measures(states[:, :, level], labels[:, level], grid, truth=truth)


def measures_of(frame: Frame, run: Run, labels: np.ndarray, settings: IslandSettings, grid,
                truth_name: str | None, levels: list[int] | None = None) -> dict[int, list[dict]]:
    """level -> per-step measures for the given levels (default all), each level computed once and cached."""
    levels = range(labels.shape[1]) if levels is None else levels
    return {level: cache.derived("measures", cache.content_key(frame.run_key, settings, truth_name, level),
                                 lambda level=level: level_measures(frame, run.states, labels, grid, level,
                                                                    truth_name))
            for level in levels}


def overlay(frame: Frame, labels: np.ndarray, settings: IslandSettings, grid, step: int, level: int) -> np.ndarray:
    """The islands of one (step, level) drawn over the picture (display size), drawn once and cached."""
    key = cache.content_key(frame.run_key, settings, step, level)
    return cache.derived("overlay", key, lambda: render.draw_islands(frame.display, labels[step, level], grid))


def overlay_sources(frame: Frame, labels: np.ndarray, settings: IslandSettings, grid, level: int) -> list[str]:
    """The islands of one level drawn over the picture at every step, as the in-page scrubber holds them
    (encoded pictures, a few tens of KB each, not the arrays: they are kept once, encoded)."""
    key = cache.content_key(frame.run_key, settings, level)
    return cache.derived("overlay_sources", key, lambda: [
        scrubber.picture_source(render.draw_islands(frame.display, labels[step, level], grid))
        for step in range(labels.shape[0])])
