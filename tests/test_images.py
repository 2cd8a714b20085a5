"""The upload gate: hostile files refused before decoding, odd ones shown correctly, model input exact."""

import hashlib
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from fixtures.hostile import (
    animated_gif,
    encode,
    exif_rotated_jpeg,
    gradient_rgb,
    hostile_uploads,
    odd_uploads,
    png_header_only,
)
from glom_viz.errors import ConfigError, ImageLoadError
from glom_viz.images import (
    LIMITS,
    ImageLimits,
    fit_mask,
    load_frames,
    load_image,
    read_mask,
    sample_images,
    to_model_input,
)

# words each refusal must contain: what is wrong, in the user's terms
REFUSAL_WORDS = {
    "empty.png": ["empty"],
    "truncated.png": ["truncated"],
    "truncated.jpg": ["truncated"],
    "header_only.jpg": ["JPEG", "damaged"],
    "notes.png": ["text file"],
    "drawing.png": ["SVG"],
    "drawing.svg": ["SVG"],
    "page.png": ["HTML"],
    "random.png": ["not an image"],
    "bomb.png": ["decompression bomb", "40,000,000"],
    "bomb_50mp.png": ["10000x5000", "40,000,000"],
    "zero_width.png": ["damaged"],
    "ribbon.png": ["2100x10", "aspect ratio", "crop"],
    "document.pdf.png": ["PDF"],
    "claims_36mp.jpg": ["6000x6000", "1 byte of image data", "truncated"],
    "claims_36mp.png": ["6000x6000", "truncated"],
}


@pytest.fixture
def no_decoding(monkeypatch):
    """Make any attempt to decode pixels fail the test: the gate must refuse from the header."""

    def forbidden(self):
        raise AssertionError(f"decoded pixels of a {self.size} image that should have been refused")

    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)


def test_every_hostile_case_has_expected_words():
    assert set(REFUSAL_WORDS) == set(hostile_uploads())


@pytest.mark.parametrize("name", sorted(REFUSAL_WORDS))
def test_hostile_upload_refused_with_a_clear_sentence(name):
    data = hostile_uploads()[name]
    with pytest.raises(ImageLoadError) as caught:
        load_image(data, name)
    message = str(caught.value)
    assert name in message
    for word in REFUSAL_WORDS[name]:
        assert word in message
    assert " at 0x" not in message  # no Python object reprs in front of users


@pytest.mark.parametrize("name", ["notes.png", "drawing.png", "page.png", "bomb.png", "bomb_50mp.png",
                                  "ribbon.png", "zero_width.png", "random.png", "claims_36mp.jpg",
                                  "claims_36mp.png"])
def test_refused_before_any_pixel_is_decoded(name, no_decoding):
    with pytest.raises(ImageLoadError):
        load_image(hostile_uploads()[name], name)


def test_valid_image_is_decoded_under_the_no_decoding_guard_check():
    """The guard above really blocks decoding, so the test before it can fail."""
    png = encode(Image.fromarray(gradient_rgb()), "PNG")
    load_image(png)  # fine without the guard
    original = ImageFile.ImageFile.load
    try:
        ImageFile.ImageFile.load = lambda self: (_ for _ in ()).throw(AssertionError("decoded"))
        with pytest.raises(AssertionError):
            load_image(png)
    finally:
        ImageFile.ImageFile.load = original


def test_bomb_below_pillows_own_limit_is_ours_to_stop():
    """50 MP passes Pillow's default guard (89 MP), so only our limit keeps it out."""
    assert 10_000 * 5_000 < Image.MAX_IMAGE_PIXELS
    assert LIMITS.max_pixels < Image.MAX_IMAGE_PIXELS


def test_limits_can_be_raised_or_lowered():
    png = encode(Image.fromarray(gradient_rgb()), "PNG")
    with pytest.raises(ImageLoadError, match="upload limit"):
        load_image(png, "x.png", limits=ImageLimits(max_upload_bytes=len(png) - 1))
    with pytest.raises(ImageLoadError, match="aspect ratio"):
        load_image(png, "x.png", limits=ImageLimits(max_aspect=1.2))  # 64x48 is 1.33:1
    with pytest.raises(ImageLoadError, match="sides are limited to 50"):
        load_image(png, "x.png", limits=ImageLimits(max_side=50))
    ribbon = hostile_uploads()["ribbon.png"]
    assert load_image(ribbon, limits=ImageLimits(max_aspect=300)).rgb.shape == (10, 2100, 3)
    with pytest.raises(ImageLoadError):
        load_image(ribbon)


def test_limits_from_the_server_environment():
    limits = ImageLimits.from_env({"GLOM_VIZ_MAX_PIXELS": "100_000_000", "GLOM_VIZ_MAX_ASPECT": "50",
                                   "UNRELATED": "1"})
    assert limits == ImageLimits(max_pixels=100_000_000, max_aspect=50.0)
    assert ImageLimits.from_env({}) == ImageLimits()
    with pytest.raises(ConfigError, match="GLOM_VIZ_MAX_FRAMES='many' is not a number"):
        ImageLimits.from_env({"GLOM_VIZ_MAX_FRAMES": "many"})
    with pytest.raises(ConfigError, match="max_pixels=0 must be a positive number"):
        ImageLimits(max_pixels=0)


def test_next_upload_works_after_each_refusal():
    good = encode(Image.fromarray(gradient_rgb()), "PNG")
    for name, data in hostile_uploads().items():
        with pytest.raises(ImageLoadError):
            load_image(data, name)
        assert np.array_equal(load_image(good).rgb, gradient_rgb())


def test_not_bytes_is_refused():
    with pytest.raises(ImageLoadError, match="bytes"):
        load_image("picture.png")


def test_sha256_is_of_the_file():
    data = odd_uploads()["photo.bmp"]
    assert load_image(data).sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("name", ["photo.webp", "photo.bmp", "photo.tiff"])
def test_lossless_formats_round_trip(name):
    loaded = load_image(odd_uploads()[name], name)
    assert loaded.note is None
    assert np.array_equal(loaded.rgb, gradient_rgb())


def test_jpeg_decodes_as_pillow_does():
    rgb = gradient_rgb()
    data = encode(Image.fromarray(rgb), "JPEG", quality=95)
    loaded = load_image(data)
    assert loaded.format == "JPEG" and loaded.note is None
    assert np.array_equal(loaded.rgb, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    assert np.abs(loaded.rgb.astype(int) - rgb).mean() < 10


def test_one_pixel_image_is_accepted_with_a_note_and_upscaled():
    loaded = load_image(odd_uploads()["one_pixel.png"], "one_pixel.png")
    assert loaded.rgb.shape == (1, 1, 3) and "1x1" in loaded.note and "upscaled" in loaded.note
    tensor, shown, info = to_model_input(loaded.rgb, 16)
    assert tensor.shape == (1, 3, 16, 16)
    assert np.all(shown == [200, 100, 50])
    assert info == "resized 1x1 to 16x16"


def test_16_bit_greyscale_is_reduced_to_8_bits():
    grey16 = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)
    loaded = load_image(odd_uploads()["grey16.png"])
    assert "16-bit" in loaded.note
    expected = np.round(grey16 / 257.0).astype(np.uint8)
    for channel in range(3):
        assert np.array_equal(loaded.rgb[:, :, channel], expected)


def test_16_bit_rgb_png_keeps_its_colours():
    loaded = load_image(odd_uploads()["rgb16.png"])
    assert np.array_equal(loaded.rgb, gradient_rgb(16, 16))


def test_cmyk_jpeg_becomes_rgb():
    loaded = load_image(odd_uploads()["cmyk.jpg"])  # C=0 M=255 Y=255 K=0 is red
    assert "CMYK" in loaded.note
    assert np.abs(loaded.rgb.astype(int) - [255, 0, 0]).max() <= 8


def test_palette_transparency_is_composited_on_white():
    loaded = load_image(odd_uploads()["palette_transparent.png"])
    assert "transparent" in loaded.note
    assert np.all(loaded.rgb[:, :8] == 255)
    assert np.all(loaded.rgb[:8, 8:] == [255, 0, 0])
    assert np.all(loaded.rgb[8:, 8:] == [0, 255, 0])


def test_half_transparent_grey_is_blended_with_white():
    data = encode(Image.new("LA", (32, 32), (80, 128)), "PNG")
    expected = 80 * 128 / 255 + 255 * (1 - 128 / 255)
    assert np.abs(load_image(data).rgb.astype(float) - expected).max() <= 1
    assert np.all(load_image(odd_uploads()["grey_alpha.png"]).rgb == 255)  # alpha 0: all white


def test_opaque_rgba_has_no_transparency_note():
    data = encode(Image.fromarray(np.dstack([gradient_rgb(), np.full((48, 64), 255, np.uint8)])), "PNG")
    loaded = load_image(data)
    assert loaded.note is None and np.array_equal(loaded.rgb, gradient_rgb())


def test_one_bit_and_greyscale():
    assert np.all(load_image(odd_uploads()["one_bit.png"]).rgb == 255)
    grey = gradient_rgb()[:, :, 0]
    loaded = load_image(encode(Image.fromarray(grey), "PNG"))
    assert np.array_equal(loaded.rgb, np.dstack([grey] * 3))


@pytest.mark.parametrize("orientation, top_left, bottom_right, shape", [
    (1, "red", "blue", (20, 40)),  # as stored: red left, blue right
    (3, "blue", "red", (20, 40)),  # turned 180 degrees
    (6, "red", "blue", (40, 20)),  # turned 90 clockwise: the left half goes to the top
    (8, "blue", "red", (40, 20)),  # turned 90 anticlockwise: the left half goes to the bottom
])
def test_exif_orientation_is_applied(orientation, top_left, bottom_right, shape):
    colours = {"red": [255, 0, 0], "blue": [0, 0, 255]}
    loaded = load_image(exif_rotated_jpeg(orientation))
    assert loaded.rgb.shape[:2] == shape
    assert np.abs(loaded.rgb[2, 2].astype(int) - colours[top_left]).max() < 40
    assert np.abs(loaded.rgb[-3, -3].astype(int) - colours[bottom_right]).max() < 40
    assert (orientation != 1) == ("EXIF" in (loaded.note or ""))


def test_animated_gif_first_frame_and_all_frames():
    data = animated_gif()
    first = load_image(data, "a.gif")
    assert np.all(first.rgb == [255, 0, 0]) and "first of 3 frames" in first.note
    frames = load_frames(data, "a.gif")
    assert [frame.frame for frame in frames] == [0, 1, 2]
    for frame, colour in zip(frames, ([255, 0, 0], [0, 255, 0], [0, 0, 255])):
        assert np.all(frame.rgb == colour)
        assert frame.sha256 == first.sha256


def test_frames_are_bounded_by_the_limits():
    colours = tuple((index * 20, 0, 0) for index in range(5))
    frames = load_frames(animated_gif(colours), "a.gif", limits=ImageLimits(max_frames=2))
    assert len(frames) == 2 and "first 2 of 5 frames" in frames[-1].note
    frames = load_frames(animated_gif(colours, size=40), limits=ImageLimits(max_sequence_pixels=3 * 1600))
    assert len(frames) == 3


def test_each_tiff_page_is_checked_before_decoding():
    small = Image.new("RGB", (20, 20), (1, 2, 3))
    big = Image.new("RGB", (300, 300), (4, 5, 6))
    data = encode(small, "TIFF", save_all=True, append_images=[big])
    assert [f.rgb.shape for f in load_frames(data)] == [(20, 20, 3), (300, 300, 3)]
    with pytest.raises(ImageLoadError, match="frame 2.*300x300"):
        load_frames(data, "pages.tiff", limits=ImageLimits(max_pixels=50_000))


def test_still_image_is_one_frame():
    frames = load_frames(odd_uploads()["photo.bmp"])
    assert len(frames) == 1 and np.array_equal(frames[0].rgb, gradient_rgb())


@pytest.mark.parametrize("width, height", [(640, 427), (427, 640)])
def test_crop_takes_the_centre_square(width, height):
    rgb = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    side = min(width, height)
    tensor, shown, info = to_model_input(rgb, side)
    top, left = (height - side) // 2, (width - side) // 2
    assert np.array_equal(shown, rgb[top:top + side, left:left + side])
    assert info == f"cropped {width}x{height} to {side}x{side}"
    tensor, shown, info = to_model_input(rgb, 64)
    assert info == f"cropped {width}x{height} to {side}x{side}, resized to 64x64"
    assert tensor.shape == (1, 3, 64, 64) and tensor.dtype == torch.float32


def test_pad_keeps_everything_and_pads_with_white():
    rgb = np.zeros((10, 20, 3), np.uint8)
    _, shown, info = to_model_input(rgb, 20, fit="pad")
    assert info == "padded 20x10 to 20x20 with white"
    assert np.all(shown[:5] == 255) and np.all(shown[5:15] == 0) and np.all(shown[15:] == 255)


def test_stretch_keeps_everything_and_no_padding():
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[:, 10:] = 255
    _, shown, info = to_model_input(rgb, 8, fit="stretch")
    assert info == "stretched 20x10 to 8x8"
    assert shown[:, :3].max() < 30 and shown[:, 5:].min() > 225


def test_model_input_is_shown_over_255():
    rgb = gradient_rgb(32, 32)
    tensor, shown, info = to_model_input(rgb, 32)
    assert info == "used as is (32x32)" and np.array_equal(shown, rgb)
    assert torch.equal(tensor[0].permute(1, 2, 0), torch.from_numpy(rgb).float() / 255)
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0


@pytest.mark.parametrize("rgb, size, fit, words", [
    (np.zeros((8, 8, 3), np.float32), 8, "crop", "uint8"),
    (np.zeros((8, 8), np.uint8), 8, "crop", "(H, W, 3)"),
    (np.zeros((0, 8, 3), np.uint8), 8, "crop", "(H, W, 3)"),
    (np.zeros((8, 8, 3), np.uint8), 0, "crop", "positive integer"),
    (np.zeros((8, 8, 3), np.uint8), 8, "squash", "crop, pad, stretch"),
])
def test_bad_model_input_arguments_are_refused(rgb, size, fit, words):
    with pytest.raises(ImageLoadError) as caught:
        to_model_input(rgb, size, fit=fit)
    assert words in str(caught.value)


def test_sample_images_ship_with_the_packages():
    samples = sample_images()
    assert list(samples) == ["china", "flower", "astronaut", "coffee", "chelsea"]
    for rgb in samples.values():
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.std() > 10
        tensor, _, _ = to_model_input(rgb, 32)
        assert tensor.shape == (1, 3, 32, 32)


def test_header_only_bomb_with_correct_crc_is_what_pillow_reads():
    """The crafted IHDR is valid: Pillow reads its size (so the test above tests the size check)."""
    with Image.open(io.BytesIO(png_header_only(1234, 567))) as image:
        assert image.size == (1234, 567)


def test_a_mask_is_read_as_one_label_per_flat_colour_with_black_background():
    mask = np.zeros((4, 6, 3), np.uint8)
    mask[:, 3:] = (0, 0, 255)
    mask[0, 0] = (0, 255, 0)
    labels = read_mask(encode(Image.fromarray(mask), "PNG"), "m.png", (4, 6))
    assert labels.dtype == np.uint8 and labels.shape == (4, 6)
    assert labels[1, 1] == 0 and (labels[:, 3:] == labels[0, 5]).all()
    assert len({labels[0, 0], labels[0, 5], 0}) == 3
    with pytest.raises(ImageLoadError, match="picture's size"):
        read_mask(encode(Image.fromarray(mask), "PNG"), "m.png", (6, 4))
    photo = np.random.default_rng(0).integers(0, 256, (16, 24, 3), np.uint8)
    with pytest.raises(ImageLoadError, match="colours"):
        read_mask(encode(Image.fromarray(photo), "PNG"), "photo.png", (16, 24))


@pytest.mark.parametrize("shape", [(4, 6), (6, 4), (5, 5)])
def test_a_mask_is_fitted_like_its_picture(shape):
    """fit_mask keeps the same pixels to_model_input keeps: where the picture is cropped or padded, so is the mask."""
    height, width = shape
    picture = np.zeros((height, width, 3), np.uint8)
    picture[..., 0] = np.arange(height * width).reshape(shape)  # each pixel names itself
    mask = picture[..., 0].astype(np.int64) + 1
    side = max(height, width)
    for fit in ("crop", "pad"):
        _, shown, _ = to_model_input(picture, min(height, width) if fit == "crop" else side, fit=fit)
        fitted = fit_mask(mask, fit)
        assert fitted.shape == shown.shape[:2]
        inside = fitted > 0
        np.testing.assert_array_equal(fitted[inside] - 1, shown[..., 0][inside])
    assert fit_mask(mask, "stretch") is mask
    with pytest.raises(ImageLoadError, match="fit"):
        fit_mask(mask, "squash")


@pytest.mark.parametrize("fmt, params", [
    ("JPEG", dict(quality=1, progressive=True, optimize=True)),  # the fewest bytes a flat JPEG takes
    ("JPEG", dict(quality=1, subsampling=2)),
    ("PNG", dict(compress_level=9)),  # deflate at its best ratio
])
def test_the_smallest_honest_encodings_of_a_flat_picture_are_not_taken_for_truncated(fmt, params):
    flat = np.full((2000, 2000, 3), 90, np.uint8)
    data = encode(Image.fromarray(flat), fmt, **params)
    assert load_image(data, "flat").rgb.shape == (2000, 2000, 3)
    grey = encode(Image.fromarray(flat[..., 0]), fmt, **params)
    assert load_image(grey, "flat").rgb.shape == (2000, 2000, 3)
