"""What the app derives from a run: the islands found level by level as the views ask equal the islands of
every level found at once (glom_viz.islands.find_islands_all_levels), whatever the order of the asks."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer import cache, derived
from explorer.settings import IslandSettings
from glom_viz import islands, render
from glom_viz.runs import Run

GRID = (6, 6)
STEPS, LEVELS, DIM = 5, 4, 16
SETTINGS = (IslandSettings("kmeans", None), IslandSettings("kmeans", 3), IslandSettings("agglomerative", None),
            IslandSettings("threshold", None, (("threshold", None), ("min_size", 2))))
_KEYS = itertools.count()


def run_of(seed: int) -> Run:
    """(T, N, L, D) states that settle into islands nested from level to level (wholes above, parts below),
    stored as a Run stores them, step 0 one shared vector as GLOM's."""
    rng = np.random.default_rng(seed)
    n = GRID[0] * GRID[1]
    states = np.empty((STEPS, n, LEVELS, DIM), dtype=np.float32)
    states[0] = rng.standard_normal(DIM)
    for level in range(LEVELS):
        regions = rng.integers(0, LEVELS + 1 - level, n)  # fewer, larger islands higher up
        centres = rng.standard_normal((LEVELS + 1, DIM))
        for step in range(1, STEPS):
            states[step, :, level] = centres[regions] + 0.8 ** step * rng.standard_normal((n, DIM))
    return Run(states.astype(np.float16), states[-1], None, 0.0)


def frame_of() -> SimpleNamespace:
    """What FrameIslands reads of a frame: the key of its run (a fresh one, so no cached islands are found)."""
    return SimpleNamespace(run_key=f"frame {next(_KEYS)}", display=np.zeros((48, 48, 3), np.uint8))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(SETTINGS),
       st.lists(st.one_of(st.integers(0, LEVELS - 1), st.none()), min_size=1, max_size=6))
def test_islands_found_level_by_level_equal_every_level_found_at_once(seed, island_settings, asks):
    """asks: the levels views ask for in order (None: every level), each in a fresh page run (a new
    FrameIslands reading what the runs before it cached)."""
    run, frame = run_of(seed), frame_of()
    eager = islands.find_islands_all_levels(run.states, GRID, **island_settings.keywords())
    for ask in asks:
        found = derived.FrameIslands(frame, run, island_settings, GRID)
        if ask is None:
            assert np.array_equal(found.every_level(), eager)
        else:
            assert np.array_equal(found.from_level(ask), eager[:, ask:])
            assert np.array_equal(found.of_level(ask), eager[:, ask])
        assert np.array_equal(found.every_level(), eager), "and every level after the shown one"


def test_the_shown_level_is_found_without_the_levels_below_it(monkeypatch):
    run, frame = run_of(1), frame_of()
    asked = []
    find = islands.find_islands

    def counted(states, grid, **keywords):
        asked.extend(level for level in range(LEVELS) if np.array_equal(states, run.states[:, :, level]))
        return find(states, grid, **keywords)
    monkeypatch.setattr(islands, "find_islands", counted)
    found = derived.FrameIslands(frame, run, IslandSettings("kmeans", None), GRID)
    found.of_level(2)
    assert sorted(asked) == [2, 3], "the shown level and the one above it"
    found.every_level()
    assert sorted(asked) == [0, 1, 2, 3], "the levels below after, and no level twice"


def test_an_overlay_drawn_from_the_shown_level_is_the_one_every_level_gives():
    run, frame = run_of(2), frame_of()
    island_settings = IslandSettings("kmeans", None)
    eager = islands.find_islands_all_levels(run.states, GRID)
    shown = derived.FrameIslands(frame, run, island_settings, GRID).of_level(1)
    drawn = derived.overlay(frame, shown, island_settings, GRID, STEPS - 1, 1)
    assert np.array_equal(drawn, render.draw_islands(frame.display, eager[-1, 1], GRID))


@pytest.fixture(autouse=True)
def empty_caches():
    """Each test reads only what it cached itself."""
    cache.labels.clear()
    cache.derived.clear()
    yield
