"""GLOM forward speed: glom_viz against glom-pytorch, fp32 and under bf16 autocast, in one process.

The variants run in rotation, round after round, so that drift in a shared machine's load hits them
alike; the table reports medians, speed-ups over glom-pytorch, GFLOP/s and the fraction of this
machine's measured matmul peak, and how close each variant's states stay to exact fp32.

    python benchmarks/forward.py                     # the seed's size: 224 px, patch 14, dim 512, 6 levels, 12 iters
    python benchmarks/forward.py --rounds 5 --markdown
"""

from __future__ import annotations

import argparse
import warnings
import statistics
import time

import torch
import torch.nn.functional as F

from glom_viz import Glom
from glom_viz.model import FEEDFORWARD_MULT, reduced_precision_is_fast

try:
    from glom_pytorch import Glom as ReferenceGlom
except ImportError as error:  # pragma: no cover - the reference is a dev requirement
    raise SystemExit("benchmarks need the reference: pip install -r requirements-dev.txt") from error


def forward_flops(dim: int, levels: int, image_size: int, patch_size: int, iters: int, batch: int = 1) -> float:
    """Multiply-adds x 2 of one forward: patch embedding, then per step the bottom-up and top-down MLPs
    ((2L - 1) of them, two layers of d x 4d) and the consensus attention (two n x n x d products per level)."""
    n = (image_size // patch_size) ** 2
    embed = 2 * batch * n * patch_size ** 2 * 3 * dim
    feedforward = 2 * (2 * levels - 1) * batch * n * 2 * dim * FEEDFORWARD_MULT * dim
    consensus = 2 * levels * batch * 2 * n * n * dim
    return embed + iters * (feedforward + consensus)


def matmul_peak(dtype: torch.dtype, dim: int, n: int, groups: int, repeats: int = 3) -> float:
    """GFLOP/s of the forward's own largest product, (groups, n, d) @ (groups, d, 4d), at its best."""
    x = torch.randn(groups, n, dim, dtype=dtype)
    w = torch.randn(groups, dim, FEEDFORWARD_MULT * dim, dtype=dtype)
    torch.bmm(x, w)
    best = min(timed(lambda: torch.bmm(x, w)) for _ in range(repeats))
    return 2 * groups * n * dim * FEEDFORWARD_MULT * dim / best / 1e9


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--levels", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reference-bf16-iters", type=int, default=None,
                        help="iterations for glom-pytorch under autocast where bf16 is emulated (it is ~50x slower "
                             "there); its time is scaled to --iters per iteration and marked as such")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown, for the README")
    args = parser.parse_args(argv)

    config = dict(dim=args.dim, levels=args.levels, image_size=args.image_size, patch_size=args.patch_size)
    torch.manual_seed(0)
    reference = ReferenceGlom(**config).eval()
    ours = Glom(**config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    img = torch.rand(1, 3, args.image_size, args.image_size)
    n = (args.image_size // args.patch_size) ** 2
    native_bf16 = reduced_precision_is_fast("cpu", torch.bfloat16)
    reference_bf16_iters = args.reference_bf16_iters or (args.iters if native_bf16 else 2)

    def run(model, bf16: bool, iters: int):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(img, iters=iters, return_all=True).float()

    variants = {
        "glom-pytorch fp32": (reference, False, args.iters),
        "glom-pytorch bf16 autocast": (reference, True, reference_bf16_iters),
        "glom_viz fp32": (ours, False, args.iters),
        "glom_viz bf16 autocast": (ours, True, args.iters),
    }
    with torch.inference_mode():
        exact = run(reference, False, args.iters)
    times = {name: [] for name in variants}
    agreement = {}
    warnings.filterwarnings("ignore", message=".*not native.*")
    for name, (model, bf16, iters) in variants.items():  # warm-up, and the states to compare
        states = run(model, bf16, iters)
        cosine = F.cosine_similarity(states, exact[: iters + 1], dim=-1)  # (T, b, n, L)
        agreement[name] = cosine.mean(dim=(0, 1, 2)).min().item()
    for _ in range(args.rounds):
        for name, (model, bf16, iters) in variants.items():
            elapsed = timed(lambda: run(model, bf16, iters))
            times[name].append(elapsed * args.iters / iters)  # per-iteration scaling for a shortened run

    flops = forward_flops(**config, iters=args.iters)
    peaks = {torch.float32: matmul_peak(torch.float32, args.dim, n, 2 * args.levels - 1),
             torch.bfloat16: matmul_peak(torch.bfloat16, args.dim, n, 2 * args.levels - 1)}
    median = {name: statistics.median(t) for name, t in times.items()}

    print(f"GLOM forward, {args.image_size} px, patch {args.patch_size}, dim {args.dim}, {args.levels} levels, "
          f"{args.iters} iterations, return_all=True: {flops / 1e9:.1f} GFLOP; {args.rounds} rounds in rotation; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"measured matmul peak: fp32 {peaks[torch.float32]:.0f} GFLOP/s, bf16 {peaks[torch.bfloat16]:.0f} GFLOP/s; "
          f"native bf16 on this CPU: {'yes' if native_bf16 else 'no (autocast is served in fp32 by glom_viz)'}")
    header = ("variant", "median s", "x vs glom-pytorch fp32", "x vs glom-pytorch bf16", "GFLOP/s",
              "of peak", "states cos vs fp32")
    rows = []
    for name, (model, bf16, iters) in variants.items():
        runs_in_bf16 = bf16 and (model is reference or native_bf16)
        peak = peaks[torch.bfloat16 if runs_in_bf16 else torch.float32]
        gflops = flops / median[name] / 1e9
        label = name + (f" (timed at {iters} iters, scaled)" if iters != args.iters else "")
        rows.append((label, f"{median[name]:.3f}", f"{median['glom-pytorch fp32'] / median[name]:.2f}",
                     f"{median['glom-pytorch bf16 autocast'] / median[name]:.2f}", f"{gflops:.0f}",
                     f"{gflops / peak:.0%}", f"{agreement[name]:.4f}"))
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
        for row in [header] + rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


if __name__ == "__main__":
    main()
