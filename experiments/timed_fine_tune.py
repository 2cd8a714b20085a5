"""A fine-tune for a fixed wall-clock budget, as run on a lent GPU for stages 10 and 11 of the shipped model.

    python experiments/timed_fine_tune.py --budget 500 --groups groups_64_*.npz -- \
        --device cuda --init glom_viz/assets/shipped.safetensors --batch-size 64 ... --out runs/s10

Everything after ``--`` is ``python -m glom_viz.train``'s flags. The loop is the trainer's own
(``Trainer.train_step``), with three differences that change speed, not the run:

- the scene groups of the pool come precomputed (``pool_groups.py``, the trainer's own function);
- each pool scene's image is rendered once and kept;
- --steps is set 25 steps after the decoder warm-up from the measured step rate, so that the lr
  schedule's cosine ends inside the budget. Until then the schedule runs with the --steps given
  (leave it large): the same warm-up, and a cosine still near its peak.

A checkpoint (``step_N.safetensors``, the GLOM alone) is written 8 times over the run and at its end;
``log.jsonl`` holds every step's losses. ``python -m glom_viz.train --steps N`` with the final N then
replays the run, slower.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from glom_viz import train
from glom_viz.checkpoints import save_checkpoint
from glom_viz.errors import ConfigError
from glom_viz.train import GROUP_FIELDS, LOG_FILE, Trainer, groups_key, log_record, parse_args

sys.path.insert(0, str(Path(__file__).parent))
from pool_groups import TERMS  # noqa: E402

CHECKPOINTS = 8
PLAN_AFTER = 25  # steps past the decoder warm-up over which the step rate is measured (from the 5th)


def load_groups(trainer: Trainer, paths: list[str]) -> int:
    """Fill the trainer's groups cache from pool_groups.py files; returns how many scenes it now holds."""
    c = trainer.config
    wanted = {field: getattr(c, field) for field in GROUP_FIELDS}
    for path in paths:
        stored = np.load(path)
        settings = json.loads(str(stored["settings"]))
        if settings != wanted:
            raise ConfigError(f"{path} holds groups for {settings}, this run needs {wanted}")
        for seed, flip, *rows in zip(stored["seeds"], stored["flips"], *(stored[term] for term in TERMS)):
            trainer._groups_cache[groups_key(c, TERMS, int(seed), bool(flip))] = {term: row.astype(np.int64) for term, row in zip(TERMS, rows)}
    return len(trainer._groups_cache)


def keep_images() -> None:
    """Render each scene once: the pool repeats, and rendering is the rest of a step's CPU work."""
    make_batch, images = train.make_batch, {}

    def kept(seeds, image_size):
        missing = [int(s) for s in seeds if (int(s), image_size) not in images]
        if missing:
            for seed, image in zip(missing, make_batch(np.array(missing), image_size)[0]):
                images[seed, image_size] = image
        return torch.stack([images[int(s), image_size] for s in seeds]), None, None

    train.make_batch = kept


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, required=True, help="seconds of wall clock, start-up included")
    parser.add_argument("--groups", nargs="*", default=[], help="pool_groups.py files")
    parser.add_argument("--margin", type=float, default=20, help="seconds kept for the last checkpoint")
    args = parser.parse_args(argv[:split])
    started = time.time()
    config, _ = parse_args(argv[split + 1:])
    if config.motion_weight <= 0 or config.similarity_weight <= 0:
        raise ConfigError("this driver's groups hold both terms: run with --motion-weight and --similarity-weight")
    trainer = Trainer(config)
    print(f"groups of {load_groups(trainer, args.groups)} scenes loaded", flush=True)
    keep_images()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = started + args.budget
    every = None
    with open(out / LOG_FILE, "w") as log:
        while True:
            losses = trainer.timed_step()
            log.write(json.dumps(log_record(trainer)) + "\n")
            if trainer.step == config.decoder_warmup + 5:
                mark = time.time()
            if trainer.step == config.decoder_warmup + PLAN_AFTER and every is None:
                rate = (time.time() - mark) / (PLAN_AFTER - 5)
                config.steps = trainer.step + max(10, int(0.9 * (deadline - time.time() - args.margin) / rate))
                every = max(10, config.steps // CHECKPOINTS)
                print(f"{rate:.3f} s a step: {config.steps} steps, a checkpoint every {every}", flush=True)
            done = trainer.step >= config.steps or time.time() > deadline - args.margin * 0.75
            if (every and trainer.step % every == 0) or done:
                save_checkpoint(trainer.model, out / f"step_{trainer.step}.safetensors",
                                train_config=json.dumps(config.to_dict()), step=str(trainer.step))
                log.flush()
                print(f"step {trainer.step}", {k: round(v, 4) for k, v in losses.items()}, flush=True)
            if done:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
