"""GLOM forward speed: glom_viz against glom-pytorch, fp32 and under bf16 autocast, in one process.

The variants run in rotation, round after round (each round starting one variant later), so that drift in
a shared machine's load hits them alike; the table reports medians and minima, speed-ups over
glom-pytorch, GFLOP/s and the fraction of this machine's measured peak for the kind of product the
variant ran, and how close each variant's states stay to exact fp32 (the worst level's mean per-vector
cosine similarity over all steps).

Under autocast glom_viz runs what ``glom_viz.model.precision_path`` picks by timed probes: int8 bottom-up and
top-down nets where they beat the rest (inference; the consensus then in bf16 where that beats fp32), else bf16
where it beats fp32, else fp32; the table says which. Where bf16 is fast but int8 faster, glom_viz is also timed
in bf16 (forced), for its share of the bf16 peak.
Where bf16 is emulated, glom-pytorch under autocast is some 50x slower than in fp32, so it is timed at
fewer iterations (--reference-bf16-iters) and scaled per iteration, and marked as such.

    python benchmarks/forward.py --rounds 3          # the seed's size: 224 px, patch 14, dim 512, 6 levels, 12 iters
    python benchmarks/forward.py --rounds 5 --threads 1 --markdown
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from glom_viz import Glom
from glom_viz.model import (FEEDFORWARD_MULT, INT8_REDUCE_RANGE, REDUCED_PRECISION_ENV, consensus_dtype, cpu_flags,
                            int8_linear, precision_path, reduced_precision_is_fast)
from glom_viz.limits import usable_cpus

try:
    from glom_pytorch import Glom as ReferenceGlom
except ImportError as error:  # pragma: no cover - the reference is a dev requirement
    raise SystemExit("benchmarks need the reference: pip install -r requirements-dev.txt") from error

# the goals for glom_viz under autocast: against glom-pytorch in fp32 and under the same autocast, the share of
# a core's measured peak for the products it ran where bf16 is native, and the states' agreement with fp32
TARGET_VS_REFERENCE_FP32 = 3.0
TARGET_VS_REFERENCE_AUTOCAST = 1.6
TARGET_OF_BF16_PEAK = 0.85
MIN_COSINE = 0.995


def cpu_name() -> str:
    """The CPU's model name, vendor family and model, and its bf16 / AMX flags."""
    name, family, model = platform.processor() or platform.machine(), "?", "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name":
                name = value
            elif key == "cpu family":
                family = value
            elif key == "model":
                model = value
            if key == "flags":
                break
    except OSError:
        pass
    flags = cpu_flags() or frozenset()
    support = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}"
                        for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni"))
    return f"{name} (family {family} model {model}; {support}), {usable_cpus()} cores for this process"


def forward_flops(dim: int, levels: int, image_size: int, patch_size: int, iters: int, batch: int = 1) -> float:
    """Multiply-adds x 2 of one glom-pytorch forward: patch embedding, then per step the bottom-up and top-down
    MLPs ((2L - 1) of them, two layers of d x 4d) and the consensus attention (two n x n x d products per level).
    glom_viz skips some of it (the image's bottom-up once per forward, the first step's on one column), so its
    GFLOP/s are effective ones: this count over its time."""
    n = (image_size // patch_size) ** 2
    embed = 2 * batch * n * patch_size ** 2 * 3 * dim
    feedforward = 2 * (2 * levels - 1) * batch * n * 2 * dim * FEEDFORWARD_MULT * dim
    consensus = 2 * levels * batch * 2 * n * n * dim
    return embed + iters * (feedforward + consensus)


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]], markdown: bool) -> None:
    """Rows of cells under a header, as markdown or as aligned plain text."""
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call: CPU time is less hurt by other processes' load."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def peak_probes(dim: int, n: int, groups: int, native_bf16: bool) -> dict[str, tuple[float, object]]:
    """kind -> (FLOP, fn): the forward's own largest product, (groups, n, d) @ (groups, d, 4d), per kind: fp32
    and bf16 batched products (emulated bf16 on one group: it is that slow), and fbgemm's dynamic int8 linear
    (one per group, as the int8 nets run)."""
    flop = 2 * groups * n * dim * FEEDFORWARD_MULT * dim
    probes = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        g = groups if dtype == torch.float32 or native_bf16 else 1
        x = torch.randn(g, n, dim, dtype=dtype)
        w = torch.randn(g, dim, FEEDFORWARD_MULT * dim, dtype=dtype)
        probes[name] = (flop * g / groups, lambda x=x, w=w: torch.bmm(x, w))
    x = torch.randn(n, dim)
    layers = [int8_linear(torch.randn(FEEDFORWARD_MULT * dim, dim), torch.zeros(FEEDFORWARD_MULT * dim))
              for _ in range(groups)]

    def int8_products():
        for layer in layers:
            torch.ops.quantized.linear_dynamic(x, layer, INT8_REDUCE_RANGE)
    probes["int8"] = (flop, int8_products)
    return probes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--levels", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--reference-bf16-iters", type=int, default=None,
                        help="iterations for glom-pytorch under autocast (default: --iters where bf16 is native, "
                             "else 1: emulated bf16 is ~50x slower); its time is scaled to --iters and marked")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown, for the README")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    config = dict(dim=args.dim, levels=args.levels, image_size=args.image_size, patch_size=args.patch_size)
    torch.manual_seed(0)
    reference = ReferenceGlom(**config).eval()
    ours = Glom(**config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    img = torch.rand(1, 3, args.image_size, args.image_size)
    n = (args.image_size // args.patch_size) ** 2
    native_bf16 = reduced_precision_is_fast("cpu", torch.bfloat16)
    reference_bf16_iters = args.reference_bf16_iters or (args.iters if native_bf16 else 1)

    def run(model, autocast: bool, iters: int, forced: str | None = None):
        if forced:
            os.environ[REDUCED_PRECISION_ENV] = forced
        try:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                return model(img, iters=iters, return_all=True).float()
        finally:
            if forced:
                os.environ.pop(REDUCED_PRECISION_ENV, None)

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        our_autocast_path = precision_path("cpu", args.dim)
        consensus = {torch.bfloat16: "bf16", torch.float32: "fp32"}[consensus_dtype(our_autocast_path, "cpu")]
    reference_autocast_path = "bf16" if native_bf16 else "bf16, emulated"
    variants = {  # name -> (model, autocast, iters, what it ran)
        "glom-pytorch fp32": (reference, False, args.iters, "fp32"),
        "glom-pytorch autocast": (reference, True, reference_bf16_iters, reference_autocast_path),
        "glom_viz fp32": (ours, False, args.iters, "fp32"),
        "glom_viz autocast": (ours, True, args.iters, our_autocast_path + (
            f" nets, {consensus} consensus" if our_autocast_path == "int8" else "")),
    }
    forced = {}  # name -> GLOM_VIZ_REDUCED_PRECISION while it runs
    if native_bf16 and our_autocast_path != "bf16":  # bf16 is fast here, int8 faster: bf16's share of its peak too
        variants["glom_viz bf16 (forced)"] = (ours, True, args.iters, "bf16")
        forced["glom_viz bf16 (forced)"] = "1"
    with torch.inference_mode():
        exact = run(reference, False, args.iters)
    agreement = {}
    warnings.filterwarnings("ignore", message=".*GLOM runs in fp32.*")
    for name, (model, autocast, iters, _) in variants.items():  # warm-up (packs int8 weights), states to compare
        states = run(model, autocast, iters, forced.get(name))
        cosine = F.cosine_similarity(states, exact[: iters + 1], dim=-1)  # (T, b, n, L)
        agreement[name] = cosine.mean(dim=(0, 1, 2)).min().item()
    probes = peak_probes(args.dim, n, 2 * args.levels - 1, native_bf16)
    walls = {name: [] for name in variants}
    cpus = {name: [] for name in variants}
    peaks = {kind: 0.0 for kind in probes}  # one core's, by CPU time
    names = list(variants)
    threads = torch.get_num_threads()
    for round_ in range(args.rounds):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            model, autocast, iters, _ = variants[name]
            wall, cpu = timed(lambda: run(model, autocast, iters, forced.get(name)))
            walls[name].append(wall * args.iters / iters)  # per-iteration scaling for a shortened run
            cpus[name].append(cpu * args.iters / iters)
        # the peak: one core's best product of the rounds, by CPU time (on a shared machine the wall clock
        # also counts the time other processes held the core)
        torch.set_num_threads(1)
        for kind, (flop, probe) in probes.items():
            peaks[kind] = max(peaks[kind], flop / max(timed(probe)[1], 1e-9) / 1e9)
        torch.set_num_threads(threads)

    flops = forward_flops(**config, iters=args.iters)
    median = {name: statistics.median(t) for name, t in walls.items()}
    median_cpu = {name: statistics.median(t) for name, t in cpus.items()}

    print(f"GLOM forward, {args.image_size} px, patch {args.patch_size}, dim {args.dim}, {args.levels} levels, "
          f"{args.iters} iterations, return_all=True: {flops / 1e9:.1f} GFLOP; {args.rounds} rounds in rotation; "
          f"torch {torch.__version__}, {threads} threads; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    print(f"CPU: {cpu_name()}")
    print(f"one core's measured peak for the largest product (best of the rounds, by CPU time): fp32 "
          f"{peaks['fp32']:.0f}, bf16 {peaks['bf16']:.1f}, int8 (fbgemm) {peaks['int8']:.0f} GFLOP/s; bf16 faster "
          f"than fp32 here: {'yes' if native_bf16 else 'no'}; glom_viz under autocast runs: {our_autocast_path}")
    header = ("variant", "ran", "median s", "min s", "x vs glom-pytorch fp32", "x vs glom-pytorch autocast",
              "median CPU s", "x vs glom-pytorch fp32 in CPU s", "GFLOP/s", "GFLOP/s a core (CPU time)",
              "of a core's peak", "states cos vs fp32")
    rows = []
    share_of_peak = {}
    for name, (model, autocast, iters, ran) in variants.items():
        peak = peaks["int8" if ran.startswith("int8") else "bf16" if ran.startswith("bf16") else "fp32"]
        per_core = flops / median_cpu[name] / 1e9
        share_of_peak[name] = per_core / peak
        label = name + (f" (timed at {iters} iters, scaled)" if iters != args.iters else "")
        rows.append((label, ran, f"{median[name]:.3f}", f"{min(walls[name]):.3f}",
                     f"{median['glom-pytorch fp32'] / median[name]:.2f}",
                     f"{median['glom-pytorch autocast'] / median[name]:.2f}", f"{median_cpu[name]:.3f}",
                     f"{median_cpu['glom-pytorch fp32'] / median_cpu[name]:.2f}",
                     f"{flops / median[name] / 1e9:.0f}", f"{per_core:.0f}", f"{share_of_peak[name]:.0%}",
                     f"{agreement[name]:.4f}"))
    print_table(header, rows, args.markdown)
    vs_fp32 = median["glom-pytorch fp32"] / median["glom_viz autocast"]
    vs_autocast = median["glom-pytorch autocast"] / median["glom_viz autocast"]
    cosine = agreement["glom_viz autocast"]

    def verdict(value, bar, unit=""):
        return f"{value:.2f}{unit} (goal {bar}: {'met' if value >= bar else 'NOT met'})"
    share = share_of_peak["glom_viz autocast"]
    peak_goal = (verdict(share, TARGET_OF_BF16_PEAK) if our_autocast_path == "bf16" else
                 f"{share:.0%} of a core's {our_autocast_path} peak (the {TARGET_OF_BF16_PEAK:.0%} goal is for bf16, "
                 f"which autocast does not run here)")
    if "glom_viz bf16 (forced)" in share_of_peak:
        print(f"glom_viz in bf16 (forced; autocast runs {our_autocast_path}, faster still): "
              f"{verdict(share_of_peak['glom_viz bf16 (forced)'], TARGET_OF_BF16_PEAK)} of a core's bf16 peak")
    print(f"glom_viz under autocast ({our_autocast_path}), from median wall times: x vs glom-pytorch fp32 "
          f"{verdict(vs_fp32, TARGET_VS_REFERENCE_FP32)}, x vs glom-pytorch autocast "
          f"{verdict(vs_autocast, TARGET_VS_REFERENCE_AUTOCAST)}; {peak_goal}; states cos {cosine:.4f} "
          f"(goal {MIN_COSINE}: {'met' if cosine >= MIN_COSINE else 'NOT met'})")

if __name__ == "__main__":
    main()
