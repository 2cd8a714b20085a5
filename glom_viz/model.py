"""GLOM: a drop-in for glom-pytorch 0.0.14 that steps through its iterations and runs near the CPU's limit.

Parameter names and shapes are glom-pytorch's own, so its state dicts load with ``strict=True`` and give
the same states. The arithmetic differs in layout only: the bottom-up nets of all levels run as one batched
matrix product per layer, and so do the top-down nets; the bottom-up net of the image's patch tokens runs
once per forward, not once per step (its input never changes); and the first step's bottom-up nets run on one
column, since all columns start equal.

Precision. fp32 is the exact path. Under ``torch.autocast`` (a request for speed at a small cost in
precision) the forward takes one of these paths, named by ``precision_path``:

- autocast's dtype (``"bf16"``, ``"fp16"``) where it is faster than fp32 (CUDA; CPUs with AMX; CPUs with
  AVX512-BF16 alone where a timed probe says so, ``reduced_precision_is_fast``): the bottom-up and top-down
  nets and the consensus run in it, weights cast once and kept while unchanged (for inference on a CPU, the
  nets' bf16 weights packed by oneDNN, the bias and GELU done inside the products, where a timed probe finds that
  faster, ``onednn_is_fast``: on an Intel Xeon with AMX one core ran the seed's forward in 0.27 s so, 0.39 s
  with batched products);
- ``"int8"`` for inference only (``torch.no_grad`` / ``torch.inference_mode``), on a CPU with fbgemm, for
  models of dim >= 128, where a timed probe finds the int8 nets faster for the model's dim than those of the
  path it would otherwise take (autocast's dtype where that is fast, else fp32; ``int8_is_fast``): the
  bottom-up and top-down nets run as dynamically quantised int8 products (fbgemm; per-channel int8 weights
  packed once and kept while unchanged; activations quantised per product to 7 bits), the consensus in fp32.
  On an AMD EPYC (Zen 4, AVX512-BF16 and VNNI) one core ran the seed's forward in 0.62 s so, 0.83 s in bf16
  and 1.70 s in fp32. The bar: every level's states keep a mean per-vector cosine similarity of at least
  0.995 to the fp32 states (measured 0.9998 at 224 px, dim 512, 6 levels, 12 steps);
- ``"fp32"`` otherwise (gradients where bf16 is not faster, a small model, int8 no faster or missing, or a
  forced fp32), with a warning once per process saying why.

Both reduced paths are chosen by measurement where the CPU's flags do not settle it: products shaped like
GLOM's, timed by the probing thread's CPU time on one core, in rotation with their rival, once per process
(and per dim for int8), the reduced one taken only when clearly faster: no path runs that is slower than fp32.

Columns' states stay fp32 between steps on every path, so rounding does not pile up over the iterations.
The environment variable GLOM_VIZ_REDUCED_PRECISION forces a path under autocast: ``1`` autocast's dtype
(even where it is emulated), ``int8`` the int8 nets (CPU, inference), ``0`` exact fp32.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from einops.layers.torch import Rearrange
from torch import nn

from glom_viz.errors import ConfigError, GlomInputError

# glom-pytorch replaces a column's similarity to itself by this value when consensus_self is False
TOKEN_ATTEND_SELF_VALUE = -5e-4
CONTRIBUTIONS = ("previous", "bottom_up", "top_down", "consensus")
LEVEL_NORMS = ("none", "layernorm", "l2")
FEEDFORWARD_MULT = 4
NORMALIZE_EPS = 1e-12  # F.normalize's floor under a vector's norm
# per reduced dtype, the CPU flags of (native vector products, matrix units). Without the first torch emulates
# the dtype: a bf16 matmul ran 0.25 GFLOP/s against fp32's 12 on an AVX2 EPYC. With the second (AMX) it is
# several times faster than fp32. With the first alone it may well be slower: on a Xeon (family 6 model 207)
# whose hypervisor hides AMX, bf16 ran 82 GFLOP/s a core against fp32's 160, and fp16 155
NATIVE_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}
# the timed probe where the flags do not settle it: (m, k, n) products like GLOM's nets at dim 128-512, the
# fastest of PROBE_REPEATS in each of PROBE_ROUNDS rounds alternating the dtypes (a shared machine is noisy);
# the reduced dtype must be PROBE_MARGIN times faster. On one thread, about 50 ms
PROBE_SHAPE = (512, 256, 1024)
PROBE_SHAPE_UNKNOWN = (64, 256, 256)
PROBE_REPEATS = 3
PROBE_ROUNDS = 3
PROBE_MARGIN = 1.1
# forces the path under autocast, whatever the probe says: 1 autocast's dtype, int8 int8 nets, 0 fp32
REDUCED_PRECISION_ENV = "GLOM_VIZ_REDUCED_PRECISION"
FORCED_PATHS = {"1": "autocast", "int8": "int8", "0": "fp32"}
PATH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# quantised engines whose dynamic int8 linear runs on fbgemm's x86 kernels
INT8_ENGINES = ("x86", "fbgemm")
# activations quantised to 7 bits: without VNNI, x86's u8 x s8 products saturate int16 on full 8-bit ranges
INT8_REDUCE_RANGE = True
INT8_WEIGHT_MAX = 127
# below this dim fbgemm's int8 nets are no faster than fp32 (measured on an AVX2 EPYC: 0.3-1.0x at dim 32-64,
# 1.2-1.4x at 128, 1.5-2x from 256), so an unforced autocast runs such models in fp32 without a probe
INT8_MIN_DIM = 128
# from INT8_MIN_DIM up a probe decides (``int8_is_fast``): one net's two products and its GELU on
# INT8_PROBE_ROWS columns, fp32 against int8, at the model's dim up to INT8_PROBE_MAX_DIM (wider nets are timed
# at that width: the probe stays cheap, about 60 ms at dim 512, and int8 only gains with width)
INT8_PROBE_ROWS = 256
INT8_PROBE_MAX_DIM = 512
# oneDNN packs the bf16 nets' weights for products of about this many rows (a 224 px picture's columns)
ONEDNN_ROWS = 256
# the continuation path's letting go (Glom.let_go): a column whose patch changed by at most this share of
# `release` (RMS, pixels in [0, 1]) keeps its carried state; from `release` on it starts afresh. On the
# built-in clips, patches whose object stayed changed by 0.036 RMS (median: fresh pixel noise), those an
# object entered or left by 0.18 (5% of them under 0.08), hence RELEASE
RELEASE_KEEP = 0.5
RELEASE = 0.1
# and so does every column within this many patches of a changed one: its island was held up by its
# neighbours' consensus, so a moved object's ghost stays where only the changed patches start afresh
RELEASE_REACH = 1
# where a column let go starts: columns that all start from init_levels attend to each other and bind into
# one island (a moved object's island took the ring of background let go around it), so a column let go
# takes the state of the still column (none of whose patches within `reach` changed) within ALIKE_RADIUS
# patches (each axis; at least reach + 1) whose patch now looks most like its own, as far as the two look
# alike (RMS pixel difference): fully up to RELEASE_KEEP x ALIKE, not at all from ALIKE on, where it starts
# from init_levels. Two patches of one flat colour under fresh pixel noise differ by about 0.035. On the
# evaluator's clips (2 px a frame) a radius of 2 / 3 / 4 / 6 patches read ARI 0.72 / 0.74 / 0.74 / 0.75 at
# level 3, background included (0.66 starting afresh), FG-ARI 0.87 / 0.87 / 0.88 / 0.88
ALIKE = 0.05
ALIKE_RADIUS = 4
# the fused consensus: one attention call costs as much as this share of a whole level's n x n similarities
BAND_COST = 1 / 8
# with gradients the fused consensus (flash attention, which recomputes the attention in its backward) beats
# the explicit one up to this dim: forward and backward of 6 levels of 256 columns took 91 against 121 ms at
# dim 64 (16 images), 41 against 39 at 128 (4 images), 41 against 35 at 512 (1 image); without gradients it
# was faster at every dim (21 against 35 ms at 64, 8.3 against 9.2 at 512)
FUSED_TRAINING_MAX_DIM = 64
# ...and on a CPU it runs in the nets' reduced dtype only where a timed probe finds its forward and backward faster
# so than in fp32 (``fused_training_dtype``): a micro-batch of 16 scenes at dim 64 took 620 ms in bf16 against 317 in
# fp32 on an AMD EPYC with AVX512-BF16, and 590 against 490 on an Intel Xeon with AMX. The probe: one attention call
# forward and backward on FUSED_PROBE_SHAPE (levels, scenes, columns) at the model's dim
FUSED_PROBE_SHAPE = (4, 4, 256)


@dataclass(frozen=True)
class GlomConfig:
    """Everything that fixes a GLOM's shape and its update rule.

    The first six fields are glom-pytorch's constructor arguments. The rest are glom-viz's options for
    making islands form; their defaults give glom-pytorch's behaviour exactly and add no parameters.
    """

    dim: int = 512
    levels: int = 6
    image_size: int = 224
    patch_size: int = 14
    consensus_self: bool = False
    local_consensus_radius: float = 0
    # similarity scale inside the consensus softmax; None is glom-pytorch's dim ** -0.5
    attention_scale: float | None = None
    # normalise the queries too, making the consensus a pure cosine attention
    consensus_cosine: bool = False
    # weights of (previous, bottom_up, top_down, consensus) in the update; None is the plain mean
    contribution_weights: tuple[float, float, float, float] | None = None
    # applied to every level after each update: "none", "layernorm" (no affine) or "l2" (unit vectors)
    level_norm: str = "none"
    # a local consensus radius per level (in patches; 0 = global), overriding local_consensus_radius
    consensus_radii: tuple[float, ...] | None = None
    # hidden width of the bottom-up and top-down MLPs, in multiples of dim (glom-pytorch's is 4)
    feedforward_mult: int = FEEDFORWARD_MULT
    # the levels whose top-down net (from the level above) is told the column's position; None = every
    # level's, as glom-pytorch. Position lets a whole say where its part sits, but an absolute position
    # code also lets islands be decided by where a column is rather than by what it sees
    position_levels: tuple[int, ...] | None = None
    # the levels whose starting state holds the column's position (init_levels + pos_emb), told once and not
    # again: the consensus then averages it over an island, so a whole's island shares one position (where
    # the whole is) where a position told every step keeps each column its own
    start_position_levels: tuple[int, ...] = ()

    def __post_init__(self):
        if self.dim < 1 or self.levels < 2 or self.patch_size < 1 or self.image_size < 1:
            raise ConfigError(
                f"dim, image_size and patch_size must be positive and levels at least 2 "
                f"(got dim={self.dim}, levels={self.levels}, image_size={self.image_size}, "
                f"patch_size={self.patch_size})"
            )
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}: "
                f"pick an image_size that is a multiple of the patch size, for example "
                f"{(self.image_size // self.patch_size) * self.patch_size or self.patch_size}"
            )
        if self.feedforward_mult < 1:
            raise ConfigError(f"feedforward_mult must be a positive integer, got {self.feedforward_mult}")
        if self.level_norm not in LEVEL_NORMS:
            raise ConfigError(f"level_norm must be one of {LEVEL_NORMS}, got {self.level_norm!r}")
        if self.contribution_weights is not None:
            weights = tuple(float(w) for w in self.contribution_weights)
            if len(weights) != 4 or min(weights) < 0 or weights[0] + weights[1] + weights[3] <= 0:
                raise ConfigError(
                    "contribution_weights must be four non-negative numbers for (previous, bottom_up, "
                    f"top_down, consensus), not all of the top level's zero; got {self.contribution_weights}"
                )
            object.__setattr__(self, "contribution_weights", weights)
        if self.consensus_radii is not None:
            radii = tuple(float(r) for r in self.consensus_radii)
            if len(radii) != self.levels or min(radii) < 0:
                raise ConfigError(
                    f"consensus_radii needs one non-negative radius per level ({self.levels}), "
                    f"got {self.consensus_radii}"
                )
            object.__setattr__(self, "consensus_radii", radii)
        if self.position_levels is not None:
            levels = tuple(sorted({int(l) for l in self.position_levels}))
            if any(not 0 <= l < self.levels - 1 for l in levels):
                raise ConfigError(
                    f"position_levels name levels that get a top-down net, 0..{self.levels - 2} (the top level has "
                    f"none), got {self.position_levels}"
                )
            object.__setattr__(self, "position_levels", levels)
        start = tuple(sorted({int(l) for l in self.start_position_levels}))
        if any(not 0 <= l < self.levels for l in start):
            raise ConfigError(f"start_position_levels name levels, 0..{self.levels - 1}, got {self.start_position_levels}")
        object.__setattr__(self, "start_position_levels", start)

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    @property
    def num_patches(self) -> int:
        h, w = self.grid
        return h * w

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GlomConfig":
        values = known_fields(cls, values, "GLOM config")
        for key in ("contribution_weights", "consensus_radii", "position_levels", "start_position_levels"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


def known_fields(config_class, values: dict, what: str) -> dict:
    """A copy of ``values`` for ``config_class(**values)``, refusing names the dataclass does not have."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {what} fields {unknown}; known fields are {sorted(known)}")
    return dict(values)


@dataclass
class GlomStep:
    """One step of GLOM's settling.

    levels: (b, patches, levels, dim), the columns after this step (step 0 is the initial state).
    contributions: on request, name -> (b, patches, len(which_levels), dim): the four things this step
        averaged (previous, bottom_up, top_down, consensus); None at step 0 and when not asked.
    attention: on request, (b, len(which_levels), patches, patches) consensus attention weights.
    """

    step: int
    levels: torch.Tensor
    contributions: dict[str, torch.Tensor] | None = None
    attention: torch.Tensor | None = None


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def forced_path() -> str | None:
    """The path GLOM_VIZ_REDUCED_PRECISION forces under autocast ("autocast", "int8", "fp32"), or None."""
    value = os.environ.get(REDUCED_PRECISION_ENV, "").strip()
    if not value:
        return None
    if value not in FORCED_PATHS:
        raise ConfigError(
            f"{REDUCED_PRECISION_ENV}={value!r} is not a choice: set it to 1 (autocast's dtype), int8 (int8 "
            f"bottom-up and top-down nets) or 0 (exact fp32), or unset it to let glom-viz choose"
        )
    return FORCED_PATHS[value]


def cpu_flags() -> frozenset[str] | None:
    """This CPU's feature flags from /proc/cpuinfo (Linux), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            line = next((line for line in cpuinfo if line.startswith("flags")), None)
    except OSError:
        return None
    return None if line is None else frozenset(line.split(":", 1)[-1].split())


def _product(dtype: torch.dtype, shape: tuple[int, int, int]) -> Callable[[], object]:
    """An (m, k) @ (k, n) product in ``dtype``, ready to call."""
    m, k, n = shape
    x, y = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    return lambda: torch.mm(x, y)


def _net(path: str, dim: int, rows: int) -> Callable[[], object]:
    """One of GLOM's MLPs on ``rows`` columns, (rows, dim) fp32 -> 4 dim -> (rows, dim) fp32 with its GELU, run
    as the forward runs it on ``path`` ("fp32", "bf16", "fp16": cast in, products and GELU in the dtype, cast
    out; "int8": fbgemm's dynamic int8 products, GELU in fp32), ready to call."""
    hidden = FEEDFORWARD_MULT * dim
    x = torch.randn(rows, dim)
    w_in, w_out = torch.randn(dim, hidden) * dim ** -0.5, torch.randn(hidden, dim) * hidden ** -0.5
    b_in, b_out = torch.zeros(hidden), torch.zeros(dim)
    if path == "int8":
        layer_in, layer_out = int8_linear(w_in.T, b_in), int8_linear(w_out.T, b_out)

        def run():
            hidden_out = torch.ops.quantized.linear_dynamic(x, layer_in, INT8_REDUCE_RANGE)
            return torch.ops.quantized.linear_dynamic(torch.ops.aten.gelu_(hidden_out), layer_out, INT8_REDUCE_RANGE)
        return run
    dtype = PATH_DTYPES[path]
    w_in, w_out, b_in, b_out = (w.to(dtype) for w in (w_in, w_out, b_in, b_out))
    return lambda: torch.addmm(b_out, torch.ops.aten.gelu_(torch.addmm(b_in, x.to(dtype), w_in)), w_out).float()


def probe_seconds(products: dict[str, Callable[[], object]], repeats: int = PROBE_REPEATS,
                  rounds: int = PROBE_ROUNDS) -> dict[str, float]:
    """name -> the fastest of ``repeats`` calls of each product in each of ``rounds`` rounds, the names in
    rotation, on one torch thread, in CPU seconds of this thread (the wall clock would also count the time
    other processes held the core; one thread gives a core's rate, which a shared machine disturbs least)."""
    best = {name: math.inf for name in products}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # each product in its own dtype: under the caller's autocast an fp32 product would run in bf16 too
        with torch.autocast("cpu", enabled=False):
            for name, product in products.items():
                product()  # the first call warms the library up (and packs what it packs)
            names = list(products)
            for round_ in range(rounds):
                for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                    for _ in range(repeats):
                        start = time.thread_time()
                        products[name]()
                        best[name] = min(best[name], time.thread_time() - start)
    finally:
        torch.set_num_threads(threads)
    return best


@functools.cache
def reduced_precision_is_fast(device_type: str, dtype: torch.dtype) -> bool:
    """Whether matrix products in ``dtype`` beat fp32 on this device (always on CUDA).

    On x86 CPUs the flags answer the clear cases: AMX (amx_bf16, amx_fp16) makes them fast, and without
    AVX512-BF16 / AVX512-FP16 torch emulates them, tens of times slower. Where the flags say native
    without AMX (a hypervisor may hide AMX), and where flags cannot be read, a timed probe decides:
    once per process, products shaped like GLOM's, in rotation, the dtype taken only when clearly faster.
    GLOM_VIZ_REDUCED_PRECISION=1 makes it True, 0 or int8 False.
    """
    forced = forced_path()
    if forced is not None:
        return forced == "autocast"
    if device_type != "cpu":
        return True
    flags = cpu_flags()
    name = next((path for path, value in PATH_DTYPES.items() if value == dtype), None)
    if flags is not None and name in NATIVE_FLAGS:
        native, matrix_units = NATIVE_FLAGS[name]
        if matrix_units in flags:
            return True
        if native not in flags:
            return False
    # native vector instructions but no matrix units, or an unknown CPU: time it. Emulated products run
    # some 50x slower, so an unknown CPU is probed small
    shape, repeats = (PROBE_SHAPE, PROBE_REPEATS) if flags is not None else (PROBE_SHAPE_UNKNOWN, 2)
    timings = probe_seconds({"fp32": _product(torch.float32, shape), "reduced": _product(dtype, shape)}, repeats)
    return timings["reduced"] * PROBE_MARGIN < timings["fp32"]


def int8_is_fast(dim: int, against: str = "fp32") -> bool:
    """Whether the int8 nets (fbgemm's dynamic int8 linear) beat the nets of path ``against`` ("fp32", or
    "bf16" / "fp16" where those beat fp32) for a model of ``dim`` on this CPU.

    False below INT8_MIN_DIM (measured no faster there) and without fbgemm's kernels; otherwise a timed
    probe, once per process, probed width and rival: one net's two products and its GELU on INT8_PROBE_ROWS
    columns at ``min(dim, INT8_PROBE_MAX_DIM)``, each as its path runs it, in rotation, int8 taken only when
    PROBE_MARGIN times faster. GLOM_VIZ_REDUCED_PRECISION is ``precision_path``'s to read, not this
    measurement's.
    """
    if dim < INT8_MIN_DIM or not int8_is_available():
        return False
    return _int8_beats(min(int(dim), INT8_PROBE_MAX_DIM), against)


@functools.cache
def _int8_beats(width: int, against: str) -> bool:
    timings = probe_seconds({path: _net(path, width, INT8_PROBE_ROWS) for path in (against, "int8")})
    return timings["int8"] * PROBE_MARGIN < timings[against]


def forget_probes() -> None:
    """Forget what the timed probes found, so that the next forward times them again (after the machine or the
    environment changed)."""
    for probe in _PROBES:
        probe.cache_clear()


def int8_is_available() -> bool:
    """Whether this torch has fbgemm's dynamic int8 linear under the current quantised engine."""
    if torch.backends.quantized.engine not in INT8_ENGINES:
        return False
    try:
        torch.ops.quantized.linear_dynamic  # noqa: B018 - looks the operator up
    except (AttributeError, RuntimeError):
        return False
    return True


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """A UserWarning the first time this process meets ``message``, then silence."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=4)


def precision_path(device_type: str, dim: int | None = None) -> str:
    """How GLOM's forward runs here and now: "fp32", autocast's dtype ("bf16", "fp16") or "int8".

    Outside autocast: "fp32". Under autocast, the fastest path this device has for a model of ``dim``, each
    reduced path taken only where measured faster: with gradients off, on a CPU with fbgemm, for ``dim`` >=
    INT8_MIN_DIM (None is probed at INT8_PROBE_MAX_DIM), unless ``precision_context("bf16")`` asked for no
    int8, "int8" (the bottom-up and top-down nets in dynamic int8) where a timed probe finds its nets faster
    than those of the rival path (``int8_is_fast``); else
    autocast's dtype where that beats fp32 (``reduced_precision_is_fast``); else "fp32", with a warning once per
    process saying why. GLOM_VIZ_REDUCED_PRECISION forces a path: 1 autocast's dtype, int8 (any dim), 0 fp32.
    """
    if not torch.is_autocast_enabled(device_type):
        return "fp32"
    requested = torch.get_autocast_dtype(device_type)
    name = next((path for path, dtype in PATH_DTYPES.items() if dtype == requested), str(requested))
    forced = forced_path()
    if forced == "fp32":
        _warn_once(f"{REDUCED_PRECISION_ENV}=0 forbids reduced precision: GLOM runs in exact fp32 under autocast")
        return "fp32"
    reduced = forced != "int8" and name in PATH_DTYPES and reduced_precision_is_fast(device_type, requested)
    width = INT8_PROBE_MAX_DIM if dim is None else int(dim)
    small = forced != "int8" and width < INT8_MIN_DIM
    int8_runs = device_type == "cpu" and int8_is_available() and not torch.is_grad_enabled()
    if forced == "int8" and int8_runs:
        return "int8"
    if (forced is None and int8_runs and _INT8_NETS_ALLOWED.get() and not small
            and int8_is_fast(width, name if reduced else "fp32")):
        return "int8"  # faster still than the dtype asked for, where that is fast: inference only
    if reduced:
        return name
    slower = f"{name} runs no faster than fp32 on this CPU (it is not native, or not faster where it is)"
    if forced == "int8" and device_type != "cpu":
        reason = f"the int8 nets run on CPUs only, not on {device_type.upper()}"
    elif device_type != "cpu" or not int8_is_available():
        reason = (f"{name} is not native on this {device_type.upper()} and int8 kernels are missing "
                  f"(quantised engine {torch.backends.quantized.engine!r})")
    elif torch.is_grad_enabled():
        reason = f"{slower} and the int8 nets serve inference only; run under torch.inference_mode() for int8"
    elif small:
        reason = (f"{slower} and int8 nets are no faster than fp32 below dim {INT8_MIN_DIM} (this model's is "
                  f"{width})")
    else:
        reason = (f"{slower} and the int8 nets of dim {width} ran no faster than fp32 ones here either (timed "
                  f"once per process)")
    _warn_once(f"{reason}: GLOM runs in fp32. Set {REDUCED_PRECISION_ENV}=1 to force {name}, int8 the int8 nets.")
    return "fp32"


def consensus_dtype(path: str, device_type: str) -> torch.dtype:
    """The dtype the consensus runs in on ``path``: the path's own, and on the int8 path (whose int8 is for the
    nets only) autocast's dtype where that is faster than fp32 here, else fp32."""
    if path == "int8":
        requested = torch.get_autocast_dtype(device_type)
        fast = forced_path() != "int8" and requested in PATH_DTYPES.values() and reduced_precision_is_fast(
            device_type, requested)
        return requested if fast else torch.float32
    return PATH_DTYPES.get(path, torch.float32)


# what a user may ask for: "fast" (torch.autocast; the forward picks the path), "bf16" (the same without the
# int8 nets: they move a trained model's islands more than a grey level of noise on the picture does, bf16
# less; experiments/precision_islands.py) or exact "fp32"
PRECISIONS = ("fast", "bf16", "fp32")
# False while a forward runs for a "bf16" request: precision_path then never picks the int8 nets
_INT8_NETS_ALLOWED = contextvars.ContextVar("glom_viz_int8_nets_allowed", default=True)


@contextlib.contextmanager
def precision_context(precision: str, device_type: str = "cpu"):
    """The context a forward runs in for ``precision``: autocast for any request but "fp32", else none.

    Under it ``precision_path`` picks what runs: for "bf16", autocast's dtype where that is faster than fp32
    (else fp32), never the int8 nets; any other name ("fast", "int8") asks for the fastest path.
    """
    allowed = _INT8_NETS_ALLOWED.set(precision != "bf16")
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision != "fp32"):
            yield
    finally:
        _INT8_NETS_ALLOWED.reset(allowed)


def run_path(dim: int, precision: str = "fast", device_type: str = "cpu") -> str:
    """What an inference forward of a model of ``dim`` runs as here when asked for ``precision``.

    "fp32", "bf16", "fp16" or "int8": ``precision_path`` under ``precision_context``, with gradients off,
    without its warning (the caller shows the answer). Every label that names a precision asks this.
    """
    if precision == "fp32":
        return "fp32"
    with torch.inference_mode(), precision_context(precision, device_type), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return precision_path(device_type, dim)


def patch_change(before: torch.Tensor, after: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(b, 3, S, S) twice -> (b, patches) float32: each patch's RMS pixel change, patches row-major."""
    if before.shape != after.shape:
        raise GlomInputError(f"the two frames must have one shape, got {tuple(before.shape)} and {tuple(after.shape)}")
    squared = rearrange((after.float() - before.float()) ** 2, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)",
                        p1=patch_size, p2=patch_size)
    return squared.mean(-1).sqrt()


def release_share(change: torch.Tensor, release: float) -> torch.Tensor:
    """Patch change (any shape) -> how much of its carried state each column lets go of, in [0, 1]: none up
    to RELEASE_KEEP x `release` (pixel noise, a slow drift of light), all from `release` on, linear between."""
    keep = RELEASE_KEEP * release
    return ((change - keep) / (release - keep)).clamp(0.0, 1.0)


def alike_neighbours(image: torch.Tensor, allowed: torch.Tensor, patch_size: int, radius: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each patch's most alike allowed patch nearby.

    Args:
        image: (b, 3, S, S); allowed: (b, patches) bool, the patches that may be picked, row-major.
        patch_size: in pixels; radius: the neighbourhood, in patches along each axis (>= 1).

    Returns:
        index (b, patches) int64 of the allowed patch within `radius` whose pixels are nearest to the
        patch's own (RMS over pixels and channels; the first in row-major order on a tie), and that
        difference (b, patches) float32, inf where no patch nearby is allowed (index: the patch itself).
    """
    b, _, size, _ = image.shape
    side = size // patch_size
    window = 2 * radius + 1
    pixels = rearrange(image.float(), "b c (h p1) (w p2) -> b (p1 p2 c) h w", p1=patch_size, p2=patch_size)
    # (b, values, window ** 2, patches): every patch's neighbourhood, padded beyond the picture
    around = F.unfold(pixels, window, padding=radius).view(b, pixels.shape[1], window * window, side * side)
    difference = (around - pixels.flatten(2)[:, :, None]).square().mean(1).sqrt()  # (b, window ** 2, patches)
    own = torch.arange(side * side, device=image.device, dtype=torch.float32).view(1, 1, side, side)
    candidates = F.unfold(own, window, padding=radius).long().view(1, window * window, side * side)
    inside = F.unfold(torch.ones_like(own), window, padding=radius).bool().view(1, window * window, side * side)
    picked = inside & torch.gather(allowed[:, None].expand(-1, window * window, -1), 2,
                                   candidates.expand(b, -1, -1))
    difference = difference.masked_fill(~picked, float("inf"))
    nearest, slot = difference.min(1)
    index = torch.gather(candidates.expand(b, -1, -1), 1, slot[:, None])[:, 0]
    own_index = torch.arange(side * side, device=image.device).expand(b, -1)
    return torch.where(torch.isinf(nearest), own_index, index), nearest


def patch_distances(side: int) -> torch.Tensor:
    """(n, n) Euclidean distances between patch centres on a side x side grid, row-major."""
    coords = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")).float()
    coords = rearrange(coords, "c h w -> (h w) c")
    return torch.cdist(coords, coords)


def resize_position_embedding(weight: torch.Tensor, side: int) -> torch.Tensor:
    """(old_side ** 2, dim) row-major position embedding -> (side ** 2, dim), resized as an image (bicubic).

    How ViTs move to another resolution: each new patch position takes the embedding found at its
    place on the old grid, so a model trained at one image size can be fine-tuned at another.
    """
    old_side = math.isqrt(weight.shape[0])
    assert old_side * old_side == weight.shape[0], "a square grid's embedding"
    grid = rearrange(weight, "(h w) d -> () d h w", h=old_side)
    resized = F.interpolate(grid.float(), size=(side, side), mode="bicubic", align_corners=False)
    return rearrange(resized, "() d h w -> (h w) d").to(weight.dtype)


class GroupedFeedForward(nn.Module):
    """One two-layer MLP per level, held as glom-pytorch holds it (grouped 1x1 convolutions).

    The convolutions define the parameter names and layout; the forward runs them as batched matrix
    products (``prepare``), which is the same arithmetic.
    """

    def __init__(self, *, dim: int, groups: int, mult: int = FEEDFORWARD_MULT):
        super().__init__()
        total_dim = dim * groups
        self.dim, self.groups, self.mult = dim, groups, mult
        self.net = nn.Sequential(
            Rearrange("b n l d -> b (l d) n"),
            nn.Conv1d(total_dim, total_dim * mult, 1, groups=groups),
            nn.GELU(),
            nn.Conv1d(total_dim * mult, total_dim, 1, groups=groups),
            Rearrange("b (l d) n -> b n l d", l=groups),
        )

    def weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(groups, d, hidden), (groups, 1, hidden), (groups, hidden, d), (groups, 1, d), ready for baddbmm.

        Views of the parameters, no copies."""
        d, g, hidden = self.dim, self.groups, self.dim * self.mult
        w_in = rearrange(self.net[1].weight, "(g e) d 1 -> g d e", g=g)
        b_in = rearrange(self.net[1].bias, "(g e) -> g () e", g=g)
        w_out = rearrange(self.net[3].weight, "(g d) e 1 -> g e d", g=g)
        b_out = rearrange(self.net[3].bias, "(g d) -> g () d", g=g)
        assert w_in.shape == (g, d, hidden) and w_out.shape == (g, hidden, d)
        return w_in, b_in, w_out, b_out

    @torch.no_grad()
    def widen_from(self, narrower: "GroupedFeedForward") -> None:
        """Take a narrower net's weights into this net's first hidden units, computing the same function.

        The extra hidden units keep their fresh input weights and get zero output weights, so they add
        nothing until training moves them (Net2Net's function-preserving widening, Chen et al. 2016).
        """
        if (narrower.dim, narrower.groups) != (self.dim, self.groups) or narrower.mult > self.mult:
            raise ConfigError(
                f"cannot widen an MLP of dim {narrower.dim}, {narrower.groups} groups, mult {narrower.mult} "
                f"into one of dim {self.dim}, {self.groups} groups, mult {self.mult}"
            )
        w_in, b_in, w_out, b_out = self.weights()  # views: writing them writes the parameters
        old_in, old_b_in, old_out, old_b_out = narrower.weights()
        hidden = old_in.shape[-1]
        w_in[..., :hidden] = old_in
        b_in[..., :hidden] = old_b_in
        w_out[:, :hidden] = old_out
        w_out[:, hidden:] = 0.0
        b_out.copy_(old_b_out)

    def prepare(self, path: str = "fp32", onednn: bool = False) -> "PreparedFeedForward":
        """The MLPs ready to run on a precision path ("fp32", "bf16", "fp16", "int8"); bf16 ones packed by
        oneDNN where ``onednn`` (inference on a CPU)."""
        return PreparedFeedForward(self.weights(), path, onednn)

    def forward(self, levels: torch.Tensor) -> torch.Tensor:
        """(b, n, groups, d) -> (b, n, groups, d)."""
        b, n = levels.shape[:2]
        x = rearrange(levels, "b n g d -> g (b n) d")
        out = self.prepare()(x.contiguous(), slice(0, self.groups))
        return rearrange(out, "g (b n) d -> b n g d", b=b, n=n)


def int8_linear(weight: torch.Tensor, bias: torch.Tensor):
    """weight (out, in), bias (out,) fp32 -> fbgemm's packed per-channel symmetric int8 linear."""
    scales = weight.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / INT8_WEIGHT_MAX
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # torch 2.13 marks quantised tensor types deprecated; fbgemm's prepack still takes only them
        warnings.filterwarnings("ignore", message=".*quantize_per_channel.*", category=UserWarning)
        quantized = torch.quantize_per_channel(weight.float().contiguous(), scales.double(), zero_points, 0,
                                               torch.qint8)
    return torch.ops.quantized.linear_prepack(quantized, bias.float().contiguous())


class OneDnnLinear:
    """One bf16 linear layer packed by oneDNN for its CPU: (m, in) bf16 -> (m, out) bf16, its bias and (if asked)
    its GELU applied inside the product."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, gelu: bool, rows: int):
        # weight (out, in): nn.Linear's layout, packed for products of about `rows` rows
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(torch.bfloat16).contiguous(), rows)
        self.bias = bias.detach().to(torch.bfloat16).contiguous()
        self.attr, self.algorithm = ("gelu", "none") if gelu else ("none", "")  # "none": the exact, erf GELU

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.attr, [], self.algorithm)


def onednn_layers(weights: tuple[torch.Tensor, ...], rows: int = ONEDNN_ROWS) -> list | None:
    """Per group, the (linear + GELU, linear) pair of ``GroupedFeedForward.weights()`` packed by oneDNN in bf16,
    or None, with one warning, where this torch or CPU cannot (the nets then run as batched products)."""
    w_in, b_in, w_out, b_out = (w.detach() for w in weights)
    try:
        if not onednn_is_available():
            raise RuntimeError("oneDNN's bf16 kernels are missing in this torch or CPU")
        layers = [(OneDnnLinear(w_in[g].T, b_in[g, 0], True, rows), OneDnnLinear(w_out[g].T, b_out[g, 0], False, rows))
                  for g in range(w_in.shape[0])]
        layers[0][1](layers[0][0](torch.zeros(1, w_in.shape[1], dtype=torch.bfloat16)))  # fails here, not mid-run
        return layers
    except (RuntimeError, AttributeError) as error:
        _warn_once(f"oneDNN could not pack GLOM's bf16 nets ({error}): they run as batched products instead")
        return None


def onednn_is_available() -> bool:
    """Whether this torch has oneDNN's packed bf16 linear with a GELU inside, and this CPU runs oneDNN in bf16."""
    try:
        return (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
                and callable(torch.ops.mkldnn._linear_pointwise) and callable(torch.ops.mkldnn._reorder_linear_weight))
    except (AttributeError, RuntimeError):
        return False


def onednn_is_fast(dim: int) -> bool:
    """Whether the oneDNN-packed bf16 nets (``PreparedFeedForward``'s ``onednn``) beat the batched bf16 products
    for a model of ``dim`` on this CPU: a timed probe, once per process and width (``min(dim,
    INT8_PROBE_MAX_DIM)``), one net on INT8_PROBE_ROWS columns each way, in rotation, taken only when PROBE_MARGIN
    times faster; False where oneDNN is missing or fails."""
    return onednn_is_available() and _onednn_beats(min(int(dim), INT8_PROBE_MAX_DIM))


@functools.cache
def _onednn_beats(width: int) -> bool:
    hidden = FEEDFORWARD_MULT * width
    weights = (torch.randn(1, width, hidden) * width ** -0.5, torch.zeros(1, 1, hidden),
               torch.randn(1, hidden, width) * hidden ** -0.5, torch.zeros(1, 1, width))
    x = torch.randn(1, INT8_PROBE_ROWS, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a failure to pack answers False here; the forward warns if it meets one
        packed = PreparedFeedForward(weights, "bf16", onednn=True)
    if packed.onednn is None:
        return False
    plain = PreparedFeedForward(weights, "bf16")
    with torch.inference_mode():
        timings = probe_seconds({"batched": lambda: plain(x, slice(0, 1)), "onednn": lambda: packed(x, slice(0, 1))})
    return timings["onednn"] * PROBE_MARGIN < timings["batched"]


def fused_training_dtype(dtype: torch.dtype, dim: int) -> torch.dtype:
    """The dtype the fused consensus trains in on a CPU when the nets run in ``dtype``: ``dtype`` itself where a
    timed probe (once per process, dtype and dim) finds one attention call's forward and backward PROBE_MARGIN
    times faster in it than in fp32, else fp32."""
    if dtype == torch.float32:
        return dtype
    return dtype if _fused_training_beats(dtype, int(dim)) else torch.float32


def _attention_step(dtype: torch.dtype, dim: int) -> Callable[[], object]:
    """One flash attention call on FUSED_PROBE_SHAPE at ``dim`` in ``dtype``, forward and backward, ready to call."""
    q, k, v = (torch.randn(*FUSED_PROBE_SHAPE, dim, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(*FUSED_PROBE_SHAPE, dim, dtype=dtype)

    def run():
        with torch.enable_grad():
            torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), grad)
    return run


@functools.cache
def _fused_training_beats(dtype: torch.dtype, dim: int) -> bool:
    timings = probe_seconds({"fp32": _attention_step(torch.float32, dim), "reduced": _attention_step(dtype, dim)})
    return timings["reduced"] * PROBE_MARGIN < timings["fp32"]


_PROBES = (reduced_precision_is_fast, _int8_beats, _onednn_beats, _fused_training_beats)  # the cached probes themselves, whoever stands in for them


class PreparedFeedForward:
    """A ``GroupedFeedForward``'s MLPs ready to run on one precision path, for as long as the weights hold.

    fp32 keeps views of the parameters (gradients flow); bf16 / fp16 keep cast copies; int8 keeps one pair
    of fbgemm-packed layers per group (inference only). ``onednn`` (bf16, inference, CPU) keeps one pair of
    oneDNN-packed bf16 layers per group instead, the bias and GELU done inside the products: where AMX runs
    the products themselves fast, the separate bias copy and GELU pass over the 4 dim wide hidden layer cost
    a third of the net's time. If oneDNN refuses to pack, the nets run as batched products, with one warning.
    """

    def __init__(self, weights: tuple[torch.Tensor, ...], path: str, onednn: bool = False):
        self.path = path
        self.groups = weights[0].shape[0]
        self.onednn = None
        if path == "int8":
            w_in, b_in, w_out, b_out = (w.detach() for w in weights)
            self.packed = [
                (int8_linear(w_in[g].T, b_in[g, 0]), int8_linear(w_out[g].T, b_out[g, 0])) for g in range(self.groups)
            ]
            return
        self.dtype = PATH_DTYPES[path]
        self.weights = tuple(w.to(self.dtype) for w in weights)
        if onednn and self.dtype == torch.bfloat16:
            self.onednn = onednn_layers(weights)

    def __call__(self, x: torch.Tensor, groups: slice, out: torch.Tensor | None = None) -> torch.Tensor:
        """x (g, m, d) fp32 -> (g, m, d) fp32 through the MLPs of ``groups`` (g of them): linear, GELU, linear.

        ``out``, (g, m, d) fp32, takes the result where given (and is returned)."""
        if self.path == "int8":
            result = self._int8(x, range(self.groups)[groups])
        elif self.onednn is not None:
            return self._onednn(x, range(self.groups)[groups], out)
        else:
            w_in, b_in, w_out, b_out = (w[groups] for w in self.weights)
            hidden = torch.baddbmm(b_in, x.to(self.dtype), w_in)
            hidden = F.gelu(hidden) if torch.is_grad_enabled() else torch.ops.aten.gelu_(hidden)
            result = torch.baddbmm(b_out, hidden, w_out)
        if out is None:
            return result.float()
        return out.copy_(result)

    def _onednn(self, x: torch.Tensor, groups: range, out: torch.Tensor | None) -> torch.Tensor:
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device) if out is None else out
        x = x.to(torch.bfloat16)
        for i, group in enumerate(groups):
            layer_in, layer_out = self.onednn[group]
            out[i] = layer_out(layer_in(x[i]))
        return out

    def _int8(self, x: torch.Tensor, groups: range) -> torch.Tensor:
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        for i, group in enumerate(groups):
            layer_in, layer_out = self.packed[group]
            hidden = torch.ops.quantized.linear_dynamic(x[i].float().contiguous(), layer_in, INT8_REDUCE_RANGE)
            torch.ops.aten.gelu_(hidden)
            out[i] = torch.ops.quantized.linear_dynamic(hidden, layer_out, INT8_REDUCE_RANGE)
        return out


class ConsensusAttention(nn.Module):
    """Attention of every column to the same level of the other columns; keys are unit vectors."""

    def __init__(self, num_patches_side: int, attend_self: bool = True, local_consensus_radius: float = 0,
                 consensus_radii: tuple[float, ...] | None = None):
        super().__init__()
        self.attend_self = attend_self
        self.local_consensus_radius = local_consensus_radius
        # (patches, patches) floats, made only where a mask needs them: 64 MB for 4096 patches
        distances = patch_distances(num_patches_side) if local_consensus_radius > 0 or consensus_radii else None
        if local_consensus_radius > 0:
            # persistent, as in glom-pytorch, so that its state dicts load strictly
            self.register_buffer("non_local_mask", rearrange(distances > local_consensus_radius, "i j -> () i j"))
        if consensus_radii is not None:
            radii = torch.tensor(consensus_radii).view(-1, 1, 1)
            per_level = (distances[None] > radii) & (radii > 0)
            self.register_buffer("non_local_mask_per_level", per_level, persistent=False)

    def mask(self) -> torch.Tensor | None:
        """(levels or 1, n, n) True where a column may not attend, or None."""
        if hasattr(self, "non_local_mask_per_level"):
            return self.non_local_mask_per_level
        if self.local_consensus_radius > 0:
            return self.non_local_mask
        return None

    def blocks(self, levels: int, side: int, scale: float, dtype: torch.dtype, device: torch.device,
               diagonal: str = "constant", banded: bool | None = None) -> list["ConsensusBlock"]:
        """The fused consensus's pieces: which levels, queries and keys each attention call takes, and its bias.

        Columns attend to columns within their level's radius only, so on a CPU a band of query rows needs
        only the key rows within the radius of it: a contiguous range of the row-major patches. Each level's
        bands are chosen to do the least work (``consensus_bands``); levels sharing a mask share their calls.
        Elsewhere one call takes every level, its bias stacked. The bias adds -inf where the mask forbids;
        on the diagonal, ``diagonal`` says what becomes of a column's similarity to itself: "kept" (columns
        attend to themselves) or "constant" (it becomes glom-pytorch's TOKEN_ATTEND_SELF_VALUE: with cosine
        queries of unit keys it is ``scale``).
        ``banded`` defaults to whether ``device`` is a CPU. Kept per (levels, side, scale, dtype, device,
        diagonal, banded).
        """
        banded = device.type == "cpu" if banded is None else banded
        key = (levels, side, scale, dtype, device, diagonal, banded)
        cached = getattr(self, "_blocks", {})
        if key not in cached:
            self._blocks = cached
            with torch.inference_mode(False):  # kept for forwards with gradients too
                cached[key] = self._make_blocks(levels, side, scale, dtype, device, diagonal, banded)
        return cached[key]

    def _make_blocks(self, levels: int, side: int, scale: float, dtype: torch.dtype, device: torch.device,
                     diagonal: str, banded: bool) -> list["ConsensusBlock"]:
        n = side * side
        mask = self.mask()
        masks = torch.zeros(1, n, n, dtype=torch.bool) if mask is None else mask.cpu()
        groups = []  # (first level, last level + 1, its mask): consecutive levels of one mask together
        for level in range(levels):
            level_mask = masks[min(level, len(masks) - 1)]
            if groups and torch.equal(groups[-1][2], level_mask):
                groups[-1][1] = level + 1
            else:
                groups.append([level, level + 1, level_mask])
        biases = []
        for first, last, level_mask in groups:
            bias = torch.zeros(n, n).masked_fill_(level_mask, -math.inf)
            if diagonal == "constant":
                bias.diagonal().add_(TOKEN_ATTEND_SELF_VALUE - scale)
            biases.append(bias)
        needs_bias = mask is not None or diagonal != "kept"
        if not banded:  # the banded calls are the CPU's flash attention
            bias = torch.stack([bias for (first, last, _), bias in zip(groups, biases) for _ in range(first, last)])
            bias = bias[:, None].to(device=device, dtype=dtype) if needs_bias else None
            return [ConsensusBlock(slice(0, levels), slice(0, n), slice(0, n), bias)]
        blocks = []
        for (first, last, level_mask), bias in zip(groups, biases):
            for q0, q1, k0, k1 in consensus_bands(level_mask, side):
                block_bias = None
                if needs_bias:
                    block_bias = bias[q0:q1, k0:k1].to(device=device, dtype=dtype).expand(last - first, 1, -1, -1)
                blocks.append(ConsensusBlock(slice(first, last), slice(q0, q1), slice(k0, k1), block_bias))
        return blocks


@dataclass(frozen=True)
class ConsensusBlock:
    """One fused attention call of the consensus: these levels' queries attend to these keys, plus the bias
    (levels, 1, queries, keys) or None."""

    levels: slice
    queries: slice
    keys: slice
    bias: torch.Tensor | None

    def of_levels(self, first: int, count: int) -> "ConsensusBlock":
        """This block for the levels first..first + count - 1 alone, counted from first."""
        start, stop = max(self.levels.start, first), min(self.levels.stop, first + count)
        bias = None if self.bias is None else self.bias[start - self.levels.start:stop - self.levels.start]
        return ConsensusBlock(slice(start - first, stop - first), self.queries, self.keys, bias)


class BandedAttention(torch.autograd.Function):
    """Attention in pieces (``ConsensusBlock``), each a fused flash-attention call on a band of the queries and
    the span of keys they may attend: (L, b, n, d) x3 -> (L, b, n, d).

    Its own backward adds each piece's gradients into one gradient per input, where autograd through slices
    would fill and add a whole (L, b, n, d) tensor per piece.
    """

    @staticmethod
    def forward(ctx, queries, keys, values, blocks, scale):
        out = queries.new_empty(queries.shape)
        saved = []
        for block in blocks:
            rows = (block.levels, slice(None))
            piece, logsumexp = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                queries[rows + (block.queries,)], keys[rows + (block.keys,)], values[rows + (block.keys,)],
                attn_mask=block.bias, scale=scale)
            out[rows + (block.queries,)] = piece
            saved += [piece, logsumexp]
        ctx.blocks, ctx.scale = blocks, scale
        ctx.save_for_backward(queries, keys, values, *saved)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        queries, keys, values, *saved = ctx.saved_tensors
        grads = [torch.zeros_like(queries), torch.zeros_like(keys), torch.zeros_like(values)]
        for i, block in enumerate(ctx.blocks):
            rows = (block.levels, slice(None))
            spans = (rows + (block.queries,), rows + (block.keys,), rows + (block.keys,))
            pieces = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                grad_out[spans[0]].contiguous(), queries[spans[0]], keys[spans[1]], values[spans[2]],
                saved[2 * i], saved[2 * i + 1], 0.0, False, attn_mask=block.bias, scale=ctx.scale)
            for grad, span, piece in zip(grads, spans, pieces):
                grad[span] += piece
        return (*grads, None, None)


def consensus_bands(blocked: torch.Tensor, side: int) -> list[tuple[int, int, int, int]]:
    """(n, n) bool, True where query i may not attend key j, on a side x side row-major grid ->
    [(first query, last query + 1, first key, last key + 1)]: bands of whole grid rows and, for each, the
    span of keys its queries may attend; the band height that does least work, a call costing BAND_COST."""
    n = blocked.shape[0]
    allowed = ~blocked
    if bool(allowed.all()):
        return [(0, n, 0, n)]
    columns = torch.arange(n)
    first = torch.where(allowed, columns, n).amin(1)
    last = torch.where(allowed, columns, -1).amax(1)
    best, best_cost = None, math.inf
    for rows in range(1, side + 1):
        height = rows * side
        bands = [(q0, min(n, q0 + height), int(first[q0:q0 + height].min()), int(last[q0:q0 + height].max()) + 1)
                 for q0 in range(0, n, height)]
        cost = sum((q1 - q0) * (k1 - k0) for q0, q1, k0, k1 in bands) + BAND_COST * n * n * len(bands)
        if cost < best_cost:
            best, best_cost = bands, cost
    return best


class Glom(nn.Module):
    """GLOM's columns of levels, settling by bottom-up, top-down, previous value and consensus.

    Same constructor and forward as ``glom_pytorch.Glom`` (0.0.14); see ``GlomConfig`` for the options.
    fp32 by default; under ``torch.autocast`` the forward runs the path ``precision_path`` names (bf16 where
    native; int8 bottom-up and top-down nets for inference on CPUs without native bf16; else fp32).
    """

    def __init__(
        self,
        *,
        dim: int = 512,
        levels: int = 6,
        image_size: int = 224,
        patch_size: int = 14,
        consensus_self: bool = False,
        local_consensus_radius: float = 0,
        **extensions,
    ):
        super().__init__()
        self.config = GlomConfig(
            dim=dim, levels=levels, image_size=image_size, patch_size=patch_size,
            consensus_self=consensus_self, local_consensus_radius=local_consensus_radius, **extensions,
        )
        side = image_size // patch_size
        self.levels = levels  # glom-pytorch's attribute: the number of levels
        self.image_to_tokens = nn.Sequential(
            Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size),
            nn.Linear(patch_size ** 2 * 3, dim),
        )
        self.pos_emb = nn.Embedding(side * side, dim)
        self.init_levels = nn.Parameter(torch.randn(levels, dim))
        mult = self.config.feedforward_mult
        self.bottom_up = GroupedFeedForward(dim=dim, groups=levels, mult=mult)
        self.top_down = GroupedFeedForward(dim=dim, groups=levels - 1, mult=mult)
        self.attention = ConsensusAttention(
            side, attend_self=consensus_self, local_consensus_radius=local_consensus_radius,
            consensus_radii=self.config.consensus_radii,
        )
        self.register_buffer("update_weights", self._update_weights(), persistent=False)
        self._prepared_cache: dict[str, tuple] = {}  # path -> (weights' versions, prepared nets)

    @classmethod
    def from_config(cls, config: GlomConfig) -> "Glom":
        return cls(**config.to_dict())

    @property
    def grid(self) -> tuple[int, int]:
        return self.config.grid

    @property
    def num_patches(self) -> int:
        return self.config.num_patches

    def _update_weights(self) -> torch.Tensor:
        """(4, levels): each contribution's weight in the mean; the top level has no top-down."""
        w = torch.tensor(self.config.contribution_weights or (1.0, 1.0, 1.0, 1.0)).view(4, 1).repeat(1, self.levels)
        w[2, -1] = 0.0
        return w / w.sum(dim=0, keepdim=True)

    # -- checks ---------------------------------------------------------------------------------

    def _check_image(self, img: torch.Tensor) -> None:
        size = self.config.image_size
        if not isinstance(img, torch.Tensor):
            raise GlomInputError(f"expected an image tensor (b, 3, {size}, {size}), got {type(img).__name__}")
        if img.ndim != 4 or img.shape[1] != 3 or tuple(img.shape[2:]) != (size, size):
            raise GlomInputError(
                f"expected images of shape (b, 3, {size}, {size}), got {tuple(img.shape)}: "
                f"resize to {size} px square with 3 colour channels (glom_viz.images.to_model_input does)"
            )
        if not img.is_floating_point():
            raise GlomInputError(f"expected a floating point image, got {img.dtype}: divide uint8 pixels by 255")
        if not torch.isfinite(img).all():
            raise GlomInputError("the image holds NaN or Inf values: only finite pixel values can be encoded")

    def _check_levels(self, levels: torch.Tensor, b: int) -> None:
        expected = (b, self.num_patches, self.config.levels, self.config.dim)
        if tuple(levels.shape) != expected:
            raise GlomInputError(
                f"levels to continue from must have shape (b, patches, levels, dim) = {expected}, "
                f"got {tuple(levels.shape)}: pass the output of a forward of this model on {b} image(s)"
            )
        if not torch.isfinite(levels).all():
            raise GlomInputError("the levels to continue from hold NaN or Inf values")

    # -- the continuation path ------------------------------------------------------------------

    def let_go(self, levels: torch.Tensor, before: torch.Tensor, after: torch.Tensor, release: float = RELEASE,
               reach: int = RELEASE_REACH, alike: float | None = ALIKE) -> torch.Tensor:
        """Columns carried from one frame to the next, each letting go of its island as far as its patch changed.

        Carried as they are (glom-pytorch's ``levels=``), columns hold on to the islands of the frame they
        settled on, so islands stay where an object was. Here a column lets go by the ``release_share`` of
        the most changed patch within `reach` patches of its own: the patches an object left or entered and
        their neighbours start anew, a still background keeps its state. A column let go starts from the
        state of the most alike still column within ALIKE_RADIUS patches (``alike_neighbours``; still: no
        patch within `reach` of it changed), as far as their patches now look alike, and from the fresh
        start (``starting_state``: ``init_levels``, with the column's position where the model is told it at
        the start) where none does: a patch an object left joins the background it now shows, and columns
        that all start afresh do not bind into an island of their own.

        Args:
            levels: (b, patches, levels, dim) columns settled on `before`.
            before, after: (b, 3, S, S) in [0, 1], the frame they settled on and the next one.
            release: the RMS pixel change from which a column lets go fully (> 0); up to half of it a
                column keeps its state.
            reach: patches (each axis) around a changed patch whose columns let go with it (>= 0).
            alike: the RMS pixel difference between a column's patch and a still one's from which it takes
                nothing of that column's state (> 0); up to half of it, all. None: every column let go
                starts from the fresh start.

        Returns:
            (b, patches, levels, dim) float32 columns to continue from on `after` (``levels=``); a frame
            that did not change keeps every column exactly.
        """
        if not (math.isfinite(release) and release > 0):
            raise GlomInputError(f"release is the RMS pixel change from which a column starts afresh, a number > 0 "
                                 f"(pixels in [0, 1]; 0.1 lets go where an edge crossed the patch), got {release}")
        if int(reach) != reach or reach < 0:
            raise GlomInputError(f"reach is a count of patches around a changed one, 0 or more, got {reach}")
        if alike is not None and not (math.isfinite(alike) and alike > 0):
            raise GlomInputError(f"alike is the RMS pixel difference from which a column let go takes nothing of a "
                                 f"still neighbour's state, a number > 0 (pixels in [0, 1]), or None, got {alike}")
        for frame in (before, after):
            self._check_image(frame)
        self._check_levels(levels, before.shape[0])
        reach = int(reach)
        share = release_share(patch_change(before, after, self.config.patch_size), release)  # (b, n)
        if reach:
            h, w = self.config.grid
            share = F.max_pool2d(share.view(-1, 1, h, w), 2 * reach + 1, 1, reach).view(share.shape)
        levels = levels.float()
        share = share.to(levels.device)
        start = self.starting_state().detach().expand_as(levels)
        if alike is not None:
            index, difference = alike_neighbours(after.to(levels.device), share == 0, self.config.patch_size,
                                                 max(ALIKE_RADIUS, reach + 1))
            still = torch.gather(levels, 1, index[..., None, None].expand_as(levels))
            start = torch.lerp(still, start, release_share(difference, alike)[..., None, None])
        return torch.lerp(levels, start, share[..., None, None])

    # -- the update -----------------------------------------------------------------------------

    def starting_state(self) -> torch.Tensor:
        """(patches, levels, dim) float32: every column's state before the first step: ``init_levels``, plus
        the column's position at ``config.start_position_levels``."""
        n = self.num_patches
        start = self.init_levels.float()[None].expand(n, -1, -1)
        told = list(self.config.start_position_levels)
        if not told:
            return start
        mask = torch.zeros(self.config.levels, 1, device=start.device)
        mask[told] = 1.0
        return start + self.pos_emb.weight[:n].float()[:, None] * mask

    def _prepared_nets(self, path: str) -> tuple[PreparedFeedForward, PreparedFeedForward]:
        """The bottom-up and top-down nets ready for ``path``.

        fp32 nets are views of the parameters. With gradients off, the others (cast or int8-packed
        weights) are kept, one set per path, until a parameter changes.
        """
        if path == "fp32" or torch.is_grad_enabled():
            return self.bottom_up.prepare(path), self.top_down.prepare(path)
        params = (*self.bottom_up.parameters(), *self.top_down.parameters())
        onednn = path == "bf16" and params[0].device.type == "cpu" and onednn_is_fast(self.config.dim)
        key = (torch.backends.quantized.engine, onednn, tuple((p.data_ptr(), p._version) for p in params))
        cached = self._prepared_cache.get(path)
        if cached is None or cached[0] != key:
            nets = self.bottom_up.prepare(path, onednn), self.top_down.prepare(path, onednn)
            cached = self._prepared_cache[path] = (key, nets)
        return cached[1]

    def _consensus(self, levels: torch.Tensor, dtype: torch.dtype, weights: bool = False,
                   first_level: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """levels (l, b, n, d) fp32, levels first_level.. of the model -> consensus (l, b, n, d) fp32,
        attention (l, b, n, n) fp32 or None.

        The attention weights are made only when asked for (``weights``). Otherwise, where the diagonal's
        replacement is a constant (cosine queries, or columns attending to themselves), the consensus runs
        fused (``F.scaled_dot_product_attention``, no n x n matrix kept) on the bands of columns that the
        consensus radii let attend each other (``ConsensusAttention.blocks``): with gradients off, and with
        them up to dim FUSED_TRAINING_MAX_DIM.
        """
        config = self.config
        d = levels.shape[3]
        scale = config.attention_scale if config.attention_scale is not None else d ** -0.5
        fused = not weights and (config.consensus_cosine or config.consensus_self)
        if fused and (d <= FUSED_TRAINING_MAX_DIM or not torch.is_grad_enabled()):
            keys = F.normalize(levels, dim=-1)
            queries = keys if config.consensus_cosine else levels
            diagonal = "kept" if config.consensus_self else "constant"
            if torch.is_grad_enabled() and levels.device.type == "cpu":
                dtype = fused_training_dtype(dtype, d)
            return self._fused_consensus(queries.to(dtype), keys.to(dtype), levels.to(dtype), scale, first_level,
                                         diagonal), None
        values = levels.to(dtype)
        if config.consensus_cosine:
            keys = F.normalize(levels, dim=-1).to(dtype)
            sim = torch.matmul(keys, keys.transpose(-1, -2)).float() * scale
        else:
            # the keys are unit vectors: the levels' similarities with each key's column divided by its norm, an
            # n x n pass where normalising the keys would be an n x d one and a second cast
            norms = torch.linalg.vector_norm(levels, dim=-1).clamp_min(NORMALIZE_EPS)  # (l, b, n)
            sim = torch.matmul(values, values.transpose(-1, -2)).float().mul_((scale / norms)[..., None, :])
        if not config.consensus_self:
            sim.diagonal(dim1=-2, dim2=-1).fill_(TOKEN_ATTEND_SELF_VALUE)
        mask = self.attention.mask()
        if mask is not None:
            if len(mask) > 1:  # one mask per level
                mask = mask[first_level:first_level + len(levels)]
            sim = sim.masked_fill(rearrange(mask, "l i j -> l () i j"), -torch.finfo(sim.dtype).max)
        attention = sim.softmax(dim=-1)
        consensus = torch.matmul(attention.to(dtype), values).float()
        return consensus, attention

    def _blocks_of(self, queries: torch.Tensor, scale: float, first_level: int, diagonal: str) -> list:
        """The consensus blocks for the levels first_level.. that ``queries`` (l, b, n, d) hold."""
        blocks = self.attention.blocks(self.config.levels, self.config.grid[0], scale, queries.dtype, queries.device,
                                       diagonal)
        if first_level or len(queries) < self.config.levels:
            blocks = [block.of_levels(first_level, len(queries)) for block in blocks
                      if block.levels.start < first_level + len(queries) and block.levels.stop > first_level]
        return blocks

    def _fused_consensus(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                         scale: float, first_level: int = 0, diagonal: str = "constant") -> torch.Tensor:
        """(l, b, n, d) each, levels first_level.. in the products' dtype -> consensus (l, b, n, d) fp32."""
        blocks = self._blocks_of(queries, scale, first_level, diagonal)
        if len(blocks) == 1:
            block = blocks[0]
            return F.scaled_dot_product_attention(queries, keys, values, attn_mask=block.bias, scale=scale).float()
        return BandedAttention.apply(queries, keys, values, blocks, scale).float()

    def _normalize(self, levels: torch.Tensor) -> torch.Tensor:
        if self.config.level_norm == "layernorm":
            return F.layer_norm(levels, levels.shape[-1:])
        if self.config.level_norm == "l2":
            return F.normalize(levels, dim=-1)
        return levels

    def iterate(
        self,
        img: torch.Tensor,
        iters: int | None = None,
        levels: torch.Tensor | None = None,
        *,
        contributions: bool = False,
        attention: bool = False,
        which_levels: list[int] | None = None,
    ) -> Iterator[GlomStep]:
        """Yield GLOM's state step by step, as each step is computed.

        Args:
            img: (b, 3, image_size, image_size) float images.
            iters: number of updates; default levels * 2, so information can travel up and back down.
            levels: (b, patches, levels, dim) columns to continue from (a previous frame's output).
            contributions: also yield the four contributions of each step (large: 4x the states).
            attention: also yield the consensus attention weights (patches x patches per level).
            which_levels: the levels whose contributions and attention are kept; default all.

        Yields:
            GlomStep for step 0 (the initial state) up to step iters.
        """
        L = self.config.levels
        iters = L * 2 if iters is None else int(iters)
        if iters < 0:
            raise GlomInputError(f"iters must be 0 or more, got {iters}")
        self._check_image(img)
        b, device = img.shape[0], img.device
        kept = list(range(L)) if which_levels is None else [int(l) for l in which_levels]
        if any(not 0 <= l < L for l in kept):
            raise GlomInputError(f"which_levels must lie in 0..{L - 1}, got {which_levels}")

        path = precision_path(device.type, self.config.dim)
        dtype = consensus_dtype(path, device.type)
        with torch.autocast(device.type, enabled=False):  # dtypes are chosen explicitly below
            nets = self._prepared_nets(path)
            tokens = self.image_to_tokens(img.float())  # (b, n, d)
            n, d = tokens.shape[1:]
            # the bottom-up into level 0 comes from the image alone: the same every step
            from_image = nets[0](tokens.reshape(1, b * n, d), slice(0, 1))  # (1, b n, d)
            pos = self.pos_emb.weight[:n].float()  # (n, d), given to the top-down nets
            if self.config.position_levels is not None:  # (L - 1, 1, n, d): zero where a net is not told
                told = torch.zeros(L - 1, 1, 1, 1, device=pos.device)
                told[list(self.config.position_levels)] = 1.0
                pos = pos * told
            if levels is None:
                state = repeat(self.starting_state(), "n l d -> l b n d", b=b).contiguous()
            else:
                self._check_levels(levels, b)
                state = rearrange(levels.float(), "b n l d -> l b n d").contiguous()
        yield GlomStep(0, rearrange(state, "l b n d -> b n l d"))

        for step in range(1, iters + 1):
            with torch.autocast(device.type, enabled=False):
                previous = state
                # every column still holds init_levels (not so where it starts with its position)
                uniform = step == 1 and levels is None and not self.config.start_position_levels
                # from init_levels, the image has reached levels [0, step - 1) of the previous state
                shared_from = None if levels is not None else min(step - 1, L)
                state, parts, attention_weights = self._update(previous, from_image, pos, nets, dtype, uniform,
                                                               weights=attention, shared_from=shared_from)
            step_contributions = step_attention = None
            if contributions:
                step_contributions = {
                    name: rearrange(part[kept], "l b n d -> b n l d")
                    for name, part in zip(CONTRIBUTIONS, (previous, *parts))
                }
            if attention:
                step_attention = rearrange(attention_weights[kept], "l b i j -> b l i j")
            yield GlomStep(step, rearrange(state, "l b n d -> b n l d"), step_contributions, step_attention)

    def _update(self, state: torch.Tensor, from_image: torch.Tensor, pos: torch.Tensor, nets, dtype: torch.dtype,
                uniform: bool = False, weights: bool = True, shared_from: int | None = None):
        """One GLOM step.

        state (L, b, n, d) fp32, contiguous; from_image (1, b n, d): the bottom-up into level 0; pos (n, d)
        or, told to some levels only, (L - 1, 1, n, d);
        nets: the prepared bottom-up and top-down nets; dtype: the consensus's; uniform: all columns hold the
        same state, so the bottom-up nets run on one column and the consensus of equal columns is their
        state; weights: make the attention weights; shared_from: the levels from this one up hold the same
        columns in every image (the image reaches level l after l + 1 steps), so the nets fed by them and
        their consensus run on the first image only and are shared (default: none are).
        Returns the new state, (bottom_up, top_down, consensus) each (L, b, n, d), attention (L, b, n, n)
        or None.
        """
        L, b, n, d = state.shape
        bottom_up_nets, top_down_nets = nets
        shared = L if shared_from is None or b == 1 else shared_from  # levels [shared, L) alike in all images
        columns = state.view(L, b * n, d)

        def on_first_image(values: torch.Tensor) -> torch.Tensor:  # (g, n, d) -> (g, b n, d)
            return values[:, None].expand(-1, b, n, d).reshape(-1, b * n, d)

        # bottom-up into level l from level l - 1 (level 0's from the image, computed once); the nets write
        # into their rows of one (L, b n, d) tensor
        bottom_up = columns.new_empty(L, b * n, d)
        bottom_up[:1] = from_image
        if uniform:
            bottom_up[1:] = bottom_up_nets(columns[:-1, :1], slice(1, L))
        else:
            own = min(shared, L - 1)  # inputs [0, own) differ between images
            if own > 0:
                bottom_up_nets(columns[:own], slice(1, 1 + own), out=bottom_up[1:1 + own])
            if own < L - 1:
                bottom_up[1 + own:] = on_first_image(bottom_up_nets(state[own:L - 1, 0], slice(1 + own, L)))
        # top-down into level l from level l + 1, with position; the top level gets none
        own = max(shared, 1)  # inputs [1, own) differ between images
        told = pos.dim() == 4  # told to some levels only: (L - 1, 1, n, d), one position per top-down net
        top_down = columns.new_empty(L, b * n, d)
        top_down[-1:] = 0.0
        if own > 1:
            top_down_nets((state[1:own] + (pos[:own - 1] if told else pos)).view(own - 1, b * n, d),
                          slice(0, own - 1), out=top_down[:own - 1])
        if own < L:
            top_down[own - 1:L - 1] = on_first_image(top_down_nets(
                (state[own:, 0] + (pos[own - 1:, 0] if told else pos)).contiguous(), slice(own - 1, L - 1)))
        attention_weights = None
        if uniform and not weights:
            consensus = state  # attention among equal columns returns their state
        elif weights or shared == L:
            consensus, attention_weights = self._consensus(state, dtype, weights)
        else:
            pieces = [self._consensus(state[:shared], dtype)[0]] if shared else []
            pieces.append(self._consensus(state[shared:, :1], dtype, first_level=shared)[0].expand(-1, b, n, d))
            consensus = torch.cat(pieces)
        # the weighted mean of (previous, bottom_up, top_down, consensus), one weight per level
        weights = rearrange(self.update_weights, "c l -> c l () ()")
        new_state = torch.mul(columns, weights[0])
        new_state.addcmul_(bottom_up, weights[1]).addcmul_(top_down, weights[2])
        new_state.addcmul_(consensus.reshape(L, b * n, d), weights[3])
        parts = tuple(part.reshape(L, b, n, d) for part in (bottom_up, top_down, consensus))
        return self._normalize(new_state.view(L, b, n, d)), parts, attention_weights

    def forward(self, img: torch.Tensor, iters: int | None = None, levels: torch.Tensor | None = None,
                return_all: bool = False) -> torch.Tensor:
        """(b, 3, s, s) -> (b, patches, levels, dim), or (iters + 1, b, patches, levels, dim) with return_all."""
        if return_all:
            return torch.stack([step.levels for step in self.iterate(img, iters, levels)])
        last = None
        for last in self.iterate(img, iters, levels):
            pass
        return last.levels
