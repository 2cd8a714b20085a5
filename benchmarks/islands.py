"""Speed of the islands engine at the real default size, beside the obvious alternatives, in one run.

One 224 px image -> 256 patches (16 x 16), 6 levels, 13 steps, dim 512:
  * all 78 (step, level) maps clustered with the default method (auto count) and aligned
    (target < 1 s) vs scikit-learn KMeans + silhouette_score + davies_bouldin_score over the same
    counts, picking by the same rule;
  * PCA projection of one level over all steps, 3,328 points (target < 50 ms) vs sklearn PCA;
  * UMAP of the same (target < 2 s warm; cold reported) vs a plain umap.UMAP fit, with
    trustworthiness and how well the planted islands stay apart in each embedding.

States: a randomly initialised glom_pytorch.Glom run on skimage's astronaut (the app's first view),
and planted islands (vectors around known centres on Voronoi regions of the grid, fewer and larger
regions at higher levels; the space turning and the noise shrinking over steps, as GLOM's do).

    python benchmarks/islands.py [--repeats 3] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

from glom_viz.islands import MAX_ISLANDS, MIN_SILHOUETTE, SEPARATED, find_islands_all_levels
from glom_viz.project import project, warm_up_umap

GRID = (16, 16)
STEPS, LEVELS, DIM = 13, 6, 512
IMAGE_SIZE, PATCH_SIZE = 224, 14
PLANTED_ISLANDS = (8, 6, 5, 4, 3, 2)  # per level: parts low, wholes high
COUNTS = range(2, MAX_ISLANDS + 1)  # the counts the default auto count tries on 256 patches
SEED = 0


def glom_states(seed: int = SEED) -> np.ndarray:
    """A random-init glom_pytorch.Glom on the astronaut -> (T, N, L, D) float32."""
    from glom_pytorch import Glom
    from skimage import data
    from skimage.transform import resize

    torch.manual_seed(seed)
    image = resize(data.astronaut(), (IMAGE_SIZE, IMAGE_SIZE), anti_aliasing=True).astype(np.float32)
    model = Glom(dim=DIM, levels=LEVELS, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE).eval()
    with torch.no_grad():
        states = model(torch.from_numpy(image).permute(2, 0, 1)[None], iters=STEPS - 1, return_all=True)
    return states[:, 0].numpy()


def planted_states(seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Planted islands -> states (T, N, L, D) float32 and true regions (L, N)."""
    rng = np.random.default_rng(seed)
    h, w = GRID
    cells = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2)
    regions = []
    for count in PLANTED_ISLANDS:
        sites = rng.uniform(0, h, size=(count, 2))
        regions.append(((cells[:, None] - sites[None]) ** 2).sum(-1).argmin(1))
    regions = np.stack(regions)  # (L, N)
    start = rng.standard_normal(DIM)  # every column's vector at step 0, as GLOM's init_levels
    centres = rng.standard_normal((LEVELS, max(PLANTED_ISLANDS), DIM))
    turn, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    frame = np.eye(DIM)
    states = np.empty((STEPS, h * w, LEVELS, DIM), dtype=np.float32)
    for t in range(STEPS):
        agreement = t / (STEPS - 1)  # islands emerge from the shared start vector
        noise = 0.0 if t == 0 else 0.06 * 0.85**t
        for level in range(LEVELS):
            vectors = (1 - agreement) * start + agreement * centres[level, regions[level]] * 0.3
            vectors = vectors + noise * rng.standard_normal(vectors.shape)
            states[t, :, level] = vectors @ frame
        frame = frame @ turn if t % 2 else frame  # the space keeps turning
    return states, regions


def timed(function, repeats: int) -> tuple[float, float, object]:
    """Median wall seconds, median process CPU seconds over repeats, and the last result.

    CPU seconds show the work itself; on cores shared with other jobs the wall time is larger.
    """
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def sklearn_islands(states: np.ndarray) -> np.ndarray:
    """The obvious alternative: KMeans at every count, per map, the count picked as find_islands does
    (lowest Davies-Bouldin where <= SEPARATED, else best silhouette (cosine), one island below
    MIN_SILHOUETTE), then align."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import davies_bouldin_score, silhouette_score

    from glom_viz.islands import align_islands

    steps, n, levels, _ = states.shape
    labels = np.zeros((steps, levels, n), dtype=np.int64)
    for level in range(levels):
        for t in range(steps):
            x = states[t, :, level] / np.linalg.norm(states[t, :, level], axis=1, keepdims=True)
            if np.ptp(x, axis=0).max() < 1e-6:
                continue
            guesses = [KMeans(k, n_init=1, random_state=SEED).fit_predict(x) for k in COUNTS]
            silhouettes = [silhouette_score(x, guess, metric="cosine") for guess in guesses]
            indices = [davies_bouldin_score(x, guess) for guess in guesses]
            if max(silhouettes) < MIN_SILHOUETTE:
                continue
            pick = int(np.argmin(indices)) if min(indices) <= SEPARATED else int(np.argmax(silhouettes))
            labels[t, level] = guesses[pick]
        labels[:, level] = align_islands(labels[:, level])
    return labels


def row(name: str, ours: float, cpu: float | None, theirs: float | None = None, target: str = "") -> None:
    cells = [f"{ours * 1e3:10.1f}", f"{cpu * 1e3:10.1f}" if cpu is not None else " " * 10,
             f"{theirs * 1e3:10.1f}" if theirs else " " * 10, f"{theirs / ours:8.1f}x" if theirs else " " * 9]
    print(f"{name:<44}{''.join(cells[:3])} {cells[3]}  {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-baseline", action="store_true", help="skip the slow sklearn/umap baselines")
    args = parser.parse_args()

    from sklearn.decomposition import PCA
    from sklearn.manifold import trustworthiness
    from sklearn.metrics import adjusted_rand_score

    print(f"torch threads {torch.get_num_threads()}; states {STEPS} steps x {GRID[0] * GRID[1]} patches "
          f"x {LEVELS} levels x dim {DIM}")
    glom = glom_states()
    planted, regions = planted_states()
    find_islands_all_levels(planted[:2], GRID)  # imports and first-call costs off the clock

    print(f"\n{'':<44}{'ours ms':>10}{'ours cpu':>10}{'alt ms':>10} {'speed-up':>9}  target")
    for name, states in (("glom (random init)", glom), ("planted", planted)):
        ours, cpu, labels = timed(lambda: find_islands_all_levels(states, GRID), args.repeats)
        theirs, their_labels = (None, None)
        if not args.skip_baseline:
            theirs, _, their_labels = timed(lambda: sklearn_islands(states), 1)
        row(f"78 maps, auto count + align: {name}", ours, cpu, theirs, "< 1000 ms")
        counts = [len(np.unique(labels[t, level])) for t in range(STEPS) for level in range(LEVELS)]
        print(f"    islands per map: min {min(counts)} max {max(counts)}")
        if name == "planted":
            last = [adjusted_rand_score(regions[level], labels[-1, level]) for level in range(LEVELS)]
            print(f"    ARI to planted islands at the last step, per level: {np.round(last, 3).tolist()}")
            if their_labels is not None:
                last = [adjusted_rand_score(regions[level], their_labels[-1, level]) for level in range(LEVELS)]
                print(f"    (sklearn KMeans, same count rule:                    {np.round(last, 3).tolist()})")

    level = 2
    one_level = planted[:, :, level]
    points = one_level.reshape(-1, DIM) / np.linalg.norm(one_level.reshape(-1, DIM), axis=1, keepdims=True)
    ours, cpu, _ = timed(lambda: project(one_level, "pca", 2), max(args.repeats, 5))
    theirs, _, _ = timed(lambda: PCA(2, random_state=SEED).fit_transform(points), max(args.repeats, 5))
    row("PCA, 3,328 points -> 2-D", ours, cpu, theirs, "< 50 ms")

    start = time.perf_counter()
    warm_up_umap()
    cold = time.perf_counter() - start
    row("UMAP warm-up (import + numba compile), cold", cold, None)
    ours, cpu, embedded = timed(lambda: project(one_level, "umap", 2), args.repeats)
    row("UMAP warm, 3,328 points -> 2-D", ours, cpu, None, "< 2000 ms")
    truth = np.tile(regions[level], STEPS)
    late = np.repeat(np.arange(STEPS), GRID[0] * GRID[1]) >= STEPS // 2  # islands formed
    report = [("ours", embedded.reshape(-1, 2))]
    if not args.skip_baseline:
        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs, cpu, plain = timed(lambda: umap.UMAP(random_state=SEED).fit_transform(points), 1)
        row("plain umap.UMAP(random_state=0) warm", theirs, cpu)
        print(f"    speed-up of ours over plain: {theirs / ours:.1f}x")
        report.append(("plain", plain))
    for name, embedding in report:
        trust = trustworthiness(points, embedding, n_neighbors=10)
        separated = _neighbour_agreement(embedding[late], truth[late])
        print(f"    {name}: trustworthiness {trust:.3f}; planted island of the 10 nearest points "
              f"(steps >= {STEPS // 2}) {separated:.3f}")


def _neighbour_agreement(embedding: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Fraction of each point's k nearest embedded neighbours that share its planted island."""
    squared = (embedding**2).sum(1)
    distances = squared[:, None] + squared[None] - 2 * embedding @ embedding.T
    np.fill_diagonal(distances, np.inf)
    nearest = np.argpartition(distances, k, axis=1)[:, :k]
    return float((truth[nearest] == truth[:, None]).mean())


if __name__ == "__main__":
    main()
