"""What a large batch costs on a CPU: one training step of the shipped recipe, whole or in micro-batches.

Stages 10 and 11 of the shipped model owe their gain to batches of 64 and 256. This times one
optimisation step of that objective (stage 11's flags, from the shipped model) at one batch size,
run as one batch (accumulate 1, the reference) and split into micro-batches (--accumulate), side by
side in one process. The step's scene groups are found before the clock starts, as a pooled run
finds them once; a step settles a fixed count of steps (--iters, the mean of the recipe's 8..14).

    python benchmarks/train_step.py [--batch 256] [--accumulate 1 4 16] [--threads 1] [--rounds 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from glom_viz.checkpoints import SHIPPED_CHECKPOINT
from glom_viz.train import TrainConfig, Trainer, batch_scenes, scene_groups

RECIPE = dict(scenes=8000, contrast_weight=0, motion_weight=1.0, motion_levels=(2, 3), similarity_weight=1.0,
              similarity_levels=(1,), similarity_scale=200, group_agreement=0.3, group_balance=0.5,
              lr=7e-4, warmup=20, checkpoint_every=0, steps=1000, seed=61)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--accumulate", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--iters", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="timed steps per setting (after one warm step)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    groups: dict = {}
    timings = {}
    for accumulate in args.accumulate:
        config = TrainConfig(**RECIPE, batch_size=args.batch, accumulate=accumulate, iters=args.iters,
                             init=str(SHIPPED_CHECKPOINT), out="/nonexistent")
        trainer = Trainer(config)
        trainer._groups_cache = groups  # one cache for every setting: the same seeds each step
        seconds = []
        for round_ in range(args.rounds + 1):
            seeds, flips = batch_scenes(config, trainer.step)
            scene_groups(seeds, flips, config, groups)
            started = time.perf_counter()
            trainer.train_step()
            if round_:  # the first step warms allocators and caches
                seconds.append(time.perf_counter() - started)
        timings[accumulate] = min(seconds)
        print(f"batch {args.batch}, accumulate {accumulate:>2} (micro-batches of {args.batch // accumulate:>3}): "
              f"{timings[accumulate]:6.2f} s a step, {timings[accumulate] / args.batch * 1000:6.1f} ms a scene "
              f"({'bf16' if trainer.autocast else 'fp32'}, {args.threads} thread(s))", flush=True)
    reference = timings[args.accumulate[0]]
    for accumulate, seconds in timings.items():
        print(f"accumulate {accumulate:>2}: {reference / seconds:.2f}x the speed of accumulate {args.accumulate[0]}")


if __name__ == "__main__":
    main()
