"""The sidebar's panels. Each draws its widgets and returns a small settings dataclass (explorer.settings)."""

from __future__ import annotations

import hashlib

import streamlit as st

from explorer import cache, state
from explorer.limits import (CHECKPOINT_UPLOAD_MB, IMAGE_UPLOAD_MB, MAX_ITERATIONS, MAX_SET_PICTURES, MAX_UPLOADS,
                             SET_UPLOAD_MB, UPLOAD_NAME_BYTES)
from explorer.models import LoadedModel, ModelProblem
from explorer.pictures import Mask, Picture
from explorer.settings import (COUNT_LABELS, DEFAULT_FIXED_ISLANDS, FIT_LABELS, IMAGE_TYPES, MASK_TYPES,
                               MAX_FIXED_ISLANDS, METHOD_LABELS, PATH_NAMES, PHOTOS, PRECISION_LABELS,
                               RANDOM_CONFIG, RANDOM_SEED, SCENE_NAMES, SOURCES, VIDEO_TYPES, ImageSettings,
                               IslandSettings, ModelSettings, RunSettings, precision_choices)
from glom_viz import islands
from glom_viz.errors import ConfigError, ImageLoadError
from glom_viz.images import FITS, read_mask
from glom_viz.model import GlomConfig
from glom_viz.text import plain, plain_name

# every uploader's help ends with it: Streamlit's own "status code 400" beside such a file says nothing of why
LONG_NAMES = (f"A file whose name is longer than about {UPLOAD_NAME_BYTES:,} bytes ({UPLOAD_NAME_BYTES:,} plain "
              f"letters, half as many accented ones) is refused by the upload itself (\"status code 400\" beside "
              "it): rename it and upload it again.")


# the fields a checkpoint's config form asks for (the shapes of a GLOM's tensors): name, low, high, step
CHECKPOINT_FIELDS = (("dim", 8, 4096, 8), ("levels", 1, 16, 1), ("image_size", 8, 1024, 1), ("patch_size", 1, 64, 1),
                     ("feedforward_mult", 1, 16, 1), ("local_consensus_radius", 0.0, 64.0, 0.5))


def model_panel() -> ModelSettings:
    """Which model: one of the shipped ones, random (with its config) or an uploaded checkpoint."""
    st.sidebar.header("Model")
    source = st.sidebar.radio("Weights", list(SOURCES), format_func=SOURCES.get, key=state.MODEL_SOURCE,
                              label_visibility="collapsed")
    seed, config = RANDOM_SEED, RANDOM_CONFIG
    checkpoint_name = checkpoint = None
    consensus_self = False
    checkpoint_config: tuple = ()
    if source == "random":
        with st.sidebar.expander("Random model", expanded=True):
            seed = int(st.number_input("Seed", 0, 2**31 - 1, RANDOM_SEED, key=state.MODEL_SEED))
            left, right = st.columns(2)
            dim = int(left.number_input("dim", 8, 1024, RANDOM_CONFIG.dim, step=8, key=state.MODEL_DIM))
            levels = int(right.number_input("levels", 2, 8, RANDOM_CONFIG.levels, key=state.MODEL_LEVELS))
            image_size = int(left.number_input("image size", 16, 448, RANDOM_CONFIG.image_size, step=8,
                                               key=state.MODEL_IMAGE_SIZE))
            patch_size = int(right.number_input("patch size", 2, 32, RANDOM_CONFIG.patch_size,
                                                key=state.MODEL_PATCH_SIZE))
            consensus_self = st.checkbox("columns attend to themselves (consensus_self)", key=state.MODEL_SELF)
            radius = float(st.number_input("local consensus radius (0 = global)", 0.0, 64.0, 0.0, step=1.0,
                                           key=state.MODEL_RADIUS))
        try:
            config = GlomConfig(dim=dim, levels=levels, image_size=image_size, patch_size=patch_size,
                                consensus_self=consensus_self, local_consensus_radius=radius)
        except ConfigError as error:
            st.sidebar.error(f"{error}. Using the default random model meanwhile.")
            config = RANDOM_CONFIG
    elif source == "upload":
        upload = st.sidebar.file_uploader(
            "Checkpoint (.safetensors from glom-viz, or a glom-pytorch .pt state dict)",
            type=["safetensors", "pt", "pth"], key=state.MODEL_CHECKPOINT, max_upload_size=CHECKPOINT_UPLOAD_MB,
            help=LONG_NAMES)
        consensus_self = st.sidebar.checkbox(
            "consensus_self (glom-pytorch .pt files do not store it)", key=state.MODEL_CHECKPOINT_SELF,
            help="dim, levels, patch size, image size and the local radius are read from the tensor shapes; "
                 "whether columns attended to themselves is not, so say it here.")
        if upload is not None:
            checkpoint_name, checkpoint = upload.name, upload.getvalue()
            checkpoint_config = state.checkpoint_config(upload.file_id)
    return ModelSettings(source, seed, config, checkpoint_name, checkpoint, consensus_self, checkpoint_config)


def checkpoint_config_form(problem: ModelProblem) -> None:
    """The config of a checkpoint whose tensors do not tell it, asked for under the uploader: what was
    read is filled in, and loading with it tries the checkpoint again."""
    upload = st.session_state.get(state.MODEL_CHECKPOINT)
    if upload is None or not problem.fields:
        return
    read = dict(problem.read)
    defaults = GlomConfig()
    with st.sidebar.form(state.CHECKPOINT_FORM, border=True):
        st.markdown("**How the checkpoint was made**")
        st.caption("Filled in from its tensors where they tell; " + ", ".join(problem.fields)
                   + (" is" if len(problem.fields) == 1 else " are") + " what they did not tell or did not fit.")
        left, right = st.columns(2)
        for index, (name, low, high, step) in enumerate(CHECKPOINT_FIELDS):
            place = left if index % 2 == 0 else right
            value = read.get(name, getattr(defaults, name))
            number = float if isinstance(step, float) else int
            place.number_input(name.replace("_", " "), number(low), number(high), number(value), step=step,
                               key=state.checkpoint_field_key(name))
        st.form_submit_button("Load with this config", type="primary", on_click=state.give_checkpoint_config,
                              args=(upload.file_id, tuple(name for name, *_ in CHECKPOINT_FIELDS)))


def model_summary(loaded: LoadedModel) -> None:
    """The model's config and what it expects."""
    config = loaded.model.config
    h, w = config.grid
    st.sidebar.caption(
        f"**{plain_name(loaded.title)}** · expects **{config.image_size}×{config.image_size} px** images in "
        f"**{config.patch_size} px** patches ({h}×{w} = {h * w} columns) · {config.levels} levels of "
        f"dim {config.dim} · {sum(p.numel() for p in loaded.model.parameters()):,} weights")
    if loaded.knows:
        st.sidebar.caption(loaded.knows)
    # a popover, not an expander: the browser keeps a closed expander's JSON tree mounted and draws it again
    # on every scrub (the sidebar's largest element), a closed popover's not at all
    with st.sidebar.popover("Full config", icon=":material/data_object:", width="stretch"):
        st.json(config.to_dict(), expanded=True)
        st.caption(f"hash `{loaded.key[:16]}`")


def precision_panel(dim: int) -> str:
    """Fast or exact, named by what fast runs as for this model here, and bf16 beside them where fast means
    the int8 nets and bf16 is faster than fp32; returns the path that will run."""
    offer = precision_choices(dim)
    choices, default, fast = offer.offered, offer.default, offer.paths["fast"]
    # a visitor's own choice is kept while this model offers it; the page's own follows the model
    current = st.session_state.get(state.MODEL_PRECISION)
    if current not in choices or current == st.session_state.get(state.MODEL_PRECISION_DEFAULT):
        st.session_state[state.MODEL_PRECISION] = default
    st.session_state[state.MODEL_PRECISION_DEFAULT] = default
    choice = st.sidebar.radio(
        "Precision", choices, key=state.MODEL_PRECISION, horizontal=True,
        format_func=lambda p: f"fast ({PATH_NAMES[fast]})" if p == "fast" else PRECISION_LABELS[p],
        help="Fast runs GLOM's matrix products in bf16 where that is faster than fp32 on this CPU (states stay "
             "fp32 between steps); elsewhere glom_viz runs the bottom-up and top-down nets in int8 instead, for "
             "models of dim 128 and more where a timed probe finds them faster. Where bf16 is faster than fp32 "
             "but the int8 nets faster still, bf16 is offered beside them and chosen first: it moves a trained "
             "model's islands less than one grey level of noise on the picture does, the int8 nets more. "
             "Exact runs everything in fp32.")
    if choice == "fast" and fast == "fp32":
        st.sidebar.caption(f"On this CPU neither bf16 nor int8 nets run a model of dim {dim} faster than fp32, "
                           "so fast runs fp32 here.")
    elif choice == "fast" and fast not in ("bf16", "fp16") and "bf16" not in choices:
        st.sidebar.caption(f"On this CPU bf16 runs no faster than fp32, so the fast path here is "
                           f"{PATH_NAMES[fast]}.")
    return offer.paths[choice]


def images_panel() -> ImageSettings:
    """Bundled pictures, uploads, how they fit the model, and sequences."""
    st.sidebar.header("Images")
    bundled = st.sidebar.multiselect("Bundled", [*SCENE_NAMES, *PHOTOS], default=[*SCENE_NAMES, *PHOTOS],
                                     key=state.IMAGES_BUNDLED,
                                     help="Synthetic scenes with ground-truth objects and parts, and photographs "
                                          "that scikit-learn and scikit-image ship.")
    files = st.sidebar.file_uploader(
        f"Your images or videos ({', '.join(t.upper() for t in IMAGE_TYPES[:5])}, TIFF, GIF, MP4, MOV, WebM; "
        f"up to {MAX_UPLOADS})",
        type=[*IMAGE_TYPES, *VIDEO_TYPES], accept_multiple_files=True, key=state.IMAGES_UPLOAD,
        max_upload_size=IMAGE_UPLOAD_MB,
        help=f"A video becomes a sequence of frames, evenly spaced over the clip, like an animated GIF's. {LONG_NAMES}")
    dataset = st.sidebar.file_uploader(
        "A set with masks (zip)", type=["zip"], key=state.IMAGES_SET, max_upload_size=SET_UPLOAD_MB,
        help=f"A zip of a folder with images/ and masks/ (object ids per pixel, 0 = background), optionally "
             f"parts/ and next/: each picture is scored against its masks, and the set as a whole "
             f"(at most {MAX_SET_PICTURES} pictures). {LONG_NAMES}")
    fit = st.sidebar.selectbox("Fit to the model's square input", FITS, key=state.IMAGES_FIT,
                               format_func=FIT_LABELS.get)
    animations = st.sidebar.toggle("Animated files: all frames", key=state.IMAGES_FRAMES,
                                   help="Read every frame of an animated GIF, WebP, PNG or multi-page TIFF "
                                        "(else the first frame only).")
    sequence = st.sidebar.toggle("Sequence: carry state from frame to frame", key=state.IMAGES_SEQUENCE,
                                 help="Process the images in order, each starting from the previous one's final "
                                      "columns (GLOM's slow video: `levels=` of the last frame).")
    let_go = st.sidebar.toggle("Let go where the picture changed", value=True, key=state.IMAGES_LET_GO,
                               disabled=not sequence,
                               help="In a sequence, a column whose patch (or a neighbour's) changed from the last "
                                    "frame lets go of its island: it starts from the state of the most alike still "
                                    "column nearby, or afresh where none looks alike, so islands move with their "
                                    "objects; the still rest keeps its columns. Off: every column carries on as it "
                                    "was, and islands stay where the objects were.")
    uploads = tuple((f.name, f.getvalue()) for f in (files or []))
    zipped = None if dataset is None else (dataset.name, dataset.getvalue())
    return ImageSettings(tuple(bundled), uploads, fit, animations, sequence, zipped, let_go)


def mask_upload(picture: Picture) -> Mask | None:
    """A ground-truth mask for a picture without its own, or None (an error shown if unusable).

    Read once per file and picture (explorer.cache.masks), its refusal too: a mask of 6000 x 6000 pixels
    is not decoded again on every rerun.
    """
    if picture.masks:  # the scenes bring their own truth
        return None
    upload = st.sidebar.file_uploader(
        f"Ground-truth mask for {plain_name(picture.name)} (optional)", type=list(MASK_TYPES), key=state.mask_key(picture.key),
        max_upload_size=IMAGE_UPLOAD_MB,
        help="A label image of the picture's size: one flat colour per object or part, black background; "
             "or greyscale (8 or 16 bit) or palette ids, 0 the background. The islands are then scored against "
             f"it (ARI). {LONG_NAMES}")
    if upload is None:
        return None
    data, name, shape = upload.getvalue(), upload.name, picture.rgb.shape[:2]
    key = cache.content_key("mask", hashlib.sha256(data).hexdigest(), name, shape, picture.name)

    def read():  # the labels, or the sentence saying why they cannot be had
        try:
            return read_mask(data, name, shape, picture.name)
        except ImageLoadError as error:
            return str(error)
    read_or_refusal = cache.masks(key, read)
    if isinstance(read_or_refusal, str):
        st.error(f"{plain(read_or_refusal)}. The islands are shown without a score.")
        return None
    return Mask(key, read_or_refusal)


def run_panel(levels: int, path: str) -> RunSettings:
    """How many iterations GLOM runs (on the precision path chosen above)."""
    st.sidebar.header("Run")
    iterations = st.sidebar.slider("Iterations", 1, MAX_ITERATIONS, min(2 * levels, MAX_ITERATIONS),
                                   key=state.iterations_key(levels),
                                   help="GLOM's seed: twice the number of levels, so information can travel "
                                        "up to the top and back down.")
    return RunSettings(int(iterations), path)


def islands_panel() -> IslandSettings:
    """How islands are found."""
    st.sidebar.header("Islands")
    method = st.sidebar.selectbox("Method", islands.METHODS, format_func=METHOD_LABELS.get, key=state.ISLANDS_METHOD)
    n_islands = None
    params: dict[str, object] = {}
    if method in islands.COUNT_METHODS:
        automatic = st.sidebar.toggle("Automatic count", value=True, key=state.ISLANDS_AUTO)
        if automatic:
            params["count_by"] = st.sidebar.selectbox(
                "Pick the count by", islands.COUNT_CRITERIA, format_func=COUNT_LABELS.get, key=state.ISLANDS_COUNT_BY,
                help="Davies-Bouldin finds parts nested inside wholes (low levels), where the best silhouette "
                     "keeps only the wholes; where no count gives separated islands it falls back to the "
                     "silhouette.")
            params["max_islands"] = int(st.sidebar.slider("At most", 2, MAX_FIXED_ISLANDS, islands.MAX_ISLANDS,
                                                          key=state.ISLANDS_MAX))
        else:
            n_islands = int(st.sidebar.number_input("Islands", 1, MAX_FIXED_ISLANDS, DEFAULT_FIXED_ISLANDS,
                                                    key=state.ISLANDS_COUNT))
    if method == "agglomerative":
        params["connectivity"] = st.sidebar.checkbox("Only neighbouring patches join (grid connectivity)",
                                                     value=True, key=state.ISLANDS_CONNECTIVITY)
    if method == "threshold":
        picked = st.sidebar.toggle("Pick the threshold per map", value=True, key=state.ISLANDS_THRESHOLD_AUTO,
                                   help="The highest cosine at which islands smaller than the smallest size "
                                        f"hold at most {islands.TINY_SHARE:.0%} of the patches: one fixed "
                                        "cosine fits no two levels (confetti low down, one island at the top).")
        params["threshold"] = None if picked else float(st.sidebar.slider(
            "Cosine threshold", 0.5, 0.999, islands.THRESHOLD, 0.001, format="%.3f", key=state.ISLANDS_THRESHOLD,
            help="Neighbouring columns whose vectors have at least this cosine are in the same island."))
        params["min_size"] = int(st.sidebar.number_input("Smallest island (patches; smaller are in none)", 1, 64,
                                                         islands.THRESHOLD_MIN_SIZE, key=state.ISLANDS_MIN_SIZE))
    if method == "hdbscan":
        params["min_cluster_size"] = int(st.sidebar.number_input("Smallest island (patches)", 2, 256,
                                                                 islands.HDBSCAN_MIN_CLUSTER_SIZE,
                                                                 key=state.ISLANDS_MIN_CLUSTER))
    return IslandSettings(method, n_islands, tuple(sorted(params.items())))
