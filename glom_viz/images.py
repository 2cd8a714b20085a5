"""Hostile uploads checked before decoding; any picture turned into the model's input.

Every upload goes through the same gate, cheapest check first, and nothing is decoded until the
header has been read and found within ``LIMITS``:

1. empty file, file larger than ``LIMITS.max_upload_bytes``;
2. the format sniffed from the magic bytes (PNG, JPEG, WebP, BMP, TIFF, GIF); anything else is named
   (SVG, HTML, text, PDF, HEIC, ...) and refused, whatever the file name says;
3. the dimensions from the header (``Image.open`` is lazy): zero, more than ``LIMITS.max_pixels``
   (a decompression bomb), a side above ``LIMITS.max_side``, an aspect ratio above
   ``LIMITS.max_aspect``;
4. decoding, with Pillow's own bomb guard left on and truncated files not tolerated; every failure of
   Pillow's decoders becomes an ``ImageLoadError``.

Odd but valid pictures come out as plain RGB: 16-bit, CMYK, palette, greyscale, 1-bit, transparency
(composited on white), EXIF orientation applied, the first frame of an animation (``load_frames``
gives them all). Images smaller than ``LIMITS.small_side`` are accepted with a note that the model
will see them upscaled.

Videos (MP4, MOV, WebM) go through the same gate with FFmpeg's libraries (PyAV) in place of Pillow:
the container is sniffed from its bytes and opened with that demuxer only; a file with no video
stream, a header claiming a picture above the limits or more than ``LIMITS.max_video_seconds`` /
``LIMITS.max_video_frames`` is refused before a frame is decoded; frames are counted from the
packets, then decoded and evenly sampled (``load_frames``) or taken as consecutive pairs
(``load_frame_pairs``), each checked like an image. A truncated file keeps the frames before the cut,
with a note.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import struct
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from glom_viz.errors import ConfigError, ImageLoadError
from glom_viz.limits import Limits
from glom_viz.text import quoted

FITS = ("crop", "pad", "stretch")
# a ground-truth mask is a label image: a handful of flat colours, not a photograph; masks that store
# their ids (greyscale up to 16 bits, palette indices) may hold as many ids as their depth allows
MASK_COLOURS = 64
MASK_ROWS_PER_CHUNK = 256  # colour masks are packed and looked up a band of rows at a time
# How few bytes can hold a picture. Deflate (PNG) packs at most 1032:1; a Huffman-coded JPEG spends at
# least one bit on every 8x8 block of a component (its DC coefficient). Arithmetic-coded JPEGs (rare)
# can go below that; they are held to 1/64 bit a block.
DEFLATE_MAX_RATIO = 1100
JPEG_ARITHMETIC_BLOCKS_PER_BIT = 64
JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
JPEG_ARITHMETIC = frozenset((0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
JPEG_MARKER = re.compile(rb"\xff(?![\x00\xd0-\xd7\xff])")  # ends entropy-coded data: not a stuffed 0 or RSTn
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
# Pillow first box-reduces by an integer factor, keeping at least this multiple of the target size,
# then Lanczos-filters: 4x faster on photographs, within 0.5/255 of a full Lanczos (Pillow's docs)
REDUCING_GAP = 3.0
PAD_RGB = (255, 255, 255)  # padding and transparency both become white: a plain, neutral background
TRANSPARENT_BACKGROUND = (255, 255, 255)

# The formats we decode, by magic bytes. The value is Pillow's format name.
RASTER_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
FORMAT_NAMES = "PNG, JPEG, WebP, BMP, TIFF or GIF"
# the video containers we read, by FFmpeg's demuxer name, and what to call them in messages
VIDEO_CONTAINERS = {"mov": "an MP4/QuickTime video", "matroska": "a WebM/Matroska video"}
VIDEO_NAMES = "MP4, MOV or WebM"
# ISO base media brands of still pictures: an "ftyp" box with one of these is not a video
STILL_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")
QUICKTIME_ATOMS = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
MATROSKA_MAGIC = b"\x1a\x45\xdf\xa3"
PROBED_STREAMS = 16  # streams of a video given the probe's pixel limit (a clip has one to a few)
# a video whose frames end this share of its claimed length early (and two frames at least) was cut
CUT_SHARE = 0.02
OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")
SNIFF_BYTES = 512  # enough of the head of a file to tell what it is

# Whatever Pillow's decoders raise on malformed bytes. Pillow parses untrusted input with many
# plugins, and each reports damage its own way; all of them mean "not a usable image".
DECODE_FAILURES = (
    OSError,  # truncated data, broken streams, "cannot identify image file"
    SyntaxError,  # malformed headers (PNG chunks, GIF, TIFF tags)
    ValueError,  # impossible sizes or modes, oversized text chunks
    EOFError,  # frames that end early
    struct.error,  # short header fields
    IndexError,  # tables (palettes, TIFF tags) shorter than they claim
    KeyError,  # unknown modes or tags
    TypeError,  # tag values of the wrong kind
    ZeroDivisionError,  # zero resolutions or strides in headers
    OverflowError,  # header fields that do not fit C types
    Image.DecompressionBombError,  # Pillow's own guard, if its limit is set below ours
)


@dataclass(frozen=True)
class ImageLimits(Limits):
    """What an upload may be. Raise them for a private server (see docs/LIMITS.md)."""

    KIND = "image limit"

    max_upload_bytes: int = 20 * 2**20  # 20 MiB, as the app's server.maxUploadSize
    max_pixels: int = 40_000_000  # 40 MP; Pillow warns at 89 MP and refuses at 179 MP
    max_side: int = 16_384
    max_aspect: float = 20.0  # long side / short side
    min_side: int = 1  # a header claiming 0 pixels is refused
    small_side: int = 32  # below this, accepted with a note that the model sees it upscaled
    max_frames: int = 64  # frames read from one animation or sampled from one video
    max_sequence_pixels: int = 40_000_000  # all frames of a sequence together
    # a video's header may claim at most this long a clip, or this many frames (10 min at 30 fps):
    # every frame is decoded to sample a few, so these bound the work one upload can ask for
    max_video_seconds: float = 600.0
    max_video_frames: int = 18_000

    def __post_init__(self):
        super().__post_init__()
        if self.max_aspect < 1:
            raise ConfigError(f"image limit max_aspect={self.max_aspect} must be 1 or more (long side / short side)")


LIMITS = ImageLimits.from_env()  # what a server allows: the defaults unless its environment raises them


@dataclass(frozen=True)
class LoadedImage:
    """A decoded upload: ``rgb`` (H, W, 3) uint8, what to tell the user, and the file's sha256."""

    rgb: np.ndarray
    name: str
    note: str | None
    sha256: str
    format: str = ""
    frame: int = 0


def load_image(data: bytes, name: str = "", limits: ImageLimits = LIMITS) -> LoadedImage:
    """Check an uploaded file before decoding it, then decode its first frame to RGB.

    Args:
        data: the file's bytes, exactly as uploaded.
        name: the file name, only used in messages.
        limits: the limits to check against (``LIMITS`` unless a private server raises them).

    Returns:
        ``LoadedImage`` with ``rgb`` (H, W, 3) uint8 and a ``note`` saying what was done to it
        (bit depth reduced, transparency composited, rotated, first of several frames, tiny), or
        ``None`` when it was a plain RGB picture.

    Raises:
        ImageLoadError: with a sentence saying what is wrong with the file and what to do.

    A video (MP4, MOV, WebM) gives its first frame, with a note; ``load_frames`` samples it.
    """
    label = _label(name)
    if _video_container(data) is not None:
        first = _video_frames(data, label, limits, first_only=True)[0]
        return dataclasses.replace(first, name=name)
    image, fmt = _open_checked(data, label, limits)
    n_frames = _frame_count(image, label)
    rgb, notes = _decode_frame(image, label, upright=True)
    if n_frames > 1:
        notes.append(f"first of {n_frames} frames shown (load the frames as a sequence to see all)")
    notes += _size_notes(rgb, limits)
    return LoadedImage(rgb=rgb, name=name, note=_join(notes), sha256=_sha256(data), format=fmt)


def load_frames(data: bytes, name: str = "", limits: ImageLimits = LIMITS) -> list[LoadedImage]:
    """All frames of an animated GIF, WebP, PNG or multi-page TIFF, or frames sampled from a video
    (MP4, MOV, WebM), each checked like an upload.

    A still image gives one frame. Of an animation, at most ``limits.max_frames`` frames and
    ``limits.max_sequence_pixels`` pixels in all are read; the rest are dropped with a note on the
    last frame kept. Of a video, as many frames as both limits allow are taken evenly spaced over the
    whole clip (first and last included), with a note saying so; a truncated video gives the frames
    before the cut, with a note.

    Returns:
        list of ``LoadedImage`` (``frame`` = index in the file), all with the file's sha256.

    Raises:
        ImageLoadError: the file, or any frame of it, cannot be used.
    """
    label = _label(name)
    if _video_container(data) is not None:
        return [dataclasses.replace(frame, name=name) for frame in _video_frames(data, label, limits)]
    image, fmt = _open_checked(data, label, limits)
    n_frames = _frame_count(image, label)
    digest = _sha256(data)
    frames: list[LoadedImage] = []
    total_pixels = 0
    for index in range(n_frames):
        if index == limits.max_frames:
            break
        try:
            image.seek(index)
        except DECODE_FAILURES as error:
            raise ImageLoadError(
                f"{label}: frame {index + 1} of {n_frames} is damaged ({_reason(error)}); "
                "re-export the animation or upload a single frame"
            ) from error
        width, height = image.size
        _check_dimensions(width, height, f"{label} (frame {index + 1})", limits)
        if total_pixels + width * height > limits.max_sequence_pixels:
            break
        total_pixels += width * height
        rgb, notes = _decode_frame(image, label, upright=index == 0)
        notes += _size_notes(rgb, limits)
        frames.append(LoadedImage(rgb=rgb, name=name, note=_join(notes), sha256=digest, format=fmt,
                                  frame=index))
    if len(frames) < n_frames:
        last = frames[-1]
        dropped = (f"only the first {len(frames)} of {n_frames} frames were read (limit: "
                   f"{limits.max_frames} frames, {limits.max_sequence_pixels:,} pixels in all)")
        frames[-1] = LoadedImage(rgb=last.rgb, name=name, note=_join([n for n in (last.note, dropped) if n]),
                                 sha256=digest, format=fmt, frame=last.frame)
    return frames


def load_frame_pairs(data: bytes, name: str = "", limits: ImageLimits = LIMITS) -> list[tuple[LoadedImage, LoadedImage]]:
    """Pairs of consecutive frames of a video or an animation: the scene, and the same scene a moment
    later, as common fate needs them.

    Of a video, the pairs start at evenly spaced frames over the whole clip, as many as
    ``limits.max_frames`` (two frames per pair) and ``limits.max_sequence_pixels`` allow; of an
    animation, its first frames two by two in a row (frames 0-1, 1-2, ...). A still image has no pair.

    Raises:
        ImageLoadError: the file cannot be used, or holds fewer than two frames.
    """
    label = _label(name)
    if _video_container(data) is not None:
        frames = [dataclasses.replace(f, name=name) for f in _video_frames(data, label, limits, pairs=True)]
        return [(a, b) for a, b in zip(frames[::2], frames[1::2])]
    frames = load_frames(data, name, limits)
    if len(frames) < 2:
        raise ImageLoadError(f"{label} holds a single frame: a pair needs a video or an animation of two "
                             "frames or more (or put the second frame in next/)")
    return list(zip(frames[:-1], frames[1:]))


def to_model_input(rgb: np.ndarray, image_size: int, fit: str = "crop") -> tuple[torch.Tensor, np.ndarray, str]:
    """Turn a picture into the model's input: square, ``image_size`` pixels, values in [0, 1].

    Args:
        rgb: (H, W, 3) uint8.
        image_size: S, the model's ``image_size``.
        fit: ``"crop"`` (centre crop to a square, the default), ``"pad"`` (pad to a square with
            white) or ``"stretch"`` (resize without keeping the aspect ratio).

    Returns:
        ``(tensor (1, 3, S, S) float32 in [0, 1], shown (S, S, 3) uint8, info)``: ``shown`` is what
        the model sees, ``info`` says how it was made, e.g. ``"cropped 640x427 to 427x427, resized
        to 64x64"``.
    """
    if fit not in FITS:
        raise ImageLoadError(f"fit must be one of {', '.join(FITS)}, not {fit!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ImageLoadError(f"image_size must be a positive integer, not {image_size!r}")
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise ImageLoadError(
            f"expected an RGB picture as a (H, W, 3) uint8 array, got {rgb.dtype} {tuple(rgb.shape)}; "
            "use load_image(...).rgb"
        )
    height, width = rgb.shape[:2]
    size = int(image_size)
    picture = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    steps = []
    if fit == "crop" and width != height:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        picture = picture.crop((left, top, left + side, top + side))
        steps.append(f"cropped {width}x{height} to {side}x{side}")
    elif fit == "pad" and width != height:
        side = max(width, height)
        square = Image.new("RGB", (side, side), PAD_RGB)
        square.paste(picture, ((side - width) // 2, (side - height) // 2))
        picture = square
        steps.append(f"padded {width}x{height} to {side}x{side} with white")
    if picture.size != (size, size):
        before = "x".join(map(str, picture.size))
        picture = picture.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
        if fit == "stretch" and width != height:
            steps.append(f"stretched {before} to {size}x{size}")
        elif steps:
            steps.append(f"resized to {size}x{size}")
        else:
            steps.append(f"resized {before} to {size}x{size}")
    if not steps:
        steps.append(f"used as is ({size}x{size})")
    shown = np.asarray(picture, dtype=np.uint8).copy()
    tensor = torch.from_numpy(shown).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    return tensor, shown, ", ".join(steps)


def fit_mask(mask: np.ndarray, fit: str = "crop") -> np.ndarray:
    """A label mask (H, W) cropped or padded (with background 0) as ``to_model_input`` does the picture.

    "stretch" leaves it as is: the islands engine's ``patch_truth`` maps any (H, W) onto the patch grid.
    """
    if fit not in FITS:
        raise ImageLoadError(f"fit must be one of {', '.join(FITS)}, not {fit!r}")
    height, width = mask.shape
    if fit == "crop" and height != width:
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        return mask[top:top + side, left:left + side]
    if fit == "pad" and height != width:
        side = max(height, width)
        square = np.zeros((side, side), mask.dtype)
        top, left = (side - height) // 2, (side - width) // 2
        square[top:top + height, left:left + width] = mask
        return square
    return mask


def read_mask(data: bytes, name: str, shape: tuple[int, int], picture_name: str = "the picture",
              limits: ImageLimits = LIMITS) -> np.ndarray:
    """An uploaded label image -> (H, W) labels, 0 = background, read at the mask's own bit depth.

    Greyscale masks (1, 8 or 16 bits) and palette masks store their ids: the values (a palette's
    indices, not its colours) are the labels, 0 the background, so a 16-bit instance mask keeps its
    ids. Colour masks get one label per flat colour (at most ``MASK_COLOURS``), black (and fully
    transparent) the background. Ids are found in linear time, a band of rows at a time.

    Args:
        data, name: the file, checked like any upload (size, format, header, data) before decoding.
        shape: (H, W) of the picture the mask belongs to; the mask must have the same size (after
            its EXIF orientation, as the picture), which is checked from its header.
        limits: the upload limits (``LIMITS`` unless a private server raises them).

    Returns:
        (H, W) uint8 or uint16 labels (uint16 where the ids need it).

    Raises:
        ImageLoadError: not a usable image, the wrong size, a photograph rather than flat labels.
    """
    label = _label(name) if name else "the mask"
    image, _ = _open_checked(data, f"the mask {label}", limits)
    height, width = shape
    if image.size not in ((width, height), (height, width)):  # upright or turned by its EXIF: from the header
        raise ImageLoadError(f"the mask {label} is {image.size[0]}x{image.size[1]} px but {picture_name} is "
                             f"{width}x{height}: upload a label image of the picture's size")
    try:
        image.load()
        if _orientation(image) != 1:
            image = ImageOps.exif_transpose(image)
        labels = _mask_labels(image, label)
    except DECODE_FAILURES as error:
        raise ImageLoadError(
            f"the mask {label} could not be decoded ({_reason(error)}): the file is truncated or damaged; "
            "upload it again or save it again from an image editor"
        ) from error
    if labels.shape != (height, width):
        raise ImageLoadError(f"the mask {label} is {labels.shape[1]}x{labels.shape[0]} px upright but "
                             f"{picture_name} is {width}x{height}: upload a label image of the picture's size")
    return labels


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of a file's first frame; 1 when it has none or it is damaged."""
    try:
        value = image.getexif().get(0x0112, 1)
    except DECODE_FAILURES:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _mask_labels(image: Image.Image, label: str) -> np.ndarray:
    """A decoded mask's labels: its stored ids (greyscale, palette) or one per flat colour."""
    mode = image.mode
    if mode in ("1", "L", "P", "LA", "PA"):
        return _bands(image.getchannel(0) if mode in ("LA", "PA") else image, np.uint8)
    if mode.startswith("I;16"):
        return _bands(image, np.uint16)
    if mode == "I":  # 32-bit greyscale (TIFF): ids, if they are ids
        low, high = image.getextrema()
        if low < 0 or high > np.iinfo(np.uint16).max:
            raise ImageLoadError(f"the mask {label} holds 32-bit values {low}..{high}: a mask stores ids from 0 "
                                 "(background) to 65535; save it as an 8- or 16-bit PNG")
        return _bands(image, np.uint16)
    if mode == "F":
        raise ImageLoadError(f"the mask {label} holds floating-point values: a mask stores integer ids, 0 for the "
                             "background; save it as an 8- or 16-bit greyscale PNG")
    return _colour_labels(image, label)


def _bands(image: Image.Image, dtype) -> np.ndarray:
    """A single-channel image's values as (H, W) ``dtype``, copied a band of rows at a time.

    ``np.asarray`` of a whole Pillow image goes through a bytes copy: twice the picture again.
    """
    width, height = image.size
    values = np.empty((height, width), dtype=dtype)
    for top in range(0, height, MASK_ROWS_PER_CHUNK):
        values[top:top + MASK_ROWS_PER_CHUNK] = np.asarray(
            image.crop((0, top, width, min(height, top + MASK_ROWS_PER_CHUNK))))
    return values


def _colour_labels(image: Image.Image, label: str) -> np.ndarray:
    """One label per flat colour of an RGB(A) mask, black and fully transparent pixels 0.

    Two passes over bands of rows (which colours occur, then each pixel's label), so beside the
    decoded picture only the labels and two tables over the 2**24 colours are held.
    """
    transparent = image.mode in ("RGBA", "RGBa", "LA", "PA") or "transparency" in image.info
    image = image.convert("RGBA" if transparent else "RGB") if image.mode not in ("RGB", "RGBA") else image
    width, height = image.size

    def codes(top: int) -> np.ndarray:  # (rows, W) 24-bit colours of a band; 0 where transparent
        band = np.asarray(image.crop((0, top, width, min(height, top + MASK_ROWS_PER_CHUNK)))).astype(np.uint32)
        code = (band[..., 0] << 16) | (band[..., 1] << 8) | band[..., 2]
        if band.shape[-1] == 4:
            code[band[..., 3] == 0] = 0
        return code

    seen = np.zeros(2**24, dtype=bool)  # which colours occur: a table, no sort
    for top in range(0, height, MASK_ROWS_PER_CHUNK):
        seen[codes(top)] = True
    seen[0] = False  # black is the background whether or not it occurs
    colours = np.flatnonzero(seen)
    if len(colours) + 1 > MASK_COLOURS:
        raise ImageLoadError(f"the mask {label} has {len(colours) + 1} colours: a mask is a label image with one "
                             f"flat colour per segment (at most {MASK_COLOURS}) and black background; save it as "
                             "PNG, not JPEG (or store the ids in a greyscale or palette PNG)")
    lookup = np.zeros(2**24, dtype=np.uint8)
    lookup[colours] = np.arange(1, len(colours) + 1)
    labels = np.empty((height, width), dtype=np.uint8)
    for top in range(0, height, MASK_ROWS_PER_CHUNK):
        labels[top:top + MASK_ROWS_PER_CHUNK] = lookup[codes(top)]
    return labels


def sample_images() -> dict[str, np.ndarray]:
    """Pictures that ship inside scikit-learn and scikit-image, (H, W, 3) uint8 each; no network."""
    from skimage import data as skimage_data
    from sklearn.datasets import load_sample_image

    return {
        "china": load_sample_image("china.jpg"),
        "flower": load_sample_image("flower.jpg"),
        "astronaut": skimage_data.astronaut(),
        "coffee": skimage_data.coffee(),
        "chelsea": skimage_data.chelsea(),
    }


def sniff_video(head: bytes) -> str | None:
    """FFmpeg's demuxer name ("mov" or "matroska") for a video container we read, from its first bytes; None otherwise."""
    if head.startswith(MATROSKA_MAGIC):
        return "matroska"
    if head[4:8] in QUICKTIME_ATOMS and not (head[4:8] == b"ftyp" and head[8:12] in STILL_BRANDS):
        return "mov"
    return None


def sniff_format(head: bytes) -> str | None:
    """Pillow's format name for a raster file we decode, from its first bytes; None otherwise."""
    for magic, fmt in RASTER_MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def describe_content(head: bytes) -> str:
    """What a file that is not one of our raster formats looks like it is, for the message."""
    if head[:4] == b"RIFF" and head[8:12] != b"WEBP":
        return "a RIFF file that is not WebP (audio or video?)"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "a HEIC/HEIF photo"
        if brand in (b"avif", b"avis"):
            return "an AVIF image"
        return "an MP4/QuickTime video"
    if head.startswith(MATROSKA_MAGIC):
        return "a WebM/Matroska video"
    binary = {
        b"%PDF": "a PDF document",
        b"PK\x03\x04": "a ZIP archive (or an Office document)",
        b"\x1f\x8b": "a gzip archive",
        b"\x00\x00\x01\x00": "a Windows icon (ICO)",
        b"8BPS": "a Photoshop document",
        b"\x00\x00\x00\x0cjP  ": "a JPEG 2000 image",
        b"\xff\x0a": "a JPEG XL image",
        b"\x80": "a Python pickle",
        b"\x7fELF": "a program (ELF)",
        b"MZ": "a Windows program",
    }
    for magic, what in binary.items():
        if head.startswith(magic):
            return what
    text = _as_text(head)
    if text is None:
        return "not an image in any format we know"
    lowered = text.lstrip("\ufeff \t\r\n").lower()
    if "<svg" in lowered or lowered.startswith("<?xml") and "svg" in lowered:
        return "an SVG drawing (XML text), not a raster image"
    if lowered.startswith(("<!doctype html", "<html", "<head", "<body")) or "<html" in lowered:
        return "an HTML page, not an image"
    if lowered.startswith("<?xml"):
        return "an XML text file, not an image"
    if lowered.startswith(("{", "[")):
        return "a JSON text file, not an image"
    return "a text file, not an image"


def _open_checked(data: bytes, label: str, limits: ImageLimits) -> tuple[Image.Image, str]:
    """Steps 1-3 of the gate: size, format by magic bytes, header dimensions. Nothing decoded yet."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageLoadError(f"{label}: expected the file's bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) == 0:
        raise ImageLoadError(f"{label} is empty (0 bytes): upload the image file again")
    if len(data) > limits.max_upload_bytes:
        raise ImageLoadError(
            f"{label} is {_megabytes(len(data))}, above the {_megabytes(limits.max_upload_bytes)} "
            "upload limit: save it smaller (JPEG, or fewer pixels) and upload that"
        )
    head = data[:SNIFF_BYTES]
    fmt = sniff_format(head)
    if fmt is None:
        raise ImageLoadError(
            f"{label} is {describe_content(head)}: upload a {FORMAT_NAMES} picture (export or "
            f"screenshot it as PNG), or a video as {VIDEO_NAMES}"
        )
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
        width, height = image.size
    except Image.DecompressionBombError as error:
        raise ImageLoadError(
            f"{label} claims more pixels than Pillow will decode ({_reason(error)}): a decompression "
            f"bomb or a huge scan; upload an image of at most {limits.max_pixels:,} pixels"
        ) from error
    except DECODE_FAILURES as error:
        raise ImageLoadError(
            f"{label} starts like a {fmt} file but its header is damaged ({_reason(error)}): "
            "open it in an image editor and save it again"
        ) from error
    _check_dimensions(width, height, label, limits)
    _check_data_fills(data, fmt, width, height, label)
    return image, fmt


def _check_data_fills(data: bytes, fmt: str, width: int, height: int, label: str) -> None:
    """A JPEG or PNG holds at least the bytes that its header's size needs, else it is refused as truncated.

    Decoders fill what a file lacks with grey: a few hundred bytes that claim 6000x6000 would decode
    into 36 MP (and 100 MB) of nothing.
    """
    if fmt == "JPEG":
        scan = _jpeg_scan(data)
        if scan is None:
            return  # no frame header found: Pillow's decoder says what is wrong
        entropy_bytes, blocks, arithmetic = scan
        need = -(-blocks // (8 * (JPEG_ARITHMETIC_BLOCKS_PER_BIT if arithmetic else 1)))
        kind = "arithmetic-coded JPEG" if arithmetic else "JPEG"
    elif fmt == "PNG":
        rows = _png_image_bytes(data)
        if rows is None:
            return
        entropy_bytes, raw_bytes = rows
        need = -(-raw_bytes // DEFLATE_MAX_RATIO)
        kind = "PNG"
    else:
        return
    if entropy_bytes < need:
        raise ImageLoadError(
            f"{label} is a {kind} whose header claims {width}x{height} pixels but it holds {entropy_bytes:,} "
            f"byte{'' if entropy_bytes == 1 else 's'} of image data, where that many pixels need at least {need:,}: the file is truncated (or made to "
            "look larger than it is); upload the complete file, or save it again from an image editor"
        )


def _jpeg_scan(data: bytes) -> tuple[int, int, bool] | None:
    """(entropy-coded bytes in all scans, 8x8 blocks of its largest component, arithmetic coding) or None.

    Walks the marker segments up to EOI; segment payloads (EXIF thumbnails included) are skipped by
    their lengths, so only the scans' own data counts.
    """
    position, end = 2, len(data)
    entropy, blocks, arithmetic = 0, None, False
    while position + 4 <= end and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            position += 2
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        segment = data[position + 4:position + 2 + length]
        if marker in JPEG_SOF and blocks is None and len(segment) >= 6:
            blocks = _jpeg_blocks(segment)
            arithmetic = marker in JPEG_ARITHMETIC
        position += 2 + length
        if marker == 0xDA:  # SOS: the scan's entropy-coded data runs to the next real marker
            found = JPEG_MARKER.search(data, position)
            stop = found.start() if found else end
            entropy += stop - position
            position = stop
    return None if blocks is None else (entropy, blocks, arithmetic)


def _jpeg_blocks(frame: bytes) -> int:
    """8x8 blocks of a JPEG frame's largest component, from its SOF segment (its sampling factors)."""
    height, width, count = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big"), frame[5]
    factors = [(frame[7 + 3 * i] >> 4, frame[7 + 3 * i] & 15) for i in range(count) if 8 + 3 * i < len(frame)]
    factors = [(h, v) for h, v in factors if h and v] or [(1, 1)]
    most_h, most_v = max(h for h, _ in factors), max(v for _, v in factors)
    return max(-(-(-(-width * h // most_h)) // 8) * -(-(-(-height * v // most_v)) // 8) for h, v in factors)


def _png_image_bytes(data: bytes) -> tuple[int, int] | None:
    """(compressed bytes in the IDAT chunks, bytes the image's rows unpack to) of a PNG, or None."""
    position, end = 8, len(data)
    idat, raw = 0, None
    while position + 8 <= end:
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        if kind == b"IHDR" and length >= 13:
            width, height = int.from_bytes(data[position + 8:position + 12], "big"), int.from_bytes(
                data[position + 12:position + 16], "big")
            depth, colour = data[position + 16], data[position + 17]
            bits = depth * PNG_CHANNELS.get(colour, 1)
            raw = height * (1 + -(-width * bits // 8))
        elif kind == b"IDAT":
            idat += min(length, end - position - 8)
        elif kind == b"IEND":
            break
        position += 12 + length
    return None if raw is None else (idat, raw)


def _video_container(data) -> str | None:
    """The demuxer of a video upload, None for anything else (images and unknown bytes go to Pillow's gate)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return None
    return sniff_video(bytes(data[:SNIFF_BYTES]))


def _video_frames(data: bytes, label: str, limits: ImageLimits, pairs: bool = False,
                  first_only: bool = False) -> list[LoadedImage]:
    """Decode the frames of a video that ``load_frames`` (evenly spaced), ``load_frame_pairs`` (``pairs``:
    index i and i + 1, flattened) or ``load_image`` (``first_only``) take.

    Nothing is decoded before the header has passed the checks: a video stream, its picture size, the
    clip's claimed length and frame count. Frames are then counted from the packets (no decoding), the
    frames to keep chosen, and the stream decoded up to the last of them.
    """
    import av

    data = bytes(data)
    if len(data) > limits.max_upload_bytes:
        raise ImageLoadError(
            f"{label} is {_megabytes(len(data))}, above the {_megabytes(limits.max_upload_bytes)} "
            "upload limit: cut the clip shorter, or export it at a lower resolution or bitrate"
        )
    demuxer = sniff_video(data[:SNIFF_BYTES])
    kind = VIDEO_CONTAINERS[demuxer]
    digest = _sha256(data)
    count, width, height, cut = _count_video_frames(data, demuxer, kind, label, limits)
    if count == 0:
        raise ImageLoadError(f"{label} is {kind} whose video stream holds no frames{cut or ''}: "
                             "export the clip again")
    budget = max(1, limits.max_sequence_pixels // max(1, width * height))
    if first_only:
        wanted = [0]
    elif pairs:
        if count < 2:
            raise ImageLoadError(f"{label} holds a single frame: a pair of frames needs a video of two frames or more")
        starts = _evenly(count - 1, max(1, min(limits.max_frames, budget) // 2))
        wanted = sorted({i for start in starts for i in (start, start + 1)})
    else:
        wanted = _evenly(count, min(limits.max_frames, budget))
    frames: list[LoadedImage] = []
    try:
        with _open_video(data, demuxer, kind, label, limits) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            # the decoder refuses frames above the pixel limit itself, before allocating them
            stream.codec_context.options = {"max_pixels": str(limits.max_pixels)}
            targets = iter(wanted)
            target = next(targets)
            for index, frame in enumerate(_decoded(container, stream)):
                if index < target:
                    continue
                _check_dimensions(frame.width, frame.height, f"{label} (frame {index + 1})", limits)
                rgb = frame.to_ndarray(format="rgb24")
                notes = _size_notes(rgb, limits)
                rotation = int(getattr(frame, "rotation", 0) or 0) % 360
                if rotation:
                    rgb = np.ascontiguousarray(np.rot90(rgb, rotation // 90))
                    notes.append(f"turned {rotation} degrees as the video's display matrix says")
                frames.append(LoadedImage(rgb=rgb, name="", note=_join(notes), sha256=digest, format=kind,
                                          frame=index))
                target = next(targets, None)
                if target is None:
                    break
    except av.FFmpegError as error:
        if not frames and isinstance(error, av.ArgumentError):
            raise ImageLoadError(
                f"{label} is {kind} whose frames FFmpeg refuses to decode ({_video_reason(error)}): "
                f"larger than {limits.max_pixels:,} pixels, or in a form its decoder cannot take; "
                f"export it again at a few megapixels at most"
            ) from error
        cut = cut or f" (decoding stopped at frame {len(frames) + 1}: {_video_reason(error)})"
    if pairs:  # a cut can leave the last pair with one frame
        by_index = {f.frame: f for f in frames}
        frames = [f for start in wanted[::2] if start in by_index and start + 1 in by_index
                  for f in (by_index[start], by_index[start + 1])]
    if not frames:
        raise ImageLoadError(f"{label} is {kind}, but none of its frames could be decoded{cut or ''}: "
                             "the file is damaged; export it again")
    notes = []
    sampled = not first_only and len(frames) < count
    of = f"the {count} frames before the cut" if cut else f"its {count} frames"
    if sampled:
        notes.append(f"{len(frames)} of {of}, evenly spaced" if not pairs else
                     f"{len(frames) // 2} pairs of consecutive frames, evenly spaced over {of}")
    if cut:
        notes.insert(0, f"the file ends early{cut}" + ("" if sampled else f": the {len(frames)} frames before the cut were used"))
    if first_only and count > 1:
        notes.append(f"first of {count} frames shown (load the video as a sequence to see more)")
    if notes:
        last = -1 if not first_only else 0
        frames[last] = dataclasses.replace(frames[last], note=_join([n for n in (frames[last].note, *notes) if n]))
    return frames


def _count_video_frames(data: bytes, demuxer: str, kind: str, label: str,
                        limits: ImageLimits) -> tuple[int, int, int, str | None]:
    """(frames, width, height, how it was cut or None) from the container and its packets, nothing decoded."""
    import av

    with _open_video(data, demuxer, kind, label, limits) as container:
        if not container.streams.video:
            others = ", ".join(sorted({s.type for s in container.streams})) or "no streams at all"
            raise ImageLoadError(f"{label} is {kind} with no video stream ({others}): upload a clip with "
                                 "pictures in it")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise ImageLoadError(f"{label} is {kind} whose video is in a codec FFmpeg cannot decode: export it "
                                 "again as H.264 (MP4) or VP9 (WebM)")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width or height:
            _check_dimensions(width, height, label, limits)
        seconds = [float(stream.duration * stream.time_base)] if stream.duration and stream.time_base else []
        if container.duration:
            seconds.append(container.duration / 1e6)
        if seconds and max(seconds) > limits.max_video_seconds:
            raise ImageLoadError(
                f"{label} claims to last {_duration(max(seconds))}, above the limit of "
                f"{_duration(limits.max_video_seconds)}: cut the part you want to look at"
            )
        if stream.frames > limits.max_video_frames:
            raise ImageLoadError(
                f"{label} claims {stream.frames:,} frames, above the limit of {limits.max_video_frames:,}: "
                "cut the part you want to look at"
            )
        count, cut, end, frame_seconds = 0, None, 0.0, 0.0
        try:
            for packet in container.demux(stream):
                if packet.is_corrupt:  # the demuxer's sign of a cut: the packet runs past the end of the file
                    cut = f" (frame {count + 1} is cut short)"
                    break
                if packet.size:
                    count += 1
                    if count > limits.max_video_frames:
                        raise ImageLoadError(
                            f"{label} holds more than {limits.max_video_frames:,} frames (the limit): cut the "
                            "part you want to look at"
                        )
                    if packet.pts is not None and packet.time_base:
                        frame_seconds = float((packet.duration or 0) * packet.time_base)
                        end = max(end, float(packet.pts * packet.time_base) + frame_seconds)
        except av.FFmpegError as error:
            cut = f" ({_video_reason(error)} after {count} frames)"
        start = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
        if cut is None and demuxer == "mov" and _boxes_cut(data):
            cut = " (its last box runs past the end of the file)"
        elif cut is None and stream.frames and count < stream.frames:
            cut = f" (its header counts {stream.frames} frames, {count} are there)"
        elif cut is None and seconds and end and max(seconds) - (end - start) > max(2 * frame_seconds,
                                                                                    CUT_SHARE * max(seconds)):
            cut = f" (its header says {_duration(max(seconds))}, its frames end at {_duration(end - start)})"
    return count, width, height, cut


def _open_video(data: bytes, demuxer: str, kind: str, label: str, limits: ImageLimits):
    """The container, opened with the demuxer its bytes name and no other; FFmpeg's probing decodes no
    frame above the pixel limit."""
    import av

    hint = " (an MP4 keeps its index at the end, so a cut file cannot be opened)" if demuxer == "mov" else ""
    try:
        return av.open(io.BytesIO(data), format=demuxer,
                       stream_options=[{"max_pixels": str(limits.max_pixels)}] * PROBED_STREAMS)
    except av.FFmpegError as error:
        reason = _video_reason(error)
    except ValueError:  # PyAV's word for a container whose header lists no streams
        reason = "its header lists no streams"
    raise ImageLoadError(f"{label} starts like {kind} but FFmpeg cannot read it ({reason}): the file is damaged "
                         f"or truncated{hint}; export it again as {VIDEO_NAMES}")


def _boxes_cut(data: bytes) -> bool:
    """Whether the last top-level box of an MP4/QuickTime file claims more bytes than the file has.

    An MP4 is a sequence of boxes (32-bit size, 4-byte type; size 1: a 64-bit size follows; size 0:
    to the end), so a file cut anywhere but between two boxes ends inside one. A fragmented MP4 (one
    box pair per few frames, as cameras and streams write) loses its last fragment silently otherwise.
    """
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset:offset + 4], "big")
        if size == 1:
            if offset + 16 > len(data):
                return True
            size = int.from_bytes(data[offset + 8:offset + 16], "big")
        elif size == 0:
            return False
        if size < 8:
            return False  # not a box at all: FFmpeg's own reading decides
        offset += size
    return offset != len(data)


def _decoded(container, stream):
    """The stream's frames in order, up to a cut: a packet the demuxer marks corrupt ends it, and the
    decoder is flushed of the frames it still holds."""
    for packet in container.demux(stream):
        if packet.is_corrupt:
            break
        yield from packet.decode()  # the last, empty packet flushes the decoder
    else:
        return
    yield from stream.codec_context.decode(None)


def _video_reason(error: BaseException) -> str:
    """FFmpeg's own words ("Invalid data found when processing input"), without its error number and file name."""
    return (getattr(error, "strerror", None) or _reason(error)).rstrip(".")


def _evenly(count: int, wanted: int) -> list[int]:
    """`wanted` (at most `count`) indices into range(count), evenly spaced, first and last included."""
    if wanted >= count:
        return list(range(count))
    if wanted == 1:
        return [0]
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    if seconds >= 60:
        return f"{seconds / 60:.1f} minutes"
    return f"{seconds:.1f} s"


def _check_dimensions(width: int, height: int, label: str, limits: ImageLimits) -> None:
    """Header dimensions against the limits, before a single pixel is decoded."""
    if min(width, height) < limits.min_side:
        raise ImageLoadError(f"{label} claims to be {width}x{height} pixels, which has no pixels to show: "
                             "the file is damaged; save it again")
    if width * height > limits.max_pixels:
        raise ImageLoadError(
            f"{label} is {width}x{height} = {width * height:,} pixels, above the limit of "
            f"{limits.max_pixels:,} (a decompression bomb, or a very large scan): resize it to a "
            "few megapixels and upload that"
        )
    if max(width, height) > limits.max_side:
        raise ImageLoadError(
            f"{label} is {width}x{height} pixels; sides are limited to {limits.max_side:,}: resize it"
        )
    aspect = max(width, height) / min(width, height)
    if aspect > limits.max_aspect:
        raise ImageLoadError(
            f"{label} is {width}x{height} pixels, an aspect ratio of {aspect:.0f}:1 (limit "
            f"{limits.max_aspect:.0f}:1): the model sees a square, so crop the part you want first"
        )


def _decode_frame(image: Image.Image, label: str, upright: bool) -> tuple[np.ndarray, list[str]]:
    """Decode the current frame to (H, W, 3) uint8 and list what was done to it.

    ``upright``: apply the EXIF orientation (only the first frame of a file carries it).
    """
    notes: list[str] = []
    try:
        image.load()
        frame = _exif_upright(image, notes) if upright else image.copy()
        rgb = _to_rgb(frame, notes)
    except Image.DecompressionBombError as error:
        raise ImageLoadError(
            f"{label} is larger than Pillow will decode ({_reason(error)}): upload a smaller image"
        ) from error
    except DECODE_FAILURES as error:
        raise ImageLoadError(
            f"{label} could not be decoded ({_reason(error)}): the file is truncated or damaged; "
            "upload it again or save it again from an image editor"
        ) from error
    return rgb, notes


def _exif_upright(image: Image.Image, notes: list[str]) -> Image.Image:
    """The frame turned as its EXIF orientation says; a broken EXIF block is ignored with a note."""
    try:
        orientation = image.getexif().get(0x0112, 1)
        upright = ImageOps.exif_transpose(image)
    except DECODE_FAILURES:
        notes.append("its EXIF block is damaged, so any rotation it records was not applied")
        return image.copy()
    if orientation not in (None, 1) and upright is not None:
        notes.append(f"rotated upright as its EXIF orientation ({orientation}) says")
        return upright
    return image.copy()


def _to_rgb(image: Image.Image, notes: list[str]) -> np.ndarray:
    """Any Pillow mode to (H, W, 3) uint8; transparency composited on white."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        grey = _high_depth_to_8bit(np.asarray(image), mode, notes)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "CMYK":
        notes.append("CMYK colours converted to RGB (approximate, no colour profile)")
    if mode == "P" and "transparency" in image.info or mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba)[:, :, 3]
        if alpha.min() < 255:
            notes.append("transparent areas composited on white")
        background = Image.new("RGBA", rgba.size, TRANSPARENT_BACKGROUND + (255,))
        image = Image.alpha_composite(background, rgba)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb)


def _high_depth_to_8bit(values: np.ndarray, mode: str, notes: list[str]) -> np.ndarray:
    """16-bit, 32-bit integer or float greyscale to uint8 (H, W)."""
    values = values.astype(np.float64)
    if mode.startswith("I;16"):
        notes.append("16-bit greyscale reduced to 8 bits")
        return np.round(values / 257.0).astype(np.uint8)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    values = np.nan_to_num(values, nan=0.0, posinf=high, neginf=low)
    if 0.0 <= low and high <= 255.0 and mode == "I":
        return np.round(values).astype(np.uint8)
    if 0.0 <= low and high <= 65535.0 and mode == "I":
        notes.append("16-bit greyscale reduced to 8 bits")
        return np.round(values / 257.0).astype(np.uint8)
    if 0.0 <= low and high <= 1.0 and mode == "F":
        return np.round(values * 255.0).astype(np.uint8)
    notes.append(f"{'32-bit' if mode == 'I' else 'floating-point'} values {low:g}..{high:g} stretched to 0..255")
    span = high - low if high > low else 1.0
    return np.round((values - low) / span * 255.0).astype(np.uint8)


def _size_notes(rgb: np.ndarray, limits: ImageLimits) -> list[str]:
    height, width = rgb.shape[:2]
    if min(height, width) < limits.small_side:
        return [f"only {width}x{height} pixels: the model will see it upscaled, with little detail"]
    return []


def _frame_count(image: Image.Image, label: str) -> int:
    """How many frames the file holds (GIF counts them by reading the whole file)."""
    try:
        return max(1, int(getattr(image, "n_frames", 1) or 1))
    except DECODE_FAILURES as error:
        raise ImageLoadError(
            f"{label} could not be read to its end ({_reason(error)}): the file is truncated or "
            "damaged; upload it again or save it again from an image editor"
        ) from error


def _as_text(head: bytes) -> str | None:
    """The head of a file as text if it reads as UTF-8/ASCII (a cut multi-byte tail is fine)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:
            return None
        text = head[: error.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\t\r\n" for ch in text)
    return text if text and printable >= 0.95 * len(text) else None


def _label(name: str) -> str:
    return quoted(name) if name else "the file"


def _join(notes: list[str]) -> str | None:
    return "; ".join(notes) if notes else None


def _reason(error: BaseException) -> str:
    """Pillow's own words, short, without object addresses."""
    text = OBJECT_REPR.sub("", str(error)).strip() or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MB"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
