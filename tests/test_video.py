"""Videos through the upload gate: MP4, MOV and WebM read with PyAV, frames evenly sampled or taken in
consecutive pairs, and hostile files (cut, random bytes, lying headers, no pictures) refused with a
sentence, or read up to the cut with a note."""

import io

import numpy as np
import pytest

from conftest import frame_index, moving_square, video_bytes
from glom_viz import images
from glom_viz.errors import ImageLoadError
from glom_viz.images import ImageLimits, load_frame_pairs, load_frames, load_image

FORMATS = [("mp4", "mpeg4"), ("mp4", "libx264"), ("mov", "mpeg4"), ("webm", "libvpx")]
FRAGMENTED = {"movflags": "frag_keyframe+empty_moov"}  # an MP4 whose index comes first, as cameras stream


@pytest.mark.parametrize("container, codec", FORMATS)
def test_every_frame_of_a_short_clip_is_read_in_order(container, codec):
    data = video_bytes(moving_square(12), container, codec)
    frames = load_frames(data, f"clip.{container}")
    assert [f.frame for f in frames] == list(range(12))
    assert [frame_index(f.rgb) for f in frames] == list(range(12))
    assert all(f.rgb.shape == (48, 64, 3) and f.rgb.dtype == np.uint8 for f in frames)
    assert all(f.sha256 == frames[0].sha256 and f.name == f"clip.{container}" for f in frames)
    assert frames[-1].note is None


def test_a_long_clip_is_sampled_evenly_over_its_whole_length():
    data = video_bytes(moving_square(61), "mp4")
    frames = load_frames(data, "long.mp4", ImageLimits(max_frames=7))
    assert [f.frame for f in frames] == [0, 10, 20, 30, 40, 50, 60]
    assert [frame_index(f.rgb) for f in frames] == [0, 10, 20, 30, 40, 50, 60]
    assert "7 of its 61 frames, evenly spaced" in frames[-1].note
    # the pixels of all frames together bound the sample too: 5 frames of 64 x 48
    assert len(load_frames(data, "long.mp4", ImageLimits(max_sequence_pixels=5 * 64 * 48))) == 5


def test_pairs_are_consecutive_frames_spread_over_the_clip():
    data = video_bytes(moving_square(40), "webm", "libvpx")
    pairs = load_frame_pairs(data, "clip.webm", ImageLimits(max_frames=8))
    assert len(pairs) == 4
    for first, second in pairs:
        assert second.frame == first.frame + 1
        assert frame_index(second.rgb) == frame_index(first.rgb) + 1
    assert pairs[0][0].frame == 0 and pairs[-1][1].frame == 39
    assert "4 pairs of consecutive frames" in pairs[-1][1].note


def test_an_animation_gives_pairs_and_a_still_image_none(photo_png):
    from PIL import Image

    buffer = io.BytesIO()
    gif = [Image.fromarray(rgb) for rgb in moving_square(3)]
    gif[0].save(buffer, format="GIF", save_all=True, append_images=gif[1:])
    assert [(a.frame, b.frame) for a, b in load_frame_pairs(buffer.getvalue(), "a.gif")] == [(0, 1), (1, 2)]
    with pytest.raises(ImageLoadError, match="single frame"):
        load_frame_pairs(photo_png, "photo.png")


def test_load_image_gives_a_videos_first_frame_with_a_note():
    loaded = load_image(video_bytes(moving_square(5), "mov"), "clip.mov")
    assert frame_index(loaded.rgb) == 0 and loaded.frame == 0
    assert "first of 5 frames" in loaded.note


@pytest.mark.parametrize("container, codec, options", [("mp4", "mpeg4", FRAGMENTED), ("webm", "libvpx", {})])
def test_a_cut_video_keeps_the_frames_before_the_cut_with_a_note(container, codec, options):
    data = video_bytes(moving_square(40), container, codec, **options)
    frames = load_frames(data[:len(data) // 2], f"cut.{container}")
    assert 5 < len(frames) < 40
    assert [frame_index(f.rgb) for f in frames] == [f.frame for f in frames] == list(range(len(frames)))
    assert "the file ends early" in frames[-1].note


def test_a_cut_mp4_whose_index_was_at_the_end_is_refused_saying_why():
    data = video_bytes(moving_square(20), "mp4")
    with pytest.raises(ImageLoadError, match="damaged or truncated.*index at the end"):
        load_frames(data[:len(data) // 2], "cut.mp4")


@pytest.mark.parametrize("head", [b"", b"\x00\x00\x00\x18ftypmp42", b"\x1a\x45\xdf\xa3"])
def test_random_bytes_named_mp4_are_refused(head):
    data = head + np.random.default_rng(0).bytes(4000)
    for read in (load_frames, load_image, load_frame_pairs):
        with pytest.raises(ImageLoadError, match="not an image in any format|FFmpeg cannot read it") as error:
            read(data, "clip.mp4")
        assert "'clip.mp4'" in str(error.value) and "MP4" in str(error.value)


def test_a_video_without_a_video_stream_is_refused():
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        output.mux(stream.encode(frame))
        output.mux(stream.encode())
    with pytest.raises(ImageLoadError, match="no video stream \\(audio\\)"):
        load_frames(buffer.getvalue(), "sound.mp4")


def test_header_claims_are_refused_before_any_frame_is_decoded(monkeypatch):
    def no_decoding(*_):
        raise AssertionError("a frame was decoded")

    monkeypatch.setattr(images, "_decoded", no_decoding)
    hours = video_bytes(moving_square(12), "mp4", rate=1)  # 12 s: more than a limit of 10 s
    with pytest.raises(ImageLoadError, match="claims to last 12.0 s, above the limit of 10.0 s"):
        load_frames(hours, "hours.mp4", ImageLimits(max_video_seconds=10))
    with pytest.raises(ImageLoadError, match="claims 12 frames, above the limit of 10"):
        load_frames(hours, "many.mp4", ImageLimits(max_video_frames=10))
    with pytest.raises(ImageLoadError, match="holds more than 10 frames"):  # WebM headers do not count frames
        load_frames(video_bytes(moving_square(12), "webm", "libvpx"), "many.webm", ImageLimits(max_video_frames=10))
    large = video_bytes(np.zeros((2, 480, 640, 3), np.uint8), "mp4", "libx264")  # H.264 states its size up front
    with pytest.raises(ImageLoadError, match="640x480 = 307,200 pixels, above the limit of 100,000"):
        load_frames(large, "large.mp4", ImageLimits(max_pixels=100_000))


@pytest.mark.parametrize("container, codec", FORMATS)
def test_frames_above_the_pixel_limit_are_refused_by_the_header_or_the_decoder(container, codec):
    large = video_bytes(np.zeros((2, 480, 640, 3), np.uint8), container, codec)
    with pytest.raises(ImageLoadError, match="above the limit of 100,000|larger than 100,000 pixels"):
        load_frames(large, f"large.{container}", ImageLimits(max_pixels=100_000))


@pytest.mark.parametrize("container, codec, options", [("mp4", "mpeg4", {}), ("mp4", "libx264", FRAGMENTED),
                                                       ("webm", "libvpx", {})])
def test_damaged_videos_give_frames_or_a_refusal_and_nothing_else(container, codec, options):
    clean = video_bytes(moving_square(10), container, codec, **options)
    rng = np.random.default_rng(0)
    for trial in range(30):
        data = bytearray(clean)
        if trial % 3 == 0:
            data = data[:rng.integers(8, len(data))]
        else:  # a few bytes overwritten anywhere, header included
            for _ in range(rng.integers(1, 12)):
                data[rng.integers(len(data))] = rng.integers(256)
        try:
            frames = load_frames(bytes(data), f"damaged.{container}")
        except ImageLoadError as error:
            assert "'damaged." in str(error)
        else:
            assert frames and all(f.rgb.ndim == 3 and f.rgb.shape[2] == 3 for f in frames)
