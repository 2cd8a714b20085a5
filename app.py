"""glom-viz: watch GLOM's columns settle into islands of agreement, level by level and step by step.

    streamlit run app.py

This file wires widgets to ``glom_viz``. Sidebar helpers draw widgets and return small settings
dataclasses; the cached functions below are the project's only caching, keyed by content hashes (of
the model, the picture and the settings); the views draw figures that ``glom_viz.render`` builds. The
model and the warmed-up UMAP are shared by every session through ``st.cache_resource`` and only read
(under ``torch.inference_mode``); what a user chooses lives in their own ``st.session_state``. The few
array operations here are glue glom_viz has no function for yet (a mask cropped like its picture, a
mask's colours as labels, how far each contribution pulled a column).

A page run goes: model -> pictures -> one GLOM run per frame (cached, with progress) -> the viewer, a
fragment, so that scrubbing steps, switching level or view only redraws from cached labels.
"""

from __future__ import annotations

import gc
import hashlib
import html
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import streamlit as st
import torch

from glom_viz import export, islands, render
from glom_viz.checkpoints import SHIPPED_CHECKPOINT, checkpoint_hash, read_checkpoint
from glom_viz.errors import CheckpointError, ConfigError, ExportError, GlomInputError, ImageLoadError, StatesError
from glom_viz.images import FITS, LIMITS, fit_mask, load_frames, load_image, read_mask, sample_images, to_model_input
from glom_viz.model import Glom, GlomConfig, precision_path, reduced_precision_is_fast
from glom_viz.project import PROJECTIONS, project, warm_up_umap
from glom_viz.scenes import EVAL_SEEDS, make_scene

# ---------------------------------------------------------------------------------------------------
# limits: what one run may hold (raise them for a private server; the server's own are in
# .streamlit/config.toml, the upload gate's in glom_viz.images.LIMITS)

MAX_UPLOADS = 12  # pictures uploaded at once; more are left out, with a message
MAX_FRAMES = 16  # frames of one sequence (an animation's frames, or the pictures in order)
MAX_ITERATIONS = 48
# consensus attention is (patches x patches) per level: 1024 patches (448 px in 14 px patches) is ~4 MB a
# level; a model asking for more (a checkpoint's grid, a tiny patch size) is refused before it runs
MAX_PATCHES = 1024
MAX_RUN_BYTES = 256 * 2**20  # the states one frame keeps: (iterations + 1) x patches x levels x dim in float16
IMAGE_UPLOAD_MB = LIMITS.max_upload_bytes // 2**20
CHECKPOINT_UPLOAD_MB = 100  # the default GLOM (dim 512, 6 levels) is ~92 MB in fp32

# caches: bounded in entries and in bytes (st.cache_data pickles; the server's total is
# server.maxCacheDataSize). A run of the default GLOM (224 px, dim 512, 6 levels, 12 iterations) is
# ~20 MB in float16, so the run cache holds a few dozen of them at most, across all sessions.
MODEL_CACHE_ENTRIES = 4
RUN_CACHE_ENTRIES = 48
RUN_CACHE_BYTES = "600MB"
DERIVED_CACHE_ENTRIES = 256
DERIVED_CACHE_BYTES = "200MB"
PICTURE_CACHE_ENTRIES = 64
PICTURE_CACHE_BYTES = "300MB"

# the model panel
SOURCES = {"shipped": "Trained (shipped)", "random": "Random weights (seeded)", "upload": "Upload a checkpoint"}
# the shipped model's shape (glom_viz.train.TrainConfig's defaults): a random model of the same shape
# stands in for it until the file exists
RANDOM_CONFIG = GlomConfig(dim=64, levels=4, image_size=64, patch_size=4)
RANDOM_SEED = 0
PRECISIONS = {"fast": "fast", "fp32": "exact fp32"}
# what "fast" runs as: bf16 where the CPU has it, else glom_viz.model's int8 nets, else fp32
PATH_NAMES = {"bf16": "bf16", "fp16": "fp16", "int8": "int8 nets", "fp32": "fp32"}

# pictures
SCENE_SEEDS = tuple(EVAL_SEEDS[i] for i in (0, 1, 2))  # held-out scenes, never seen in training
PHOTOS = ("china", "flower", "astronaut", "coffee", "chelsea")
IMAGE_TYPES = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif")
MASK_TYPES = ("png", "bmp", "gif", "tif", "tiff", "webp")
DISPLAY_PX = 448  # overlays are drawn at this size: the model's 64 px input is tiny on a screen
# the overlay goes to the browser as JPEG: ~1 ms to encode a 448 px photograph against ~75 ms for PNG
# (zlib), which was most of a scrub's server time; the exports stay lossless PNG
OVERLAY_FORMAT = "JPEG"
STATES_DTYPE = np.float16  # the stored states; float32 where a value would overflow float16
FLOAT16_SAFE = 6.0e4

# island finding
COUNT_LABELS = {"davies_bouldin": "Davies-Bouldin (separated islands)", "silhouette": "best silhouette"}
METHOD_LABELS = {"kmeans": "k-means", "agglomerative": "agglomerative (Ward)", "hdbscan": "HDBSCAN",
                 "threshold": "threshold on neighbours' cosine"}
MAX_FIXED_ISLANDS = 24

# the viewer
VIEWS = ("Islands", "Levels × steps", "Projection", "Measures", "Parse tree", "Column")
ALL_LEVELS = "all"
DEFAULT_LEVEL = 2  # the shipped model's object islands (common fate) are at levels 2 and 3; parts at level 1
PLAY_INTERVAL_S = 0.7
PROJECTION_LABELS = {"pca": "PCA", "umap": "UMAP"}
LEGEND_CHIP_PX = 14
# Sessions run side by side in threads of one process. GLOM's products here are small (256 columns), so
# one intra-op thread per run is fastest: on two busy cores, two threads made a run of the shipped model
# 4-20x slower (0.11 s vs 0.5-2 s, OpenMP threads waiting on each other). Raise it for big models on an
# otherwise idle machine.
TORCH_THREADS = int(os.environ.get("GLOM_VIZ_TORCH_THREADS", "1"))
# after the first page, UMAP's numba code is compiled (~20 s of CPU) and the browser behind PNG/SVG export
# is started (a few s), both in the background; GLOM_VIZ_WARM_UP=0 skips them (tests, tiny servers)
WARM_UP = os.environ.get("GLOM_VIZ_WARM_UP", "1") != "0"


# ---------------------------------------------------------------------------------------------------
# what the panels return


@dataclass(frozen=True)
class ModelSettings:
    """Which model to explore and how to run it."""

    source: str  # a key of SOURCES
    seed: int
    config: GlomConfig  # for random weights
    checkpoint_name: str | None = None
    checkpoint: bytes | None = field(default=None, repr=False)
    consensus_self: bool = False  # asked for glom-pytorch state dicts, which cannot say
    precision: str = "fp32"


@dataclass(frozen=True)
class ImageSettings:
    """Which pictures, and how they become the model's square input."""

    bundled: tuple[str, ...]
    uploads: tuple[tuple[str, bytes], ...]  # (file name, bytes) in upload order
    fit: str
    animations_as_frames: bool
    sequence: bool  # carry each frame's final state into the next


@dataclass(frozen=True)
class RunSettings:
    iterations: int


@dataclass(frozen=True)
class IslandSettings:
    """How islands are found: glom_viz.islands.find_islands's method, count and parameters."""

    method: str
    n_islands: int | None
    params: tuple[tuple[str, object], ...] = ()

    def keywords(self) -> dict:
        return {"method": self.method, "n_islands": self.n_islands, **dict(self.params)}

    def describe(self) -> str:
        count = "automatic count" if self.n_islands is None else f"{self.n_islands} islands"
        extra = ", ".join(f"{k}={v}" for k, v in self.params)
        return ", ".join(x for x in (METHOD_LABELS[self.method], count if self.method in islands.COUNT_METHODS
                                     else "", extra) if x)


# ---------------------------------------------------------------------------------------------------
# what flows between the stages


@dataclass(frozen=True, eq=False)
class LoadedModel:
    model: Glom
    key: str  # content hash: the checkpoint's sha256, or the random model's seed and config
    title: str
    note: str | None  # what the user should know (a stand-in, what was inferred)
    checkpoint_sha: str


@dataclass(frozen=True, eq=False)
class Picture:
    """A picture as loaded: (H, W, 3) uint8 and, for the bundled scenes, its ground truth."""

    name: str
    key: str  # sha256 of the file (and frame), or of the scene's seed and size
    rgb: np.ndarray
    note: str | None = None
    masks: tuple[tuple[str, np.ndarray], ...] = ()  # name -> (H, W) int labels, 0 = background


@dataclass(frozen=True, eq=False)
class Frame:
    """One picture as the model sees it, its ground truth per patch, and the key of its run."""

    picture: Picture
    tensor: torch.Tensor  # (1, 3, S, S) in [0, 1]
    shown: np.ndarray  # (S, S, 3) uint8: exactly the model's input
    display: np.ndarray  # (DISPLAY_PX, DISPLAY_PX, 3) uint8: the same crop, for drawing on
    info: str  # how the picture was cropped and resized
    truth: tuple[tuple[str, np.ndarray], ...]  # name -> (N,) label per patch
    run_key: str


@dataclass(frozen=True, eq=False)
class RunResult:
    """GLOM's states for one frame: every step, every column, every level."""

    states: np.ndarray  # (T, N, L, D) STATES_DTYPE, T = iterations + 1
    final: np.ndarray  # (N, L, D) float32, the last step at full precision: the next frame starts here
    first_nonfinite: tuple[int, int] | None  # (step, level) where NaN or Inf first appeared
    seconds: float
    path: str = "fp32"  # the path glom_viz.model took: fp32, bf16 or int8 (small models stay fp32)


@dataclass(frozen=True, eq=False)
class Session:
    """Everything the viewer draws from; held by the viewer fragment between its reruns."""

    model: LoadedModel
    frames: tuple[Frame, ...]
    runs: tuple[Callable[[], RunResult], ...]  # cache lookups, one per frame (recompute if evicted)
    sequence: bool
    iterations: int
    precision: str
    fit: str
    island_settings: IslandSettings
    playing: bool  # whether the viewer was set up with play's timer


# ---------------------------------------------------------------------------------------------------
# caching: the only place in the project. Keys are content hashes; a leading underscore keeps an
# argument out of the key (it is only used to compute a missing entry). st.cache_data pickles what it
# keeps, and this script's own classes cannot be unpickled in a later run of it, so the cached
# functions return plain dicts, tuples and arrays that the callers wrap.


def content_key(*parts) -> str:
    """A short sha256 over the repr of some hashable settings and hashes."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


@st.cache_resource(max_entries=MODEL_CACHE_ENTRIES, show_spinner="Loading the model…")
def cached_model(key: str, _load: Callable[[], LoadedModel]) -> LoadedModel:
    loaded = _load()
    loaded.model.eval().requires_grad_(False)  # shared by every session: read only
    return loaded


@st.cache_resource(show_spinner=False)
def warm_up() -> threading.Thread:
    """Once per server, off the user's path: compile UMAP, then start the export browser."""
    def work() -> None:
        warm_up_umap()
        if export.find_browser() is not None:
            try:
                export.start_export_server()
            except ExportError:
                pass  # the first PNG export will say why
        freeze_heap()  # what UMAP's import and compile left behind lives as long as the server
    thread = threading.Thread(target=work, name="glom-viz-warm-up", daemon=True)
    thread.start()
    return thread


def freeze_heap() -> None:
    """Move every object alive now out of the garbage collector's sight (gc.freeze).

    Streamlit runs a full collection after every script or fragment run (runner.postScriptGC). Over
    the heap that torch, scikit-learn, plotly and numba leave, that took ~270 ms of CPU per scrub,
    holding the GIL while the browser waited for the new overlay; frozen, it only walks what the runs
    made since. Called once the first page is drawn (the imports and the model are in) and again after
    the warm-up; whatever is alive then lives as long as the server anyway.
    """
    gc.collect()
    gc.freeze()


@st.cache_resource(show_spinner=False)
def heap_frozen() -> bool:
    """freeze_heap once per server, after the first page."""
    freeze_heap()
    return True


@st.cache_resource(show_spinner=False)
def static_export_browser() -> str | None:
    """The Chromium that PNG and SVG export drive, or None (then only HTML export is offered)."""
    return export.find_browser()


@st.cache_resource(show_spinner=False)
def cached_photos() -> dict[str, Picture]:
    """The photographs that scikit-learn and scikit-image ship, keyed by name."""
    return {name: Picture(name, hashlib.sha256(rgb.tobytes()).hexdigest(), rgb, note=None)
            for name, rgb in sample_images().items() if name in PHOTOS}


@st.cache_data(max_entries=PICTURE_CACHE_ENTRIES, max_size=PICTURE_CACHE_BYTES, show_spinner=False)
def cached_scene(seed: int, image_size: int) -> dict:
    """A held-out synthetic scene as Picture fields, with its objects and parts as ground truth."""
    scene = make_scene(seed, image_size)
    rgb = np.rint(scene.image * 255).astype(np.uint8)
    kinds = ", ".join(scene.kinds)
    return dict(name=f"scene {seed - EVAL_SEEDS[0] + 1}", key=content_key("scene", seed, image_size), rgb=rgb,
                note=f"synthetic scene ({kinds}) with ground-truth objects and parts",
                masks=(("objects", scene.objects), ("parts", scene.parts)))


@st.cache_data(max_entries=PICTURE_CACHE_ENTRIES, max_size=PICTURE_CACHE_BYTES, show_spinner=False)
def cached_upload(data: bytes, name: str, as_frames: bool) -> list[dict]:
    """Check and decode an upload (glom_viz.images) into Picture fields; raises ImageLoadError saying what to do."""
    if as_frames:
        loaded = load_frames(data, name)
        many = len(loaded) > 1
        return [dict(name=f"{name} · frame {image.frame + 1}" if many else name, key=f"{image.sha256}:{image.frame}",
                     rgb=image.rgb, note=image.note) for image in loaded]
    image = load_image(data, name)
    return [dict(name=name, key=image.sha256, rgb=image.rgb, note=image.note)]


@st.cache_data(max_entries=PICTURE_CACHE_ENTRIES, max_size=PICTURE_CACHE_BYTES, show_spinner=False)
def cached_input(key: str, image_size: int, fit: str, _rgb: np.ndarray) -> tuple[torch.Tensor, np.ndarray,
                                                                                   np.ndarray, str]:
    """(model input (1, 3, S, S), shown (S, S, 3), display (DISPLAY_PX, DISPLAY_PX, 3), how it was made)."""
    tensor, shown, info = to_model_input(_rgb, image_size, fit)
    if max(_rgb.shape[:2]) > image_size:
        _, display, _ = to_model_input(_rgb, max(DISPLAY_PX, image_size), fit)
    else:  # small pictures (the scenes): show the pixels the model sees, enlarged without blur
        factor = max(1, DISPLAY_PX // image_size)
        display = shown.repeat(factor, axis=0).repeat(factor, axis=1)
    return tensor, shown, display, info


@st.cache_data(max_entries=RUN_CACHE_ENTRIES, max_size=RUN_CACHE_BYTES, show_spinner=False)
def stored_run(key: str, _result: dict | None = None) -> dict | None:
    """The RunResult fields stored under a run key, or None when there are none yet.

    Runs are computed outside the cache and then stored here (see cached_run): a function cached with
    st.cache_data replays every element it drew on each later hit, and a run draws a progress bar.
    """
    return _result


def cached_run(key: str, compute: Callable[[], dict]) -> RunResult:
    """A frame's run from the cache, or computed (with its progress bar) and stored there."""
    stored = stored_run(key)
    if stored is None:
        stored = compute()
        stored_run.clear(key)  # the lookup above cached None under this key
        stored_run(key, stored)
    return RunResult(**stored)


@st.cache_data(max_entries=DERIVED_CACHE_ENTRIES, max_size=DERIVED_CACHE_BYTES, show_spinner=False)
def cached_labels(run_key: str, settings: IslandSettings, _compute: Callable[[], np.ndarray]) -> np.ndarray:
    return _compute()


@st.cache_data(max_entries=DERIVED_CACHE_ENTRIES, max_size=DERIVED_CACHE_BYTES, show_spinner=False)
def cached_derived(kind: str, key: str, _compute: Callable[[], object]) -> object:
    """Measures, projections, figures and column probes, each keyed by what it was made from."""
    return _compute()


# ---------------------------------------------------------------------------------------------------
# the model


def model_panel() -> ModelSettings:
    """Sidebar: which model (shipped, random, uploaded checkpoint) and at what precision."""
    st.sidebar.header("Model")
    source = st.sidebar.radio("Weights", list(SOURCES), format_func=SOURCES.get, key="model_source",
                              label_visibility="collapsed")
    seed, config = RANDOM_SEED, RANDOM_CONFIG
    checkpoint_name = checkpoint = None
    consensus_self = False
    if source == "random":
        with st.sidebar.expander("Random model", expanded=True):
            seed = int(st.number_input("Seed", 0, 2**31 - 1, RANDOM_SEED, key="model_seed"))
            left, right = st.columns(2)
            dim = int(left.number_input("dim", 8, 1024, RANDOM_CONFIG.dim, step=8, key="model_dim"))
            levels = int(right.number_input("levels", 2, 8, RANDOM_CONFIG.levels, key="model_levels"))
            image_size = int(left.number_input("image size", 16, 448, RANDOM_CONFIG.image_size, step=8,
                                               key="model_image_size"))
            patch_size = int(right.number_input("patch size", 2, 32, RANDOM_CONFIG.patch_size,
                                                key="model_patch_size"))
            consensus_self = st.checkbox("columns attend to themselves (consensus_self)", key="model_self")
            radius = float(st.number_input("local consensus radius (0 = global)", 0.0, 64.0, 0.0, step=1.0,
                                           key="model_radius"))
            config = (image_size, patch_size, dim, levels, consensus_self, radius)
    elif source == "upload":
        upload = st.sidebar.file_uploader(
            "Checkpoint (.safetensors from glom-viz, or a glom-pytorch .pt state dict)",
            type=["safetensors", "pt", "pth"], key="model_checkpoint", max_upload_size=CHECKPOINT_UPLOAD_MB)
        consensus_self = st.sidebar.checkbox(
            "consensus_self (glom-pytorch .pt files do not store it)", key="model_checkpoint_self",
            help="dim, levels, patch size, image size and the local radius are read from the tensor shapes; "
                 "whether columns attended to themselves is not, so say it here.")
        if upload is not None:
            checkpoint_name, checkpoint = upload.name, upload.getvalue()
    fast = fast_path()
    choice = st.sidebar.radio(
        "Precision", list(PRECISIONS), key="model_precision", horizontal=True,
        index=0 if reduced_precision_is_fast("cpu", torch.bfloat16) else 1,
        format_func=lambda p: f"fast ({PATH_NAMES[fast]})" if p == "fast" else PRECISIONS[p],
        help="Fast runs GLOM's matrix products in bf16 where the CPU has bf16 units (states stay fp32 between "
             "steps); on CPUs without them glom_viz runs the bottom-up and top-down nets in int8 instead. "
             "Exact runs everything in fp32.")
    precision = fast if choice == "fast" else "fp32"
    if choice == "fast" and fast != "bf16":
        st.sidebar.caption(f"This CPU has no native bf16 (it would run many times slower), so the fast path here "
                           f"is {PATH_NAMES[fast]}.")
    if isinstance(config, tuple):
        image_size, patch_size, dim, levels, consensus_self, radius = config
        try:
            config = GlomConfig(dim=dim, levels=levels, image_size=image_size, patch_size=patch_size,
                                consensus_self=consensus_self, local_consensus_radius=radius)
        except ConfigError as error:
            st.sidebar.error(f"{error}. Using the default random model meanwhile.")
            config = RANDOM_CONFIG
    return ModelSettings(source, seed, config, checkpoint_name, checkpoint, consensus_self, precision)


def fast_path() -> str:
    """The path glom_viz.model takes here when asked for speed: "bf16", "int8" or "fp32"."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the page says it (model_panel); the log need not
        return precision_path("cpu")


def precision_context(precision: str):
    """autocast for the reduced-precision paths (glom_viz.model picks bf16 or int8 under it), none for fp32."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "fp32")


def random_model(seed: int, config: GlomConfig, title: str, note: str | None) -> LoadedModel:
    with torch.random.fork_rng(devices=[]):  # other sessions' random state is left alone
        torch.manual_seed(seed)
        model = Glom.from_config(config)
    return LoadedModel(model, content_key("random", seed, config), title, note, f"random:{seed}")


def load_model(settings: ModelSettings) -> tuple[LoadedModel, str | None]:
    """The model the settings ask for, and an error to show if it could not be had (then a stand-in)."""
    stand_in_note = (f"**Stand-in model.** The trained model is not shipped yet, so this is a random GLOM (seed "
                     f"{RANDOM_SEED}) of its shape: its islands come from untrained weights.")

    def stand_in() -> LoadedModel:
        return cached_model(content_key("random", RANDOM_SEED, RANDOM_CONFIG),
                            lambda: random_model(RANDOM_SEED, RANDOM_CONFIG, "random GLOM (stand-in)",
                                                 stand_in_note))

    def shipped() -> LoadedModel:
        if not SHIPPED_CHECKPOINT.is_file():
            return stand_in()
        sha = checkpoint_hash(SHIPPED_CHECKPOINT)

        def load() -> LoadedModel:
            checkpoint = read_checkpoint(SHIPPED_CHECKPOINT)
            return LoadedModel(checkpoint.model, sha, "trained GLOM (shipped)", checkpoint.note, sha)
        return cached_model(sha, load)

    if settings.source == "random":
        config = settings.config
        return cached_model(content_key("random", settings.seed, config),
                            lambda: random_model(settings.seed, config, f"random GLOM (seed {settings.seed})",
                                                 "Untrained weights: islands come from the architecture alone.")
                            ), None
    if settings.source == "upload":
        if settings.checkpoint is None:
            return shipped(), None
        sha = checkpoint_hash(settings.checkpoint)
        name, data, consensus_self = settings.checkpoint_name, settings.checkpoint, settings.consensus_self

        def load() -> LoadedModel:
            is_ours = name.endswith(".safetensors")
            checkpoint = read_checkpoint(data, **({} if is_ours else {"consensus_self": consensus_self}))
            if checkpoint.source != "glom-viz" and is_ours:  # a bare safetensors state dict: ask like .pt
                checkpoint = read_checkpoint(data, consensus_self=consensus_self)
            return LoadedModel(checkpoint.model, content_key(sha, checkpoint.config), f"checkpoint {name}",
                               checkpoint.note, sha)
        try:
            return cached_model(content_key(sha, consensus_self), load), None
        except (CheckpointError, ConfigError) as error:
            return shipped(), f"Could not use the checkpoint **{name}**: {error}"
    try:
        return shipped(), None
    except (CheckpointError, ConfigError) as error:
        return stand_in(), f"The shipped model could not be loaded: {error}"


def model_summary(loaded: LoadedModel) -> None:
    """Sidebar: the model's config and what it expects."""
    config = loaded.model.config
    h, w = config.grid
    st.sidebar.caption(
        f"**{loaded.title}** · expects **{config.image_size}×{config.image_size} px** images in "
        f"**{config.patch_size} px** patches ({h}×{w} = {h * w} columns) · {config.levels} levels of "
        f"dim {config.dim} · {sum(p.numel() for p in loaded.model.parameters()):,} weights")
    with st.sidebar.expander("Full config"):
        st.json(config.to_dict(), expanded=True)
        st.caption(f"hash `{loaded.key[:16]}`")


# ---------------------------------------------------------------------------------------------------
# pictures


def images_panel() -> ImageSettings:
    """Sidebar: bundled pictures, uploads, how they fit the model, and sequences."""
    st.sidebar.header("Images")
    scene_names = [f"scene {i + 1}" for i in range(len(SCENE_SEEDS))]
    bundled = st.sidebar.multiselect("Bundled", scene_names + list(PHOTOS), default=scene_names + list(PHOTOS),
                                     key="images_bundled",
                                     help="Synthetic scenes with ground-truth objects and parts, and photographs "
                                          "that scikit-learn and scikit-image ship.")
    files = st.sidebar.file_uploader(
        f"Your images ({', '.join(t.upper() for t in IMAGE_TYPES[:5])}, TIFF, GIF; up to {MAX_UPLOADS})",
        type=list(IMAGE_TYPES), accept_multiple_files=True, key="images_upload", max_upload_size=IMAGE_UPLOAD_MB)
    fit = st.sidebar.selectbox("Fit to the model's square input", FITS, key="images_fit",
                               format_func={"crop": "crop the centre", "pad": "pad with white",
                                            "stretch": "stretch"}.get)
    animations = st.sidebar.toggle("Animated files: all frames", key="images_frames",
                                   help="Read every frame of an animated GIF, WebP, PNG or multi-page TIFF "
                                        "(else the first frame only).")
    sequence = st.sidebar.toggle("Sequence: carry state from frame to frame", key="images_sequence",
                                 help="Process the images in order, each starting from the previous one's final "
                                      "columns (GLOM's slow video: `levels=` of the last frame).")
    uploads = tuple((f.name, f.getvalue()) for f in (files or []))
    return ImageSettings(tuple(bundled), uploads, fit, animations, sequence)


def gather_pictures(settings: ImageSettings, image_size: int) -> tuple[list[Picture], list[str]]:
    """The pictures of this run, and a message for every upload that could not be used."""
    pictures: list[Picture] = []
    problems: list[str] = []
    photos = cached_photos()
    for name in settings.bundled:
        if name.startswith("scene "):
            pictures.append(Picture(**cached_scene(SCENE_SEEDS[int(name.split()[1]) - 1], image_size)))
        elif name in photos:
            pictures.append(photos[name])
    uploads = settings.uploads
    if len(uploads) > MAX_UPLOADS:
        problems.append(f"{len(uploads)} images were uploaded; only the first {MAX_UPLOADS} are used. "
                        "Remove some, or raise MAX_UPLOADS in app.py on a private server.")
        uploads = uploads[:MAX_UPLOADS]
    for name, data in uploads:
        try:
            pictures.extend(Picture(**fields) for fields in cached_upload(data, name, settings.animations_as_frames))
        except ImageLoadError as error:
            problems.append(str(error))
    return pictures, problems


def show_new_upload(pictures: list[Picture], bundled: int) -> None:
    """Switch the image selector to a picture the user has just uploaded (the first of them)."""
    seen = st.session_state.setdefault("seen_uploads", set())
    new = [index for index, picture in enumerate(pictures[bundled:], bundled) if picture.key not in seen]
    seen.update(picture.key for picture in pictures[bundled:])
    if new:
        st.session_state["picture"] = new[0]


def frame_of(picture: Picture, model: LoadedModel, image_size: int, fit: str, previous_run: str,
             settings_key: str, mask: np.ndarray | None) -> Frame:
    tensor, shown, display, info = cached_input(picture.key, image_size, fit, picture.rgb)
    grid = model.model.grid
    truth = [(name, islands.patch_truth(fit_mask(m, fit), grid)) for name, m in picture.masks]
    if mask is not None:
        truth.append(("your mask", islands.patch_truth(fit_mask(mask, fit), grid)))
    run_key = content_key(model.key, picture.key, image_size, fit, settings_key, previous_run)
    return Frame(picture, tensor, shown, display, info, tuple(truth), run_key)


# ---------------------------------------------------------------------------------------------------
# running GLOM


def run_panel(levels: int) -> RunSettings:
    st.sidebar.header("Run")
    iterations = st.sidebar.slider("Iterations", 1, MAX_ITERATIONS, min(2 * levels, MAX_ITERATIONS),
                                   key=f"iterations_{levels}",
                                   help="GLOM's seed: twice the number of levels, so information can travel "
                                        "up to the top and back down.")
    return RunSettings(int(iterations))


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


def compute_run(model: Glom, frame: Frame, init: Callable[[], RunResult] | None, iterations: int,
                precision: str, label: str) -> dict:
    """Run GLOM on one frame step by step with a progress bar; RunResult's fields, states stored compactly."""
    start_levels = None
    if init is not None:
        previous = init()
        if previous.first_nonfinite is not None:
            raise GlomInputError("the previous frame's columns hold NaN or Inf, so this frame cannot start from "
                                 "them: turn the sequence off, use fp32, or fewer iterations")
        start_levels = torch.from_numpy(previous.final)[None]
    bar = st.progress(0.0, text=f"{label}: step 0 of {iterations}")
    steps = []
    start = time.perf_counter()
    with torch.inference_mode(), precision_context(precision):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the caption says which path ran
            path = precision_path("cpu", dim=model.config.dim)
        for glom_step in model.iterate(frame.tensor, iterations, start_levels):
            steps.append(glom_step.levels[0].float().numpy())  # (N, L, D)
            bar.progress(glom_step.step / iterations, text=f"{label}: step {glom_step.step} of {iterations}")
    seconds = time.perf_counter() - start
    bar.empty()
    states = np.stack(steps)
    finite = np.isfinite(states).all(axis=(1, 3))  # (T, L)
    first_nonfinite = None
    if not finite.all():
        step, level = np.argwhere(~finite)[0]
        first_nonfinite = (int(step), int(level))
    safe = np.abs(np.nan_to_num(states, nan=0.0, posinf=0.0, neginf=0.0)).max() < FLOAT16_SAFE
    stored = states.astype(STATES_DTYPE) if safe else states
    return dict(states=stored, final=states[-1].copy(), first_nonfinite=first_nonfinite, seconds=seconds,
                path=path)


def runs_for(session_model: LoadedModel, frames: list[Frame], sequence: bool, iterations: int,
             precision: str) -> tuple[Callable[[], RunResult], ...]:
    """One cache lookup per frame; in a sequence each frame starts from the previous one's final state."""
    runs: list[Callable[[], RunResult]] = []
    for index, frame in enumerate(frames):
        previous = runs[index - 1] if sequence and index > 0 else None
        label = f"frame {index + 1} of {len(frames)} · {frame.picture.name}" if sequence else frame.picture.name

        def run(frame=frame, previous=previous, label=label) -> RunResult:
            return cached_run(frame.run_key, lambda: compute_run(
                session_model.model, frame, previous, iterations, precision, label))
        runs.append(run)
    return tuple(runs)


# ---------------------------------------------------------------------------------------------------
# islands and what is derived from them


def islands_panel() -> IslandSettings:
    """Sidebar: how islands are found."""
    st.sidebar.header("Islands")
    method = st.sidebar.selectbox("Method", islands.METHODS, format_func=METHOD_LABELS.get, key="islands_method")
    n_islands = None
    params: dict[str, object] = {}
    if method in islands.COUNT_METHODS:
        automatic = st.sidebar.toggle("Automatic count", value=True, key="islands_auto")
        if automatic:
            params["count_by"] = st.sidebar.selectbox(
                "Pick the count by", islands.COUNT_CRITERIA, format_func=COUNT_LABELS.get, key="islands_count_by",
                help="Davies-Bouldin finds parts nested inside wholes (low levels), where the best silhouette "
                     "keeps only the wholes; where no count gives separated islands it falls back to the "
                     "silhouette.")
            params["max_islands"] = int(st.sidebar.slider("At most", 2, MAX_FIXED_ISLANDS, islands.MAX_ISLANDS,
                                                          key="islands_max"))
        else:
            n_islands = int(st.sidebar.number_input("Islands", 1, MAX_FIXED_ISLANDS, 4, key="islands_count"))
    if method == "agglomerative":
        params["connectivity"] = st.sidebar.checkbox("Only neighbouring patches join (grid connectivity)",
                                                     value=True, key="islands_connectivity")
    if method == "threshold":
        params["threshold"] = float(st.sidebar.slider("Cosine threshold", 0.5, 0.999, islands.THRESHOLD, 0.001,
                                                      format="%.3f", key="islands_threshold",
                                                      help="Neighbouring columns whose vectors have at least "
                                                           "this cosine are in the same island."))
        params["min_size"] = int(st.sidebar.number_input("Smallest island (patches; smaller = noise)", 1, 64, 1,
                                                         key="islands_min_size"))
    if method == "hdbscan":
        params["min_cluster_size"] = int(st.sidebar.number_input("Smallest island (patches)", 2, 256,
                                                                 islands.HDBSCAN_MIN_CLUSTER_SIZE,
                                                                 key="islands_min_cluster"))
    return IslandSettings(method, n_islands, tuple(sorted(params.items())))


def labels_of(frame: Frame, result: RunResult, settings: IslandSettings, grid) -> np.ndarray:
    """(T, L, N) island ids of every step and level, computed once per (run, island settings)."""
    return cached_labels(frame.run_key, settings,
                         lambda: islands.find_islands_all_levels(result.states, grid, **settings.keywords()))


def level_measures(frame: Frame, states: np.ndarray, labels: np.ndarray, grid, level: int,
                   truth_name: str | None) -> list[dict]:
    """One level's measures at every step (with ARI against the chosen truth): island_measures."""
    truth = dict(frame.truth).get(truth_name)
    return islands.island_measures(states[:, :, level], labels[:, level], grid, truth=truth)


def measures_of(frame: Frame, result: RunResult, labels: np.ndarray, settings: IslandSettings, grid,
                truth_name: str | None, levels: list[int] | None = None) -> dict[int, list[dict]]:
    """level -> per-step measures for the given levels (default all), each level computed once and cached."""
    levels = range(labels.shape[1]) if levels is None else levels
    return {level: cached_derived("measures", content_key(frame.run_key, settings, truth_name, level),
                                  lambda level=level: level_measures(frame, result.states, labels, grid, level,
                                                                     truth_name))
            for level in levels}


# ---------------------------------------------------------------------------------------------------
# the viewer: a fragment, so scrubbing, level and view changes redraw only it


def clamp_state(key: str, low: int, high: int, default: int) -> None:
    """Keep a slider's stored value inside its current range (iterations or frames may have changed)."""
    value = st.session_state.get(key)
    if not isinstance(value, int) or not low <= value <= high:
        st.session_state[key] = min(max(value if isinstance(value, int) else default, low), high)


def toggle_play(last_step: int) -> None:
    playing = not st.session_state.get("playing", False)
    st.session_state["playing"] = playing
    if playing and st.session_state.get("step", 0) >= last_step:
        st.session_state["step"] = 0


def viewer(session: Session) -> None:
    started = time.perf_counter()
    model = session.model.model
    grid = model.grid
    levels = model.config.levels
    last_step = session.iterations
    playing = st.session_state.get("playing", False)
    if playing != session.playing:  # play or pause was pressed in here: set the timer up (or down) again
        st.rerun(scope="app")
    if playing:  # the fragment's timer: one step further each tick, stop at the end
        step = st.session_state.get("step", 0) + 1
        st.session_state["step"] = min(step, last_step)
        if step >= last_step:
            st.session_state["playing"] = False

    # the level control needs ~320 px for its five choices at 1400 px; narrower, its last choice fades out
    controls = st.columns([2, 4.5, 1.1, 4.5] if session.sequence else [5.5, 1.1, 4.5], vertical_alignment="bottom")
    if session.sequence:
        clamp_state("frame", 0, len(session.frames) - 1, 0)
        index = controls[0].slider("Frame", 0, len(session.frames) - 1, key="frame",
                                   help="Each frame starts from the previous frame's final columns.")
        controls = controls[1:]
    else:
        index = 0
    clamp_state("step", 0, last_step, last_step)
    step = controls[0].slider("Step", 0, last_step, key="step",
                              help="Step 0 is the initial state; each step is one GLOM iteration. "
                                   "Focus the slider and use the arrow keys to scrub.")
    controls[1].button("⏸ Pause" if playing else "▶ Play", key="play", on_click=toggle_play, args=(last_step,),
                       width="stretch", help="Play the steps (shortcut: p)", shortcut="p")
    level_options = [*range(levels), ALL_LEVELS]
    if st.session_state.get("level") not in level_options:
        st.session_state["level"] = min(DEFAULT_LEVEL, levels - 1)
    level = controls[2].segmented_control(
        "Level", level_options, key="level", required=True,
        format_func=lambda l: "all levels" if l == ALL_LEVELS else (
            f"{l} (top)" if l == levels - 1 else f"{l} (bottom)" if l == 0 else str(l)))

    frame, run = session.frames[index], session.runs[index]
    result = run()
    if result.first_nonfinite is not None:
        bad_step, bad_level = result.first_nonfinite
        st.error(f"GLOM's columns for **{frame.picture.name}** became NaN or Inf at step {bad_step}, level "
                 f"{bad_level}, so no islands are drawn. This comes from the weights or an extreme input: try fp32 "
                 "precision, fewer iterations, or another checkpoint.")
        return
    try:
        labels = labels_of(frame, result, session.island_settings, grid)
    except StatesError as error:
        st.error(f"Islands could not be found with these settings: {error}")
        return

    view = st.segmented_control("View", VIEWS, key="view", required=True, default=VIEWS[0],
                                label_visibility="collapsed")
    truth_names = [name for name, _ in frame.truth]
    context = ViewContext(session, frame, result, labels, step, level, grid, truth_names)
    draw_view = dict(zip(VIEWS, (islands_view, sheet_view, projection_view, measures_view, parse_tree_view,
                                 column_view)))[view]
    figure = draw_view(context)
    export_row(context, figure, view)
    # last on the page: when it shows this step, everything above it (the export buttons too) is current
    where = f"{frame.picture.name} · " + ("all levels" if level == ALL_LEVELS else f"level {level}")
    st.caption(f"{where} · step {step} · drawn in {(time.perf_counter() - started) * 1000:.0f} ms on the server · "
               f"GLOM ran {result.seconds:.2f} s for this frame ({result.path}) · islands: "
               f"{session.island_settings.describe()}")


@dataclass(frozen=True, eq=False)
class ViewContext:
    session: Session
    frame: Frame
    result: RunResult
    labels: np.ndarray  # (T, L, N)
    step: int
    level: int | str
    grid: tuple[int, int]
    truth_names: list[str]

    @property
    def level_index(self) -> int:
        """The chosen level, or the top level when all levels are shown."""
        return self.labels.shape[1] - 1 if self.level == ALL_LEVELS else int(self.level)


def legend_html(ids: np.ndarray, counts: np.ndarray) -> str:
    """Colour chips for the islands of one map: id and how many patches."""
    chips = []
    for island, count, colour in zip(ids.tolist(), counts.tolist(), render.island_hex(ids)):
        name = "noise" if island < 0 else f"island {island}"
        chips.append(f'<span style="display:inline-flex;align-items:center;margin:0 10px 4px 0;white-space:nowrap">'
                     f'<span style="width:{LEGEND_CHIP_PX}px;height:{LEGEND_CHIP_PX}px;background:{colour};'
                     f'border:1px solid #333;border-radius:3px;margin-right:5px"></span>'
                     f'{html.escape(name)} · {count}</span>')
    return '<div style="line-height:1.9">' + "".join(chips) + "</div>"


def truth_choice(context: ViewContext, key: str) -> str | None:
    if not context.truth_names:
        return None
    return st.radio("Score islands against", context.truth_names, horizontal=True, key=key)


def overlay(context: ViewContext, step: int, level: int) -> np.ndarray:
    """The islands of one (step, level) drawn over the picture (DISPLAY_PX square), drawn once and cached."""
    frame = context.frame
    key = content_key(frame.run_key, context.session.island_settings, step, level)
    return cached_derived("overlay", key, lambda: render.draw_islands(frame.display, context.labels[step, level],
                                                                      context.grid))


def islands_view(context: ViewContext):
    """The islands of the chosen level (or all levels) at the chosen step, over the picture.

    The overlay is a plain image (drawn once per (step, level) and cached), so a scrub only swaps an
    image; the interactive plotly version with per-patch hover is what the figure exports hold.
    """
    frame, labels, step, grid = context.frame, context.labels, context.step, context.grid
    n_levels = labels.shape[1]
    if context.level == ALL_LEVELS:
        columns = st.columns(n_levels)
        for level, column in zip(reversed(range(n_levels)), columns):
            level_labels = labels[step, level]
            count = np.unique(level_labels[level_labels >= 0]).size
            column.image(overlay(context, step, level), width="stretch", output_format=OVERLAY_FORMAT,
                         caption=f"level {level}{' (top)' if level == n_levels - 1 else ''} · "
                                 f"{count} island{'s' if count != 1 else ''}")
        return lambda: render.sheet_figure(frame.display, labels, grid, steps=[step],
                                           title=f"{frame.picture.name}: all levels at step {step}")

    level = int(context.level)
    level_labels = labels[step, level]
    left, right = st.columns([3, 2], gap="large")
    left.image(overlay(context, step, level), width="stretch", output_format=OVERLAY_FORMAT,
               caption=f"{frame.picture.name} · level {level} · step {step} of {labels.shape[0] - 1}")
    with right:
        ids, counts = np.unique(level_labels, return_counts=True)
        count = np.count_nonzero(ids >= 0)
        st.markdown(f"**{count} island{'s' if count != 1 else ''}** at level {level}, step {step} "
                    "(patches per island)")
        st.markdown(legend_html(ids, counts), unsafe_allow_html=True)
        truth_name = truth_choice(context, "truth_islands")
        measures = measures_of(frame, context.result, labels, context.session.island_settings, grid, truth_name,
                               levels=[level])
        now = measures[level][step]
        metrics = st.columns(3)
        metrics[0].metric("in-island cos", fmt(now.get("within_cosine")),
                          help="Mean cosine of each column to its island's mean direction")
        metrics[1].metric("neighbours", fmt(now.get("neighbour_agreement")),
                          help="Mean cosine between neighbouring columns")
        metrics[2].metric("change", fmt(now.get("change")), help="Mean 1 - cosine to the previous step")
        if truth_name is not None:
            scores = st.columns(3)
            scores[0].metric("ARI", fmt(now.get("ari")), help=f"Adjusted Rand index against {truth_name}")
            scores[1].metric("FG-ARI", fmt(now.get("fg_ari")),
                             help=f"ARI against {truth_name} over the patches that are not background")
        st.divider()
        picture_panel(context)
    return lambda: render.island_map_figure(frame.display, level_labels, grid,
                                            title=f"{frame.picture.name} · level {level} · step {step}")


def fmt(value) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.3f}"


def picture_panel(context: ViewContext) -> None:
    """What the model sees, how the picture was made to fit, and a ground-truth mask upload."""
    frame = context.frame
    inner = st.columns([1, 2])
    size = frame.shown.shape[0]
    inner[0].image(frame.shown, caption=f"model input {size}×{size}", width=96)
    height, width = frame.picture.rgb.shape[:2]
    inner[1].caption(f"**{frame.picture.name}** · {width}×{height} px · {frame.info}"
                     + (f" · {frame.picture.note}" if frame.picture.note else ""))


def patches_of(event) -> list[int]:
    """Patch indices chosen in a plotly selection event (each point's customdata is its patch)."""
    if not event:
        return []
    patches = []
    for point in event.get("selection", {}).get("points", []):
        custom = point.get("customdata")
        if isinstance(custom, (list, tuple)):
            custom = custom[0] if custom else None
        if isinstance(custom, (int, float)):
            patches.append(int(custom))
    return sorted(set(patches))


def sheet_view(context: ViewContext):
    """The levels x steps small multiples: islands forming and growing upwards."""
    frame = context.frame
    key = content_key(frame.run_key, context.session.island_settings)
    figure = cached_derived("sheet", key, lambda: render.sheet_figure(
        frame.display, context.labels, context.grid, title=f"{frame.picture.name}: islands, levels × steps"))
    st.plotly_chart(figure, width="stretch", config={"displayModeBar": False}, key="sheet")
    st.caption("Rows are levels (top level at the top), columns are steps. An island keeps its colour from step "
               "to step.")
    return lambda: figure


def projection_view(context: ViewContext):
    """Columns of one level projected (PCA or UMAP), coloured by island; a selection lights up its patches."""
    frame, step, grid = context.frame, context.step, context.grid
    level = context.level_index
    left, right = st.columns([3, 2], gap="large")
    with right:
        options = st.columns(2)
        method = options[0].radio("Projection", PROJECTIONS, format_func=PROJECTION_LABELS.get, horizontal=True,
                                  key="projection_method")
        dims = options[1].radio("Dimensions", (2, 3), format_func=lambda d: f"{d}-D", horizontal=True,
                                key="projection_dims")
        fixed_axes = st.toggle("Same axes for every step", key="projection_fixed",
                               help="Keep the axes of the whole run while scrubbing, so the points move and the "
                                    "frame stays; off, the axes fit the step in view.")
    if method == "umap" and WARM_UP and warm_up().is_alive():
        st.info("UMAP is still being compiled in the background (once per server, ~20 s); this first projection "
                "waits for it.")
    with st.spinner(f"{PROJECTION_LABELS[method]} of level {level}…"):
        coords = cached_derived("projection", content_key(frame.run_key, level, method, dims),
                                lambda: project(context.result.states[:, :, level].astype(np.float32), method, dims))
    step_labels = context.labels[step, level]
    figure = render.projection_figure(coords[step], step_labels, frame=coords if fixed_axes else None,
                                      title=f"level {level} at step {step} · {PROJECTION_LABELS[method]}")
    figure.update_layout(height=520)
    with left:
        event = st.plotly_chart(figure, width="stretch", key=f"projection_{dims}", on_select="rerun",
                                selection_mode=("points", "box", "lasso"))
    chosen = patches_of(event)
    with right:
        st.image(render.draw_islands(frame.display, step_labels, grid, highlight=chosen or None),
                 width="stretch",
                 caption=(f"{len(chosen)} selected patches highlighted" if chosen
                          else "Select points (click, box or lasso) to light up their patches here."))
    return lambda: figure


def measures_view(context: ViewContext):
    """Island measures over the steps, one line per level."""
    truth_name = truth_choice(context, "truth_measures")
    measures = measures_of(context.frame, context.result, context.labels, context.session.island_settings,
                           context.grid, truth_name)
    figure = render.measures_figure(measures, title=f"{context.frame.picture.name}: island measures over steps")
    figure.add_vline(x=context.step, line_dash="dot", line_color="#888")
    st.plotly_chart(figure, width="stretch", key="measures")
    return lambda: figure


def parse_tree_view(context: ViewContext):
    """How the islands of each level sit inside those of the level above, at the chosen step."""
    tree = islands.parse_tree(context.labels[context.step])
    figure = render.parse_tree_figure(tree, title=f"parse tree at step {context.step}")
    left, right = st.columns([3, 1])
    left.plotly_chart(figure, width="stretch", key="parse_tree")
    right.markdown("**Purity** (share of a level's patches inside their island's parent)")
    for level, purity in enumerate(tree["purity"]):
        right.markdown(f"level {level} → {level + 1}: **{fmt(purity)}**")
    return lambda: figure


def probe_column(model: Glom, frame: Frame, init: np.ndarray | None, step: int, precision: str) -> dict:
    """Rerun GLOM to `step` keeping that step's attention (L, N, N) and each contribution's pull (N, L, 3).

    A contribution's pull is how far it moved the column: the update is new = sum_c w_c c with the
    weights summing to one, so new - previous = sum_c w_c (c - previous).
    """
    levels = None if init is None else torch.from_numpy(init)[None]
    with torch.inference_mode(), precision_context(precision):
        for glom_step in model.iterate(frame.tensor, step, levels, contributions=True, attention=True):
            pass
    parts = {name: value[0].float() for name, value in glom_step.contributions.items()}  # (N, L, D)
    weights = model.update_weights.float()  # (4, L) over (previous, bottom_up, top_down, consensus)
    pulls = {name: (weights[i][None, :] * (parts[name] - parts["previous"]).norm(dim=-1)).numpy()
             for i, name in enumerate(("previous", "bottom_up", "top_down", "consensus")) if name != "previous"}
    pulls["net move"] = (glom_step.levels[0].float() - parts["previous"]).norm(dim=-1).numpy()
    return {"attention": glom_step.attention[0].float().numpy(), "pulls": pulls}


def pick_patch() -> None:
    """The attention map was clicked: look at the clicked patch's column."""
    chosen = patches_of(st.session_state.get("attention"))
    if chosen:
        st.session_state["patch"] = chosen[0]


def column_view(context: ViewContext):
    """One column: whom it agrees with (consensus attention) and what moved it (the four contributions)."""
    frame, step, grid = context.frame, context.step, context.grid
    level = context.level_index
    h, w = grid
    session = context.session
    patch = st.session_state.get("patch", -1)
    if not 0 <= patch < h * w:  # none chosen yet (or another model): the middle of the picture
        patch = (h // 2) * w + w // 2
    pick = st.columns([1, 1, 4], vertical_alignment="bottom")
    # no keys: the defaults follow the patch last clicked on the island map
    row = int(pick[0].number_input("Row", 0, h - 1, patch // w))
    col = int(pick[1].number_input("Column", 0, w - 1, patch % w))
    patch = row * w + col
    st.session_state["patch"] = patch
    if step == 0:
        pick[2].info("Step 0 is the initial state: nothing has moved the columns yet. Pick a step of 1 or more.")
        return None
    probe_key = content_key(frame.run_key, step)
    requested = st.session_state.setdefault("probes", set())
    if probe_key not in requested:
        st.image(render.draw_islands(frame.display, context.labels[step, level], grid, highlight=[patch]),
                 width=360, caption=f"patch ({row}, {col}) at level {level}, step {step}")
        pick[2].caption("Attention and contributions are not kept during the run (they are ~4× the states); "
                        "they are recomputed for one step on request.")
        pick[2].button(f"Compute attention and contributions at step {step}", key="probe", type="primary",
                       on_click=requested.add, args=(probe_key,))
        return None
    index = session.frames.index(frame)
    init = None
    if session.sequence and index > 0:
        init = session.runs[index - 1]().final
    with st.spinner(f"Recomputing step {step} with attention and contributions…"):
        probe = cached_derived("column", probe_key, lambda: probe_column(
            session.model.model, frame, init, step, session.precision))
    left, right = st.columns(2, gap="large")
    attention = probe["attention"][level, patch]
    figure = render.attention_figure(frame.display, attention, grid, patch,
                                     title=f"level {level}, step {step}: whom patch ({row}, {col}) agrees with")
    left.plotly_chart(figure, width="stretch", key="attention", on_select=pick_patch, selection_mode=("points",))
    left.caption("Click a patch on the map to look at its column.")
    pulls = {name: values[patch] for name, values in probe["pulls"].items()}
    right.plotly_chart(render.contributions_figure(
        pulls, title=f"what moved patch ({row}, {col}) at step {step}, per level"), width="stretch",
        key="contributions")
    right.caption("Each bar is how far one contribution pulled the column this step: its weight times its "
                  "distance from the previous value. The net move is the length of the whole step (after any "
                  "normalisation of the levels).")
    return lambda: figure


# ---------------------------------------------------------------------------------------------------
# export


def export_row(context: ViewContext, figure: Callable[[], object] | None, view: str) -> None:
    """Download buttons: the figure in view, labels, measures, and the zip bundle with provenance."""
    frame, session = context.frame, context.session
    stem = "".join(c if c.isalnum() else "-" for c in frame.picture.name).strip("-") or "image"
    kind = view.lower().replace(" × ", "-").replace(" ", "-")
    truth_name = context.truth_names[0] if context.truth_names else None
    states, labels, grid = context.result.states, context.labels, context.grid

    def measures() -> dict[int, list[dict]]:  # on the click, in a thread of the server: no st.cache here
        return {level: level_measures(frame, states, labels, grid, level, truth_name)
                for level in range(labels.shape[1])}

    row = st.container(horizontal=True, vertical_alignment="center")
    row.markdown("**Export**")
    if figure is not None:  # figures are made only when a download asks for them
        no_browser = static_export_browser() is None
        why = export.NO_BROWSER if no_browser else "The figure in view"
        row.download_button("Figure PNG", lambda: export.figure_to_png(figure()), f"{stem}-{kind}.png",
                            "image/png", key="export_png", on_click="ignore", icon=":material/image:",
                            disabled=no_browser, help=why)
        row.download_button("SVG", lambda: export.figure_to_svg(figure()), f"{stem}-{kind}.svg",
                            "image/svg+xml", key="export_svg", on_click="ignore", disabled=no_browser, help=why)
        row.download_button("HTML", lambda: export.figure_to_html(figure()), f"{stem}-{kind}.html",
                            "text/html", key="export_html", on_click="ignore", help="The figure in view, interactive")
    row.download_button("Labels CSV", lambda: export.labels_to_csv(context.labels, context.grid),
                        f"{stem}-labels.csv", "text/csv", key="export_labels", on_click="ignore",
                        icon=":material/table:", help="The island of every patch at every step and level")
    row.download_button("Measures CSV", lambda: export.measures_to_csv(measures()),
                        f"{stem}-measures.csv", "text/csv", key="export_measures_csv", on_click="ignore")
    row.download_button("JSON", lambda: export.measures_to_json(measures(), truth=truth_name),
                        f"{stem}-measures.json", "application/json", key="export_measures_json", on_click="ignore")
    row.download_button("Bundle (zip)", lambda: bundle(context, measures(), truth_name),
                        f"{stem}-glom-viz.zip", "application/zip", key="export_bundle", on_click="ignore",
                        icon=":material/folder_zip:", type="primary",
                        help="Input, overlay, labels, measures and states, with a manifest of how they were made")


def bundle(context: ViewContext, measures: dict, truth_name: str | None) -> bytes:
    """Everything about this picture's run, with a manifest saying how it was made."""
    frame, session = context.frame, context.session
    result = context.result
    level = context.level_index
    settings = session.island_settings
    manifest = export.provenance(
        session.model.model.config.to_dict(), session.model.checkpoint_sha, frame.picture.key, seed=0,
        iters=session.iterations, method=settings.method, params=settings.keywords(),
        model=session.model.title, picture=frame.picture.name, fit=session.fit, input=frame.info,
        precision=session.precision, sequence=session.sequence, step=context.step, level=level,
        truth=truth_name, states_dtype=str(result.states.dtype))
    files = {
        "input.png": export.image_to_png(frame.shown),
        f"islands-level{level}-step{context.step}.png": export.image_to_png(
            render.draw_islands(frame.display, context.labels[context.step, level], context.grid)),
        "labels.csv": export.labels_to_csv(context.labels, context.grid),
        "measures.csv": export.measures_to_csv(measures),
        "measures.json": export.measures_to_json(measures, truth=truth_name),
        "states.npz": export.states_to_npz(result.states, labels=context.labels, image=frame.shown),
    }
    return export.make_bundle(files, manifest)


# ---------------------------------------------------------------------------------------------------
# the page


PAGE_CSS = """
<style>
.block-container {padding-top: 2.2rem; padding-bottom: 1rem;}
[data-testid="stMetricValue"] {font-size: 1.35rem;}
[data-testid="stSidebar"] h2 {font-size: 1.05rem; margin-top: 0.6rem;}
</style>
"""


def main() -> None:
    if torch.get_num_threads() != TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)
    st.set_page_config(page_title="glom-viz · islands of agreement", page_icon="🏝️", layout="wide",
                       initial_sidebar_state="expanded")
    st.markdown(PAGE_CSS, unsafe_allow_html=True)

    model_settings = model_panel()
    loaded, model_error = load_model(model_settings)
    model_summary(loaded)
    config = loaded.model.config
    image_settings = images_panel()
    run_settings = run_panel(config.levels)
    island_settings = islands_panel()

    title, chooser, badge = st.columns([3, 3, 3], vertical_alignment="bottom")
    title.markdown("#### glom-viz")
    title.caption("Islands of agreement in GLOM (Hinton, 2021), level by level, step by step")
    badge.caption(f"**{loaded.title}** · {config.image_size} px · {config.levels} levels · dim {config.dim} · "
                  f"{run_settings.iterations} iterations · {model_settings.precision}")
    if model_error:
        st.error(model_error + " Showing the default model instead.")
    if loaded.note:
        (st.warning if loaded.title.endswith("(stand-in)") else st.info)(loaded.note)

    pictures, problems = gather_pictures(image_settings, config.image_size)
    for problem in problems:
        st.error(problem)
    if not pictures:
        st.info("No images: pick bundled images or upload your own in the sidebar.")
        return
    if image_settings.sequence and len(pictures) > MAX_FRAMES:
        st.warning(f"A sequence holds at most {MAX_FRAMES} frames; the first {MAX_FRAMES} of {len(pictures)} are "
                   "used.")
        pictures = pictures[:MAX_FRAMES]
    if image_settings.sequence:
        chooser.caption(f"**Sequence** of {len(pictures)} frames, in order: pick a frame beside the step slider.")
    else:
        names = [p.name for p in pictures]
        show_new_upload(pictures, len(image_settings.bundled))
        clamp_state("picture", 0, len(pictures) - 1, 0)
        chosen = chooser.selectbox("Image", range(len(pictures)), format_func=names.__getitem__, key="picture")
        pictures = [pictures[chosen]]

    too_big = run_size_problem(config, run_settings.iterations)
    if too_big:
        st.error(too_big)
        return
    settings_key = content_key(run_settings.iterations, model_settings.precision)
    frames: list[Frame] = []
    previous = ""
    for picture in pictures:
        frame = make_frame(picture, loaded, image_settings.fit, previous, settings_key)
        if frame is None:
            return
        frames.append(frame)
        previous = frame.run_key if image_settings.sequence else ""
    runs = runs_for(loaded, frames, image_settings.sequence, run_settings.iterations, model_settings.precision)
    try:
        for run in runs:  # the runs show their progress here; later page runs find them cached
            run()
    except GlomInputError as error:
        st.error(str(error))
        return
    session = Session(loaded, tuple(frames), runs, image_settings.sequence, run_settings.iterations,
                      model_settings.precision, image_settings.fit, island_settings,
                      st.session_state.get("playing", False))
    st.fragment(viewer, run_every=PLAY_INTERVAL_S if session.playing else None)(session)
    heap_frozen()
    if WARM_UP:
        warm_up()


def make_frame(picture: Picture, loaded: LoadedModel, fit: str, previous: str, settings_key: str) -> Frame | None:
    """The frame of a picture, with the mask the user uploaded for it; None (and an error shown) if unusable."""
    mask = None
    if not picture.masks:  # the scenes bring their own truth
        upload = st.sidebar.file_uploader(
            f"Ground-truth mask for {picture.name} (optional)", type=list(MASK_TYPES), key=f"mask_{picture.key}",
            max_upload_size=IMAGE_UPLOAD_MB,
            help="A label image of the picture's size: one flat colour per object or part, black background. "
                 "The islands are then scored against it (ARI).")
        try:
            if upload is not None:
                mask = read_mask(upload.getvalue(), upload.name, picture.rgb.shape[:2], picture.name)
        except ImageLoadError as error:
            st.error(f"{error}. The islands are shown without a score.")
    try:
        return frame_of(picture, loaded, loaded.model.config.image_size, fit, previous, settings_key, mask)
    except (ImageLoadError, StatesError) as error:
        st.error(f"{picture.name} cannot be shown: {error}")
        return None


if __name__ == "__main__":
    main()
