"""One training step of the shipped recipe's last stage: this commit against an earlier one and plain glom-pytorch.

Variants, in one process, in rotation (each round starts one variant later, so drift in a shared machine's load
hits them alike):

- this commit's trainer with its defaults: it picks its micro-batches, threads and precision itself (where it
  picks bf16, also with ``--bf16 false``);
- the reference commit's trainer (``--reference``, default 9087833, read from git into a temporary package)
  with its best setting, ``--accumulate 4``, and its own precision choice and threads; where that choice is bf16,
  also with ``--bf16 false``; and in fp32 on one thread (its CPU time is then its work per core, the measure of
  its two-process torchrun setting);
- a plain glom-pytorch denoising step of the same model size (the README's: noisy image, the top level after
  the last step decoded to pixels, mean squared error, AdamW), the whole batch at once.

The recipe is stage 11's flags (``shipped.json``) at ``--batch`` scenes, from the shipped weights, settling a
fixed ``--iters`` steps (the mean of the recipe's 8..14). The step's scene groups are found before its clock
starts, as a pooled run finds each scene's once. Reports per step the median and minimum wall seconds, scenes
per second, GFLOP/s (glom-pytorch's arithmetic: 3x a forward's, counted by ``benchmarks/forward.py``) and the
fraction of this machine's peak for the products the variant ran (cores x one core's best fp32 or bf16
product), and the same by CPU time (all threads): GFLOP/s a core and the fraction of a core's peak, which a
shared machine's load hurts far less than the wall clock. Names the CPU and its bf16/AMX support.

    python benchmarks/train_step.py [--batch 64] [--iters 11] [--rounds 3] [--markdown]
    python benchmarks/train_step.py --curve 30     # also: both trainers' losses over 30 steps, side by side
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
import torch.nn.functional as F
from einops.layers.torch import Rearrange
from torch import nn

from forward import cpu_name, forward_flops, print_table, timed
from glom_viz.checkpoints import SHIPPED_CHECKPOINT
from glom_viz.model import reduced_precision_is_fast
from glom_viz.scenes import make_batch
import glom_viz.train as this_train
from glom_viz.train import TrainConfig, usable_cpus
from reference_commit import load_package

try:
    from glom_pytorch import Glom as PlainGlom
except ImportError as error:  # pragma: no cover - the reference is a dev requirement
    raise SystemExit("benchmarks need glom-pytorch: pip install -r requirements-dev.txt") from error

REFERENCE = "9087833"
REFERENCE_ACCUMULATE = 4  # the reference's best setting at batch 64
# stage 11 of the shipped recipe (shipped.json), but for the batch size and a fixed settling count
RECIPE = dict(scenes=8000, contrast_weight=0, motion_weight=1.0, motion_levels=(2, 3), similarity_weight=1.0,
              similarity_levels=(1,), similarity_scale=200, group_agreement=0.3, group_balance=0.5,
              lr=7e-4, warmup=20, checkpoint_every=0, steps=847, seed=61)


def core_peaks() -> dict[str, float]:
    """kind -> GFLOP/s of one core's best 1024 x 1024 x 1024 product, fp32 and (where it is native) bf16, by its
    CPU time (on a shared machine the wall clock also counts the time other processes held the core). Emulated
    bf16 is not timed (a minute of products at a fraction of a GFLOP/s): its peak is given as fp32's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    kinds = (("fp32", torch.float32), ("bf16", torch.bfloat16))
    if not reduced_precision_is_fast("cpu", torch.bfloat16):
        kinds = kinds[:1]
    peaks = {}
    for kind, dtype in kinds:
        a, b = torch.randn(1024, 1024).to(dtype), torch.randn(1024, 1024).to(dtype)
        a @ b
        best = min(timed(lambda: a @ b)[1] for _ in range(5))
        peaks[kind] = 2 * 1024 ** 3 / best / 1e9
    peaks.setdefault("bf16", peaks["fp32"])
    torch.set_num_threads(threads)
    return peaks


class TrainerVariant:
    """A trainer of this or the reference commit, stepping through the recipe from the shipped weights."""

    def __init__(self, train_module, threads: int, **changes):
        config = train_module.TrainConfig(**{**RECIPE, **changes}, init=str(SHIPPED_CHECKPOINT), out="/nonexistent")
        self.module, self.threads = train_module, threads
        torch.set_num_threads(threads)
        self.trainer = train_module.Trainer(config)
        self.trainer._groups_cache = {}

    def ran(self) -> str:
        return "bf16" if self.trainer.autocast else "fp32"

    def prepare(self) -> None:
        """The step's scene groups, as a pooled run has them after its first pass."""
        config = self.trainer.config
        seeds, flips = self.module.batch_scenes(config, self.trainer.step)
        self.module.scene_groups(seeds, flips, config, self.trainer._groups_cache)

    def step(self) -> float:
        torch.set_num_threads(self.threads)  # the reference leaves threads as it finds them
        return self.trainer.train_step()["total"]


class PlainVariant:
    """glom-pytorch's README denoising step at the recipe's model size, the whole batch at once."""

    def __init__(self, batch: int, iters: int, threads: int):
        torch.manual_seed(0)
        config = TrainConfig()
        self.iters, self.threads = iters, threads
        self.model = PlainGlom(dim=config.dim, levels=config.levels, image_size=config.image_size,
                               patch_size=config.patch_size)
        side = config.image_size // config.patch_size
        self.decoder = nn.Sequential(nn.Linear(config.dim, config.patch_size ** 2 * 3),
                                     Rearrange("b (h w) (p1 p2 c) -> b c (h p1) (w p2)", p1=config.patch_size,
                                               p2=config.patch_size, h=side))
        self.optimizer = torch.optim.AdamW([*self.model.parameters(), *self.decoder.parameters()], lr=1e-3)
        self.images = make_batch(range(batch), config.image_size)[0]

    def ran(self) -> str:
        return "fp32"

    def prepare(self) -> None:
        pass

    def step(self) -> float:
        torch.set_num_threads(self.threads)
        self.optimizer.zero_grad(set_to_none=True)
        noisy = self.images + torch.randn_like(self.images) * 0.2
        all_levels = self.model(noisy, iters=self.iters, return_all=True)
        loss = F.mse_loss(self.decoder(all_levels[self.iters, :, :, -1]), self.images)
        loss.backward()
        self.optimizer.step()
        return loss.item()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=11, help="settling steps per training step")
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per variant (after one warm step)")
    parser.add_argument("--reference", default=REFERENCE, help="the earlier commit to compare with")
    parser.add_argument("--curve", type=int, default=0, metavar="STEPS",
                        help="first run both trainers STEPS steps from the same start and print their losses")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    cores = usable_cpus()
    reference = load_package(args.reference)["train"]
    shared = dict(batch_size=args.batch, iters=args.iters)
    variants = {"this commit (its defaults)": TrainerVariant(this_train, cores, **shared)}
    if variants["this commit (its defaults)"].trainer.autocast:  # it picked bf16: also its fp32, to judge the pick
        variants["this commit --bf16 false"] = TrainerVariant(this_train, cores, **shared, bf16=False)
    old = TrainerVariant(reference, cores, **shared, accumulate=REFERENCE_ACCUMULATE)
    variants[f"{args.reference} --accumulate {REFERENCE_ACCUMULATE}"] = old
    if old.trainer.autocast:  # its flags picked bf16: also its fp32
        variants[f"{args.reference} --accumulate {REFERENCE_ACCUMULATE} --bf16 false"] = TrainerVariant(
            reference, cores, **shared, accumulate=REFERENCE_ACCUMULATE, bf16=False)
    if cores > 1:
        variants[f"{args.reference} --accumulate {REFERENCE_ACCUMULATE} --bf16 false, one thread"] = TrainerVariant(
            reference, 1, **shared, accumulate=REFERENCE_ACCUMULATE, bf16=False)
    variants["glom-pytorch denoising, whole batch"] = PlainVariant(args.batch, args.iters, cores)
    ours = variants["this commit (its defaults)"].trainer
    print(f"CPU: {cpu_name()}; torch {torch.__version__}")
    print(f"this commit picked: {ours.accumulate} micro-batches of {args.batch // ours.accumulate} scenes on "
          f"{ours.workers} thread(s), {'bf16' if ours.autocast else 'fp32'} (bf16 products faster than fp32 "
          f"here: {'yes' if reduced_precision_is_fast('cpu', torch.bfloat16) else 'no'}); the reference "
          f"{args.reference} runs {old.ran()} on {cores} threads")

    if args.curve:
        curve_of = {name: [] for name in variants if not isinstance(variants[name], PlainVariant)}
        for name in curve_of:
            for _ in range(args.curve):
                variants[name].prepare()
                curve_of[name].append(variants[name].step())
        print("step  " + "  ".join(f"{name[:28]:>28}" for name in curve_of))
        for step in range(args.curve):
            print(f"{step + 1:>4}  " + "  ".join(f"{curve_of[name][step]:>28.5f}" for name in curve_of))
        mine = curve_of[names_of_curves[0]] if (names_of_curves := list(curve_of)) else []
        for name in names_of_curves[1:]:
            print(f"largest relative difference of the total loss, this commit vs {name}: "
                  f"{max(abs(a - b) / abs(b) for a, b in zip(mine, curve_of[name])):.2e}")

    flop = 3 * forward_flops(64, 4, 64, 4, args.iters, batch=args.batch)
    peaks = core_peaks()
    walls = {name: [] for name in variants}
    cpus = {name: [] for name in variants}
    loads = [os.getloadavg()[0]]
    names = list(variants)
    for round_ in range(args.rounds + 1):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            variants[name].prepare()
            wall, cpu = timed(variants[name].step)
            if round_:  # the first round warms allocators and caches
                walls[name].append(wall)
                cpus[name].append(cpu)
        loads.append(os.getloadavg()[0])
    mine = statistics.median(walls[names[0]])
    print(f"batch {args.batch}, {args.iters} settling steps, {flop / 1e9:.0f} GFLOP a step; {args.rounds} rounds; "
          f"load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores; peak {cores} x one core's "
          f"product: fp32 {cores * peaks['fp32']:.0f}, bf16 {cores * peaks['bf16']:.0f} GFLOP/s")
    mine_cpu = statistics.median(cpus[names[0]])
    header = ("variant", "ran", "median s/step", "min s/step", "scenes/s", "GFLOP/s", "of peak",
              "median CPU s/step", "GFLOP/s a core (CPU time)", "of a core's peak", "this commit's speed-up",
              "in CPU time")
    rows = []
    for name in names:
        median, median_cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        gflops, per_core = flop / median / 1e9, flop / median_cpu / 1e9
        peak = peaks[variants[name].ran()]
        rows.append((name, variants[name].ran(), f"{median:.2f}", f"{min(walls[name]):.2f}",
                     f"{args.batch / median:.1f}", f"{gflops:.0f}", f"{gflops / (cores * peak):.0%}",
                     f"{median_cpu:.2f}", f"{per_core:.0f}", f"{per_core / peak:.0%}", f"{median / mine:.2f}x",
                     f"{median_cpu / mine_cpu:.2f}x"))
    print_table(header, rows, args.markdown)


if __name__ == "__main__":
    main()
