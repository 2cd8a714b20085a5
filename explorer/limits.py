"""What one run of the page may hold, and how much the caches keep.

Raise them for a private server. The server's own limits are in .streamlit/config.toml, the upload
gate's in ``glom_viz.images.LIMITS``; docs/LIMITS.md lists them all.
"""

from __future__ import annotations

import os

import numpy as np

from glom_viz.checkpoints import LIMITS as SERVER_CHECKPOINT_LIMITS
from glom_viz.checkpoints import CheckpointLimits
from glom_viz.images import LIMITS
from glom_viz.limits import usable_cpus
from glom_viz.model import GlomConfig
from glom_viz.runs import STATES_DTYPE

MAX_UPLOADS = 12  # pictures uploaded at once; more are left out, with a message
# a set (a zip of the dataset layout): its pictures are read at the model's size and scored together,
# so a few dozen keep the page responsive (20 pictures of the shipped model score in a few seconds)
MAX_SET_PICTURES = 64
SET_UPLOAD_MB = 100  # the zip itself; each file in it is held to the image limits
MAX_FRAMES = 16  # frames of one sequence (an animation's frames, or the pictures in order)
MAX_ITERATIONS = 48
# consensus attention is (patches x patches) per level: 1024 patches (448 px in 14 px patches) is ~4 MB a
# level; a model asking for more (a checkpoint's grid, a tiny patch size) is refused before it runs
MAX_PATCHES = 1024
MAX_RUN_BYTES = 256 * 2**20  # the states one frame keeps: (iterations + 1) x patches x levels x dim in float16
IMAGE_UPLOAD_MB = LIMITS.max_upload_bytes // 2**20
CHECKPOINT_UPLOAD_MB = 100  # the default GLOM (dim 512, 6 levels) is ~92 MB in fp32
# Streamlit's upload route answers 400 to a file whose name is longer than this in UTF-8 (python-multipart's
# limit on a part's header): the file never reaches the app, so the uploaders say it beforehand
UPLOAD_NAME_BYTES = 2_000

# caches: bounded in entries and in bytes (st.cache_data pickles; the server's total is
# server.maxCacheDataSize). A run of the default GLOM (224 px, dim 512, 6 levels, 12 iterations) is
# ~20 MB in float16, so the run cache holds a few dozen of them at most, across all visitors.
MODEL_CACHE_ENTRIES = 4
# the models every visitor shares, by their weights and buffers: the default GLOM is 90 MB, the largest
# random model the sidebar offers (dim 1024, 8 levels) 500 MB; a model larger than this is refused unbuilt
MODEL_CACHE_BYTES = 768 * 2**20
RUN_CACHE_ENTRIES = 48
RUN_CACHE_BYTES = "600MB"
DERIVED_CACHE_ENTRIES = 256
DERIVED_CACHE_BYTES = "200MB"
PICTURE_CACHE_ENTRIES = 64
PICTURE_CACHE_BYTES = "300MB"
# a checkpoint is checked against these before its weights are allocated (glom_viz.checkpoints)
CHECKPOINT_LIMITS = CheckpointLimits(
    max_checkpoint_bytes=min(SERVER_CHECKPOINT_LIMITS.max_checkpoint_bytes, CHECKPOINT_UPLOAD_MB * 2**20),
    max_parameters=min(SERVER_CHECKPOINT_LIMITS.max_parameters, MODEL_CACHE_BYTES // 4),  # float32 weights
    max_patches=min(SERVER_CHECKPOINT_LIMITS.max_patches, MAX_PATCHES))
# what one visitor's page remembers (uploads seen, probes asked for): the oldest go first
REMEMBERED_KEYS = 256

# Visitors' pages run side by side in threads of one process. GLOM's products here are small (256
# columns), so one intra-op thread per run is fastest: on two busy cores, two threads made a run of the
# shipped model 4-20x slower (0.11 s vs 0.5-2 s, OpenMP threads waiting on each other). Raise it for big
# models on an otherwise idle machine.
TORCH_THREADS = int(os.environ.get("GLOM_VIZ_TORCH_THREADS", "1"))
# A big model's run alone on the server takes every core: a 224 px, dim 512, 6-level model ran 12 steps in
# 0.42 s on two threads against 0.79 s on one (bf16; 1.0 against 1.7 s in fp32; AMD EPYC Zen 4, 2 cores).
# It goes back to TORCH_THREADS at its next step once another run starts beside it. Big: patches x levels
# x dim ** 2 (the nets' products per step) from BIG_RUN_WORK on; smaller runs take a tenth of a second.
LONE_RUN_THREADS = int(os.environ.get("GLOM_VIZ_LONE_RUN_THREADS", "0")) or usable_cpus()
BIG_RUN_WORK = 2**26
# GLOM runs in a few worker threads of their own, niced: where the cores are busy, a visitor scrubbing
# (Streamlit's threads, at the server's priority) goes before another visitor's long run. Measured with
# benchmarks/load.py: a 224 px model's run beside three scrubbing visitors (docs/LIMITS.md).
RUN_WORKERS = int(os.environ.get("GLOM_VIZ_RUN_WORKERS", "2"))
RUN_NICE = int(os.environ.get("GLOM_VIZ_RUN_NICE", "10"))  # added to the server's own nice (at most 19)
# after the first page, UMAP's numba code is compiled (~20 s of CPU) and the browser behind PNG/SVG export
# is started (a few s), both in the background; GLOM_VIZ_WARM_UP=0 skips them (tests, tiny servers)
WARM_UP = os.environ.get("GLOM_VIZ_WARM_UP", "1") != "0"


def run_threads(config: GlomConfig, runs_in_flight: int) -> int:
    """Torch threads for one step of a run of this model, with this many runs (its own included) going on."""
    big = config.num_patches * config.levels * config.dim**2 >= BIG_RUN_WORK
    return max(TORCH_THREADS, LONE_RUN_THREADS) if big and runs_in_flight <= 1 else TORCH_THREADS


def run_size_problem(config: GlomConfig, iterations: int) -> str | None:
    """What is wrong with running this model for this many iterations here, or None when it fits the limits."""
    patches = config.num_patches
    if patches > MAX_PATCHES:
        return (f"This model looks at {patches:,} patches ({config.image_size} px in {config.patch_size} px patches); "
                f"this server runs at most {MAX_PATCHES:,}: pick a larger patch size or a smaller image size.")
    states_bytes = (iterations + 1) * patches * config.levels * config.dim * np.dtype(STATES_DTYPE).itemsize
    if states_bytes > MAX_RUN_BYTES:
        return (f"{iterations} iterations of this model keep {states_bytes / 2**20:,.0f} MB of states per image, "
                f"above this server's {MAX_RUN_BYTES / 2**20:,.0f} MB: use fewer iterations or a smaller model.")
    return None
