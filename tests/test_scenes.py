"""Scenes: determinism by seed, masks that agree with each other and with the image, disjoint seed ranges."""

import numpy as np
import pytest
import torch

from glom_viz.errors import ConfigError
from glom_viz.scenes import EVAL_SEEDS, KINDS, OBJECTS_PER_SCENE, TRAIN_SEEDS, make_batch, make_scene

SEEDS = range(40)


def test_same_seed_same_scene_and_different_seeds_differ():
    a, b, c = make_scene(7), make_scene(7), make_scene(8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.objects, b.objects)
    assert np.array_equal(a.parts, b.parts) and a.kinds == b.kinds
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("size", [32, 64, 96])
def test_shapes_types_and_range(size):
    scene = make_scene(3, size)
    assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.float32
    assert scene.objects.shape == scene.parts.shape == (size, size)
    assert 0.0 <= scene.image.min() and scene.image.max() <= 1.0


def test_every_part_lies_inside_its_object_and_objects_are_unions_of_parts():
    for seed in SEEDS:
        scene = make_scene(seed)
        # the object of each pixel is the object of its part: parts inside their object ...
        assert np.array_equal(scene.part_objects[scene.parts], scene.objects)
        # ... and the object mask is the union of its parts where visible
        for obj in np.unique(scene.objects[scene.objects > 0]):
            union = np.isin(scene.parts, np.flatnonzero(scene.part_objects == obj))
            assert np.array_equal(union, scene.objects == obj)
        assert ((scene.parts == 0) == (scene.objects == 0)).all()


def test_objects_have_several_parts_and_scenes_have_several_objects():
    parts_per_object, objects_per_scene = [], []
    for seed in SEEDS:
        scene = make_scene(seed)
        visible = np.unique(scene.objects[scene.objects > 0])
        objects_per_scene.append(len(visible))
        assert len(visible) <= OBJECTS_PER_SCENE[1]
        for obj in visible:
            parts_per_object.append(len(np.unique(scene.parts[scene.objects == obj])))
    assert np.mean(objects_per_scene) >= 2
    assert np.mean(parts_per_object) >= 2  # occlusion may hide a part now and then


def test_all_kinds_appear_and_some_objects_are_occluded():
    kinds, occluded = set(), 0
    for seed in range(200):
        scene = make_scene(seed, 32)
        kinds.update(scene.kinds)
        # a part id that was drawn but is now partly or wholly hidden
        drawn = len(scene.part_objects) - 1
        occluded += len(np.unique(scene.parts[scene.parts > 0])) < drawn
    assert kinds == set(KINDS)
    assert occluded > 0


def test_parts_are_painted_with_their_own_colours():
    """The image agrees with the masks: a part's pixels are closer to its mean colour than to the background's."""
    for seed in SEEDS[:10]:
        scene = make_scene(seed)
        background = scene.image[scene.objects == 0].mean(0)
        for part in np.unique(scene.parts[scene.parts > 0]):
            pixels = scene.image[scene.parts == part]
            mean = pixels.mean(0)
            assert np.linalg.norm(pixels - mean, axis=1).mean() < 0.3
            assert np.linalg.norm(pixels - mean, axis=1).mean() < np.linalg.norm(pixels - background, axis=1).mean()
            assert pixels.std(0).max() < 0.15  # flat-ish colour with shading and noise, not texture


def test_make_batch_matches_make_scene():
    images, objects, parts = make_batch([5, 9], 32)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    scene = make_scene(9, 32)
    assert np.array_equal(images[1].permute(1, 2, 0).numpy(), scene.image)
    assert np.array_equal(objects[1], scene.objects) and np.array_equal(parts[1], scene.parts)


def test_training_and_evaluation_seeds_never_overlap():
    assert TRAIN_SEEDS.stop <= EVAL_SEEDS.start


def test_bad_requests_are_refused():
    with pytest.raises(ConfigError, match="at least"):
        make_scene(0, 8)
    with pytest.raises(ConfigError, match="non-negative"):
        make_scene(-1)
    with pytest.raises(ConfigError, match="at least one seed"):
        make_batch([], 32)


def test_a_moving_scene_starts_as_the_still_scene_and_moves_each_object_its_own_way():
    from glom_viz.scenes import MAX_SHIFT, MIN_SHIFT_GAP, _compose, make_moving_scene, object_shifts

    for seed in range(20):
        first, second = make_moving_scene(seed)
        still = make_scene(seed)
        assert np.array_equal(first.image, still.image) and np.array_equal(first.objects, still.objects)
        assert second.kinds == first.kinds and np.array_equal(second.part_objects, first.part_objects)
        assert not np.array_equal(second.image, first.image)
        shifts = object_shifts(seed)
        assert np.abs(shifts).max() <= MAX_SHIFT
        moves = np.vstack([np.zeros((1, 2), int), shifts])  # the still background among them
        gaps = np.abs(moves[:, None] - moves[None]).max(-1)
        assert (gaps[~np.eye(len(moves), dtype=bool)] >= MIN_SHIFT_GAP).all()
        # all objects moved alike keep their occlusions: the masks are the still ones moved (inside the border)
        down, across = 2, -1
        together = _compose(seed, 64, np.tile((down, across), (len(shifts), 1)))
        assert np.array_equal(together.parts[5:-5, 5:-5], np.roll(first.parts, (down, across), (0, 1))[5:-5, 5:-5])



def test_a_clip_starts_as_the_still_scene_and_every_object_glides_at_its_own_velocity():
    from glom_viz.scenes import (CLIP_MIN_SPEED, CLIP_SPEED, _compose, make_clip, make_moving_scene, object_shifts,
                                 object_velocities)

    glided = []
    for seed in range(6):
        clip = make_clip(seed, frames=5)
        still = make_scene(seed)
        assert len(clip) == 5
        assert np.array_equal(clip[0].image, still.image) and np.array_equal(clip[0].parts, still.parts)
        assert all(frame.kinds == still.kinds for frame in clip)
        velocities = object_velocities(seed)
        assert np.abs(velocities).max() <= CLIP_SPEED and (np.abs(velocities).max(1) >= CLIP_MIN_SPEED).all()
        # frame t is the scene drawn with every object t velocities on
        assert np.array_equal(clip[3].objects, _compose(seed, 64, 3 * velocities).objects)
        # an object seen whole in the first and last frame has moved (frames - 1) velocities
        for k in range(1, len(still.kinds) + 1):
            first, last = clip[0].objects == k, clip[4].objects == k
            if first.sum() == last.sum() and not (first[[0, -1]].any() or first[:, [0, -1]].any()
                                                  or last[[0, -1]].any() or last[:, [0, -1]].any()):
                centres = [np.argwhere(mask).mean(0) for mask in (first, last)]
                glided.append(np.abs(centres[1] - centres[0] - 4 * velocities[k - 1]).max())
    assert glided and max(glided) < 1.0
    # every frame draws fresh noise; frame 1's is the moving scene's second frame's
    steady = np.ones((4, 2))
    assert np.array_equal(make_moving_scene(7)[1].image, _compose(7, 64, object_shifts(7), frame=1).image)
    assert not np.array_equal(_compose(7, 64, steady, frame=1).image, _compose(7, 64, steady, frame=2).image)
    with pytest.raises(ConfigError, match="at least 2 frames"):
        make_clip(0, frames=1)
    with pytest.raises(ConfigError, match="max_speed"):
        make_clip(0, max_speed=0.1)
