"""Property-based fuzzing: any bytes give our own exception or a correct result, never a crash or hang.

Loaders: random bytes, bytes behind a valid magic number, and valid files with bytes flipped, cut or
inserted. A result that does come back must satisfy the loader's contract (shapes, dtypes, limits,
finite weights).
"""

import io
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save as safetensors_save

from fixtures.hostile import animated_gif, encode, gradient_rgb, odd_uploads, safetensors_bytes
from glom_viz.checkpoints import read_checkpoint
from glom_viz.errors import CheckpointError, ImageLoadError
from glom_viz.images import LIMITS, RASTER_MAGIC, load_frames, load_image, to_model_input
from glom_viz.model import Glom

# damaged files make Pillow warn (corrupt EXIF, truncated reads) before we refuse them
# and torch.load warns about pickle protocols it does not expect
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:PIL"),
              pytest.mark.filterwarnings("ignore:Detected pickle protocol")]

FUZZ = settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
HANG_SECONDS = 120  # a whole property; any single load taking long would show up here
TINY = dict(dim=8, levels=2, image_size=16, patch_size=8)
MAGICS = [magic for magic, _ in RASTER_MAGIC] + [b"RIFF\x00\x10\x00\x00WEBPVP8 "]


def small_images() -> dict[str, bytes]:
    """Valid files of every format to mutate, a few hundred bytes each."""
    rgb = gradient_rgb(12, 16)
    files = {name: data for name, data in odd_uploads().items() if len(data) < 8000}
    files.update({
        "small.png": encode(Image.fromarray(rgb), "PNG"),
        "small.jpg": encode(Image.fromarray(rgb), "JPEG", quality=80),
        "small.webp": encode(Image.fromarray(rgb), "WEBP", quality=80),
        "small.gif": animated_gif(size=8),
        "small.tiff": encode(Image.fromarray(rgb), "TIFF", compression="tiff_deflate"),
    })
    return files


SMALL_IMAGES = small_images()


def mutations(max_length: int):
    """(flips, cut, insert): bytes to overwrite, where to cut the file, bytes to insert."""
    return st.tuples(
        st.lists(st.tuples(st.integers(0, max_length - 1), st.integers(0, 255)), max_size=8),
        st.one_of(st.none(), st.integers(0, max_length)),
        st.one_of(st.none(), st.tuples(st.integers(0, max_length), st.binary(min_size=1, max_size=64))),
    )


def mutate(data: bytes, mutation) -> bytes:
    flips, cut, insert = mutation
    out = bytearray(data)
    for position, value in flips:
        if position < len(out):
            out[position] = value
    if insert is not None:
        position, extra = insert
        out[position:position] = extra
    if cut is not None:
        del out[cut:]
    return bytes(out)


def assert_valid_image(loaded):
    rgb = loaded.rgb
    assert isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    height, width = rgb.shape[:2]
    assert 1 <= height and 1 <= width and height * width <= LIMITS.max_pixels
    assert max(height, width) / min(height, width) <= LIMITS.max_aspect
    assert len(loaded.sha256) == 64
    tensor, shown, _ = to_model_input(rgb, 16)
    assert tensor.shape == (1, 3, 16, 16) and shown.shape == (16, 16, 3)
    assert 0.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0


def load_or_refuse_image(data: bytes):
    try:
        loaded = load_image(data, "fuzz.png")
    except ImageLoadError as error:
        assert str(error)
    else:
        assert_valid_image(loaded)
    try:
        frames = load_frames(data, "fuzz.png")
    except ImageLoadError:
        pass
    else:
        assert 1 <= len(frames) <= LIMITS.max_frames
        for frame in frames:
            assert_valid_image(frame)


# -- images ---------------------------------------------------------------------------------------


@pytest.mark.timeout(HANG_SECONDS)
@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_never_crash_the_image_loader(data):
    load_or_refuse_image(data)


@pytest.mark.timeout(HANG_SECONDS)
@FUZZ
@given(st.sampled_from(MAGICS), st.binary(max_size=2048))
def test_random_bytes_behind_a_valid_magic_number(magic, rest):
    load_or_refuse_image(magic + rest)


@pytest.mark.timeout(HANG_SECONDS)
@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SMALL_IMAGES)), mutations(max_length=8000))
def test_mutated_valid_images(name, mutation):
    load_or_refuse_image(mutate(SMALL_IMAGES[name], mutation))


def test_mutations_do_reach_both_outcomes():
    """The mutation fuzzer is not vacuous: some mutants load, some are refused."""
    outcomes = set()
    rng = np.random.default_rng(0)
    for name, data in sorted(SMALL_IMAGES.items()):
        for _ in range(10):
            flips = [(int(rng.integers(0, len(data))), int(rng.integers(0, 256))) for _ in range(2)]
            cut = int(rng.integers(0, len(data))) if rng.random() < 0.5 else None
            try:
                load_image(mutate(data, (flips, cut, None)))
                outcomes.add("loaded")
            except ImageLoadError:
                outcomes.add("refused")
    assert outcomes == {"loaded", "refused"}


# -- checkpoints ----------------------------------------------------------------------------------


def small_checkpoints() -> dict[str, bytes]:
    torch.manual_seed(0)
    model = Glom(**TINY)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    ours = safetensors_save(state, metadata={"format": "glom-viz", "config": json.dumps(model.config.to_dict())})
    return {"ours.safetensors": ours, "plain.safetensors": safetensors_save(state), "state.pt": buffer.getvalue()}


SMALL_CHECKPOINTS = small_checkpoints()


def load_or_refuse_checkpoint(data: bytes):
    try:
        loaded = read_checkpoint(data)
    except CheckpointError as error:
        assert str(error)
        return
    model, config = loaded.model, loaded.config
    assert isinstance(model, Glom) and not model.training and model.config == config
    for name, tensor in model.state_dict().items():
        assert not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()), name
    size = config.image_size
    with torch.no_grad():
        states = model(torch.rand(1, 3, size, size), iters=1)
    assert states.shape == (1, config.num_patches, config.levels, config.dim)


@pytest.mark.timeout(HANG_SECONDS)
@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_never_crash_the_checkpoint_loader(data):
    load_or_refuse_checkpoint(data)


@pytest.mark.timeout(HANG_SECONDS)
@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SMALL_CHECKPOINTS)), mutations(max_length=12000), st.booleans())
def test_mutated_checkpoints(name, mutation, in_header):
    data = SMALL_CHECKPOINTS[name]
    if in_header:  # aim the flips at the first bytes, where headers and pickles are parsed
        flips, cut, insert = mutation
        mutation = ([(position % 600, value) for position, value in flips], cut, insert)
    load_or_refuse_checkpoint(mutate(data, mutation))


TENSOR_ENTRY = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "U8", "F64", "XX"]),
    "shape": st.lists(st.integers(-2, 40), max_size=4),
    "data_offsets": st.lists(st.integers(-4, 2000), min_size=0, max_size=3),
})
TENSOR_NAMES = st.sampled_from(sorted(Glom(**TINY).state_dict()) + ["extra", "__metadata__"])


@pytest.mark.timeout(HANG_SECONDS)
@FUZZ
@given(st.dictionaries(TENSOR_NAMES, TENSOR_ENTRY, max_size=6), st.binary(max_size=2048))
def test_safetensors_headers_that_may_lie(header, buffer):
    load_or_refuse_checkpoint(safetensors_bytes(header, buffer))


# -- the islands engine ---------------------------------------------------------------------------

from glom_viz.errors import StatesError  # noqa: E402
from glom_viz.islands import align_islands, find_islands, find_islands_all_levels  # noqa: E402

FAST_METHODS = ("kmeans", "agglomerative", "hdbscan", "threshold")  # "umap" space: seconds per call
FINITE_32 = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
ANY_32 = st.floats(width=32)  # NaN and Inf included


def grids():
    return st.tuples(st.integers(1, 5), st.integers(1, 5))


@st.composite
def level_states(draw, values=FINITE_32):
    """(T, N, D) states on an (h, w) grid, with the grid."""
    h, w = draw(grids())
    steps, dim = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    flat = draw(st.lists(values, min_size=steps * h * w * dim, max_size=steps * h * w * dim))
    return np.asarray(flat, dtype=np.float32).reshape(steps, h * w, dim), (h, w)


def assert_labels(labels, steps, patches, n_islands=None):
    assert isinstance(labels, np.ndarray) and labels.dtype == np.int64 and labels.shape == (steps, patches)
    assert labels.min(initial=0) >= -1
    if n_islands is not None:
        for step in labels:
            assert len(set(step[step >= 0].tolist())) <= n_islands


@pytest.mark.timeout(HANG_SECONDS)
@FUZZ
@given(level_states(), st.sampled_from(FAST_METHODS), st.one_of(st.none(), st.integers(1, 4)))
def test_islands_of_any_finite_states(states_and_grid, method, n_islands):
    states, grid = states_and_grid
    if method not in ("kmeans", "agglomerative"):
        n_islands = None
    try:
        labels = find_islands(states, grid, method=method, n_islands=n_islands)
    except StatesError as error:
        assert str(error)
        assert n_islands is not None and n_islands > states.shape[1]  # the only refusal of valid states
        return
    assert_labels(labels, states.shape[0], states.shape[1], n_islands)
    again = find_islands(states, grid, method=method, n_islands=n_islands)
    assert np.array_equal(labels, again)  # deterministic for a seed


@pytest.mark.timeout(HANG_SECONDS)
@FUZZ
@given(level_states(values=ANY_32), st.sampled_from(FAST_METHODS))
def test_islands_of_non_finite_states_are_refused(states_and_grid, method):
    states, grid = states_and_grid
    finite = bool(np.isfinite(states).all())
    try:
        labels = find_islands(states, grid, method=method)
    except StatesError as error:
        assert not finite or "grid" in str(error)
        return
    assert finite
    assert_labels(labels, states.shape[0], states.shape[1])


@pytest.mark.timeout(HANG_SECONDS)
@FUZZ
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 3), st.lists(FINITE_32, min_size=1, max_size=6),
       st.sampled_from(FAST_METHODS), st.one_of(st.none(), st.integers(1, 4)), st.floats(0.1, 100.0))
def test_degenerate_states_are_one_island(h, w, steps, vector, method, n_islands, scale):
    """Every column holding the same vector (GLOM's step 0) is a single island 0 for every method.

    The zero vector is left out: it has no direction, and the islands engine says it agrees with
    nothing.
    """
    if method not in ("kmeans", "agglomerative") or (n_islands or 0) > h * w:
        n_islands = None
    column = np.asarray(vector, dtype=np.float32)
    assume(float(np.linalg.norm(column)) > 1e-6)
    states = np.broadcast_to(column * np.float32(scale), (steps, h * w, column.size)).copy()
    labels = find_islands(states, (h, w), method=method, n_islands=n_islands)
    assert labels.shape == (steps, h * w) and np.all(labels == 0)


ARRAY_SHAPES = st.lists(st.integers(0, 4), min_size=0, max_size=5)


@pytest.mark.timeout(HANG_SECONDS)
@FUZZ
@given(ARRAY_SHAPES, st.one_of(grids(), st.tuples(st.integers(-2, 5), st.integers(-2, 5)),
                               st.just((2,)), st.just("4x4"), st.none()))
def test_islands_of_any_shape(shape, grid):
    """Any array shape and any grid: labels of the documented shape, or a StatesError."""
    states = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    try:
        labels = find_islands(states, grid)
    except StatesError as error:
        assert str(error)
    else:
        assert states.ndim in (2, 3) and states.shape[-2] >= 1
        assert labels.shape == states.shape[:-1] and labels.dtype == np.int64
    if states.ndim == 4 and states.shape[2] == 0:
        return  # no levels: test_islands_of_no_levels
    try:
        all_levels = find_islands_all_levels(states, grid)
    except StatesError as error:
        assert str(error)
    else:
        steps, patches, levels = states.shape[:3]
        assert all_levels.shape == (steps, levels, patches)


@pytest.mark.timeout(HANG_SECONDS)
@FUZZ
@given(st.integers(0, 4), st.integers(1, 12), st.data())
def test_aligned_islands_are_the_same_islands(steps, patches, data):
    """Aligning renames ids only: each step splits the patches exactly as before; noise stays -1."""
    labels = np.asarray(data.draw(st.lists(st.lists(st.integers(-1, 5), min_size=patches, max_size=patches),
                                           min_size=steps, max_size=steps)), dtype=np.int64).reshape(steps, patches)
    aligned = align_islands(labels)
    assert aligned.shape == labels.shape and aligned.dtype == np.int64
    assert np.array_equal(aligned == -1, labels == -1)
    for before, after in zip(labels, aligned):
        assert np.array_equal(before[:, None] == before[None, :], after[:, None] == after[None, :])


def test_islands_of_no_levels():
    """Found by fuzzing: states with 0 levels once raised numpy's 'need at least one array to stack'."""
    with pytest.raises(StatesError, match="no levels"):
        find_islands_all_levels(np.zeros((2, 4, 0, 3), np.float32), (2, 2))
