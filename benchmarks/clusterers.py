"""Is the clusterer what keeps the islands from the truth? Island finders side by side on one model's columns.

Scores (FG-ARI, as many islands as truth segments, the evaluator's rule) of the evaluator's k-means
beside scikit-learn's KMeans with 10 restarts, spectral clustering on cosine affinities, Ward (with
and without a patch-grid connectivity) and average linkage on cosine distance, at levels 1-3 of
the final columns. Defaults: the shipped model on 96 validation scenes (training-range seeds from
500000, which the training pool never draws), about 3 minutes on one thread.

    python benchmarks/clusterers.py [--checkpoint PATH] [--scenes 96] [--seed 500000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.cluster import AgglomerativeClustering, KMeans, SpectralClustering

from glom_viz import evaluate
from glom_viz.islands import _directions, fg_ari, find_islands, patch_truth
from glom_viz.scenes import make_batch


def spectral(vectors: np.ndarray, n_islands: int, seed: int) -> np.ndarray:
    """Spectral clustering on the affinities exp((cos - 1) / 0.1) of the columns' directions."""
    directions = _directions(vectors)
    return SpectralClustering(n_islands, affinity="precomputed", random_state=seed,
                              assign_labels="cluster_qr").fit_predict(np.exp((directions @ directions.T - 1) / 0.1))


# (patches, dim) columns, island count, scene index -> (patches,) labels
CLUSTERERS = {
    "evaluator k-means": lambda v, k, grid, i: find_islands(v, grid, "kmeans", n_islands=k),
    "sklearn KMeans n_init=10": lambda v, k, grid, i: KMeans(k, n_init=10, random_state=i).fit_predict(_directions(v)),
    "spectral (cosine, T 0.1)": lambda v, k, grid, i: spectral(v, k, i),
    "Ward": lambda v, k, grid, i: find_islands(v, grid, "agglomerative", n_islands=k),
    "Ward + grid connectivity": lambda v, k, grid, i: find_islands(v, grid, "agglomerative", n_islands=k,
                                                                  connectivity=True),
    "average linkage, cosine": lambda v, k, grid, i: AgglomerativeClustering(
        k, metric="cosine", linkage="average").fit_predict(v),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(evaluate.SHIPPED))
    parser.add_argument("--scenes", type=int, default=96)
    parser.add_argument("--seed", type=int, default=500_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = evaluate.load_model(args.checkpoint)
    grid = model.grid
    images, objects, parts = make_batch(range(args.seed, args.seed + args.scenes), model.config.image_size)
    columns = evaluate.final_columns(model, images)  # (scenes, patches, levels, dim)
    # (scenes, patches) majority truth per patch, the same for every level and clusterer
    truths = {"objects": [patch_truth(mask, grid) for mask in objects],
              "parts": [patch_truth(mask, grid) for mask in parts]}
    print("| level | clusterer | FG-ARI objects | FG-ARI parts | s |\n|---|---|---:|---:|---:|")
    for level in range(1, columns.shape[2]):
        for name, cluster in CLUSTERERS.items():
            start, scores = time.perf_counter(), {"objects": [], "parts": []}
            for i in range(args.scenes):
                for key in scores:
                    truth = truths[key][i]
                    score = fg_ari(truth, cluster(columns[i, :, level], len(np.unique(truth)), grid, i))
                    scores[key].append(np.nan if score is None else score)
            print(f"| {level} | {name} | {np.nanmean(scores['objects']):.3f} | {np.nanmean(scores['parts']):.3f} "
                  f"| {time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
    main()
