"""Files that ask for gigabytes: each is refused (or read right) and the process's peak memory stays bounded.

Every case runs in a fresh child process (fixtures.memory.peak_memory): torch allocates outside
tracemalloc, and a child's peak RSS, reset once its file is built, is what the server would pay.
"""

import numpy as np
import pytest
from PIL import Image, ImageFile

from fixtures import hostile
from fixtures.memory import peak_memory
from glom_viz import islands
from glom_viz.errors import ImageLoadError
from glom_viz.images import read_mask

# a server that has read a checkpoint before: the meta device's first use imports torch._dynamo (~70 MB)
CHECKPOINTS = """
import torch
from glom_viz.checkpoints import read_checkpoint
from glom_viz.model import Glom
from fixtures import hostile
with torch.device("meta"):
    Glom(dim=8, levels=2, image_size=8, patch_size=4)
"""
IMAGES = "from glom_viz.images import load_image, read_mask\nfrom glom_viz import islands\nfrom fixtures import hostile\n"
# what loading a file may add to a process that refuses it: the parsing, never the tensors it claims
REFUSAL_MB = 48


@pytest.mark.parametrize("build, words", [
    # 4.5 KB of one zero seen through stride 0 for every tensor of a dim-2048, 6-level GLOM (1.4 GB as weights)
    ("hostile.zero_stride_state_dict(dim=2048, levels=6)", "is a view with strides"),
    # every tensor of a dim-512 GLOM a view at the start of the largest one's storage (25 MB for 90 MB)
    ("hostile.shared_storage_state_dict(dim=512, levels=6)", "share 25,165,824 bytes of data"),
    # 256 MiB of zeros deflated into a few hundred KB
    ("hostile.torch_zip_bomb(2**28)", "zip bomb"),
    # our own format, every weight float8
    ("hostile.float8_checkpoint()", "glom-viz takes float32, float16, bfloat16 or float64"),
], ids=["zero-stride", "shared-storage", "zip-bomb", "float8"])
def test_a_checkpoint_asking_for_gigabytes_is_refused_before_it_is_allocated(build, words):
    outcome = peak_memory(f"{CHECKPOINTS}data = {build}", "read_checkpoint(data)")
    assert not outcome["ok"], outcome
    assert outcome["error"] == "CheckpointError" and words in outcome["message"], outcome
    assert "cannot be read from the tensors" not in outcome["message"]  # the file is blamed, not its names
    # the shared-storage file's own 25 MB are read before its tensors are checked
    bound = REFUSAL_MB + (64 if "shared" in build else 0)
    assert outcome["peak_mb"] < bound, outcome


def test_the_memory_measure_sees_a_real_load():
    """The bound above is not vacuous: a real dim-256 checkpoint (24 MB of weights) shows its size."""
    setup = f"""{CHECKPOINTS}
data = hostile.torch_bytes(Glom(dim=256, levels=6).state_dict())
"""
    outcome = peak_memory(setup, "read_checkpoint(data)", "result.config.dim")
    assert outcome["ok"] and outcome["result"] == 256, outcome
    assert outcome["peak_mb"] > 24, outcome


@pytest.mark.parametrize("build", ["hostile.tiny_jpeg_claiming(6000, 6000)", "hostile.png_claiming(6000, 6000)"],
                         ids=["jpeg", "png"])
def test_a_picture_too_short_for_its_header_is_refused_as_truncated(build):
    outcome = peak_memory(f"{IMAGES}data = {build}", "load_image(data, 'tiny.jpg')")
    assert not outcome["ok"] and outcome["error"] == "ImageLoadError", outcome
    assert "claims 6000x6000 pixels" in outcome["message"] and "truncated" in outcome["message"], outcome
    assert outcome["peak_mb"] < REFUSAL_MB, outcome


@pytest.mark.parametrize("mode, bound_mb", [("RGB", 250), ("L", 100), ("I;16", 170)])
def test_a_big_flat_mask_is_read_in_linear_time_and_bounded_memory(mode, bound_mb):
    """A 6000 x 6000 label image (~100 KB as a PNG): read and mapped to the patches in a bounded peak.

    The bound is the decoded picture (36 MP: 108 MB as RGB, 36 MB grey, 72 MB at 16 bits) and the
    labels, a couple of times; a 2-D unique over the pixels took gigabytes.
    """
    setup = f"{IMAGES}data = hostile.flat_mask_png(6000, ids=(0, 1, 2), mode={mode!r})"
    step = "islands.patch_truth(read_mask(data, 'mask.png', (6000, 6000)), (16, 16))"
    outcome = peak_memory(setup, step, "result.tolist()")
    assert outcome["ok"], outcome
    truth = np.asarray(outcome["result"]).reshape(16, 16)
    # three horizontal bands of 2000 rows over 16 patch rows: background, then two objects
    assert set(truth[:5].ravel()) == {0} and len(set(truth[6:10].ravel())) == 1 and len(set(truth[11:].ravel())) == 1
    assert len({truth[0, 0], truth[8, 0], truth[15, 0]}) == 3
    assert outcome["peak_mb"] < bound_mb, outcome


def test_a_16_bit_instance_mask_keeps_its_ids():
    data, ids = hostile.instance_mask_16bit(ids=(0, 1, 2, 3, 4))
    labels = read_mask(data, "instances.png", ids.shape)
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, ids)  # not reduced to 8 bits, where 1..4 would all become 0
    truth = islands.patch_truth(labels, (4, 5))
    assert set(truth.tolist()) == {0, 1, 2, 3, 4}
    perfect = truth.copy()
    assert islands.island_measures(np.random.default_rng(0).normal(size=(20, 8)), perfect, (4, 5),
                                   truth=truth)[0]["ari"] == pytest.approx(1.0)


def test_large_ids_of_a_16_bit_mask_are_kept():
    data, ids = hostile.instance_mask_16bit(ids=(0, 300, 40_000, 65_535))
    np.testing.assert_array_equal(read_mask(data, "instances.png", ids.shape), ids)


def test_palette_indices_are_the_ids_even_where_two_share_a_colour():
    indices = np.zeros((6, 8), np.uint8)
    indices[:, 2:4], indices[:, 4:6], indices[:, 6:] = 1, 2, 7
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0] + [200, 30, 30] * 2 + [9, 9, 9] * 253)  # indices 1 and 2 look alike
    labels = read_mask(hostile.encode(image, "PNG"), "voc.png", indices.shape)
    np.testing.assert_array_equal(labels, indices)


def test_colour_masks_keep_one_label_per_colour_and_transparency_is_background():
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:, 2:4, :3] = (255, 0, 0)
    rgba[:, 4:, :3] = (0, 255, 0)
    rgba[0, 4:, 3] = 0  # transparent: background whatever its colour
    labels = read_mask(hostile.encode(Image.fromarray(rgba), "PNG"), "m.png", (4, 6))
    assert (labels[:, :2] == 0).all() and (labels[0, 4:] == 0).all()
    assert len({labels[1, 2], labels[1, 4], 0}) == 3


def test_a_mask_of_the_wrong_size_is_refused_from_its_header(monkeypatch):
    data = hostile.flat_mask_png(64, mode="L")
    read_mask(data, "mask.png", (64, 64))  # decodes without the guard

    def forbidden(*args, **kwargs):
        raise AssertionError("the mask was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)
    with pytest.raises(ImageLoadError, match="is 64x64 px but the picture is 32x48"):
        read_mask(data, "mask.png", (48, 32))


# -- in the page: one sentence each, and the rest keeps working ----------------------------------------


def test_each_hostile_file_gets_a_sentence_in_the_page_and_the_rest_keeps_working(monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from conftest import APP, png_bytes, shown

    monkeypatch.setenv("GLOM_VIZ_WARM_UP", "0")
    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state["model_precision"] = "fp32"
    at.run()

    def page_ok() -> None:
        assert not at.exception, [e.value for e in at.exception]
        assert any("line-height:1.9" in m.value for m in at.markdown)  # an island legend is drawn

    picture = np.random.default_rng(1).integers(0, 256, (40, 50, 3), np.uint8)
    at.file_uploader(key="images_upload").set_value([
        ("claims.jpg", hostile.tiny_jpeg_claiming(6000, 6000), "image/jpeg"),
        ("photo.png", png_bytes(picture), "image/png")]).run()
    page_ok()
    assert any("claims 6000x6000 pixels" in shown(e.value) and "truncated" in shown(e.value) for e in at.error)
    mask, ids = hostile.instance_mask_16bit(ids=(0, 1, 2, 3, 4), height=40, width=50)
    uploader = next(u for u in at.sidebar.file_uploader if u.key.startswith("mask_"))
    uploader.set_value(("instances.png", mask, "image/png")).run()
    page_ok()
    ari = next(m for m in at.metric if m.label == "ARI")
    assert ari.value not in ("0.000", "–")  # 16-bit ids are objects, not all background

    at.radio(key="model_source").set_value("upload").run()
    for name, data, words in [
        ("views.pt", hostile.zero_stride_state_dict(dim=2048, levels=6), "is a view with strides"),
        ("bomb.pt", hostile.torch_zip_bomb(2**24), "zip bomb"),
        ("f8.safetensors", hostile.float8_checkpoint(), "glom-viz takes float32"),
    ]:
        at.file_uploader(key="model_checkpoint").set_value((name, data, "application/octet-stream")).run()
        page_ok()
        errors = [shown(e.value) for e in at.error if "Could not use the checkpoint" in e.value]
        assert len(errors) == 1 and name in errors[0] and words in errors[0], errors
