"""Precompute the self-supervised groups of a training scene pool, ahead of a run on a lent GPU.

The trainer finds each scene's common-fate and colour-region groups (``glom_viz.motion``) from its
pixels on the CPU, and caches them as the pool repeats. At 64 px that is about 20 ms a scene (80 ms at
128 px): on a GPU that steps in a tenth of a second, the first pass over the pool would be bound by it.
This computes them once, with the trainer's own function, for every scene of the pool and both mirror
flags, to a compressed file that ``timed_fine_tune.py`` loads into the trainer's cache.

    python experiments/pool_groups.py --image-size 64 --scenes 8000 --part 0 --parts 2 --out groups_64_0.npz
    (run one process per --part; the fine-tune reads every file it is given)

The objective flags must be the run's: the file records them and the fine-tune refuses a mismatch.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from glom_viz.scenes import TRAIN_SEEDS
from glom_viz.train import GROUP_FIELDS, TrainConfig, _groups_of_scene

TERMS = ("motion", "similarity")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--similarity-scale", type=float, default=200)
    parser.add_argument("--group-agreement", type=float, default=0.3)
    parser.add_argument("--scenes", type=int, default=8000, help="the run's pool: the first N training seeds")
    parser.add_argument("--part", type=int, default=0)
    parser.add_argument("--parts", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    config = TrainConfig(image_size=args.image_size, patch_size=args.patch_size, motion_weight=1.0,
                         similarity_weight=1.0, similarity_scale=args.similarity_scale,
                         group_agreement=args.group_agreement, contrast_weight=0)
    seeds, flips, groups = [], [], {term: [] for term in TERMS}
    for index in range(args.part, args.scenes, args.parts):
        for flip in (False, True):
            found = _groups_of_scene(TRAIN_SEEDS.start + index, flip, config, TERMS)
            seeds.append(TRAIN_SEEDS.start + index)
            flips.append(flip)
            for term in TERMS:
                groups[term].append(found[term])
    # group ids run from -1 (no group) to a few dozen: int16 keeps them, compressed they are ~1 MB per 8000 scenes
    np.savez_compressed(args.out, seeds=np.array(seeds), flips=np.array(flips),
                        settings=json.dumps({field: getattr(config, field) for field in GROUP_FIELDS}),
                        **{term: np.stack(rows).astype(np.int16) for term, rows in groups.items()})


if __name__ == "__main__":
    main()
