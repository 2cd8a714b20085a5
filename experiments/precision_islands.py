"""Do the islands a visitor sees change when GLOM runs on the fast precision path instead of exact fp32?

    python experiments/precision_islands.py [--pictures 9] [--threads 2]

For the shipped model and for glom-pytorch's default GLOM (224 px, patch 14, dim 512, 6 levels, random
weights as the app seeds them), and for the shipped model with its nets forced to int8 (the fast path
of dim 128 and up where bf16 is not native, a trained model's islands under it), on the photographs the packages ship and on held-out synthetic scenes:
GLOM is run exact (fp32) and fast (whatever ``glom_viz.model.run_path`` picks on this CPU: bf16, or int8
nets with a bf16 consensus), and again exact on the picture with one grey level of noise added (a change
no one sees, the yardstick). Islands are found as the app finds them by default, at every level and step;
printed per model: the adjusted Rand index between the exact islands and the fast ones, and between the
exact islands and those of the noisy picture, over every map and at the last step level by level, with
the share of maps whose islands are identical, and the columns' cosine.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from glom_viz.checkpoints import load_shipped
from glom_viz.images import sample_images, to_model_input
from glom_viz.islands import find_islands_all_levels
from glom_viz.model import REDUCED_PRECISION_ENV, Glom, GlomConfig, run_path
from glom_viz.runs import run
from glom_viz.scenes import EVAL_SEEDS, make_scene

SEED_SIZE = GlomConfig(dim=512, levels=6, image_size=224, patch_size=14)
RANDOM_SEED = 0  # the app's seed for random weights
NOISE = 1 / 255  # one grey level


def pictures(size: int, count: int) -> list[tuple[str, torch.Tensor]]:
    """The bundled photographs and then held-out scenes, fitted to ``size`` as the app fits them."""
    photos = [(name, to_model_input(rgb, size, "crop")[0]) for name, rgb in sample_images().items()]
    scenes = [(f"held-out scene {seed}", torch.from_numpy(make_scene(seed, size).image).permute(2, 0, 1))
              for seed in list(EVAL_SEEDS)[:max(0, count - len(photos))]]
    return (photos + scenes)[:count]


def compare(model: Glom, images: list[tuple[str, torch.Tensor]]) -> dict:
    grid = model.grid
    fast_ari, noise_ari, cosines, counts = [], [], [], []
    generator = torch.Generator().manual_seed(0)
    for name, image in images:
        exact = run(model, image, precision="fp32").states.astype(np.float32)  # (T, N, L, D)
        fast = run(model, image, precision="fast").states.astype(np.float32)
        noisy_image = (image + NOISE * torch.randn(image.shape, generator=generator)).clamp(0, 1)
        noisy = run(model, noisy_image, precision="fp32").states
        labels = {key: find_islands_all_levels(states, grid=grid)
                  for key, states in (("exact", exact), ("fast", fast), ("noisy", noisy))}
        steps, levels, _ = labels["exact"].shape
        counts.append([[len(np.unique(labels["exact"][t, l])) for l in range(levels)] for t in range(steps)])
        fast_ari.append([[adjusted_rand_score(labels["exact"][t, l], labels["fast"][t, l]) for l in range(levels)]
                         for t in range(steps)])
        noise_ari.append([[adjusted_rand_score(labels["exact"][t, l], labels["noisy"][t, l]) for l in range(levels)]
                          for t in range(steps)])
        cosines.append(float(np.mean(np.sum(exact * fast, -1) / np.linalg.norm(exact, axis=-1)
                                     / np.linalg.norm(fast, axis=-1))))
        print(f"  {name}: ARI exact/fast {np.mean(fast_ari[-1]):.3f}, exact/noisy {np.mean(noise_ari[-1]):.3f}",
              flush=True)
    return {"fast": np.array(fast_ari), "noisy": np.array(noise_ari), "cosine": float(np.mean(cosines)),
            "islands": np.array(counts)}


def report(title: str, result: dict) -> None:
    fast, noisy = result["fast"], result["noisy"]  # (pictures, steps, levels)
    last_counts = " ".join(f"{v:.1f}" for v in result["islands"][:, -1].mean(axis=0))
    print(f"{title}: columns' cosine exact/fast {result['cosine']:.5f}; islands at the last step, level by level: "
          f"{last_counts}")
    print(f"  {'':<28} {'every map':>10} {'identical':>10}   last step, level by level")
    for key, ari in (("exact vs fast", fast), ("exact vs 1 grey level noise", noisy)):
        last = " ".join(f"{v:.3f}" for v in ari[:, -1].mean(axis=0))
        print(f"  {key:<28} {ari.mean():>10.3f} {np.mean(ari > 1 - 1e-9):>10.1%}   {last}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shipped = load_shipped().eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        seed_size = Glom.from_config(SEED_SIZE).eval()
    for title, model, forced in (("shipped model", shipped, None), ("shipped model, int8 nets", shipped, "int8"),
                                 ("seed-size GLOM, random weights", seed_size, None)):
        config = model.config
        if forced:
            os.environ[REDUCED_PRECISION_ENV] = forced
        else:
            os.environ.pop(REDUCED_PRECISION_ENV, None)
        print(f"{title} ({config.image_size} px, dim {config.dim}, {config.levels} levels): fast runs "
              f"{run_path(config.dim, 'fast')} here", flush=True)
        report(title, compare(model, pictures(config.image_size, args.pictures)))


if __name__ == "__main__":
    main()
