"""One level's columns as arrays, and the patch grid they sit on: what the islands engine, the projections
and the renderer check and compute the same way.

    as_steps(states (T, N, D) | (N, D)) -> ((T, N, D) finite float32, whether one step was given)
    unit_vectors(vectors (..., D)) -> (..., D) their directions
    grid_shape(grid) -> (h, w);  check_grid(grid, patches) -> (h, w), refusing a grid of another size
    pixel_patches((H, W), grid) -> (H * W,) the patch under every pixel, row-major
"""

from __future__ import annotations

import numpy as np

from glom_viz.errors import StatesError


def as_array(values, name: str) -> np.ndarray:
    """numpy or torch -> float32 numpy, refusing NaN/Inf."""
    if hasattr(values, "detach"):  # torch tensor, without importing torch here
        values = values.detach().cpu().float().numpy()
    array = np.asarray(values, dtype=np.float32)
    if not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise StatesError(
            f"{name} hold {bad} NaN or Inf values: the model diverged or the states were cut; "
            "pass finite states (rerun the model, or lower its iterations)"
        )
    return array


def as_steps(states) -> tuple[np.ndarray, bool]:
    """states (T, N, D) or (N, D), numpy or torch -> (T, N, D) finite float32, and whether one step was given."""
    vectors = as_array(states, "states")
    single = vectors.ndim == 2
    if single:
        vectors = vectors[None]
    if vectors.ndim != 3:
        raise StatesError(
            f"states have shape {tuple(vectors.shape)}: pass one level's states as (steps, patches, dim) "
            "or (patches, dim); for all levels use find_islands_all_levels with (steps, patches, levels, dim)"
        )
    if 0 in vectors.shape:
        raise StatesError(f"states have shape {tuple(vectors.shape)}, with nothing in them: pass at least one "
                          "step of one patch")
    return vectors, single


def unit_vectors(vectors: np.ndarray) -> np.ndarray:
    """(..., D) -> unit vectors (..., D); a zero vector stays zero (it agrees with nothing)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)


def grid_shape(grid) -> tuple[int, int]:
    """(h, w) as two positive ints, or a StatesError."""
    try:
        h, w = (int(side) for side in grid)
    except (TypeError, ValueError):
        raise StatesError(f"grid {grid!r} is not a pair of ints: pass grid=(rows, columns) of the patch grid") from None
    if h < 1 or w < 1:
        raise StatesError(f"grid {(h, w)} has an empty side: pass grid=(rows, columns), both 1 or more")
    return h, w


def check_grid(grid, n_patches: int) -> tuple[int, int]:
    """grid_shape, refusing a grid that does not hold ``n_patches``."""
    h, w = grid_shape(grid)
    if h * w != n_patches:
        side = int(round(n_patches**0.5))
        hint = f", such as {(side, side)}" if side * side == n_patches else ""
        raise StatesError(
            f"grid {(h, w)} holds {h * w} patches but the states have {n_patches}: "
            f"pass the model's patch grid (rows x columns = {n_patches}){hint}"
        )
    return h, w


def pixel_patches(shape: tuple[int, int], grid) -> np.ndarray:
    """(H, W) image shape -> (H * W,) row-major: the patch of every pixel, pixels split into h x w blocks
    as evenly as possible (exactly the patches when H, W are multiples of the grid)."""
    h, w = grid_shape(grid)
    height, width = shape
    return ((np.arange(height) * h // height)[:, None] * w + (np.arange(width) * w // width)[None, :]).ravel()
