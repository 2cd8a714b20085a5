"""The islands engine against planted islands and against scikit-learn/scipy references.

Planted islands: every column at step 0 holds the same vector (as GLOM's init_levels); from step 1
on, the vectors of a region of the grid are drawn around the region's centre, with the noise
shrinking and the whole space turning (a random orthogonal matrix) between steps.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.metrics import adjusted_rand_score, davies_bouldin_score, silhouette_score

from glom_viz.errors import StatesError
from glom_viz.islands import (
    METHODS,
    ONE_ISLAND_COSINE,
    SEPARATED,
    TINY_SHARE,
    _cuts,
    _davies_bouldin,
    _Map,
    _silhouettes,
    align_checkpoints,
    align_islands,
    align_levels,
    compare_islands,
    fg_ari,
    find_islands,
    find_islands_all_levels,
    island_measures,
    islands_hint,
    match_islands,
    parse_tree,
    patch_truth,
    same_grid,
)

GRID = (8, 8)
DIM = 32
STEPS = 6
# four islands of different sizes: top-left 4x4, top-right 4x4, bottom-left 4x3, bottom-right 4x5
REGIONS = np.zeros(GRID, dtype=np.int64)
REGIONS[:4, 4:] = 1
REGIONS[4:, :3] = 2
REGIONS[4:, 3:] = 3
REGIONS = REGIONS.ravel()

PARAMS = {
    "kmeans": {},
    "agglomerative": {},
    "hdbscan": {},
    "threshold": {"threshold": 0.8},
}


def planted(regions=REGIONS, grid=GRID, steps=STEPS, dim=DIM, noise=0.3, seed=0) -> np.ndarray:
    """(steps, N, dim) float32: step 0 one shared vector, then islands around centres, turning and tightening."""
    rng = np.random.default_rng(seed)
    n = grid[0] * grid[1]
    start = rng.standard_normal(dim)
    centres = rng.standard_normal((int(regions.max()) + 1, dim))
    turn, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    frame = np.eye(dim)
    states = np.empty((steps, n, dim), dtype=np.float32)
    states[0] = start
    for t in range(1, steps):
        frame = frame @ turn
        vectors = centres[regions] + noise * 0.7**t * rng.standard_normal((n, dim))
        states[t] = vectors @ frame
    return states


@pytest.fixture(scope="module")
def states() -> np.ndarray:
    return planted()


# ----------------------------------------------------------------------------------------------
# finding


@pytest.mark.parametrize("method", METHODS)
def test_every_method_recovers_planted_islands(states, method):
    labels = find_islands(states, GRID, method, **PARAMS[method])
    assert labels.shape == (STEPS, GRID[0] * GRID[1]) and labels.dtype == np.int64
    assert (labels[0] == 0).all(), "step 0 (all columns equal) is one island"
    for t in range(1, STEPS):
        assert adjusted_rand_score(REGIONS, labels[t]) > 0.99, (method, t)


def test_agglomerative_on_the_grid_gives_contiguous_islands(states):
    from scipy.ndimage import label as connected

    labels = find_islands(states, GRID, "agglomerative", connectivity=True)
    for t in range(1, STEPS):
        assert adjusted_rand_score(REGIONS, labels[t]) > 0.99
        for island in np.unique(labels[t]):
            _, pieces = connected((labels[t] == island).reshape(GRID))
            assert pieces == 1, "an island split in two on the grid"


def test_connectivity_keeps_two_far_apart_lookalike_regions_apart():
    """Same vectors in the left and right thirds, something else between: Ward on the grid must
    give the two outer thirds different ids; without the grid they are one island."""
    regions = np.tile(np.repeat([0, 1, 0], [3, 2, 3]), GRID[0])
    states = planted(regions, steps=2, noise=0.05)
    free = find_islands(states[1], GRID, "agglomerative", n_islands=2)
    assert len(np.unique(free)) == 2 and adjusted_rand_score(regions, free) > 0.99
    grid = find_islands(states[1], GRID, "agglomerative", n_islands=3, connectivity=True)
    thirds = np.tile(np.repeat([0, 1, 2], [3, 2, 3]), GRID[0])
    assert adjusted_rand_score(thirds, grid) > 0.99


def test_count_is_found_when_not_given(states):
    for count, seed in ((2, 1), (3, 2), (6, 3)):
        rng = np.random.default_rng(seed)
        sites = rng.uniform(0, 8, size=(count, 2))
        cells = np.stack(np.meshgrid(np.arange(8), np.arange(8), indexing="ij"), -1).reshape(-1, 2)
        regions = ((cells[:, None] - sites[None]) ** 2).sum(-1).argmin(1)
        labels = find_islands(planted(regions, steps=3, seed=seed), GRID)
        assert len(np.unique(labels[-1])) == len(np.unique(regions))
        assert adjusted_rand_score(regions, labels[-1]) > 0.99


def test_given_count_is_honoured(states):
    for count in (1, 2, 3, 5, 9):
        labels = find_islands(states, GRID, n_islands=count)
        for t in range(1, STEPS):
            assert len(np.unique(labels[t])) == count


def test_all_equal_vectors_are_one_island_for_every_method():
    vector = np.random.default_rng(0).standard_normal(DIM)
    same = np.tile(vector, (3, 64, 1)).astype(np.float32)
    same[1] *= 5.0  # length does not matter, only direction
    same[2] += 1e-7 * np.random.default_rng(1).standard_normal((64, DIM))  # float noise only
    for method in METHODS:
        assert (find_islands(np.zeros((64, DIM)), GRID, method, **PARAMS[method]) == 0).all(), method
        assert (find_islands(same, GRID, method, **PARAMS[method]) == 0).all(), method
    assert (find_islands(same, GRID, n_islands=4) == 0).all(), "nothing to split, whatever the count asked"


def test_columns_that_disagree_without_structure_are_in_no_island():
    """Isotropic noise has no islands: the auto count must not invent some, nor call it one island."""
    noise = np.random.default_rng(0).standard_normal((64, DIM)).astype(np.float32)
    for method in ("kmeans", "agglomerative"):
        assert (find_islands(noise, GRID, method) == -1).all(), method
    measures = island_measures(noise, find_islands(noise, GRID), GRID)[0]
    assert measures["n_islands"] == 0 and measures["neighbour_agreement"] < 0.5


def test_columns_that_agree_without_structure_are_one_island():
    """A shared direction with small isotropic noise: no split is justified, and the columns agree."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal(DIM) + 0.06 * rng.standard_normal((64, DIM))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert np.linalg.norm(unit.mean(0)) > ONE_ISLAND_COSINE
    assert (find_islands(vectors, GRID) == 0).all()
    spread = rng.standard_normal(DIM) + rng.standard_normal((64, DIM))  # cosine to the mean ~0.7
    assert np.linalg.norm((spread / np.linalg.norm(spread, axis=1, keepdims=True)).mean(0)) < ONE_ISLAND_COSINE
    assert (find_islands(spread, GRID) == -1).all()


def test_single_step_gives_one_row_and_torch_equals_numpy(states):
    one = find_islands(states[-1], GRID)
    assert one.shape == (64,)
    assert np.array_equal(find_islands(torch.from_numpy(states), GRID), find_islands(states, GRID))
    assert adjusted_rand_score(REGIONS, one) > 0.99


def test_results_are_deterministic(states):
    for method in METHODS:
        first = find_islands(states, GRID, method, seed=3, **PARAMS[method])
        assert np.array_equal(first, find_islands(states, GRID, method, seed=3, **PARAMS[method]))


def test_kmeans_result_is_a_fixed_point_of_lloyd():
    """Each column sits with the island mean nearest to it (computed directly on the unit vectors)."""
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((64, DIM)) + np.repeat(rng.standard_normal((3, DIM)) * 0.8, [20, 20, 24], axis=0)
    labels = find_islands(vectors, GRID, n_islands=3, align=False)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    means = np.stack([unit[labels == k].mean(0) for k in range(3)])
    nearest = ((unit[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(nearest, labels)


def test_threshold_follows_the_papers_definition():
    """Two halves agree inside; one patch differs from everything: three islands, the odd one alone."""
    rng = np.random.default_rng(0)
    a, b, c = rng.standard_normal((3, DIM))
    vectors = np.where((np.arange(64) % 8 < 4)[:, None], a, b)
    vectors[63] = c
    labels = find_islands(vectors, GRID, "threshold", threshold=0.99)
    assert len(np.unique(labels)) == 3 and (labels == labels[63]).sum() == 1
    noise = find_islands(vectors, GRID, "threshold", threshold=0.99, min_size=2)
    assert noise[63] == -1 and len(np.unique(noise[noise >= 0])) == 2


def test_hdbscan_marks_outliers_as_noise():
    """Islands close to one another (cosine ~0.8 between them), three columns pointing elsewhere."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal(DIM) + 0.5 * rng.standard_normal((4, DIM))
    vectors = centres[REGIONS] + 0.02 * rng.standard_normal((64, DIM))
    outliers = [0, 27, 50]
    vectors[outliers] = rng.standard_normal((3, DIM))
    labels = find_islands(vectors, GRID, "hdbscan")
    assert (labels[outliers] == -1).all()
    kept = np.setdiff1d(np.arange(64), outliers)
    assert (labels[kept] >= 0).all() and adjusted_rand_score(REGIONS[kept], labels[kept]) > 0.99


def test_umap_space_recovers_planted_islands(states):
    labels = find_islands(states, GRID, space="umap")
    assert (labels[0] == 0).all()
    for t in range(2, STEPS):
        assert adjusted_rand_score(REGIONS, labels[t]) > 0.99


def test_all_levels_stack_per_level_results(states):
    by_level = np.stack([states, planted(seed=7), np.repeat(states[:, :1], 64, axis=1)], axis=2)  # (T, N, L, D)
    unmatched = find_islands_all_levels(by_level, GRID, match_levels=False)
    labels = find_islands_all_levels(by_level, GRID)
    assert labels.shape == unmatched.shape == (STEPS, 3, 64)
    for level in range(3):
        alone = find_islands(by_level[:, :, level], GRID)
        assert np.array_equal(unmatched[:, level], alone)
        # matching the levels only renames: one id for one id, over every step
        pairs = np.unique(np.stack([alone.ravel(), labels[:, level].ravel()]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    assert (labels[:, 2] == labels[0, 2, 0]).all()


def test_an_island_spanning_levels_keeps_one_id_and_parts_take_new_ones():
    """Level 2 holds the four regions, level 1 the same four, level 0 splits region 3 into two parts."""
    parts = REGIONS.copy()
    parts[(REGIONS == 3) & (np.arange(64) % 8 >= 6)] = 4  # the right two columns of region 3
    wholes = planted()
    by_level = np.stack([planted(regions=parts, seed=3), planted(seed=5), wholes], axis=2)
    labels = find_islands_all_levels(by_level, GRID, n_islands=None)
    final = labels[-1]
    for region in range(4):
        ids = {level: np.unique(final[level][REGIONS == region]) for level in (1, 2)}
        assert len(ids[1]) == len(ids[2]) == 1 and ids[1][0] == ids[2][0], region
    split = final[0][REGIONS == 3]
    big, small = final[0][(REGIONS == 3) & (parts == 3)], final[0][parts == 4]
    assert len(np.unique(big)) == len(np.unique(small)) == 1 and big[0] != small[0]
    assert big[0] == final[2][REGIONS == 3][0], "the larger part takes its whole's id"
    assert small[0] not in labels[:, 1:].ravel(), "a part of its own takes an id no level above uses"
    assert len(np.unique(split)) == 2


def test_random_glom_states_step_zero_is_one_island():
    """glom-pytorch's own states: every column starts from init_levels, so step 0 is one island."""
    from glom_pytorch import Glom

    torch.manual_seed(0)
    model = Glom(dim=32, levels=3, image_size=32, patch_size=4).eval()
    with torch.no_grad():
        states = model(torch.rand(1, 3, 32, 32), iters=4, return_all=True)[:, 0]  # (T, N, L, D)
    labels = find_islands_all_levels(states, (8, 8))
    assert labels.shape == (5, 3, 64)
    # one island at each level (its id the one the level's settled islands give it, so it may differ by level)
    assert all(np.unique(level).size == 1 and level.min() >= 0 for level in labels[0])
    unmatched = find_islands_all_levels(states, (8, 8), match_levels=False)
    for level in range(3):  # all levels at once are each level alone; matching the levels only renames
        np.testing.assert_array_equal(unmatched[:, level], find_islands(states[:, :, level], (8, 8)))
        for step in range(5):
            assert adjusted_rand_score(unmatched[step, level], labels[step, level]) == pytest.approx(1.0)


@pytest.mark.slow
def test_real_default_size_planted_islands():
    """224 px image: 16 x 16 patches, 6 levels, 13 steps, dim 512; every level's islands found."""
    rng = np.random.default_rng(0)
    cells = np.stack(np.meshgrid(np.arange(16), np.arange(16), indexing="ij"), -1).reshape(-1, 2)
    regions = [((cells[:, None] - rng.uniform(0, 16, (k, 2))[None]) ** 2).sum(-1).argmin(1) for k in (8, 6, 5, 4, 3, 2)]
    states = np.stack([planted(r, (16, 16), 13, 512, noise=0.5, seed=level) for level, r in enumerate(regions)], 2)
    labels = find_islands_all_levels(states, (16, 16))
    assert labels.shape == (13, 6, 256)
    for level, truth in enumerate(regions):
        assert adjusted_rand_score(truth, labels[-1, level]) > 0.99


# ----------------------------------------------------------------------------------------------
# ids across steps


def test_ids_stable_across_steps(states):
    labels = find_islands(states, GRID)
    assert all(np.array_equal(labels[1], labels[t]) for t in range(2, STEPS)), "same islands, same ids"
    biggest = np.bincount(REGIONS).argmax()
    assert (labels[1][REGIONS == biggest] == 0).all(), "the largest island keeps step 0's id"


def test_ids_do_not_depend_on_how_each_step_numbers_its_islands(states):
    raw = find_islands(states, GRID, align=False)
    permuted = raw.copy()
    rng = np.random.default_rng(0)
    for t in range(STEPS):
        permuted[t] = rng.permutation(10)[raw[t]]
    assert np.array_equal(align_islands(permuted), align_islands(raw))


def test_merging_islands_keep_the_larger_parents_id():
    before = np.array([0] * 10 + [1] * 6 + [2] * 4)
    merged = np.array([5] * 16 + [7] * 4)  # islands 0 and 1 merge; 2 stays
    aligned = align_islands(np.stack([before, merged]))
    assert (aligned[1][:16] == 0).all() and (aligned[1][16:] == 2).all()
    smaller_first = np.array([1] * 6 + [0] * 10 + [2] * 4)  # same, the larger parent second this time
    aligned = align_islands(np.stack([smaller_first, np.array([3] * 16 + [4] * 4)]))
    assert (aligned[1][:16] == aligned[0][6]).all()


def test_new_islands_get_ids_never_used_before():
    labels = np.array([
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 0, 0, 0, 0],  # 1 merges into 0 and disappears
        [0, 0, 0, 0, 0, 0, 2, 2],  # a new island appears: it must not take the retired id 1
        [0, 0, 3, 3, 0, 0, 2, 2],
    ])
    aligned = align_islands(labels)
    assert aligned[1].max() == 0
    assert set(aligned[2][6:]) == {2}, "fresh id after 0 and 1"
    assert set(aligned[3][2:4]) == {3} and set(aligned[3][6:]) == {2}


def test_noise_stays_noise_and_is_not_matched():
    labels = np.array([[-1, -1, 0, 0, 1, 1], [-1, 4, 4, 4, -1, 1]])
    aligned = align_islands(labels)
    assert aligned[0].tolist() == [-1, -1, 0, 0, 1, 1]
    assert aligned[1].tolist() == [-1, 0, 0, 0, -1, 1]


# ----------------------------------------------------------------------------------------------
# ids across checkpoints and models


def test_match_islands_takes_the_ids_of_the_islands_overlapped_most(states):
    """The same planted islands found twice, numbered apart: matching gives back the reference's ids."""
    reference = find_islands(states, GRID)
    rng = np.random.default_rng(0)
    renumbered = rng.permutation(50)[reference] + 7  # any ids, one renaming over all steps
    assert np.array_equal(match_islands(renumbered, reference), reference)
    other = planted(seed=4)  # the same regions, other vectors: another model
    assert np.array_equal(match_islands(find_islands(other, GRID), reference)[1:], reference[1:])


def test_unmatched_islands_take_fresh_ids_largest_first_and_noise_stays():
    reference = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1, -1])
    labels = np.array([4, 4, 4, 4, 9, 9, 3, 3, 3, -1])  # 4 ~ 0; 3 and 9 both touch 1, 3 the more
    matched = match_islands(labels, reference)
    assert matched.tolist() == [0, 0, 0, 0, 2, 2, 1, 1, 1, -1]
    assert match_islands(labels, reference, fresh_from=10)[4] == 10
    with pytest.raises(StatesError, match="same patch grid"):
        match_islands(labels, reference[:8])


def test_checkpoints_keep_their_islands_ids_from_one_to_the_next(states):
    """Three checkpoints: the same islands numbered apart, then a part of one region splits off."""
    first = find_islands_all_levels(states[:, :, None], GRID)
    second = (first + 3) % 5  # renumbered
    third = second.copy()
    split = (REGIONS == 3) & (np.arange(64) % 8 >= 6)  # 8 of region 3's 20 patches
    third[1:, :, split] = 17
    aligned = align_checkpoints([first, second, third])
    assert np.array_equal(aligned[0], first) and np.array_equal(aligned[1], first)
    assert np.array_equal(aligned[2][:, :, ~split], first[:, :, ~split])
    assert aligned[2][-1, 0, split][0] not in first, "a new island takes an id no checkpoint used"


def test_matching_by_the_settled_step_only():
    """Early steps split the columns differently under each checkpoint: counted everywhere they outvote
    the last step; counted at the last step only, its islands keep their ids, and the renaming holds for
    every step."""
    reference = np.array([[0] * 4 + [1] * 4] * 3)
    labels = np.array([[5] * 4 + [7] * 4] * 2 + [[7] * 4 + [5] * 4])  # the last step swaps the halves
    everywhere = match_islands(labels, reference)
    assert not np.array_equal(everywhere[-1], reference[-1])
    settled = match_islands(labels, reference, where=np.arange(3)[:, None] == 2)
    assert np.array_equal(settled[-1], reference[-1])
    assert np.array_equal(settled[:2], 1 - reference[:2]), "one renaming for every step"
    aligned = align_checkpoints([reference, labels], where=np.arange(3)[:, None] == 2)
    assert np.array_equal(aligned[1], settled)


def test_two_models_islands_compared_after_matching(states):
    a = find_islands(states[-1], GRID)
    b = (a + 1) % 4
    comparison = compare_islands(a, b)
    assert comparison == {"ari": 1.0, "same_island": 1.0, "matched": 4}
    half = a.copy()
    half[REGIONS == 3] = a[REGIONS == 0][0]  # regions 0 and 3 merged
    merged = compare_islands(a, half)
    assert merged["matched"] == 3 and merged["ari"] < 1
    # the merged island matches region 3 (20 patches) over region 0 (16): region 0's patches differ
    assert merged["same_island"] == pytest.approx(1 - (REGIONS == 0).mean())
    assert same_grid((8, 8), [8, 8]) == (8, 8)
    with pytest.raises(StatesError, match="16x16 patch grid .* 8x8 .* same image size and patch size"):
        same_grid((16, 16), (8, 8))


def test_threshold_picked_per_map_leaves_no_confetti():
    """Neighbours agree by a cosine that differs by level: one fixed threshold gives confetti at one
    level and a single island at the other; the picked one finds the planted islands at both."""
    tight, loose = planted(noise=0.05)[-1], planted(noise=0.9)[-1]
    for vectors in (tight, loose):
        picked = find_islands(vectors, GRID, "threshold")
        kept = picked >= 0
        assert kept.mean() >= 1 - TINY_SHARE and adjusted_rand_score(REGIONS[kept], picked[kept]) > 0.99
        assert islands_hint(picked, "threshold") is None
    confetti = find_islands(loose, GRID, "threshold", threshold=0.99, min_size=1)
    assert "confetti" in islands_hint(confetti, "threshold", threshold=0.99, min_size=1)
    grey = find_islands(loose, GRID, "threshold", threshold=0.99)
    assert "lower the cosine threshold (now 0.990)" in islands_hint(grey, "threshold", threshold=0.99)


def test_hdbscan_hint_when_most_patches_are_noise():
    labels = np.full(64, -1)
    labels[:20] = 0
    hint = islands_hint(labels, "hdbscan")
    assert hint.startswith("44 of 64 patches are in no island") and "min_cluster_size, now 5" in hint
    assert islands_hint(np.zeros(64, dtype=int), "hdbscan") is None
    assert islands_hint(labels, "kmeans") is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(-1, 4), min_size=12, max_size=12), min_size=1, max_size=6))
def test_alignment_properties(rows):
    labels = np.array(rows)
    aligned = align_islands(labels)
    assert aligned.shape == labels.shape
    assert np.array_equal(aligned < 0, labels < 0), "noise is exactly where it was"
    for t in range(labels.shape[0]):  # the same partition of each step, only renamed
        kept = labels[t] >= 0
        if kept.any():
            assert adjusted_rand_score(labels[t][kept], aligned[t][kept]) == pytest.approx(1.0)
    for island in np.unique(aligned[aligned >= 0]):  # an id, once gone, never comes back
        steps = np.flatnonzero((aligned == island).any(axis=1))
        assert steps.max() - steps.min() + 1 == steps.size
        assert len(set(np.unique(labels[steps[0]][aligned[steps[0]] == island]))) == 1


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(0, 10_000), st.data())
def test_a_level_and_the_levels_above_it_get_the_ids_they_get_among_all_levels(steps, levels, seed, data):
    rng = np.random.default_rng(seed)
    labels = rng.integers(-1, 4, (steps, levels, 12))
    level = data.draw(st.integers(0, levels - 1))
    assert np.array_equal(align_levels(labels[:, level:]), align_levels(labels)[:, level:])


# ----------------------------------------------------------------------------------------------
# internals against references


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 7))
def test_silhouettes_match_sklearn(seed, count):
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((30, 4))
    labels = rng.integers(0, count, size=30)
    labels[0] = count  # a singleton island
    ids = np.unique(labels, return_inverse=True)[1]
    distances = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    ours = _silhouettes(distances, ids[None])[0]
    assert ours == pytest.approx(silhouette_score(distances, ids, metric="precomputed"), abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 7))
def test_davies_bouldin_matches_sklearn(seed, count):
    """Several labelings at once, one with an empty id and a singleton, each as sklearn scores it alone."""
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((30, 4)).astype(np.float32)
    labelings = rng.integers(0, count, size=(3, 30))
    labelings[0, 0] = count  # a singleton island
    labelings[1][labelings[1] == 0] = 1  # id 0 left empty
    step = _Map(points, points @ points.T, cosine=False)
    ours = _davies_bouldin(step, labelings)
    for row, labels in zip(ours, labelings):
        ids = np.unique(labels, return_inverse=True)[1]
        if ids.max() == 0:
            assert np.isnan(row), "one island: the index is undefined"
        else:
            assert row == pytest.approx(davies_bouldin_score(points.astype(np.float64), ids), rel=1e-4)


def nested_islands(part_offset: float, noise: float, seed: int = 0) -> np.ndarray:
    """(64, DIM): a background island of 24 columns and two wholes of two parts each (10 columns a part)."""
    rng = np.random.default_rng(seed)
    wholes = rng.standard_normal((3, DIM))
    parts = np.concatenate([wholes[:1], np.repeat(wholes[1:], 2, axis=0) + part_offset * rng.standard_normal((4, DIM))])
    return parts[NESTED] + noise * rng.standard_normal((64, DIM))


NESTED = np.repeat(np.arange(5), [24, 10, 10, 10, 10])


@pytest.mark.parametrize("part_offset, noise, seed, separated", [(0.3, 0.05, 0, True), (0.7, 0.9, 1, False),
                                                                  (2.0, 2.0, 0, False)])
def test_auto_count_follows_its_rule_by_sklearns_scores(part_offset, noise, seed, separated):
    """The count picked is the one whose islands (as find_islands gives them at that count) have the
    lowest sklearn davies_bouldin_score if that is <= SEPARATED, else the best silhouette_score; with
    count_by="silhouette", always the best silhouette. The cases are ones where the two disagree."""
    vectors = nested_islands(part_offset, noise, seed)
    fixed, indices, silhouettes = scored_counts(vectors, "kmeans")
    assert np.argmin(indices) != np.argmax(silhouettes), "a case where the criteria agree tests nothing"
    assert (min(indices) <= SEPARATED) == separated
    by_silhouette = fixed[int(np.argmax(silhouettes))]
    expected = fixed[int(np.argmin(indices))] if separated else by_silhouette
    assert np.array_equal(find_islands(vectors, GRID), expected)
    assert np.array_equal(find_islands(vectors, GRID, count_by="silhouette"), by_silhouette)
    fixed, _, silhouettes = scored_counts(vectors, "agglomerative")
    assert np.array_equal(find_islands(vectors, GRID, "agglomerative", count_by="silhouette"),
                          fixed[int(np.argmax(silhouettes))])


def scored_counts(vectors: np.ndarray, method: str) -> tuple[list[np.ndarray], list[float], list[float]]:
    """The method's islands at each count an 8 x 8 grid tries (2..64 // PATCHES_PER_ISLAND), with
    sklearn's davies_bouldin_score and silhouette_score (cosine) of each."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    fixed = [find_islands(vectors, GRID, method, n_islands=k) for k in range(2, 9)]
    return (fixed, [davies_bouldin_score(unit, labels) for labels in fixed],
            [silhouette_score(unit, labels, metric="cosine") for labels in fixed])


def test_cuts_match_scipy_fcluster():
    points = np.random.default_rng(0).standard_normal((40, 5))
    tree = linkage(points, method="ward")
    cuts = _cuts(tree[:, :2].astype(np.int64), 40, [1, 2, 3, 6, 39])
    for row, k in enumerate([1, 2, 3, 6, 39]):
        assert len(np.unique(cuts[row])) == k
        assert adjusted_rand_score(fcluster(tree, k, "maxclust"), cuts[row]) == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------
# measures


def test_perfect_islands_measure_perfectly():
    centres = np.eye(DIM)[:4] * 3.0
    steps = np.stack([centres[REGIONS], centres[REGIONS] * 2.0])  # same directions twice
    measures = island_measures(steps, np.stack([REGIONS, REGIONS]), GRID, truth=REGIONS)
    assert json.loads(json.dumps(measures)) == measures, "plain JSON values"
    for entry in measures:
        assert entry["n_islands"] == 4
        assert entry["within_cosine"] == pytest.approx(1.0)
        assert entry["silhouette"] == pytest.approx(1.0)
        assert entry["ari"] == pytest.approx(1.0) and entry["fg_ari"] == pytest.approx(1.0)
    assert measures[0]["change"] == 0.0 and measures[1]["change"] == pytest.approx(0.0, abs=1e-12)


def test_measures_against_direct_computation(states):
    labels = find_islands(states, GRID)
    labels[3, :5] = -1  # some noise, left out of within_cosine and silhouette
    measures = island_measures(states, labels, GRID)
    unit = states / np.linalg.norm(states, axis=-1, keepdims=True)
    for t in (2, 3):
        entry, ids, kept = measures[t], labels[t], labels[t] >= 0
        pairs = [(i, j) for i in range(64) for j in (i + 1, i + 8) if j < 64 and (j != i + 1 or j % 8)]
        assert entry["neighbour_agreement"] == pytest.approx(np.mean([unit[t, i] @ unit[t, j] for i, j in pairs]))
        within = [unit[t, i] @ _direction(unit[t][ids == ids[i]].sum(0)) for i in np.flatnonzero(kept)]
        assert entry["within_cosine"] == pytest.approx(np.mean(within))
        reference = silhouette_score(unit[t][kept], ids[kept], metric="cosine")
        assert entry["silhouette"] == pytest.approx(reference, abs=1e-6)
        assert entry["change"] == pytest.approx(np.mean(1 - (unit[t] * unit[t - 1]).sum(-1)), abs=1e-6)
        assert entry["n_islands"] == len(np.unique(ids[kept]))
    assert measures[0]["silhouette"] is None, "one island: silhouette undefined"


def _direction(vector):
    return vector / np.linalg.norm(vector)


def test_fg_ari_is_ari_over_foreground_patches():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, size=64)
    labels = rng.integers(0, 3, size=64)
    foreground = truth != 0
    assert fg_ari(truth, labels) == pytest.approx(adjusted_rand_score(truth[foreground], labels[foreground]))
    assert fg_ari(truth, labels, background=2) == pytest.approx(
        adjusted_rand_score(truth[truth != 2], labels[truth != 2]))
    assert fg_ari(np.zeros(64, int), labels) is None
    # background split any way does not count: a labeling right on the objects scores 1
    objects = np.where(foreground, truth, rng.integers(10, 20, size=64))
    assert fg_ari(truth, objects) == pytest.approx(1.0)


def test_patch_truth_takes_the_majority_of_each_patch():
    mask = np.zeros((32, 32), dtype=np.int64)  # grid 8 x 8: 4 x 4 pixel patches
    mask[:, 16:] = 1
    mask[0:3, 0:4] = 2  # 12 of patch 0's 16 pixels
    mask[4:6, 4:8] = 3  # 8 of patch 9's 16 pixels: a tie goes to the object
    truth = patch_truth(mask, GRID)
    assert truth.shape == (64,)
    assert truth[0] == 2 and truth[9] == 3
    assert (truth.reshape(GRID)[:, 4:] == 1).all() and truth[1] == 0
    uneven = patch_truth(np.kron(np.arange(4).reshape(2, 2), np.ones((15, 17), int)), (2, 2))
    assert uneven.tolist() == [0, 1, 2, 3], "sizes that are not multiples of the grid"


# ----------------------------------------------------------------------------------------------
# parse tree


def test_parse_tree_of_a_two_level_hierarchy():
    parts = np.array([0, 0, 1, 1, 2, 2, 3, 3, 3, 3])
    wholes = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])  # part 3 is 3/4 inside whole 1
    tree = parse_tree(np.stack([parts, wholes]))
    assert json.loads(json.dumps(tree)) == tree
    assert {(n["level"], n["island"], n["size"]) for n in tree["nodes"]} == {
        (0, 0, 2), (0, 1, 2), (0, 2, 2), (0, 3, 4), (1, 0, 5), (1, 1, 5)}
    edges = {e["child"]: (e["parent"], e["purity"]) for e in tree["edges"]}
    assert edges == {0: (0, 1.0), 1: (0, 1.0), 2: (1, 1.0), 3: (1, 0.75)}
    assert tree["purity"] == [pytest.approx(0.9)]


def test_parse_tree_with_noise_and_a_top_level():
    labels = np.array([[0, 0, 1, -1], [-1, -1, 0, 0], [0, 0, 0, 0]])
    tree = parse_tree(labels)
    edges = {(e["level"], e["child"]): (e["parent"], e["purity"]) for e in tree["edges"]}
    assert edges[(0, 0)] == (None, 0.0), "all its patches are noise above"
    assert edges[(0, 1)] == (0, 1.0) and edges[(1, 0)] == (0, 1.0)
    assert tree["purity"] == [pytest.approx(1 / 3), 1.0]


# ----------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda s: find_islands(np.where(np.arange(32) == 3, np.nan, s), GRID), "NaN or Inf"),
        (lambda s: find_islands(s * np.inf, GRID), "NaN or Inf"),
        (lambda s: find_islands(s, (7, 8)), "(8, 8)"),
        (lambda s: find_islands(s, 8), "pair of ints"),
        (lambda s: find_islands(s, GRID, n_islands=65), "between 1 and 64"),
        (lambda s: find_islands(s, GRID, n_islands=0), "positive int"),
        (lambda s: find_islands(s, GRID, "spectral"), "kmeans, agglomerative, hdbscan, threshold"),
        (lambda s: find_islands(s, GRID, space="tsne"), "vectors, umap"),
        (lambda s: find_islands(s, GRID, "hdbscan", n_islands=3), "n_islands=None"),
        (lambda s: find_islands(s, GRID, "threshold", space="umap"), "space='vectors'"),
        (lambda s: find_islands(s, GRID, treshold=0.9), "max_islands"),
        (lambda s: find_islands(s, GRID, count_by="gap"), "davies_bouldin, silhouette"),
        (lambda s: find_islands(s, GRID, "threshold", threshold=2), "[-1, 1]"),
        (lambda s: find_islands(s, GRID, "hdbscan", min_cluster_size=1), "2 or more"),
        (lambda s: find_islands(s[None, None], GRID), "(steps, patches, dim)"),
        (lambda s: find_islands_all_levels(s, GRID), "(steps, patches, levels, dim)"),
        (lambda s: island_measures(s, np.zeros((2, 64), int), GRID), "labels (steps, patches)"),
        (lambda s: fg_ari(np.zeros(3), np.zeros(4)), "per patch"),
    ],
)
def test_bad_input_says_what_is_wrong_and_what_would_be_right(states, call, words):
    with pytest.raises(StatesError) as error:
        call(states[-1])
    assert isinstance(error.value, ValueError)
    assert words in str(error.value)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 10_000),
    st.sampled_from(METHODS),
    st.one_of(st.none(), st.integers(1, 12)),
    st.integers(1, 12),
)
def test_any_finite_states_give_valid_labels(seed, method, n_islands, distinct):
    """Random states with repeated columns (few distinct vectors, zero vectors): never a crash, ids valid."""
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((distinct, 5)) * rng.choice([0.0, 1e-3, 1.0, 1e3], size=(distinct, 1))
    states = pool[rng.integers(0, distinct, size=(2, 12))]
    if method not in ("kmeans", "agglomerative"):
        n_islands = None
    labels = find_islands(states, (3, 4), method, n_islands, **PARAMS[method])
    assert labels.shape == (2, 12) and labels.min() >= -1
    if n_islands is not None:
        for t in range(2):
            spread = np.ptp(states[t] / np.maximum(np.linalg.norm(states[t], axis=1, keepdims=True), 1e-300), axis=0)
            expected = n_islands if spread.max() > 1e-3 else 1
            assert len(np.unique(labels[t])) == expected
