"""Does a model's islands hold outside its training world? Every measure the shipped model is held to, for
one or more checkpoints in one run, beside the pixels:

    python experiments/transfer_scores.py --sprites runs/sprites/test glom_viz/assets/shipped.safetensors runs/x/model.safetensors

- own scenes: objects and parts FG-ARI per level on held-out scenes (``glom_viz.evaluate.evaluate``; goals
  objects >= 0.9 at a high level, parts >= 0.8 lower, objects above parts);
- translation: each level's shift ARI on held-out scenes and the bundled photographs (``invariance.translation``;
  goal: every level at least the pixels' k-means on both);
- sequences: clips gliding at 1, 2 and 3 px a frame, objects FG-ARI per frame fresh and with the state carried
  and let go where the picture changed, as the app runs sequences (``invariance.sequences``; goal: carried at
  least fresh and at least 0.9 in every frame);
- zero-shot: objects FG-ARI of the best level on a scene family no run trained on (``--sprites``, the test
  folder ``experiments/sprites.py`` writes; goal: at least k-means on pixels + 0.1).

Prints one block per checkpoint and writes everything to --json. A quicker look at a run's checkpoints (about a
minute each): ``--scenes 64 --clips 16 --speeds 2 --sprite-count 128``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from glom_viz import invariance
from glom_viz.data import load_dataset
from glom_viz.evaluate import evaluate, load_model, pixel_baseline
from glom_viz.scenes import EVAL_SEEDS, make_batch

SPEEDS = (1.0, 2.0, 3.0)
CLIP_SEED = 1_000_100_000  # clips never used in choosing the let-go settings (docs/TRAINING.md)


def scores(checkpoint: Path, scenes: int, clips: int, sprites: Path | None,
           shift_scenes: int = invariance.TRANSLATION_SCENES,
           speeds: tuple[float, ...] = SPEEDS, sprite_count: int | None = None) -> dict:
    model = load_model(checkpoint)
    images, objects, parts = make_batch(range(EVAL_SEEDS.start, EVAL_SEEDS.start + scenes), model.config.image_size)
    own = evaluate(model, images, objects, parts)["levels"]
    result = {"checkpoint": str(checkpoint), "scenes": scenes,
              "objects": [row["fg_ari_objects"] for row in own], "parts": [row["fg_ari_parts"] for row in own],
              "translation": invariance.translation(model, scenes=shift_scenes), "sequences": {}}
    for speed in speeds:
        clip_test = invariance.sequences(model, clips=clips, max_speed=speed, seed=CLIP_SEED)
        result["sequences"][speed] = {
            "fresh": [row["fresh_mean"] for row in clip_test["levels"]],
            "released": [row["released_mean"] for row in clip_test["levels"]],
            "released_worst_frame": [row["released_worst_frame"] for row in clip_test["levels"]],
            "released_vs_fresh_worst_frame": [float(np.min(np.subtract(row["released"], row["fresh"])))
                                              for row in clip_test["levels"]],
            "pixels": clip_test["pixels"]["mean"]}
    if sprites is not None:
        family = load_dataset(sprites, model.config.image_size)
        scored = family.with_masks("objects")[:sprite_count]
        images, objects = family.images(scored), family.masks(scored, "objects")
        parts = [family.samples[i].parts for i in scored]
        result["sprites"] = {"objects": [row["fg_ari_objects"] for row in evaluate(model, images, objects, parts)["levels"]],
                             "pixels": pixel_baseline(images, objects, parts, model.config.patch_size)["fg_ari_objects"]}
    return result


def goals(result: dict) -> dict[str, bool]:
    objects, parts = result["objects"], result["parts"]
    best_object_level = int(np.argmax(objects))
    met = {"objects >= 0.9 at a high level": max(objects[len(objects) // 2:]) >= 0.9,
           "parts >= 0.8 lower": max(parts[:best_object_level] or [0.0]) >= 0.8,
           "objects above parts": best_object_level > int(np.argmax(parts))}
    for where in ("scenes", "photographs"):
        test = result["translation"][where]
        met[f"translation >= pixels on {where}"] = all(row["ari"] >= test["pixels"]["ari"] for row in test["levels"])
    for speed, clip in result["sequences"].items():
        top = len(clip["fresh"]) // 2  # the object levels
        met[f"carried >= fresh and >= 0.9 at {speed:g} px"] = any(
            clip["released_vs_fresh_worst_frame"][level] >= 0 and clip["released_worst_frame"][level] >= 0.9
            for level in range(top, len(clip["fresh"])))
    if "sprites" in result:
        met["zero-shot >= pixels + 0.1"] = max(result["sprites"]["objects"]) >= result["sprites"]["pixels"] + 0.1
    return met


def report(result: dict) -> str:
    row = lambda values: " / ".join(f"{value:.3f}" for value in values)
    lines = [result["checkpoint"],
             f"  own scenes ({result['scenes']}): objects {row(result['objects'])}; parts {row(result['parts'])}"]
    for where in ("scenes", "photographs"):
        test = result["translation"][where]
        lines.append(f"  shift ARI, {where}: {row(r['ari'] for r in test['levels'])} (pixels {test['pixels']['ari']:.3f})")
    for speed, clip in result["sequences"].items():
        lines.append(f"  clips at {speed:g} px: fresh {row(clip['fresh'])}; let go {row(clip['released'])} "
                     f"(worst frame {row(clip['released_worst_frame'])}); pixels {clip['pixels']:.3f}")
    if "sprites" in result:
        lines.append(f"  sprites, zero-shot: objects {row(result['sprites']['objects'])} "
                     f"(pixels {result['sprites']['pixels']:.3f})")
    lines += [f"  {'met' if ok else 'NOT met'}: {goal}" for goal, ok in goals(result).items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--scenes", type=int, default=256)
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--sprites", type=Path, help="experiments/sprites.py's test folder")
    parser.add_argument("--shift-scenes", type=int, default=invariance.TRANSLATION_SCENES,
                        help=f"scenes in the shift test (default {invariance.TRANSLATION_SCENES})")
    parser.add_argument("--speeds", type=float, nargs="+", default=list(SPEEDS), help="clip speeds, px a frame")
    parser.add_argument("--sprite-count", type=int, help="score the first N sprite pictures only (default all)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = []
    for checkpoint in args.checkpoints:
        started = time.perf_counter()
        results.append(scores(checkpoint, args.scenes, args.clips, args.sprites, args.shift_scenes, tuple(args.speeds),
                              args.sprite_count))
        print(report(results[-1]) + f"\n  ({time.perf_counter() - started:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
