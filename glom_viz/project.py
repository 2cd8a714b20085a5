"""PCA and UMAP views of one level's vectors, all steps in one shared frame.

    project(states (T, N, D), method="pca" | "umap", dims=2 | 3, seed=0) -> (T, N, dims) float32

The frame is fitted on all T * N unit vectors at once, so scrubbing through steps shows the same
columns moving and gathering into islands instead of every step being laid out afresh.

UMAP is made fast enough to follow the user (13 x 256 = 3,328 points of dim 512 in well under 2 s
once warm, against several seconds for a default umap.UMAP fit): exact duplicates are embedded once
(GLOM's step 0 is 256 copies of one vector), the vectors go through PCA down to UMAP_PCA_DIMS, the
k nearest neighbours are computed exactly there by blocked matrix products (umap would compute
all distances in 512 dims), and the layout runs UMAP_EPOCHS epochs from a PCA initialisation
instead of 500 from a spectral one (which also fails on duplicate points).
numba compiles umap's layout code on the first fit in every process (several seconds):
warm_up_umap() pays that once, off the user's path.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from glom_viz.columns import as_steps, unit_vectors
from glom_viz.errors import StatesError

PROJECTIONS = ("pca", "umap")
DIMS = (2, 3)

UMAP_PCA_DIMS = 32  # PCA before the kNN graph: keeps the islands, drops the float noise
UMAP_NEIGHBOURS = 15
UMAP_EPOCHS = 100  # umap's default is 500 below 10k points: 100 keeps its trustworthiness (benchmarks)
UMAP_MIN_DIST = 0.1
UMAP_INIT_SCALE = 10.0  # umap scales its PCA/spectral initialisations to +-10
POWER_ITERATIONS = 2  # randomized PCA: leading directions to ~1e-4 when their eigenvalues are apart
OVERSAMPLING = 8
KNN_BLOCK = 512  # rows of the distance matrix at a time
DEGENERATE_VARIANCE = 1e-12  # total variance below this: every vector points the same way


_blas_controller: ThreadpoolController | None = None  # made on first use: finding the libraries takes ~50 ms


def one_blas_thread():
    """Context manager running BLAS on one thread, for the many small and tall-skinny products here.

    On busy shared cores threaded OpenBLAS spends more time waking its threads than multiplying:
    3-10x slower than one thread for these sizes (scikit-learn's KMeans limits itself the same way).
    """
    global _blas_controller
    if _blas_controller is None:
        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


def _orthonormal(block: np.ndarray) -> np.ndarray:
    """Orthonormal basis (M, r') of a tall block's column space, from its small (r, r) Gram matrix.

    Cheaper than a QR of the tall block (LAPACK's QR crawls on busy shared cores); directions the
    block does not span are dropped.
    """
    values, vectors = np.linalg.eigh((block.T @ block).astype(np.float64))
    keep = values > values.max() * 1e-8
    return block @ (vectors[:, keep] / np.sqrt(values[keep])).astype(block.dtype)


def pca_components(
    points: np.ndarray, dims: int, seed: int = 0, power_iterations: int = POWER_ITERATIONS
) -> np.ndarray:
    """Leading principal coordinates of points (M, D) -> (M, dims) float64, zeros if no variance.

    Randomized range finder with power iterations (Halko et al. 2011) and a seeded generator, so no
    global RNG is touched; each axis' sign is fixed so that its largest loading is positive (as
    sklearn's svd_flip), which makes the frame reproducible.
    """
    points = np.asarray(points, dtype=np.float32)  # the tall products in float32: twice as fast
    centred = points - points.mean(axis=0, dtype=np.float64).astype(np.float32)
    m, d = centred.shape
    out = np.zeros((m, dims))
    if m == 0 or np.einsum("md,md->", centred, centred, dtype=np.float64) / m < DEGENERATE_VARIANCE:
        return out
    rng = np.random.default_rng(seed)
    sketch = rng.standard_normal((d, min(dims + OVERSAMPLING, d))).astype(np.float32)
    basis = _orthonormal(centred @ sketch)
    for _ in range(power_iterations):
        basis = _orthonormal(centred @ (centred.T @ basis))
    # SVD of the small (r, D) sketch through its (r, r) Gram matrix: LAPACK's gesdd is slow here
    sketch = (basis.T @ centred).astype(np.float64)
    variances, mixing = np.linalg.eigh(sketch @ sketch.T)  # ascending
    variances, mixing = variances[::-1], mixing[:, ::-1]
    keep = int(min(dims, (variances > variances[0] * 1e-10).sum()))
    axes = (mixing[:, :keep].T @ sketch) / np.sqrt(variances[:keep])[:, None]  # (keep, D) unit rows
    signs = np.sign(axes[np.arange(keep), np.abs(axes).argmax(axis=1)])
    out[:, :keep] = centred @ (axes * signs[:, None]).T.astype(np.float32)
    return out


def _exact_neighbours(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of each point (itself first) -> indices (M, k) int32, distances (M, k) float32.

    Brute force by Gram products in row blocks that stay in cache: exact, and at a few thousand
    points in UMAP_PCA_DIMS dims quicker than umap's own all-pairs distances in the full dim.
    """
    m = points.shape[0]
    sq = (points**2).sum(axis=1)
    index = np.empty((m, k), dtype=np.int64)
    near = np.empty((m, k), dtype=np.float32)
    for first in range(0, m, KNN_BLOCK):
        rows = slice(first, min(first + KNN_BLOCK, m))
        block = np.maximum(sq[rows, None] + sq[None, :] - 2 * points[rows] @ points.T, 0.0)
        block[np.arange(block.shape[0]), np.arange(rows.start, rows.stop)] = -1.0  # itself first, as umap expects
        nearest = np.argpartition(block, k - 1, axis=1)[:, :k]
        distances = np.take_along_axis(block, nearest, axis=1)
        order = distances.argsort(axis=1, kind="stable")
        index[rows] = np.take_along_axis(nearest, order, axis=1)
        near[rows] = np.sqrt(np.maximum(np.take_along_axis(distances, order, axis=1), 0.0))
    return index.astype(np.int32), near


def umap_embedding(
    points: np.ndarray,
    dims: int = 2,
    *,
    seed: int = 0,
    min_dist: float = UMAP_MIN_DIST,
    n_neighbors: int = UMAP_NEIGHBOURS,
    n_epochs: int = UMAP_EPOCHS,
) -> np.ndarray:
    """UMAP of points (M, D) -> (M, dims) float32, deterministic for a seed (see module docstring)."""
    import umap  # ~10 s on first import: only when a UMAP is asked for

    # exact duplicates (GLOM's step 0 is N copies of one vector) are embedded once and share a point
    unique, inverse = np.unique(np.asarray(points, dtype=np.float32), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    if unique.shape[0] <= n_neighbors + 1:  # too few distinct points for a neighbour graph
        return pca_components(unique, dims, seed)[inverse].astype(np.float32)
    # an approximate subspace is enough for a neighbour graph: one power iteration
    reduced = pca_components(unique, min(UMAP_PCA_DIMS, unique.shape[1]), seed, power_iterations=1)
    reduced = reduced.astype(np.float32)
    index, distances = _exact_neighbours(reduced, n_neighbors)
    start = pca_components(reduced, dims, seed)
    start *= UMAP_INIT_SCALE / max(np.abs(start).max(), 1e-12)  # the scale umap gives its own inits
    reducer = umap.UMAP(
        n_neighbors=n_neighbors,
        n_components=dims,
        min_dist=min_dist,
        n_epochs=n_epochs,
        init=start.astype(np.float32),
        random_state=seed,
        precomputed_knn=(index, distances, None),
        n_jobs=1,
    )
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            # precomputed kNN without a search index only disables transform(), which we never call
            warnings.filterwarnings("ignore", message=".*precomputed_knn.*")
            warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")
            embedded = reducer.fit_transform(reduced)
    finally:
        # numba's OpenMP threading layer shares torch's OpenMP runtime and leaves this thread's OpenMP thread
        # count at all cores: torch's products here would then run on every core (a 1-thread forward of the
        # seed's GLOM took 5 CPU s after a projection instead of 0.7 on a busy 2-core machine)
        torch.set_num_threads(threads)
    return embedded[inverse].astype(np.float32)


def project(states, method: str = "pca", dims: int = 2, seed: int = 0) -> np.ndarray:
    """One level's vectors over all steps -> coordinates in one shared frame.

    Args:
        states: (T, N, D) numpy or torch (or (N, D), one step).
        method: "pca" (instant) or "umap" (see module docstring for its speed settings).
        dims: 2 or 3.
        seed: makes the projection deterministic.

    Returns:
        (T, N, dims) float32; all zeros when every vector points the same way.
    """
    if method not in PROJECTIONS:
        raise StatesError(f"unknown projection {method!r}: pick one of {', '.join(PROJECTIONS)}")
    if dims not in DIMS:
        raise StatesError(f"dims={dims!r}: pass 2 or 3")
    vectors, _ = as_steps(states)
    steps, n_patches, dim = vectors.shape
    points = unit_vectors(vectors.reshape(steps * n_patches, dim))
    with one_blas_thread():
        if method == "pca":
            coordinates = pca_components(points, dims, seed)
        else:
            coordinates = umap_embedding(points, dims, seed=seed)
    return coordinates.reshape(steps, n_patches, dims).astype(np.float32)


def warm_up_umap(seed: int = 0) -> None:
    """Compile umap's numba code now (several seconds, once per process) so the first real projection is fast."""
    rng = np.random.default_rng(seed)
    blob = rng.standard_normal((3 * UMAP_NEIGHBOURS, 8)).astype(np.float32)
    for dims in DIMS:
        umap_embedding(blob, dims, seed=seed, n_epochs=5)
