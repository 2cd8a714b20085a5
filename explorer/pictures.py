"""The pictures of a page: bundled scenes and photographs, uploads (checked by ``glom_viz.images``), and
each one made to fit the model as a ``Frame`` with its ground truth per patch."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from explorer import cache, state
from explorer.limits import MAX_UPLOADS
from explorer.models import LoadedModel
from explorer.settings import PHOTOS, SCENE_NAMES, SCENE_SEEDS, ImageSettings
from glom_viz import islands
from glom_viz.errors import DataError, ImageLoadError
from glom_viz.images import SNIFF_BYTES, fit_mask, load_frames, load_image, sample_images, sniff_video, to_model_input
from glom_viz.scenes import EVAL_SEEDS, make_scene

DISPLAY_PX = 448  # overlays are drawn at this size: the model's 64 px input is tiny on a screen


@dataclass(frozen=True, eq=False)
class Picture:
    """A picture as loaded: (H, W, 3) uint8 and, for the bundled scenes, its ground truth."""

    name: str
    key: str  # sha256 of the file (and frame), or of the scene's seed and size
    rgb: np.ndarray
    note: str | None = None
    masks: tuple[tuple[str, np.ndarray], ...] = ()  # name -> (H, W) int labels, 0 = background
    sha256: str = ""  # of the uploaded file's bytes, or of a bundled picture's pixels: the provenance's image hash
    frame: int | None = None  # which frame of an animated file or video

    def __post_init__(self):
        if not self.sha256:
            object.__setattr__(self, "sha256", pixels_sha256(self.rgb))


@dataclass(frozen=True, eq=False)
class Mask:
    """A ground-truth mask a visitor uploaded for a picture: (H, W) labels, 0 = background."""

    key: str  # of the file's bytes and the picture it belongs to
    labels: np.ndarray


@dataclass(frozen=True, eq=False)
class ModelInput:
    """A picture made to fit the model's square input."""

    tensor: torch.Tensor  # (1, 3, S, S) in [0, 1]
    shown: np.ndarray  # (S, S, 3) uint8: exactly the model's input
    display: np.ndarray  # (DISPLAY_PX, DISPLAY_PX, 3) uint8: the same crop, for drawing on
    info: str  # how the picture was cropped and resized


@dataclass(frozen=True, eq=False)
class Frame:
    """One picture as the model sees it, its ground truth per patch, and the key of its run."""

    picture: Picture
    input: ModelInput
    truth: tuple[tuple[str, np.ndarray], ...]  # name -> (N,) label per patch
    run_key: str

    @property
    def tensor(self) -> torch.Tensor:
        return self.input.tensor

    @property
    def shown(self) -> np.ndarray:
        return self.input.shown

    @property
    def display(self) -> np.ndarray:
        return self.input.display

    @property
    def info(self) -> str:
        return self.input.info


def pixels_sha256(rgb: np.ndarray) -> str:
    """sha256 (hex) of a picture's pixels, row-major uint8 RGB: the hash of a picture that has no file."""
    return hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest()


def _photos() -> dict[str, Picture]:
    return {name: Picture(name, pixels_sha256(rgb), rgb, note=None) for name, rgb in sample_images().items()
            if name in PHOTOS}


def scene(seed: int, image_size: int) -> Picture:
    """A held-out synthetic scene, with its objects and parts as ground truth."""
    def make() -> Picture:
        made = make_scene(seed, image_size)
        rgb = np.rint(made.image * 255).astype(np.uint8)
        return Picture(f"scene {seed - EVAL_SEEDS[0] + 1}", cache.content_key("scene", seed, image_size), rgb,
                       note=f"synthetic scene ({', '.join(made.kinds)}) with ground-truth objects and parts",
                       masks=(("objects", made.objects), ("parts", made.parts)))
    return cache.pictures(cache.content_key("scene", seed, image_size), make)


def upload(data: bytes, name: str, as_frames: bool) -> list[Picture]:
    """Check and decode an upload (glom_viz.images); raises ImageLoadError saying what to do."""
    def load() -> list[Picture]:
        if as_frames or sniff_video(data[:SNIFF_BYTES]):  # a video is a sequence of frames, like an animation's
            loaded = load_frames(data, name)
            many = len(loaded) > 1
            return [Picture(f"{name} · frame {image.frame + 1}" if many else name, f"{image.sha256}:{image.frame}",
                            image.rgb, note=image.note, sha256=image.sha256, frame=image.frame) for image in loaded]
        image = load_image(data, name)
        return [Picture(name, image.sha256, image.rgb, note=image.note, sha256=image.sha256)]
    return cache.pictures(cache.content_key("upload", hashlib.sha256(data).hexdigest(), name, as_frames), load)


def set_pictures(settings: ImageSettings, image_size: int) -> tuple[list[Picture], list[str]]:
    """The uploaded set's pictures with their masks (explorer.dataset), and what is wrong with the set."""
    from explorer import dataset  # it builds Pictures: imported here so that the import stays one-way

    try:
        found = dataset.of(settings, image_size)
    except DataError as error:
        return [], [f"The set {settings.dataset[0]} cannot be used: {error}"]
    return ([], []) if found is None else (dataset.pictures_of(found), [])


def gather(settings: ImageSettings, image_size: int) -> tuple[list[Picture], list[str]]:
    """The pictures of this run, and a message for every upload that could not be used."""
    pictures: list[Picture] = []
    problems: list[str] = []
    photos = cache.shared("photos", _photos)
    for name in settings.bundled:
        if name in SCENE_NAMES:
            pictures.append(scene(SCENE_SEEDS[SCENE_NAMES.index(name)], image_size))
        elif name in photos:
            pictures.append(photos[name])
    uploads = settings.uploads
    if len(uploads) > MAX_UPLOADS:
        problems.append(f"{len(uploads)} images were uploaded; only the first {MAX_UPLOADS} are used. "
                        "Remove some, or raise MAX_UPLOADS in explorer/limits.py on a private server.")
        uploads = uploads[:MAX_UPLOADS]
    for name, data in uploads:
        try:
            pictures.extend(upload(data, name, settings.animations_as_frames))
        except ImageLoadError as error:
            problems.append(str(error))
    in_set, set_problems = set_pictures(settings, image_size)
    return pictures + in_set, problems + set_problems


def show_new_upload(pictures: list[Picture], bundled: int) -> None:
    """Switch the image selector to a picture the user has just uploaded (the first of them)."""
    seen = state.remembered(state.SEEN_UPLOADS)
    new = [index for index, picture in enumerate(pictures[bundled:], bundled) if picture.key not in seen]
    seen.update(picture.key for picture in pictures[bundled:])
    if new:
        state.show_picture(new[0])


def model_input(picture: Picture, image_size: int, fit: str) -> ModelInput:
    """The picture cropped, padded or stretched to the model's input, and the same at display size."""
    def make() -> ModelInput:
        rgb = picture.rgb
        tensor, shown, info = to_model_input(rgb, image_size, fit)
        if max(rgb.shape[:2]) > image_size:
            _, display, _ = to_model_input(rgb, max(DISPLAY_PX, image_size), fit)
        else:  # small pictures (the scenes): show the pixels the model sees, enlarged without blur
            factor = max(1, DISPLAY_PX // image_size)
            display = shown.repeat(factor, axis=0).repeat(factor, axis=1)
        return ModelInput(tensor, shown, display, info)
    return cache.model_input(cache.content_key(picture.key, image_size, fit), make)


def frame_of(picture: Picture, model: LoadedModel, fit: str, previous_run: str, settings_key: str,
             mask: Mask | None) -> Frame:
    """The frame of a picture: its model input, its truth per patch (the scenes' own and the user's mask)."""
    image_size = model.model.config.image_size
    fitted = model_input(picture, image_size, fit)
    grid = model.model.grid
    truth = [(name, islands.patch_truth(fit_mask(m, fit), grid)) for name, m in picture.masks]
    if mask is not None:  # once per mask, fit and grid: a big mask takes a while to count
        truth.append(("your mask", cache.derived("truth", cache.content_key(mask.key, fit, grid),
                                                 lambda: islands.patch_truth(fit_mask(mask.labels, fit), grid))))
    run_key = cache.content_key(model.key, picture.key, image_size, fit, settings_key, previous_run)
    return Frame(picture, fitted, tuple(truth), run_key)
