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
from hypothesis import HealthCheck, given, settings
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
