"""Datasets in a folder (or a zip of one), read with no code; the built-in scenes as a dataset too.

The layout:

    DIR/images/NAME.png|jpg|jpeg|webp|bmp|tif|tiff|gif   the pictures (required)
    DIR/next/NAME.*        the same scene a moment later (optional: a second frame for common fate)
    DIR/masks/NAME.png     object ids per pixel, 0 = background (optional; evaluation only)
    DIR/parts/NAME.png     part ids per pixel (optional; evaluation only)
    DIR/videos/CLIP.mp4|mov|webm|gif   clips (optional): consecutive frames are pairs for common fate

A file in next/, masks/ or parts/ belongs to the picture of the same name (without the suffix). Every
file passes the checks of an upload (``glom_viz.images``); a file that fails is skipped, counted, and
named with the reason in ``Dataset.summary()``, and the rest is read. A folder with nothing usable
stops with a ``DataError`` that says what it found. Pictures are made to fit the model as the app does
(``images.to_model_input``: centre crop by default), masks are cropped the same way and brought to the
model's input size, each pixel taking the id most of the mask's pixels under it hold.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from glom_viz.errors import DataError, ImageLoadError
from glom_viz.images import (FITS, LIMITS, ImageLimits, fit_mask, load_frame_pairs, load_image, read_mask,
                             to_model_input)

PICTURES, NEXT, MASKS, PARTS, VIDEOS = "images", "next", "masks", "parts", "videos"
LAYOUT = (PICTURES, NEXT, MASKS, PARTS, VIDEOS)
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".gif")
# a folder or zip holds at most this many files, and this many pictures are read (sorted by name):
# 64 px pictures take 12 kB each as the model sees them, so 50,000 of them take 0.6 GB
MAX_FILES = 200_000
MAX_PICTURES = 50_000
# a zip's members together may unpack to at most this many bytes, and each to at most 200 times its
# packed size (a zip bomb packs gigabytes of zeros into kilobytes)
MAX_ZIP_BYTES = 2 * 2**30
MAX_ZIP_RATIO = 200
BUILT_IN = "scenes"  # the name of the built-in synthetic scenes as a dataset


@dataclass(frozen=True)
class Sample:
    """One picture as the model sees it, with what the folder gave for it.

    image, next: (S, S, 3) uint8 (``next`` None without a second frame); objects, parts: (S, S) int64
    ids at the model's input size, 0 = background (None without a mask); source: where it came from,
    relative to the folder ("images/a.png", "videos/clip.mp4 frames 12-13").
    """

    name: str
    image: np.ndarray
    next: np.ndarray | None = None
    objects: np.ndarray | None = None
    parts: np.ndarray | None = None
    source: str = ""


@dataclass
class Dataset:
    """Samples of one folder, zip or generator, at one input size; what was skipped and why."""

    name: str
    image_size: int
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why it was not used)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (file, what was done to it)
    path: str | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def images(self, indices: Iterable[int] | None = None) -> torch.Tensor:
        """(b, 3, S, S) float32 in [0, 1], the pictures of `indices` (default all)."""
        return _to_tensor([self.samples[i].image for i in self._indices(indices)])

    def next_images(self, indices: Iterable[int] | None = None) -> torch.Tensor:
        """(b, 3, S, S) float32, the second frames of `indices`, each of which must have one."""
        return _to_tensor([self.samples[i].next for i in self._indices(indices)])

    def with_next(self) -> list[int]:
        """Indices of the samples that come with a second frame."""
        return [i for i, s in enumerate(self.samples) if s.next is not None]

    def with_masks(self, kind: str = "objects") -> list[int]:
        """Indices of the samples with an object (or, kind "parts", a part) mask."""
        return [i for i, s in enumerate(self.samples) if getattr(s, kind) is not None]

    def masks(self, indices: Iterable[int], kind: str = "objects") -> np.ndarray:
        """(b, S, S) int64 masks of `indices`; -1 everywhere for a sample without one of that kind."""
        empty = np.full((self.image_size, self.image_size), -1, np.int64)
        return np.stack([empty if getattr(self.samples[i], kind) is None else getattr(self.samples[i], kind)
                         for i in self._indices(indices)])

    def describe(self) -> dict:
        """The JSON-able record of what was read: counts, and every skipped file with its reason."""
        return {"name": self.name, "path": self.path, "image_size": self.image_size, "pictures": len(self),
                "with_next": len(self.with_next()), "with_objects": len(self.with_masks("objects")),
                "with_parts": len(self.with_masks("parts")),
                "skipped": [{"file": f, "why": why} for f, why in self.skipped],
                "notes": [{"file": f, "note": note} for f, note in self.notes]}

    def summary(self, max_named: int = 10) -> str:
        """What was read, in words: counts, then the skipped files named with their reasons."""
        d = self.describe()
        videos = sum(1 for s in self.samples if s.source.startswith(VIDEOS + "/"))
        lines = [f"{self.name}: {len(self)} pictures at {self.image_size} px ({d['with_next']} with a second frame"
                 f"{f', {videos} of them pairs from videos' if videos else ''}, {d['with_objects']} with object masks, "
                 f"{d['with_parts']} with part masks)"]
        if self.skipped:
            lines.append(f"{len(self.skipped)} file{'s' if len(self.skipped) > 1 else ''} skipped:")
            lines += [f"  {name}: {why}" for name, why in self.skipped[:max_named]]
            if len(self.skipped) > max_named:
                lines.append(f"  ... and {len(self.skipped) - max_named} more (Dataset.skipped lists them all)")
        return "\n".join(lines)

    def _indices(self, indices: Iterable[int] | None) -> list[int]:
        return list(range(len(self.samples))) if indices is None else [int(i) for i in indices]


def _to_tensor(pictures: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float().div_(255.0)


def load_dataset(path: str | Path, image_size: int, fit: str = "crop", limits: ImageLimits = LIMITS,
                 max_pictures: int = MAX_PICTURES, read_masks: bool = True) -> Dataset:
    """A folder in the layout (or a zip of one), every file checked, at the model's input size.

    Args:
        path: the folder (``DIR`` above), or a ``.zip`` of it (a single top folder inside is fine).
        image_size: S, the model's ``image_size``.
        fit: how a picture that is not square becomes one (``images.FITS``): "crop" (the app's default),
            "pad" or "stretch"; masks follow the picture.
        limits: the per-file limits of an upload.
        max_pictures: at most this many pictures are read (sorted by name), with a note.
        read_masks: False leaves masks/ and parts/ unread (training never sees them).

    Raises:
        DataError: the path does not exist or is not a folder or zip, or nothing in it is usable
            (saying what was found and what the layout wants).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such folder. A dataset is a folder with the pictures in {path}/{PICTURES}/ "
                        f"(and optionally {NEXT}/, {MASKS}/, {PARTS}/, {VIDEOS}/): see the README, "
                        "'Bringing your own data'")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path} is a file, not a folder or a zip: point at the folder that holds {PICTURES}/")
        if path.stat().st_size > MAX_ZIP_BYTES:
            raise DataError(f"{path} is {path.stat().st_size / 2**30:.1f} GB, above the {MAX_ZIP_BYTES / 2**30:.0f} GB "
                            "a zip may hold: unpack it and point at the folder")
        return load_zip(path.read_bytes(), path.name, image_size, fit, limits, max_pictures, label=str(path),
                        read_masks=read_masks)
    if not path.is_dir():
        raise DataError(f"{path} is neither a folder nor a file: point at the folder that holds {PICTURES}/")
    files = _folder_files(path)
    return read_layout(files, path.resolve().name, image_size, fit, limits, max_pictures, label=str(path),
                       read_masks=read_masks)


def load_zip(data: bytes, name: str, image_size: int, fit: str = "crop", limits: ImageLimits = LIMITS,
             max_pictures: int = MAX_PICTURES, label: str | None = None, read_masks: bool = True) -> Dataset:
    """A zip of the layout (an upload's bytes): member paths are never trusted and nothing is written
    to disk; a member is read only when its picture is, and only up to the sizes it may have."""
    label = label or name
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise DataError(f"{label} is not a readable zip ({error}): zip the dataset folder again") from error
    if len(members) > MAX_FILES:
        raise DataError(f"{label} holds {len(members):,} files, above the limit of {MAX_FILES:,}: split it")
    files: dict[str, Callable[[], bytes]] = {}
    skipped: list[tuple[str, str]] = []
    total = 0
    for member in members:
        if member.is_dir():
            continue
        relative = _safe_member(member.filename)
        if relative is None:
            skipped.append((member.filename, "a path that leaves the zip's folder (absolute, or with '..'): not read"))
            continue
        if member.file_size > limits.max_upload_bytes:
            skipped.append((relative, f"unpacks to {member.file_size / 2**20:.1f} MB, above the "
                                      f"{limits.max_upload_bytes / 2**20:.1f} MB limit of one file"))
            continue
        if member.file_size > MAX_ZIP_RATIO * max(member.compress_size, 1) + 2**16:
            skipped.append((relative, f"packs {member.file_size:,} bytes into {member.compress_size:,} "
                                      "(a zip bomb?): not read"))
            continue
        total += member.file_size
        if total > MAX_ZIP_BYTES:
            raise DataError(f"{label} unpacks to more than {MAX_ZIP_BYTES / 2**30:.0f} GB: unpack it and point at "
                            "the folder, or split it")
        files[relative] = _zip_reader(archive, member, limits)
    files = _strip_top_folder(files)
    dataset = read_layout(files, name, image_size, fit, limits, max_pictures, label=label, read_masks=read_masks)
    dataset.skipped[:0] = skipped
    return dataset


def read_layout(files: Mapping[str, Callable[[], bytes]], name: str, image_size: int, fit: str = "crop",
                limits: ImageLimits = LIMITS, max_pictures: int = MAX_PICTURES, label: str | None = None,
                read_masks: bool = True) -> Dataset:
    """The dataset of a layout given as {relative path ("images/a.png"): a function reading its bytes}.

    ``load_dataset`` and ``load_zip`` call this; a notebook can give any mapping.
    """
    if fit not in FITS:
        raise DataError(f"fit must be one of {', '.join(FITS)}, not {fit!r}")
    label = label or name
    skipped: list[tuple[str, str]] = []
    notes: list[tuple[str, str]] = []
    by_folder: dict[str, dict[str, str]] = {folder: {} for folder in LAYOUT}
    top_pictures = []
    for relative in sorted(files):
        parts = PurePosixPath(relative).parts
        if any(part.startswith(".") or part == "__MACOSX" for part in parts):
            continue  # hidden files and folders (.DS_Store, ._a.png, .git): never data
        folder, stem, suffix = (parts[0] if len(parts) > 1 else ""), PurePosixPath(relative).stem, \
            PurePosixPath(relative).suffix.lower()
        if len(parts) == 1:
            if suffix in PICTURE_SUFFIXES:
                top_pictures.append(relative)
            continue
        if folder not in by_folder:
            continue  # other folders (a README's images, code) are not part of the layout
        if len(parts) > 2:
            skipped.append((relative, f"inside a subfolder of {folder}/: put files directly in {folder}/"))
            continue
        allowed = VIDEO_SUFFIXES if folder == VIDEOS else PICTURE_SUFFIXES
        if suffix not in allowed:
            skipped.append((relative, f"not a {'video' if folder == VIDEOS else 'picture'} by its name "
                                      f"(expected {', '.join(allowed)})"))
            continue
        if stem in by_folder[folder]:
            skipped.append((relative, f"a second file named {stem} in {folder}/ (after {by_folder[folder][stem]})"))
            continue
        by_folder[folder][stem] = relative
    if not by_folder[PICTURES] and top_pictures and not by_folder[VIDEOS]:
        # a plain folder of pictures: what a user points at first
        by_folder[PICTURES] = {PurePosixPath(r).stem: r for r in top_pictures}
        notes.append(("", f"no {PICTURES}/ folder: the {len(top_pictures)} pictures at its top were read as {PICTURES}/"))
    stems = sorted(by_folder[PICTURES])
    if len(stems) > max_pictures:
        notes.append((f"{PICTURES}/", f"only the first {max_pictures:,} of {len(stems):,} pictures (by name) were read"))
        stems = stems[:max_pictures]
    if not read_masks:
        by_folder[MASKS], by_folder[PARTS] = {}, {}
    for folder in (NEXT, MASKS, PARTS):
        for stem in sorted(set(by_folder[folder]) - set(by_folder[PICTURES])):
            skipped.append((by_folder[folder][stem], f"no picture {PICTURES}/{stem}.* for it"))

    samples = []
    for stem in stems:
        sample = _read_picture(stem, by_folder, files, image_size, fit, limits, skipped, notes)
        if sample is not None:
            samples.append(sample)
    for stem in sorted(by_folder[VIDEOS]):
        samples += _read_video(by_folder[VIDEOS][stem], files, image_size, fit, limits, skipped, notes)
    if not samples:
        raise DataError(_nothing_usable(label, by_folder, top_pictures, skipped))
    return Dataset(name, image_size, samples, skipped, notes, label)


def _read_picture(stem: str, by_folder: dict, files: Mapping, image_size: int, fit: str, limits: ImageLimits,
                  skipped: list, notes: list) -> Sample | None:
    """One picture and what belongs to it; None (and the reason in `skipped`) if the picture is unusable."""
    relative = by_folder[PICTURES][stem]
    try:
        loaded = load_image(_read(files, relative, limits), relative, limits)
    except ImageLoadError as error:
        skipped.append((relative, str(error)))
        return None
    if loaded.note:
        notes.append((relative, loaded.note))
    _, image, _ = to_model_input(loaded.rgb, image_size, fit)
    height, width = loaded.rgb.shape[:2]
    second = None
    if stem in by_folder[NEXT]:
        other = by_folder[NEXT][stem]
        try:
            frame = load_image(_read(files, other, limits), other, limits)
            if frame.rgb.shape != loaded.rgb.shape:
                raise ImageLoadError(f"it is {frame.rgb.shape[1]}x{frame.rgb.shape[0]} px but {relative} is "
                                     f"{width}x{height}: the second frame must be the same size as the first")
            _, second, _ = to_model_input(frame.rgb, image_size, fit)
        except ImageLoadError as error:
            skipped.append((other, str(error)))
    masks = {}
    for folder, kind in ((MASKS, "objects"), (PARTS, "parts")):
        if stem not in by_folder[folder]:
            continue
        other = by_folder[folder][stem]
        try:
            mask = read_mask(_read(files, other, limits), other, (height, width), relative)
            masks[kind] = mask_to_input(fit_mask(mask, fit), image_size, other)
        except ImageLoadError as error:
            skipped.append((other, str(error)))
    return Sample(stem, image, second, masks.get("objects"), masks.get("parts"), relative)


def _read_video(relative: str, files: Mapping, image_size: int, fit: str, limits: ImageLimits,
                skipped: list, notes: list) -> list[Sample]:
    """A clip's pairs of consecutive frames as samples (no masks); none if the clip is unusable."""
    try:
        pairs = load_frame_pairs(_read(files, relative, limits), relative, limits)
    except ImageLoadError as error:
        skipped.append((relative, str(error)))
        return []
    clip_notes = [f.note for pair in pairs for f in pair if f.note]
    if clip_notes:
        notes.append((relative, "; ".join(dict.fromkeys(clip_notes))))
    stem = PurePosixPath(relative).stem
    return [Sample(f"{stem}-{first.frame}", to_model_input(first.rgb, image_size, fit)[1],
                   to_model_input(second.rgb, image_size, fit)[1], source=f"{relative} frames {first.frame}-{second.frame}")
            for first, second in pairs]


def mask_to_input(mask: np.ndarray, image_size: int, name: str = "the mask") -> np.ndarray:
    """(H, W) ids -> (S, S) int64 at the model's input size: each pixel the id most of the mask's pixels
    under it hold (``islands.patch_truth`` on an S x S grid), or the nearest pixel's where the mask is
    smaller than S.

    Raises:
        ImageLoadError: the mask holds more segments than the model's input has pixels.
    """
    from glom_viz.islands import patch_truth

    mask = np.asarray(mask)
    segments = np.unique(mask)
    if segments.size > image_size * image_size:
        raise ImageLoadError(
            f"{name} holds {segments.size:,} segments, more than the {image_size}x{image_size} = "
            f"{image_size * image_size:,} pixels the model sees: each segment needs pixels of its own; a mask "
            "holds one id per object (or part), with 0 for the background"
        )
    height, width = mask.shape
    if height >= image_size and width >= image_size:
        return patch_truth(mask, (image_size, image_size)).reshape(image_size, image_size)
    rows = np.arange(image_size) * height // image_size
    cols = np.arange(image_size) * width // image_size
    return mask[rows][:, cols].astype(np.int64)


def _nothing_usable(label: str, by_folder: dict, top_pictures: list, skipped: list) -> str:
    """The message of a folder with nothing to read: what it found, and what the layout wants."""
    found = [f"{len(by_folder[folder])} file{'s' if len(by_folder[folder]) > 1 else ''} in {folder}/"
             for folder in LAYOUT if by_folder[folder]]
    if top_pictures and by_folder[PICTURES]:
        found.append(f"{len(top_pictures)} pictures at its top")
    what = ", ".join(found) if found else f"no files in {PICTURES}/ or {VIDEOS}/ and no pictures at its top"
    problems = ""
    if skipped:
        problems = "; none could be used: " + "; ".join(f"{name}: {why}" for name, why in skipped[:3])
        if len(skipped) > 3:
            problems += f"; ... ({len(skipped)} in all)"
    return (f"{label} holds nothing to train on or score: found {what}{problems}. Put the pictures in "
            f"{PICTURES}/ ({', '.join(s.lstrip('.') for s in PICTURE_SUFFIXES[:4])}, ...), and clips in {VIDEOS}/")


def layout_counts(path: str | Path) -> dict[str, int]:
    """How many files each folder of the layout holds, from the listing alone (nothing read or decoded);
    all zero for a path that is not a folder or zip."""
    path = Path(path)
    if path.is_dir():
        return {folder: sum(1 for f in (path / folder).iterdir() if f.is_file() and not f.name.startswith("."))
                if (path / folder).is_dir() else 0 for folder in LAYOUT}
    counts = dict.fromkeys(LAYOUT, 0)
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            safe = (_safe_member(n) for n in archive.namelist() if not n.endswith("/"))
            names = _strip_top_folder({n: None for n in safe if n is not None})
        for name in names:
            parts = PurePosixPath(name).parts
            if len(parts) == 2 and parts[0] in counts and not parts[1].startswith("."):
                counts[parts[0]] += 1
    return counts


def _read(files: Mapping, relative: str, limits: ImageLimits) -> bytes:
    try:
        return files[relative]()
    except OSError as error:
        raise ImageLoadError(f"'{relative}' could not be read ({error.strerror or error})") from error


def _folder_files(root: Path) -> dict[str, Callable[[], bytes]]:
    """{relative path: reader} of the layout's folders (and the folder's top, for a plain folder of pictures)."""
    files: dict[str, Callable[[], bytes]] = {}
    candidates = [p for p in root.iterdir() if p.is_file()]
    for folder in LAYOUT:
        if (root / folder).is_dir():
            candidates += [p for p in (root / folder).iterdir() if not p.name.startswith(".")]
            # one level further, so that a nested file is named as skipped rather than silently missed
            candidates += [q for p in (root / folder).iterdir() if p.is_dir() and not p.name.startswith(".")
                           for q in p.iterdir()]
        if len(candidates) > MAX_FILES:
            raise DataError(f"{root} holds more than {MAX_FILES:,} files in its layout folders: split it")
    for file in candidates:
        if file.is_file():
            files[file.relative_to(root).as_posix()] = _file_reader(file)
    return files


def _file_reader(path: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        size = path.stat().st_size
        if size > LIMITS.max_upload_bytes:  # refused unread, as an upload of that size would be
            raise ImageLoadError(f"'{path.name}' is {size / 2**20:.1f} MB, above the "
                                 f"{LIMITS.max_upload_bytes / 2**20:.1f} MB limit of one file: save it smaller")
        return path.read_bytes()
    return read


def _zip_reader(archive: zipfile.ZipFile, member: zipfile.ZipInfo, limits: ImageLimits) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            with archive.open(member) as handle:
                data = handle.read(limits.max_upload_bytes + 1)  # never more than a file may hold
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as error:
            raise ImageLoadError(f"'{member.filename}' could not be unpacked ({error})") from error
        return data
    return read


def _safe_member(name: str) -> str | None:
    """A zip member's path as a relative POSIX path, None for one that could leave its folder."""
    path = PurePosixPath(name.replace("\\", "/"))
    if not path.parts or path.is_absolute() or ".." in path.parts or ":" in path.parts[0]:
        return None  # "C:/..." is absolute on Windows
    return path.as_posix()


def _strip_top_folder(files: dict) -> dict:
    """Members under one top folder ("my_set/images/a.png", as zipping a folder makes them) lose it."""
    tops = {PurePosixPath(name).parts[0] for name in files if not PurePosixPath(name).name.startswith(".")}
    tops.discard("__MACOSX")
    if len(tops) == 1:
        top = tops.pop()
        if top not in LAYOUT and all(len(PurePosixPath(n).parts) > 1 for n in files if PurePosixPath(n).parts[0] == top):
            return {PurePosixPath(*PurePosixPath(n).parts[1:]).as_posix(): reader for n, reader in files.items()
                    if PurePosixPath(n).parts[0] == top}
    return files


def synthetic(count: int, first_seed: int | None = None, image_size: int = 64) -> Dataset:
    """The project's built-in scenes (``glom_viz.scenes``) as a dataset: each with its second frame (the
    objects moved) and its object and part masks; seeds from `first_seed` (default the held-out ones)."""
    from glom_viz.scenes import EVAL_SEEDS, make_moving_scene

    first_seed = EVAL_SEEDS.start if first_seed is None else first_seed
    samples = []
    for seed in range(first_seed, first_seed + count):
        first, second = make_moving_scene(seed, image_size)
        samples.append(Sample(f"scene-{seed}", _to_uint8(first.image), _to_uint8(second.image),
                              first.objects.astype(np.int64), first.parts.astype(np.int64), f"seed {seed}"))
    return Dataset(BUILT_IN, image_size, samples, path=None)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
