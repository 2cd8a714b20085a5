"""Dataset folders and zips: the layout read, every file checked like an upload, bad files skipped and
named, nothing usable refused with what was found, masks brought to the model's input as the picture."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import moving_square, png_bytes, sprites, video_bytes
from glom_viz import data as data_module
from glom_viz.data import (Dataset, layout_counts, load_dataset, load_zip, mask_to_input, read_layout,
                           synthetic)
from glom_viz.errors import DataError, ImageLoadError
from glom_viz.images import fit_mask, to_model_input
from glom_viz.islands import patch_truth
from glom_viz.scenes import EVAL_SEEDS, make_moving_scene

SIZE = 32


def save(path: Path, array: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def grey_mask(ids: np.ndarray) -> np.ndarray:
    return ids.astype(np.uint8)


def same_segments(ours: np.ndarray, truth: np.ndarray) -> bool:
    """The same segmentation, ids possibly renumbered: background where the truth's is, one id per id."""
    pairs = set(zip(ours.ravel().tolist(), truth.ravel().tolist()))
    return ((ours == 0) == (truth == 0)).all() and len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


@pytest.fixture
def folder(tmp_path) -> Path:
    """A small layout with everything a user's folder may hold, good and bad."""
    root = tmp_path / "my_set"
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)  # not square: cropped to 40 x 40
    ids = np.zeros((40, 60), np.uint8)
    ids[5:30, 10:28], ids[10:35, 30:55] = 1, 2
    save(root / "images" / "a.png", wide)
    save(root / "next" / "a.png", np.roll(wide, 2, axis=1))
    save(root / "masks" / "a.png", grey_mask(ids))
    save(root / "parts" / "a.png", grey_mask(ids * 2))
    save(root / "images" / "b.jpg", rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    save(root / "masks" / "b.png", np.zeros((20, 20), np.uint8))  # not the picture's size
    palette = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8).repeat(16, 0).repeat(16, 1), mode="P")
    palette.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30] + [0] * 759)
    save(root / "images" / "c.png", rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    palette.save(root / "masks" / "c.png")
    save(root / "next" / "c.png", rng.integers(0, 255, (SIZE + 2, SIZE, 3), dtype=np.uint8))  # another size
    (root / "images" / "notes.txt").write_text("not a picture")
    (root / "images" / "fake.png").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (root / "images" / "cut.png").write_bytes(png_bytes(wide)[:200])
    (root / "images" / ".DS_Store").write_bytes(b"\0\1")
    save(root / "masks" / "orphan.png", grey_mask(ids))
    save(root / "images" / "deeper" / "d.png", wide)
    (root / "README.md").write_text("my data")
    return root


def skipped_of(dataset: Dataset) -> dict[str, str]:
    return dict(dataset.skipped)


def test_the_layout_is_read_and_every_bad_file_is_named(folder):
    dataset = load_dataset(folder, SIZE)
    assert [s.name for s in dataset.samples] == ["a", "b", "c"]
    a, b, c = dataset.samples
    skipped = skipped_of(dataset)
    assert set(skipped) == {"images/notes.txt", "images/fake.png", "images/cut.png", "masks/orphan.png",
                            "masks/b.png", "next/c.png", "images/deeper/d.png"}
    assert "not a picture by its name" in skipped["images/notes.txt"]
    assert "SVG" in skipped["images/fake.png"]
    assert "truncated" in skipped["images/cut.png"] or "damaged" in skipped["images/cut.png"]
    assert "no picture images/orphan" in skipped["masks/orphan.png"]
    assert "20x20 px but images/b.jpg is 32x32" in skipped["masks/b.png"]
    assert "same size as the first" in skipped["next/c.png"]
    assert "subfolder" in skipped["images/deeper/d.png"]
    # what survived: a with everything, b without its mask, c without its second frame
    assert a.next is not None and a.objects is not None and a.parts is not None
    assert b.objects is None and b.next is None
    assert c.objects is not None and c.next is None
    summary = dataset.summary()
    assert "3 pictures at 32 px (1 with a second frame, 2 with object masks, 1 with part masks)" in summary
    assert "7 files skipped" in summary and "images/fake.png" in summary
    assert dataset.describe()["with_objects"] == 2


def test_pictures_and_masks_fit_the_model_as_the_app_makes_them(folder):
    dataset = load_dataset(folder, SIZE)
    a = dataset.samples[0]
    wide = np.asarray(Image.open(folder / "images" / "a.png"))
    assert np.array_equal(a.image, to_model_input(wide, SIZE, "crop")[1])
    ids = np.asarray(Image.open(folder / "masks" / "a.png")).astype(np.int64)
    assert same_segments(a.objects, patch_truth(fit_mask(ids, "crop"), (SIZE, SIZE)).reshape(SIZE, SIZE))
    assert len(np.unique(a.objects)) == 3 and (a.objects == 0).any()
    assert dataset.images([0]).shape == (1, 3, SIZE, SIZE)
    assert dataset.masks([0, 1]).shape == (2, SIZE, SIZE) and (dataset.masks([1]) == -1).all()
    padded = load_dataset(folder, SIZE, fit="pad").samples[0]
    assert np.array_equal(padded.image, to_model_input(wide, SIZE, "pad")[1])
    # a palette mask: one id per colour, black the background
    c = dataset.samples[2]
    assert len(np.unique(c.objects)) == 3 and (c.objects[:16, :16] == 0).all()


def test_masks_are_never_read_when_asked_not_to(folder, monkeypatch):
    def refuse(*_):
        raise AssertionError("a mask was read")

    monkeypatch.setattr(data_module, "read_mask", refuse)
    dataset = load_dataset(folder, SIZE, read_masks=False)
    assert all(s.objects is None and s.parts is None for s in dataset.samples)
    assert not any(name.startswith(("masks/", "parts/")) for name, _ in dataset.skipped)


def test_a_mask_with_more_segments_than_pixels_is_refused_saying_why():
    ids = np.arange(64).reshape(8, 8)
    with pytest.raises(ImageLoadError, match="64 segments, more than the 4x4 = 16 pixels"):
        mask_to_input(ids, 4, "masks/many.png")
    assert mask_to_input(np.array([[0, 1], [2, 3]]), 4).shape == (4, 4)  # smaller than the input: nearest pixel


def test_nothing_usable_stops_with_what_was_found(tmp_path):
    with pytest.raises(DataError, match="no such folder.*images/"):
        load_dataset(tmp_path / "missing", SIZE)
    empty = tmp_path / "empty"
    (empty / "masks").mkdir(parents=True)
    save(empty / "masks" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="found 1 file in masks/.*Put the pictures in images/"):
        load_dataset(empty, SIZE)
    (tmp_path / "bare" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="found no files in images/ or videos/ and no pictures at its top"):
        load_dataset(tmp_path / "bare", SIZE)
    broken = tmp_path / "broken"
    (broken / "images").mkdir(parents=True)
    (broken / "images" / "a.png").write_text("hello")
    with pytest.raises(DataError, match="none could be used: images/a.png: 'images/a.png' is a text file"):
        load_dataset(broken, SIZE)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="is a file, not a folder or a zip"):
        load_dataset(tmp_path / "file.txt", SIZE)


def test_a_plain_folder_of_pictures_is_read_as_images(tmp_path):
    save(tmp_path / "x.png", np.full((SIZE, SIZE, 3), 9, np.uint8))
    dataset = load_dataset(tmp_path, SIZE)
    assert len(dataset) == 1 and "no images/ folder" in dataset.notes[0][1]


def test_videos_become_pairs_of_consecutive_frames(tmp_path):
    root = tmp_path / "clips"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "walk.mp4").write_bytes(video_bytes(moving_square(12)))
    (root / "videos" / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    dataset = load_dataset(root, SIZE)
    assert len(dataset) == 6 and len(dataset.with_next()) == 6
    assert dataset.samples[0].source == "videos/walk.mp4 frames 0-1"
    assert "not an image in any format" in skipped_of(dataset)["videos/noise.mp4"]
    assert layout_counts(root)["videos"] == 2


def zipped(root: Path, extra: dict[str, bytes] | None = None, top: str = "my_set") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, f"{top}/{path.relative_to(root).as_posix()}")
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
    return buffer.getvalue()


def test_a_zip_reads_as_its_folder_and_distrusts_its_paths(folder, tmp_path):
    bomb = b"\0" * (5 * 2**20)  # 5 MB of zeros pack into a few kB
    data = zipped(folder, {"../evil.png": png_bytes(np.zeros((4, 4, 3), np.uint8)),
                           "/etc/passwd.png": b"x", "my_set/images/bomb.png": bomb})
    dataset = load_zip(data, "my_set.zip", SIZE)
    from_folder = load_dataset(folder, SIZE)
    assert [s.name for s in dataset.samples] == [s.name for s in from_folder.samples]
    for ours, theirs in zip(dataset.samples, from_folder.samples):
        assert np.array_equal(ours.image, theirs.image)
    skipped = skipped_of(dataset)
    assert "leaves the zip's folder" in skipped["../evil.png"] and "leaves the zip's folder" in skipped["/etc/passwd.png"]
    assert "zip bomb" in skipped["my_set/images/bomb.png"]
    assert not (tmp_path / "evil.png").exists()
    (tmp_path / "set.zip").write_bytes(data)
    assert [s.name for s in load_dataset(tmp_path / "set.zip", SIZE).samples] == ["a", "b", "c"]
    assert layout_counts(tmp_path / "set.zip")["masks"] == 4
    with pytest.raises(DataError, match="not a readable zip"):
        load_zip(b"PK\3\4 broken", "broken.zip", SIZE)


def test_read_layout_takes_any_mapping():
    rgb = np.full((SIZE, SIZE, 3), 200, np.uint8)
    dataset = read_layout({"images/one.png": lambda: png_bytes(rgb)}, "in memory", SIZE)
    assert dataset.samples[0].name == "one" and dataset.path == "in memory"


def test_the_built_in_scenes_are_a_dataset():
    dataset = synthetic(3, image_size=SIZE)
    first, second = make_moving_scene(EVAL_SEEDS.start, SIZE)
    sample = dataset.samples[0]
    assert np.array_equal(sample.objects, first.objects) and np.array_equal(sample.parts, first.parts)
    assert np.abs(sample.next / 255.0 - second.image).max() <= 0.5 / 255 + 1e-6
    assert len(dataset.with_masks("parts")) == 3


def test_the_sprite_family_round_trips_through_the_layout(tmp_path):
    sprites().write_split(tmp_path / "sprites", sprites().TEST_SEEDS[:3], SIZE)
    dataset = load_dataset(tmp_path / "sprites", SIZE)
    assert not dataset.skipped and len(dataset.with_next()) == 3
    for sample in dataset.samples:
        scene = sprites().make_sprites(int(sample.name), SIZE)
        assert same_segments(sample.objects, scene.objects) and same_segments(sample.parts, scene.parts)
        assert np.abs(sample.image / 255.0 - scene.image).max() <= 0.5 / 255 + 1e-6
