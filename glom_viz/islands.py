"""Islands of agreement: find them in one level's states, keep their ids across steps, measure them.

An island is a set of columns whose vectors at one level point the same way (GLOM, section 2). All
functions are pure, arrays in and arrays out:

    find_islands(states (T, N, D) | (N, D), grid=(h, w)) -> labels (T, N) | (N,)
    align_islands(labels (T, N)) -> labels (T, N)
    find_islands_all_levels(states (T, N, L, D), grid) -> labels (T, L, N), ids matched across levels
    match_islands(labels (..., N), reference (..., N)) -> labels (..., N) with reference's ids where they overlap
    align_checkpoints([labels (T, L, N)] per checkpoint) -> the same, ids stable from checkpoint to checkpoint
    island_measures(states (T, N, D), labels (T, N), grid, truth=None) -> [dict per step]
    parse_tree(labels_by_level (L, N)) -> {"nodes", "edges", "purity"}

Vectors are compared by direction (cosine), as consensus attention does: every method L2-normalises
them first. Labels are int64, row-major patch order, -1 = noise (HDBSCAN, or threshold islands
smaller than `min_size`).

The default method, "kmeans", is Lloyd's k-means on the unit vectors, started from the cuts of one
Ward tree (deterministic, no random restarts) and run in kernel form on the (N, N) Gram matrix of
the columns: with N = 256 patches and D = 512, every Lloyd step, and the silhouettes and
Davies-Bouldin indices of all candidate counts, are each one (N, N) @ (N, counts x islands) product.
All 78 (step, level) maps of a 224 px image, island count picked automatically among 2..16, take
about half a second (benchmarks/islands.py).
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import linkage
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import squareform
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import adjusted_rand_score

from glom_viz.columns import as_array, as_steps, check_grid, grid_shape, unit_vectors
from glom_viz.errors import StatesError
from glom_viz.project import one_blas_thread

METHODS = ("kmeans", "agglomerative", "hdbscan", "threshold")
SPACES = ("vectors", "umap")

# n_islands=None: counts 2..MAX_ISLANDS are tried and the lowest Davies-Bouldin index wins, where
# that count's islands are separated (index <= SEPARATED: averaged over islands, the two scatters of
# an island and its most crowding neighbour add up to no more than their centroids' distance). Not
# the best silhouette alone:
# where islands nest (parts inside wholes, GLOM's low levels) the silhouette prefers the few wholes
# and hides the parts (`python -m glom_viz.evaluate --auto-count` measures both on the scenes). Where
# no count gives separated islands (early steps, untrained models) the index just falls as the count
# grows, so there the best silhouette picks. Scenes hold up to 15 parts, hence 16.
MAX_ISLANDS = 16
SEPARATED = 1.0
PATCHES_PER_ISLAND = 8
# ...unless even the best silhouette (cosine) of any count is below this: then there is no island
# structure worth splitting (Kaufman & Rousseeuw read < 0.25 as "no substantial structure"; we are
# more lenient so that weak early islands still show). Such a step is one island only if its columns
# agree: their mean cosine to their mean direction is at least ONE_ISLAND_COSINE. Otherwise the columns
# disagree without forming islands (an untrained model: neighbours' cosine ~0.4, to the mean ~0.6) and
# every column is labelled -1, in no island; calling that one island would call disagreement agreement.
MIN_SILHOUETTE = 0.1
ONE_ISLAND_COSINE = 0.9
# A step whose vectors all lie within (about) this cosine distance of their mean direction is one
# island (GLOM's step 0: every column holds the same vector). 1e-5 is about a quarter of a degree, well
# above float32 round-off (~1e-7) and well below any split a silhouette could justify.
DEGENERATE_SPREAD = 1e-5

KMEANS_MAX_ITER = 100  # Lloyd from a Ward cut settles in a handful of steps
# threshold=None (the default) picks each map's threshold: the highest cosine at which islands smaller
# than min_size hold at most TINY_SHARE of the patches. One fixed cosine fits no two levels: on the
# shipped model's photographs 0.9 left level 0 as confetti (78 islands, 68 of them under 4 patches)
# and level 3 as one island; the automatic threshold finds 7-8 islands at every level, 9% of the patches
# in none (FG-ARI on 48 held-out scenes: parts 0.74 at level 1, objects 0.74 at level 2).
THRESHOLD = 0.9  # a typical fixed cosine for neighbouring columns of one island (threshold=0.9)
THRESHOLD_MIN_SIZE = 4
TINY_SHARE = 0.1
HDBSCAN_MIN_CLUSTER_SIZE = 5
TRUTH_BAND_PIXELS = 2**20  # patch_truth counts a mask's pixels a band of rows (about this many pixels) at a time
# min_samples=1 (sklearn's default is min_cluster_size): on the shipped model's photographs the share of
# patches HDBSCAN calls noise falls from 16-20% to 4-11% per level (the cat at level 2: 150 of 256 -> 81)
HDBSCAN_MIN_SAMPLES = 1
# when this share of a map's patches is in no island, or in islands under TINY_ISLAND patches, the
# settings are worth changing, and islands_hint says how
HINT_SHARE = 0.25
TINY_ISLAND = 4
UMAP_CLUSTER_DIMS = 5  # UMAP-then-cluster recipe: a few dims, min_dist 0 so islands stay tight
UMAP_CLUSTER_MIN_DIST = 0.0

# Parameters each method accepts, with their defaults; anything else is a typo we report.
METHOD_PARAMS = {
    "kmeans": {"max_islands": MAX_ISLANDS, "min_silhouette": MIN_SILHOUETTE, "count_by": "davies_bouldin"},
    "agglomerative": {"max_islands": MAX_ISLANDS, "min_silhouette": MIN_SILHOUETTE, "count_by": "davies_bouldin",
                      "connectivity": False},
    "hdbscan": {
        "min_cluster_size": HDBSCAN_MIN_CLUSTER_SIZE,
        "min_samples": HDBSCAN_MIN_SAMPLES,
        "cluster_selection_epsilon": 0.0,
        "allow_single_cluster": False,
    },
    "threshold": {"threshold": None, "min_size": THRESHOLD_MIN_SIZE},
}
COUNT_METHODS = ("kmeans", "agglomerative")  # the methods that take n_islands
COUNT_CRITERIA = ("davies_bouldin", "silhouette")  # how they pick it when n_islands is None


# ----------------------------------------------------------------------------------------------
# input checks


def _check_settings(method: str, n_islands, space: str, n_patches: int, params: dict) -> dict:
    """Validate the clustering settings; return the method's parameters with defaults filled in."""
    if method not in METHODS:
        raise StatesError(f"unknown island method {method!r}: pick one of {', '.join(METHODS)}")
    if space not in SPACES:
        raise StatesError(f"unknown space {space!r}: pick one of {', '.join(SPACES)}")
    accepted = METHOD_PARAMS[method]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise StatesError(
            f"{method} does not take {', '.join(unknown)}: its parameters are {', '.join(accepted)}"
        )
    if n_islands is not None:
        if method not in COUNT_METHODS:
            raise StatesError(
                f"{method} finds the number of islands itself: pass n_islands=None, "
                f"or pick {' or '.join(COUNT_METHODS)} to fix the count"
            )
        if isinstance(n_islands, bool) or not isinstance(n_islands, (int, np.integer)) or n_islands < 1:
            raise StatesError(f"n_islands={n_islands!r}: pass a positive int, or None to pick the count")
        if n_islands > n_patches:
            raise StatesError(
                f"n_islands={n_islands} is more islands than the {n_patches} patches: "
                f"pass n_islands between 1 and {n_patches}, or None to pick the count"
            )
    if method == "threshold" and space != "vectors":
        raise StatesError(
            "threshold compares neighbouring vectors by cosine, which a UMAP embedding does not keep: "
            "use space='vectors' with threshold, or another method on space='umap'"
        )
    settings = {**accepted, **params}
    if "count_by" in settings and settings["count_by"] not in COUNT_CRITERIA:
        raise StatesError(f"count_by={settings['count_by']!r}: pick one of {', '.join(COUNT_CRITERIA)}")
    if "max_islands" in settings and int(settings["max_islands"]) < 2:
        raise StatesError(f"max_islands={settings['max_islands']}: pass 2 or more, the most islands to try")
    if method == "hdbscan" and int(settings["min_cluster_size"]) < 2:
        raise StatesError(f"min_cluster_size={settings['min_cluster_size']}: pass 2 or more, the smallest island")
    if method == "threshold" and int(settings["min_size"]) < 1:
        raise StatesError(f"min_size={settings['min_size']}: pass 1 or more (1 keeps every island)")
    if method == "threshold" and settings["threshold"] is not None and not -1.0 <= float(settings["threshold"]) <= 1.0:
        raise StatesError(f"threshold={settings['threshold']} is not a cosine: pass a value in [-1, 1], e.g. 0.9, "
                          "or None to pick it per map")
    return settings


# ----------------------------------------------------------------------------------------------
# geometry


def _spread(directions: np.ndarray) -> np.ndarray:
    """(T, N, D) unit vectors -> (T,) how far the columns of each step are from all agreeing.

    Half the largest squared distance of a unit vector to the step's mean: about the cosine distance
    to the mean direction when that is small, and 0 when all vectors are equal (or all zero).
    """
    offsets = directions - directions.mean(axis=1, keepdims=True, dtype=np.float64).astype(directions.dtype)
    return 0.5 * np.einsum("tnd,tnd->tn", offsets, offsets).max(axis=1).astype(np.float64)


def _grid_pairs(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (a, b) of 4-neighbour patches in row-major order: right neighbours, then below."""
    h, w = grid
    index = np.arange(h * w).reshape(h, w)
    first = np.concatenate([index[:, :-1].ravel(), index[:-1, :].ravel()])
    second = np.concatenate([index[:, 1:].ravel(), index[1:, :].ravel()])
    return first, second


def _grid_graph(grid: tuple[int, int]) -> coo_matrix:
    h, w = grid
    first, second = _grid_pairs(grid)
    ones = np.ones(first.size, dtype=np.int8)
    return coo_matrix((ones, (first, second)), shape=(h * w, h * w))


def _silhouettes(dissimilarity: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Mean silhouette of each candidate labeling, as sklearn's silhouette_score(metric="precomputed").

    Args:
        dissimilarity: (N, N) precomputed distances.
        candidates: (B, N) labels, ids 0..K-1 (empty ids allowed).
    Returns:
        (B,) mean silhouettes; NaN where a labeling has fewer than 2 or more than N - 1 islands.

    All B labelings in one (N, N) @ (N, B * K) product instead of sklearn's chunked loops: the
    auto count scores every candidate count of every (step, level) map.
    """
    count, n = candidates.shape
    width = int(candidates.max()) + 1
    onehot, columns = _onehot(candidates, width, dissimilarity.dtype)  # (N, B * K), (B, N)
    sizes = onehot.sum(axis=0)  # (B * K,)
    sums = dissimilarity @ onehot  # (N, B * K) summed distance of each column to each island
    own = columns.T  # (N, B) column index of each patch's own island
    own_size = sizes[own]
    within = np.take_along_axis(sums, own, axis=1) / np.maximum(own_size - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        means = sums / sizes
    means[:, sizes == 0] = np.inf
    np.put_along_axis(means, own, np.inf, axis=1)
    nearest = means.reshape(n, count, width).min(axis=2)  # (N, B)
    scores = (nearest - within) / np.maximum(np.maximum(within, nearest), np.finfo(np.float32).tiny)
    scores[own_size == 1] = 0.0  # sklearn's convention for an island of one column
    result = scores.mean(axis=0).astype(np.float64)
    islands = (sizes.reshape(count, width) > 0).sum(axis=1)
    result[(islands < 2) | (islands > n - 1)] = np.nan
    return result


def _davies_bouldin(step: "_Map", candidates: np.ndarray) -> np.ndarray:
    """Davies-Bouldin index of each candidate labeling, as sklearn's davies_bouldin_score (lower is better).

    Args:
        step: the map; its Gram matrix gives every distance (Euclidean, on its points).
        candidates: (B, N) labels, ids 0..K-1 (empty ids allowed).
    Returns:
        (B,) indices; NaN where a labeling has fewer than 2 islands.

    Mean over islands of the worst (scatter_i + scatter_j) / |centroid_i - centroid_j|, scatter the mean
    distance of an island's columns to its centroid; from (N, N) @ (N, B * K) like the silhouettes.
    """
    count, n = candidates.shape
    width = int(candidates.max()) + 1
    onehot, columns = _onehot(candidates, width, step.gram.dtype)  # (N, B * K), (B, N)
    sizes, products, centroid_sq, squared_to_means = _means(step, onehot)
    safe = np.maximum(sizes, 1)
    to_centroid = np.sqrt(np.maximum(np.take_along_axis(squared_to_means, columns.T, axis=1), 0.0))  # (N, B)
    scatter = (onehot * np.repeat(to_centroid, width, axis=1)).sum(axis=0) / safe  # (B * K,)
    # c_j . c_k within each labeling: (B, K, K)
    dots = np.einsum("nbj,nbk->bjk", onehot.reshape(n, count, width), products.reshape(n, count, width))
    dots /= (safe.reshape(count, width, 1) * safe.reshape(count, 1, width))
    squared = centroid_sq.reshape(count, width, 1) + centroid_sq.reshape(count, 1, width) - 2 * dots
    separation = np.sqrt(np.maximum(squared, 0.0)).astype(np.float64)
    present = (sizes > 0).reshape(count, width)
    pair = present[:, :, None] & present[:, None, :] & ~np.eye(width, dtype=bool)
    separation[~pair | (separation == 0)] = np.inf  # sklearn: coinciding centroids add nothing
    scatter = scatter.reshape(count, width).astype(np.float64)
    worst = ((scatter[:, :, None] + scatter[:, None, :]) / separation).max(axis=2)  # (B, K)
    islands = present.sum(axis=1)
    result = np.where(present, worst, 0.0).sum(axis=1) / np.maximum(islands, 1)
    result[islands < 2] = np.nan
    return result


def _onehot(labels: np.ndarray, width: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """B labelings (B, N) with ids < width -> indicators (N, B * width) and each entry's column (B, N).

    One 2-D layout for all labelings, so that a single GEMM serves them all.
    """
    count, n = labels.shape
    columns = labels + width * np.arange(count)[:, None]
    onehot = np.zeros((n, count * width), dtype=dtype)
    onehot[np.arange(n)[None, :], columns] = 1.0
    return onehot, columns


# ----------------------------------------------------------------------------------------------
# one Ward tree per map, cut at every candidate count; k-means refines each cut


def _ward_children(step: "_Map", grid, connectivity: bool) -> np.ndarray:
    """Ward merges (N - 1, 2) in order, node N + i made by merge i (scipy's and sklearn's numbering)."""
    if connectivity:
        from sklearn.cluster import ward_tree  # scikit-learn's clustering module is slow to import

        children, *_ = ward_tree(step.points, connectivity=_grid_graph(grid))
        return np.asarray(children, dtype=np.int64)
    return linkage(step.condensed, method="ward")[:, :2].astype(np.int64)


def _cuts(children: np.ndarray, n_leaves: int, counts: list[int]) -> np.ndarray:
    """Labels (len(counts), N) of the islands left when the last k - 1 merges are undone, per k.

    Exactly k islands for every k (unlike fcluster on tied heights). The island of a leaf at count
    k is its highest ancestor made before the last k - 1 merges; ancestors are found for all
    leaves at once by pointer doubling on the parent array.
    """
    nodes = 2 * n_leaves - 1
    parent = np.arange(nodes)
    parent[children.ravel()] = np.repeat(np.arange(n_leaves, nodes), 2)
    depth_steps = max(int(np.ceil(np.log2(nodes))), 1)
    labels = np.empty((len(counts), n_leaves), dtype=np.int64)
    for row, k in enumerate(counts):
        kept = nodes - k + 1  # nodes made by the last k - 1 merges (ids >= kept) are undone
        up = np.where(parent < kept, parent, np.arange(nodes))
        for _ in range(depth_steps):
            up = up[up]
        _, labels[row] = np.unique(up[:n_leaves], return_inverse=True)
    return labels


def _means(step: "_Map", onehot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Islands' means from the Gram matrix alone: indicators (N, B * K) -> sizes (B * K,), products
    G @ onehot (N, B * K), |mean_j|^2 (B * K,) and |x_i - mean_j|^2 (N, B * K).

    |x_i - mean_j|^2 = G_ii - 2 (G m_j)_i / n_j + m_j' G m_j / n_j^2, m_j island j's indicator.
    """
    sizes = onehot.sum(axis=0)
    safe = np.maximum(sizes, 1)
    products = step.gram @ onehot
    mean_sq = (onehot * products).sum(axis=0) / safe**2
    return sizes, products, mean_sq, step.sq[:, None] - 2 * products / safe + mean_sq


def _lloyd(step: "_Map", starts: np.ndarray) -> np.ndarray:
    """k-means (Lloyd) from each start at once, on the Gram matrix only (``_means``) -> labels (B, N).

    A start whose island empties is kept as it was, so every result has its start's count.
    """
    count, n = starts.shape
    width = int(starts.max()) + 1
    used = _onehot(starts, width, np.float32)[0].any(axis=0)  # (B * K,) the ids each start uses
    labels = starts.copy()
    moving = np.arange(count)  # the starts not yet settled: a settled one stays as it is, so it leaves the product
    for _ in range(KMEANS_MAX_ITER):
        current = labels[moving]
        onehot, _ = _onehot(current, width, step.gram.dtype)  # (N, B' * K)
        sizes, _, _, distance = _means(step, onehot)
        distance = distance + np.where(sizes > 0, 0.0, np.inf).astype(step.gram.dtype)  # absent ids never win
        updated = distance.reshape(n, len(moving), width).argmin(axis=2).T  # (B', N)
        changed = (updated != current).any(axis=1)
        labels[moving] = updated
        moving = moving[changed]
        if not moving.size:
            break
    emptied = (_onehot(labels, width, np.float32)[0].any(axis=0) != used).reshape(count, width).any(axis=1)
    labels[emptied] = starts[emptied]
    return labels


# ----------------------------------------------------------------------------------------------
# one map (N, D) -> labels (N,)


class _Map:
    """One step's points with the matrices every count-based method shares (all (N, N) float32)."""

    def __init__(self, points: np.ndarray, gram: np.ndarray, cosine: bool):
        self.points = points
        self.gram = gram
        self.sq = np.diag(self.gram).copy()
        self.euclidean = np.sqrt(np.maximum(self.sq[:, None] + self.sq[None, :] - 2 * self.gram, 0.0))
        np.fill_diagonal(self.euclidean, 0.0)
        # silhouettes in cosine distance on unit vectors (as island_measures reports them); in a
        # UMAP embedding, where directions mean nothing, in euclidean distance
        self.dissimilarity = np.clip(1.0 - self.gram, 0.0, 2.0) if cosine else self.euclidean
        self.condensed = squareform(self.euclidean, checks=False).astype(np.float64)  # for scipy's linkage


def _counts(n_islands, max_islands: int, n_patches: int) -> list[int]:
    if n_islands is not None:
        return [int(n_islands)]
    # islands of a few columns each fit noise: random vectors split into 16 islands of 4 reach a
    # silhouette of 0.1 and would pass the one-island gate, so a map is split into islands of
    # PATCHES_PER_ISLAND columns on average at most
    return list(range(2, min(int(max_islands), max(n_patches // PATCHES_PER_ISLAND, 2), n_patches - 1) + 1))


def _islands_by_count(method: str, step: _Map, grid, n_islands, settings, agreement: float) -> np.ndarray:
    """kmeans or agglomerative: candidates at every count, the lowest Davies-Bouldin index wins.

    `agreement`: the columns' mean cosine to their mean direction; where no count splits them, they are
    one island if it reaches ONE_ISLAND_COSINE, else in no island (-1).
    """
    n = step.sq.size
    counts = _counts(n_islands, settings["max_islands"], n)
    unsplit = np.zeros(n, dtype=np.int64) if agreement >= ONE_ISLAND_COSINE else np.full(n, -1, dtype=np.int64)
    if counts == [1]:
        return np.zeros(n, dtype=np.int64)  # one island asked for
    if not counts:
        return unsplit
    connectivity = method == "agglomerative" and bool(settings["connectivity"])
    candidates = _cuts(_ward_children(step, grid, connectivity), n, counts)
    if method == "kmeans":
        candidates = _lloyd(step, candidates)
    if n_islands is not None:
        return candidates[0]
    silhouettes = _silhouettes(step.dissimilarity, candidates)
    if np.isnan(silhouettes).all() or np.nanmax(silhouettes) < float(settings["min_silhouette"]):
        return unsplit  # no structure worth splitting
    if settings["count_by"] == "davies_bouldin":
        indices = _davies_bouldin(step, candidates)
        if np.nanmin(indices) <= SEPARATED:
            return candidates[int(np.nanargmin(indices))]  # ties: the fewer islands
    return candidates[int(np.nanargmax(silhouettes))]


def _islands_hdbscan(step: _Map, settings) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    model = HDBSCAN(
        min_cluster_size=min(int(settings["min_cluster_size"]), step.sq.size),
        min_samples=settings["min_samples"],
        cluster_selection_epsilon=float(settings["cluster_selection_epsilon"]),
        allow_single_cluster=bool(settings["allow_single_cluster"]),
        metric="precomputed",
        copy=True,
    )
    return model.fit_predict(step.euclidean.copy()).astype(np.int64)


def _islands_threshold(directions: np.ndarray, grid, settings) -> np.ndarray:
    """The paper's definition: connected regions of the grid whose neighbours agree >= threshold.

    Regions smaller than min_size are noise. threshold None: the highest neighbour cosine at which such
    regions hold at most TINY_SHARE of the patches (a patch's region only grows as the threshold falls,
    so a bisection over the map's own neighbour cosines finds it).
    """
    first, second = _grid_pairs(grid)
    cosines = np.einsum("pd,pd->p", directions[first], directions[second])
    min_size = int(settings["min_size"])

    def regions(threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Each patch's region (N,) and whether that region is smaller than min_size (N,)."""
        agree = cosines >= threshold
        graph = coo_matrix((np.ones(int(agree.sum())), (first[agree], second[agree])), shape=(len(directions),) * 2)
        _, labels = connected_components(graph, directed=False)
        return labels, np.bincount(labels)[labels] < min_size

    if settings["threshold"] is not None:
        labels, small = regions(float(settings["threshold"]))
    else:
        candidates = np.unique(cosines)[::-1]  # highest first; the last joins every neighbour
        low, high = 0, len(candidates) - 1
        while low < high:  # the first candidate whose small regions hold at most TINY_SHARE
            middle = (low + high) // 2
            if regions(candidates[middle])[1].mean() <= TINY_SHARE:
                high = middle
            else:
                low = middle + 1
        labels, small = regions(candidates[low]) if len(candidates) else regions(1.0)
    return _renumber(np.where(small, -1, labels))


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Ids 0..k-1 in order of first appearance (row-major); -1 stays -1."""
    out = np.full(labels.shape, -1, dtype=np.int64)
    kept = labels >= 0
    _, first, inverse = np.unique(labels[kept], return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    out[kept] = order[inverse]
    return out


def _grams(points: np.ndarray) -> list[np.ndarray]:
    """(T, N, D) -> T Gram matrices (N, N) float32: most of the default method's flops.

    One 2-D product per step on one BLAS thread (the caller's limit): measured here, that beats a
    batched numpy matmul (no BLAS for stacks) and torch.bmm (its threads wake slowly on busy cores,
    13 ms for a single 256 x 64 map).
    """
    return [step @ step.T for step in np.ascontiguousarray(points, dtype=np.float32)]


# ----------------------------------------------------------------------------------------------
# public API


def find_islands(
    states,
    grid,
    method: str = "kmeans",
    n_islands: int | None = None,
    *,
    space: str = "vectors",
    seed: int = 0,
    align: bool = True,
    **params,
) -> np.ndarray:
    """Find the islands of agreement in one level's states.

    Args:
        states: (T, N, D) one level over steps, or (N, D) one step; numpy or torch.
        grid: (h, w) patch grid, h * w = N, patches in row-major order.
        method: "kmeans" (default; k-means on directions), "agglomerative" (Ward; pass
            connectivity=True for spatially contiguous islands), "hdbscan" (noise = -1) or
            "threshold" (connected grid regions whose neighbours have cosine >= threshold).
        n_islands: number of islands for kmeans/agglomerative; None picks it per step among counts
            2..max_islands (and at most one island per PATCHES_PER_ISLAND columns): by the lowest
            Davies-Bouldin index where that count's islands are separated (index <= SEPARATED),
            else by the best silhouette (count_by="silhouette": always by the silhouette); one
            island when no count's silhouette reaches min_silhouette. hdbscan and threshold find the
            count themselves.
        space: "vectors" clusters the unit vectors; "umap" clusters a UMAP embedding of them (one
            embedding shared by all steps, UMAP_CLUSTER_DIMS dims).
        seed: the UMAP embedding's seed (space="umap"); every method is deterministic.
        align: align ids across steps with align_islands (default), so an island keeps its id.
        **params: method parameters, see METHOD_PARAMS (max_islands, min_silhouette, count_by, connectivity,
            min_cluster_size, min_samples, cluster_selection_epsilon, allow_single_cluster,
            threshold, min_size).

    Returns:
        int64 labels (T, N), or (N,) for a (N, D) input; -1 is noise. A step whose vectors all
        coincide (GLOM's step 0) is a single island 0, whatever the method or n_islands.

    Raises:
        StatesError: NaN/Inf states, a grid that does not hold N patches, n_islands > N, an unknown
            method, space or parameter.
    """
    vectors, single = as_steps(states)
    steps, n_patches, _ = vectors.shape
    grid = check_grid(grid, n_patches)
    settings = _check_settings(method, n_islands, space, n_patches, params)
    directions = unit_vectors(vectors)
    degenerate = _spread(directions) < DEGENERATE_SPREAD
    agreement = np.linalg.norm(directions.mean(axis=1, dtype=np.float64), axis=-1)  # (T,) mean cosine to the mean
    labels = np.zeros((steps, n_patches), dtype=np.int64)
    live = np.flatnonzero(~degenerate)
    with one_blas_thread():  # many small (N, N) @ (N, B * K) products
        if live.size and method == "threshold":
            for t in live:
                labels[t] = _islands_threshold(directions[t], grid, settings)
        elif live.size:
            points = directions[live] if space == "vectors" else _umap_points(directions[live], seed)
            for t, points_t, gram in zip(live, points, _grams(points)):
                step = _Map(points_t, gram, cosine=space == "vectors")
                if method == "hdbscan":
                    labels[t] = _islands_hdbscan(step, settings)
                else:
                    labels[t] = _islands_by_count(method, step, grid, n_islands, settings, agreement[t])
    if align:
        labels = align_islands(labels)
    return labels[0] if single else labels


def _umap_points(directions: np.ndarray, seed: int) -> np.ndarray:
    """(T, N, D) unit vectors -> (T, N, UMAP_CLUSTER_DIMS), one UMAP embedding shared by the steps."""
    from glom_viz.project import umap_embedding

    steps, n_patches, dim = directions.shape
    embedded = umap_embedding(
        directions.reshape(-1, dim), UMAP_CLUSTER_DIMS, seed=seed, min_dist=UMAP_CLUSTER_MIN_DIST
    )
    return embedded.reshape(steps, n_patches, UMAP_CLUSTER_DIMS)


def align_islands(labels) -> np.ndarray:
    """Give each island the id it had at the previous step, so its colour stays while scrubbing.

    Each step is matched to the previous one by Hungarian assignment on patch overlap
    (``match_islands``). Islands left unmatched get fresh ids never used before; when islands merge,
    the merged island keeps the id of the parent that contributed most of its patches; -1 (noise)
    stays -1. Step 0's islands are numbered 0, 1, ... from the largest.

    Args:
        labels: int (T, N), any ids (-1 = noise).
    Returns:
        int64 (T, N).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise StatesError(f"labels have shape {labels.shape}: pass (steps, patches)")
    aligned = np.full(labels.shape, -1, dtype=np.int64)
    if labels.shape[0] == 0:
        return aligned
    aligned[0] = _by_size(labels[0])
    next_id = int(aligned[0].max()) + 1
    for t in range(1, labels.shape[0]):
        aligned[t] = match_islands(labels[t], aligned[t - 1], fresh_from=next_id)
        next_id = max(next_id, int(aligned[t].max()) + 1)
    return aligned


def match_islands(labels, reference, *, fresh_from: int | None = None, where=None) -> np.ndarray:
    """Rename the islands of `labels` to the ids of the `reference` islands they overlap most.

    One Hungarian assignment on patch overlap (scipy's linear_sum_assignment), the overlap summed over
    every leading axis, so that one renaming serves them all: matching a level's (steps, patches)
    islands under one model to those under another, or at one checkpoint to the previous one, keeps
    the ids stable along the steps. Islands left unmatched (or matched with no overlap) get fresh ids,
    largest first, from `fresh_from` (default: above every id in `reference`), so they never take a
    reference island's colour. -1 (noise) stays -1 and is matched with nothing.

    Args:
        labels: int (..., N), any ids.
        reference: int, the same shape.
        fresh_from: the first id an unmatched island may take.
        where: bool, broadcast to that shape: only these entries count to the overlap (e.g. the last
            step's, where the islands have settled); the renaming still applies everywhere.
    Returns:
        int64, the shape of `labels`.
    """
    labels, reference = np.asarray(labels), np.asarray(reference)
    if labels.shape != reference.shape:
        raise StatesError(
            f"islands of shape {labels.shape} cannot be matched to islands of shape {reference.shape}: "
            "pass both over the same patches (and steps), e.g. two models with the same patch grid"
        )
    if fresh_from is None:
        fresh_from = int(reference.max(initial=-1)) + 1
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    kept = ids >= 0
    renamed = np.where(kept, -1, ids).astype(np.int64)  # new id per entry of ids; noise stays -1
    old_ids = np.unique(reference[reference >= 0])
    both = (labels >= 0) & (reference >= 0)
    if where is not None:
        both &= np.broadcast_to(np.asarray(where, dtype=bool), labels.shape)
    if kept.any() and old_ids.size and both.any():
        overlap = np.zeros((ids.size, old_ids.size), dtype=np.int64)
        np.add.at(overlap, (inverse[both], np.searchsorted(old_ids, reference[both])), 1)
        for row, col in zip(*linear_sum_assignment(overlap, maximize=True)):
            if overlap[row, col] > 0 and ids[row] >= 0:
                renamed[row] = old_ids[col]
    # new islands: fresh ids, largest first (ties: the smaller id) so numbering is reproducible
    sizes = np.bincount(inverse.ravel(), minlength=ids.size)
    unmatched = [row for row in range(ids.size) if kept[row] and renamed[row] < 0]
    for offset, row in enumerate(sorted(unmatched, key=lambda row: (-sizes[row], ids[row]))):
        renamed[row] = fresh_from + offset
    return renamed[inverse]


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Ids 0..k-1 from the largest island down (ties: first in row-major order); -1 stays -1."""
    out = np.full(labels.shape, -1, dtype=np.int64)
    kept = labels >= 0
    ids, first, inverse, sizes = np.unique(labels[kept], return_index=True, return_inverse=True, return_counts=True)
    order = np.lexsort((first, -sizes))  # rank of each id
    rank = np.empty(ids.size, dtype=np.int64)
    rank[order] = np.arange(ids.size)
    out[kept] = rank[inverse]
    return out


def find_islands_all_levels(states, grid, *, match_levels: bool = True, **settings) -> np.ndarray:
    """find_islands on every level: states (T, N, L, D) -> labels (T, L, N). Same keywords as find_islands.

    match_levels: match each level's ids to the level above's (``align_levels``), so that an island
    that spans levels keeps one id (and colour) at all of them; ids stay stable across steps.
    """
    vectors = as_array(states, "states")
    if vectors.ndim != 4:
        raise StatesError(
            f"states have shape {tuple(vectors.shape)}: pass one image's states as (steps, patches, levels, dim); "
            "for a batch from the model pick one image first, states[:, i]"
        )
    if vectors.shape[2] == 0:
        raise StatesError("states have no levels (shape (steps, patches, 0, dim)): pass at least one level")
    per_level = [find_islands(vectors[:, :, level], grid, **settings) for level in range(vectors.shape[2])]
    labels = np.stack(per_level, axis=1)
    return align_levels(labels) if match_levels else labels


def align_levels(labels) -> np.ndarray:
    """Match each level's islands to the level above's, from the top down: labels (T, L, N) -> (T, L, N).

    One renaming per level, so ids stay stable across steps, decided by the last step, where the islands
    have settled (``match_islands(where=...)``): early steps split the columns of each level their own
    way. A part takes its whole's id where it is the whole's best match; other islands take ids no level
    above uses. A level's ids follow only itself and the levels above it: ``align_levels(labels[:, l:])``
    equals ``align_levels(labels)[:, l:]``, so one level's islands can be found and drawn before the levels
    below it, with the colours they have among all levels.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise StatesError(f"labels have shape {labels.shape}: pass (steps, levels, patches)")
    aligned = labels.astype(np.int64, copy=True)
    next_id = int(aligned[:, -1].max(initial=-1)) + 1
    settled = np.arange(labels.shape[0])[:, None] == labels.shape[0] - 1
    for level in range(labels.shape[1] - 2, -1, -1):
        aligned[:, level] = match_islands(labels[:, level], aligned[:, level + 1], fresh_from=next_id,
                                          where=settled)
        next_id = max(next_id, int(aligned[:, level].max(initial=-1)) + 1)
    return aligned


def align_checkpoints(labels_by_checkpoint, where=None) -> list[np.ndarray]:
    """Islands of one picture under successive checkpoints of a run, with ids stable from one to the next.

    Args:
        labels_by_checkpoint: a sequence of int (T, L, N) or (T, N) (one shape for all), in training order.
        where: as for ``match_islands``: which entries count to the overlap, e.g. the last step's
            (``steps == T - 1`` shaped (T, 1)), so that the settled islands decide; default all.
    Returns:
        int64 arrays of the same shapes: the first as given, each later one matched to the one before
        (``match_islands`` over all its entries at once, so levels keep their shared ids); an island that
        appears takes an id no earlier checkpoint used.
    """
    aligned: list[np.ndarray] = []
    next_id = 0
    for labels in labels_by_checkpoint:
        labels = np.asarray(labels)
        if aligned:
            labels = match_islands(labels, aligned[-1], fresh_from=next_id, where=where)
        aligned.append(labels.astype(np.int64, copy=False))
        next_id = max(next_id, int(labels.max(initial=-1)) + 1)
    return aligned


def same_grid(grid_a, grid_b, names: tuple[str, str] = ("the first model", "the second model")) -> tuple[int, int]:
    """The patch grid two models share, or a StatesError saying why their islands cannot be compared."""
    a, b = grid_shape(grid_a), grid_shape(grid_b)
    if a != b:
        raise StatesError(
            f"{names[0]} sees a {a[0]}x{a[1]} patch grid and {names[1]} a {b[0]}x{b[1]} one, so their islands "
            "cover different patches and cannot be matched: compare models with the same image size and "
            "patch size"
        )
    return a


def compare_islands(labels_a, labels_b) -> dict:
    """How far two maps of the same patches agree: labels (N,) each, -1 = noise.

    Returns:
        {"ari": adjusted Rand index of the two partitions (noise counted as one more island),
         "same_island": share of the patches whose island ids are equal, after ``match_islands`` of b to a,
         "matched": how many of b's islands took an id of a's}, plain floats and ints.
    """
    labels_a, labels_b = np.asarray(labels_a).ravel(), np.asarray(labels_b).ravel()
    matched = match_islands(labels_b, labels_a)
    return {"ari": float(adjusted_rand_score(labels_a, labels_b)),
            "same_island": float(np.mean((matched == labels_a) & (labels_a >= 0))),
            "matched": int(np.intersect1d(matched[matched >= 0], labels_a[labels_a >= 0]).size)}


def islands_hint(labels, method: str, **params) -> str | None:
    """What to change when one map's islands are mostly noise or confetti, or None when they are not.

    Args:
        labels: (N,) one map's islands, -1 = noise.
        method, params: the settings they were found with (as find_islands takes them).
    """
    labels = np.asarray(labels).ravel()
    n = labels.size
    if method not in METHODS or n == 0:
        return None
    settings = {**METHOD_PARAMS[method], **params}
    noise = int((labels < 0).sum())
    sizes = np.bincount(labels[labels >= 0]) if noise < n else np.zeros(0, dtype=np.int64)
    tiny = int(sizes[(sizes > 0) & (sizes < TINY_ISLAND)].sum())
    if method == "hdbscan" and noise > HINT_SHARE * n:
        return (f"{noise} of {n} patches are in no island (grey): HDBSCAN leaves out columns in sparse regions. "
                f"Lower the smallest island (min_cluster_size, now {settings['min_cluster_size']}), or use "
                "k-means, which puts every column in an island.")
    if method == "threshold":
        fixed = settings["threshold"] is not None
        if noise > HINT_SHARE * n:
            what = (f"lower the cosine threshold (now {float(settings['threshold']):.3f}) or " if fixed else "")
            return (f"{noise} of {n} patches are in islands smaller than {settings['min_size']} patches (grey): "
                    f"{what}lower the smallest island size.")
        if tiny > HINT_SHARE * n:
            what = (f"lower the cosine threshold (now {float(settings['threshold']):.3f}), or let it be picked "
                    "per map, or " if fixed else "")
            return (f"{tiny} of {n} patches are in islands of fewer than {TINY_ISLAND} patches (confetti): "
                    f"{what}raise the smallest island size.")
    return None


# ----------------------------------------------------------------------------------------------
# measures


def patch_truth(mask, grid, background: int = 0) -> np.ndarray:
    """Per-pixel ground truth (H, W) ints -> (N,) the majority label of each patch.

    Pixels are split into h x w blocks as evenly as possible (exactly the patches when H, W are
    multiples of the grid). A tie goes to an object over background, then to the smaller label.
    Linear in the pixels (a band of rows at a time, 8- and 16-bit masks without a sort), so a
    6000 x 6000 mask costs a few seconds and a few tens of MB.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise StatesError(f"mask has shape {mask.shape} and dtype {mask.dtype}: pass an (H, W) integer label image")
    h, w = grid_shape(grid)
    height, width = mask.shape
    if height < h or width < w:
        raise StatesError(f"mask {mask.shape} is smaller than the grid {(h, w)}: pass the mask at image resolution")
    small = mask.dtype.kind == "u" and mask.dtype.itemsize <= 2
    if small:  # which values occur, by a table over every value the dtype can hold
        seen = np.zeros(2 ** (8 * mask.dtype.itemsize), dtype=bool)
        seen[mask] = True
        values = np.flatnonzero(seen)
        code_of = np.zeros(seen.size, dtype=np.int64)
        code_of[values] = np.arange(values.size)
    else:
        values = np.unique(mask)
    patch_row = np.arange(height) * h // height
    patch_col = np.arange(width) * w // width
    counts = np.zeros(h * w * values.size, dtype=np.int64)  # (patch, value) counts, flat
    rows_per_band = max(1, TRUTH_BAND_PIXELS // width)
    for top in range(0, height, rows_per_band):
        band = mask[top:top + rows_per_band]
        codes = code_of[band] if small else np.searchsorted(values, band)
        patch = patch_row[top:top + rows_per_band, None] * w + patch_col[None, :]
        counts += np.bincount((patch * values.size + codes).ravel(), minlength=counts.size)
    counts = counts.reshape(h * w, values.size)
    # rank by count, then non-background, then the smaller value (values are sorted ascending)
    score = counts * 2 * values.size + (values != background) * values.size + (values.size - 1 - np.arange(values.size))
    return values[score.argmax(axis=1)].astype(np.int64)


def fg_ari(truth, labels, background: int = 0) -> float | None:
    """ARI over the patches whose truth is not background (FG-ARI); None when there are none."""
    truth, labels = np.asarray(truth).ravel(), np.asarray(labels).ravel()
    if truth.shape != labels.shape:
        raise StatesError(f"truth has {truth.size} patches, labels {labels.size}: pass both per patch (N,)")
    foreground = truth != background
    if not foreground.any():
        return None
    return float(adjusted_rand_score(truth[foreground], labels[foreground]))


def mean_best_overlap(truth, labels, background: int = 0) -> float | None:
    """mBO: for each true segment that is not background, the best intersection-over-union any island
    reaches with it, averaged over those segments; None when there are none.

    Islands are taken whole (background patches included), as object-discovery papers score predicted
    masks; noise (-1) is no island. Beside FG-ARI, which asks whether patches are grouped alike, mBO
    asks whether each object has an island of its own shape, and is not lifted by over-splitting.
    """
    truth, labels = np.asarray(truth).ravel(), np.asarray(labels).ravel()
    if truth.shape != labels.shape:
        raise StatesError(f"truth has {truth.size} patches, labels {labels.size}: pass both per patch (N,)")
    segments = np.unique(truth[truth != background])
    if segments.size == 0:
        return None
    kept = labels >= 0
    islands, island_index = np.unique(labels[kept], return_inverse=True)
    segment_index = np.searchsorted(segments, truth)
    foreground = truth != background
    # (segments, islands) patch counts of every overlap
    both = foreground & kept
    overlap = np.zeros((segments.size, max(islands.size, 1)), np.int64)
    np.add.at(overlap, (segment_index[both], np.searchsorted(islands, labels[both])), 1)
    segment_sizes = np.bincount(segment_index[foreground], minlength=segments.size)
    island_sizes = np.bincount(island_index, minlength=max(islands.size, 1))
    union = segment_sizes[:, None] + island_sizes[None, :] - overlap
    return float((overlap / np.maximum(union, 1)).max(axis=1).mean())


def island_measures(states, labels, grid, truth=None, background: int = 0) -> list[dict]:
    """How well each step's islands agree, one dict per step (plain floats, JSON-able).

    Args:
        states: (T, N, D) one level's vectors (or (N, D) one step).
        labels: (T, N) islands of those states (or (N,)), -1 = noise.
        grid: (h, w) patch grid.
        truth: optional (N,) ground-truth label per patch (see patch_truth).
        background: the truth label that fg_ari leaves out.

    Returns:
        per step: step, n_islands, within_cosine (mean cosine of a column to its island's mean
        direction, noise left out), neighbour_agreement (mean cosine of 4-neighbour grid pairs),
        silhouette (cosine distance, noise left out; None where undefined), change (mean 1 - cosine
        to the same column at the previous step; 0 at step 0); with truth also ari, fg_ari and mbo.
    """
    vectors, _ = as_steps(states)
    steps, n_patches, _ = vectors.shape
    grid = check_grid(grid, n_patches)
    labels = np.asarray(labels)
    if labels.size != steps * n_patches:
        raise StatesError(
            f"labels do not match states of {steps} steps x {n_patches} patches: pass labels (steps, patches)"
        )
    labels = labels.reshape(steps, n_patches)
    if truth is not None:
        truth = np.asarray(truth).ravel()
        if truth.size != n_patches:
            raise StatesError(
                f"truth has {truth.size} entries for {n_patches} patches: pass one label per patch (patch_truth)"
            )

    directions = unit_vectors(vectors.astype(np.float64))
    first, second = _grid_pairs(grid)
    measures = []
    for t in range(steps):
        unit, ids = directions[t], labels[t]
        kept = ids >= 0
        islands = np.unique(ids[kept])
        neighbours = np.einsum("pd,pd->p", unit[first], unit[second])
        entry = {
            "step": t,
            "n_islands": int(islands.size),
            "within_cosine": _within_cosine(unit[kept], ids[kept]) if kept.any() else None,
            "neighbour_agreement": float(neighbours.mean()) if neighbours.size else None,
            "silhouette": None,
            "change": 0.0 if t == 0 else float(np.mean(1.0 - np.einsum("nd,nd->n", unit, directions[t - 1]))),
        }
        if 2 <= islands.size <= kept.sum() - 1:
            _, members = np.unique(ids[kept], return_inverse=True)
            cosine_distance = np.clip(1.0 - unit[kept] @ unit[kept].T, 0.0, 2.0)
            entry["silhouette"] = float(_silhouettes(cosine_distance, members[None])[0])
        if truth is not None:
            entry["ari"] = float(adjusted_rand_score(truth, ids))
            entry["fg_ari"] = fg_ari(truth, ids, background)
            entry["mbo"] = mean_best_overlap(truth, ids, background)
        measures.append(entry)
    return measures


def _within_cosine(unit: np.ndarray, ids: np.ndarray) -> float:
    """Mean cosine of each unit vector (M, D) to the mean direction of its island."""
    _, members = np.unique(ids, return_inverse=True)
    sums = np.zeros((members.max() + 1, unit.shape[1]))
    np.add.at(sums, members, unit)
    means = unit_vectors(sums)
    return float(np.einsum("md,md->m", unit, means[members]).mean())


# ----------------------------------------------------------------------------------------------
# parse tree


def parse_tree(labels_by_level) -> dict:
    """How the islands of level l sit inside the islands of level l + 1: GLOM's part-whole tree.

    Args:
        labels_by_level: (L, N) islands of one step at every level, -1 = noise.

    Returns:
        {"nodes": [{"level", "island", "size"}] for every island at every level,
         "edges": [{"level", "child", "parent", "purity"}] for every island below the top: its parent
            is the island at level + 1 holding most of its patches (None if all of them are noise
            there), purity the fraction of its patches inside that parent,
         "purity": [per level pair l -> l + 1, the fraction of level l's non-noise patches that lie
            inside their island's parent]}. All plain ints and floats (JSON-able).
    """
    labels = np.asarray(labels_by_level)
    if labels.ndim != 2:
        raise StatesError(f"labels_by_level have shape {labels.shape}: pass one step's labels as (levels, patches)")
    nodes, edges, purity = [], [], []
    for level, ids in enumerate(labels):
        for island in np.unique(ids[ids >= 0]):
            nodes.append({"level": level, "island": int(island), "size": int((ids == island).sum())})
    for level in range(labels.shape[0] - 1):
        child_ids, parent_ids = labels[level], labels[level + 1]
        inside_total, child_total = 0, int((child_ids >= 0).sum())
        for child in np.unique(child_ids[child_ids >= 0]):
            members = child_ids == child
            parents = parent_ids[members]
            parents = parents[parents >= 0]
            size = int(members.sum())
            if parents.size:
                values, counts = np.unique(parents, return_counts=True)
                parent, inside = int(values[counts.argmax()]), int(counts.max())
            else:
                parent, inside = None, 0
            inside_total += inside
            edges.append({"level": level, "child": int(child), "parent": parent, "purity": inside / size})
        purity.append(inside_total / child_total if child_total else None)
    return {"nodes": nodes, "edges": edges, "purity": purity}
