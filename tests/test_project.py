"""PCA and UMAP views: shapes, one shared frame over steps, degenerate input, planted islands kept apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import trustworthiness

from glom_viz.errors import StatesError
from glom_viz.project import pca_components, project, umap_embedding, warm_up_umap

STEPS, PATCHES, DIM = 5, 64, 32


def planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(STEPS, PATCHES, DIM) states, step 0 all one vector, then 4 islands tightening; and the islands (N,)."""
    rng = np.random.default_rng(seed)
    islands = np.repeat(np.arange(4), PATCHES // 4)
    start = rng.standard_normal(DIM)
    centres = rng.standard_normal((4, DIM))
    states = np.empty((STEPS, PATCHES, DIM), dtype=np.float32)
    for t in range(STEPS):
        together = t / (STEPS - 1)
        states[t] = (1 - together) * start + together * centres[islands]
        if t:
            states[t] += 0.15 * rng.standard_normal((PATCHES, DIM))
    return states, islands


def neighbours_in_same_island(embedding: np.ndarray, islands: np.ndarray, k: int = 5) -> float:
    distances = ((embedding[:, None] - embedding[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1)[:, :k]
    return float((islands[nearest] == islands[:, None]).mean())


@pytest.mark.parametrize("dims", [2, 3])
def test_pca_is_sklearn_pca_of_all_steps_together(dims):
    """One frame fitted on all T * N unit vectors (not per step): equal to sklearn's PCA on them."""
    rng = np.random.default_rng(1)
    states = (rng.standard_normal((STEPS, PATCHES, DIM)) * np.r_[8.0, 5.0, 3.0, np.ones(DIM - 3)]).astype(np.float32)
    coordinates = project(states, "pca", dims)
    assert coordinates.shape == (STEPS, PATCHES, dims) and coordinates.dtype == np.float32
    unit = states.reshape(-1, DIM) / np.linalg.norm(states.reshape(-1, DIM), axis=1, keepdims=True)
    reference = PCA(dims, svd_solver="full").fit_transform(unit)
    ours = coordinates.reshape(-1, dims)
    for axis in range(dims):  # axes agree up to sign, to randomized PCA's accuracy (1% of the frame)
        sign = np.sign(ours[:, axis] @ reference[:, axis])
        assert np.abs(ours[:, axis] - sign * reference[:, axis]).max() < 1e-2 * np.abs(reference).max()
    per_step = project(states[-1:], "pca", dims)[0]
    assert not np.allclose(per_step, coordinates[-1], atol=1e-3), "the frame must come from all steps"


def test_pca_shows_islands_gathering():
    states, islands = planted()
    coordinates = project(states, "pca", 2)
    assert np.ptp(coordinates[0], axis=0).max() < 1e-5, "step 0: every column at one point"
    assert neighbours_in_same_island(coordinates[-1], islands) == 1.0
    spread = [np.mean([coordinates[t][islands == i].std(0).sum() for i in range(4)]) for t in range(1, STEPS)]
    between = [np.ptp(coordinates[t], axis=0).sum() for t in range(1, STEPS)]
    assert spread[-1] / between[-1] < spread[0] / between[0], "islands tighten relative to the frame"


def test_pca_of_identical_vectors_is_zeros():
    same = np.tile(np.random.default_rng(0).standard_normal(DIM), (3, PATCHES, 1))
    same[1] *= 4.0  # lengths do not matter: unit vectors are projected
    assert np.array_equal(project(same, "pca", 3), np.zeros((3, PATCHES, 3), np.float32))


def test_pca_components_deterministic_and_handles_low_rank():
    rng = np.random.default_rng(0)
    line = np.outer(rng.standard_normal(50), rng.standard_normal(8))  # rank 1
    out = pca_components(line, 3, seed=4)
    assert np.array_equal(out, pca_components(line, 3, seed=4))
    assert np.isfinite(out).all() and np.abs(out[:, 1:]).max() < 1e-6 * np.abs(out[:, 0]).max()


def test_projection_takes_torch_and_single_steps():
    states, _ = planted()
    assert np.array_equal(project(torch.from_numpy(states)), project(states))
    assert project(states[-1], "pca", 2).shape == (1, PATCHES, 2)


def test_umap_shared_frame_keeps_islands_apart_and_is_deterministic():
    warm_up_umap()
    states, islands = planted()
    for dims in (2, 3):
        coordinates = project(states, "umap", dims, seed=1)
        assert coordinates.shape == (STEPS, PATCHES, dims) and coordinates.dtype == np.float32
        assert np.isfinite(coordinates).all()
        assert np.ptp(coordinates[0], axis=0).max() == 0.0, "step 0's identical columns share one point"
        assert neighbours_in_same_island(coordinates[-1], islands) > 0.95
    again = project(states, "umap", 2, seed=1)
    assert np.array_equal(again, project(states, "umap", 2, seed=1))

    rng = np.random.default_rng(2)  # a smooth manifold: neighbourhoods must survive
    blobs = rng.standard_normal((400, DIM)) + np.repeat(rng.standard_normal((5, DIM)) * 3, 80, axis=0)
    embedded = umap_embedding(blobs.astype(np.float32), 2, seed=0)
    assert trustworthiness(blobs, embedded, n_neighbors=10) > 0.9


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda s: project(s, "tsne"), "pca, umap"),
        (lambda s: project(s, "pca", 4), "2 or 3"),
        (lambda s: project(s * np.nan), "NaN or Inf"),
        (lambda s: project(s[None]), "(steps, patches, dim)"),
    ],
)
def test_bad_input(call, words):
    states, _ = planted()
    with pytest.raises(StatesError, match=None) as error:
        call(states)
    assert words in str(error.value)


def test_a_umap_projection_leaves_torchs_thread_count_as_it_was():
    """numba's OpenMP layer shares torch's runtime: a projection must not leave torch's products here on
    every core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        warm_up_umap()  # numba's parallel code, compiled and run
        project(planted()[0], "umap", 2, seed=0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
