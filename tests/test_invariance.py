"""The translation and sequence tests: islands that stay with the content score 1, a position code does not."""

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from glom_viz.errors import ConfigError
from glom_viz.evaluate import main
from glom_viz.invariance import (carried_columns, clip_batch, photograph_pairs, scene_pairs, sequence_test,
                                 shared_patches, shift_agreement, translation, translation_pairs, translation_test)
from glom_viz.islands import find_islands, patch_truth
from glom_viz.model import Glom
from glom_viz.runs import final_columns
from glom_viz.scenes import EVAL_SEEDS

GRID = (8, 8)


def tiny_model(**options) -> Glom:
    torch.manual_seed(0)
    return Glom(dim=16, levels=3, image_size=32, patch_size=4, consensus_cosine=True, attention_scale=8.0,
                **options).eval()


def blocks(height: int, width: int, cell: int = 8, seed: int = 0) -> np.ndarray:
    """(height, width, 3) float: cells of flat random colour."""
    rng = np.random.default_rng(seed)
    colours = rng.random((height // cell + 1, width // cell + 1, 3))
    return colours.repeat(cell, 0).repeat(cell, 1)[:height, :width].astype(np.float32)


def test_the_windows_show_the_same_content_on_their_shared_patches():
    picture = blocks(40, 60)
    pairs = translation_pairs(picture, 32, 8, stride=8)
    assert pairs.shape == (len(range(0, 9, 8)) * len(range(0, 21, 8)), 2, 3, 32, 32)
    left, right = shared_patches(GRID, 2)
    assert len(left) == 8 * 6
    patches = pairs[:, :, :, ::4, ::4].reshape(len(pairs), 2, 3, -1)  # one pixel of every patch
    assert np.array_equal(patches[:, 0][..., left], patches[:, 1][..., right])
    # a picture too narrow for the shift gives no pair
    assert len(translation_pairs(blocks(32, 36), 32, 8)) == 0


def test_islands_that_follow_the_content_agree_and_a_position_code_does_not():
    content = np.repeat(np.arange(8), 8).reshape(8, 8) // 3  # three horizontal bands of content
    left, right = content.ravel(), np.roll(content, -2, axis=1).ravel()  # the right window is 2 patches on
    assert shift_agreement(np.stack([left, right]), GRID, 2) == pytest.approx(1.0)
    by_column = np.tile(np.arange(8) // 3, 8)  # islands that are bands of position, the same in both windows
    assert shift_agreement(np.stack([by_column, by_column]), GRID, 2) < 0.5


def test_a_model_without_position_or_consensus_keeps_its_islands_where_a_position_code_moves_them():
    # no consensus and no position embedding: each column sees its own patch only, so the shared
    # patches' columns are equal in the two windows and k-means cuts them alike
    plain = tiny_model(contribution_weights=(1.0, 1.0, 1.0, 0.0))
    with torch.no_grad():
        plain.pos_emb.weight.zero_()
    pairs = scene_pairs(range(EVAL_SEEDS.start, EVAL_SEEDS.start + 3), 32, 8)
    assert pairs.shape == (3, 2, 3, 32, 32)
    result = translation_test(plain, pairs, 2, islands=3, iters=3)
    assert len(result["levels"]) == 3 and result["pairs"] == 3
    assert all(row["ari"] > 0.6 for row in result["levels"])
    # the same columns with a strong position code added to every level's top-down net
    coded = tiny_model(contribution_weights=(1.0, 1.0, 1.0, 0.0))
    with torch.no_grad():
        coded.pos_emb.weight.mul_(100.0)
    moved = translation_test(coded, pairs, 2, islands=3, iters=3)
    assert moved["levels"][0]["ari"] < result["levels"][0]["ari"] - 0.2
    assert 0 < result["pixels"]["ari"] <= 1 and result["pixels"] == moved["pixels"]


def test_photographs_give_windows_at_every_scale_and_the_test_refuses_shifts_that_share_nothing():
    pictures = {"wide": (blocks(48, 80) * 255).astype(np.uint8), "square": (blocks(48, 48) * 255).astype(np.uint8)}
    pairs = photograph_pairs(pictures, 32, 8, scales=(1.0, 2.0))
    assert len(pairs) > 0 and pairs.dtype == np.float32 and 0 <= pairs.min() and pairs.max() <= 1
    model = tiny_model()
    with pytest.raises(ConfigError, match="between 1 and 7 patches"):
        translation(model, shift=8, scenes=1, pictures=pictures)
    with pytest.raises(ConfigError, match="between 1 and 7 patches"):
        translation(model, shift=0, scenes=1, pictures=pictures)
    result = translation(model, shift=2, scenes=2, iters=2, pictures=pictures)
    assert result["scenes"]["pairs"] == 2 and result["photographs"]["pairs"] == len(photograph_pairs(pictures, 32, 8))
    assert all(np.isfinite(row["ari"]) for row in result["photographs"]["levels"])


def test_the_carried_state_continues_each_frame_from_the_one_before():
    model = tiny_model()
    images, objects = clip_batch(range(EVAL_SEEDS.start, EVAL_SEEDS.start + 2), 3, 32)
    assert images.shape == (2, 3, 3, 32, 32) and objects.shape == (2, 3, 32, 32)
    carried = torch.from_numpy(carried_columns(model, images, iters=2))
    with torch.no_grad():
        first = model(images[:, 0], iters=2)
        assert torch.allclose(carried[:, 0], first, atol=1e-6)
        assert torch.allclose(carried[:, 2], model(images[:, 2], iters=2, levels=carried[:, 1]), atol=1e-6)
        # carrying differs from a fresh run: the state it starts from is another frame's
        assert not torch.allclose(carried[:, 1], model(images[:, 1], iters=2), atol=1e-3)


def test_the_sequence_test_scores_every_frame_and_refuses_a_clip_of_one_frame():
    model = tiny_model()
    images, objects = clip_batch(range(EVAL_SEEDS.start, EVAL_SEEDS.start + 2), 3, 32)
    result = sequence_test(model, images, objects, iters=2)
    assert result["frames"] == 3 and result["clips"] == 2 and len(result["levels"]) == 3
    for row in result["levels"]:
        assert len(row["fresh"]) == len(row["carried"]) == 3
        assert row["carried_worst_frame"] == min(row["carried"])
        # frame 0 is fresh either way
        assert row["carried"][0] == pytest.approx(row["fresh"][0])
    assert len(result["pixels"]["fresh"]) == 3
    # the ARI over every patch, background included, as a direct computation gives it
    fresh = final_columns(model, images.flatten(0, 1), 2).reshape(2, 3, 64, 3, 16)
    for row in result["levels"]:
        direct = []
        for c in range(2):
            for t in range(3):
                truth = patch_truth(objects[c, t], model.grid)
                labels = find_islands(fresh[c, t, :, row["level"]], model.grid, "kmeans",
                                      n_islands=len(np.unique(truth)), seed=c)
                direct.append(adjusted_rand_score(truth, labels))
        assert row["fresh_ari_mean"] == pytest.approx(np.mean(direct))
    with pytest.raises(ConfigError, match="at least 2 frames"):
        sequence_test(model, images[:, :1], objects[:, :1])


def test_letting_go_at_any_change_is_a_fresh_run_and_at_none_is_the_carried_one():
    model = tiny_model()
    images, objects = clip_batch(range(EVAL_SEEDS.start, EVAL_SEEDS.start + 2), 3, 32)
    # each frame has fresh pixel noise, so at a tiny release every column starts afresh
    fresh = final_columns(model, images.flatten(0, 1), 2).reshape(2, 3, 64, 3, 16)
    np.testing.assert_allclose(carried_columns(model, images, iters=2, release=1e-6), fresh, atol=1e-5)
    # at a release no patch reaches, every column is carried as it is
    np.testing.assert_array_equal(carried_columns(model, images, iters=2, release=1e3),
                                  carried_columns(model, images, iters=2))
    result = sequence_test(model, images, objects, iters=2, release=0.1)
    assert result["release"] == 0.1
    for row in result["levels"]:
        assert len(row["released"]) == 3 and row["released_worst_frame"] == min(row["released"])
        assert row["released"][0] == pytest.approx(row["fresh"][0])


def test_the_command_refuses_a_shift_that_shares_nothing_and_a_clip_of_one_frame(capsys):
    assert main(["--scenes", "2", "--translation", "--shift", "16"]) == 2
    assert "between 1 and 15 patches" in capsys.readouterr().err
    assert main(["--scenes", "2", "--sequences", "--frames", "1"]) == 2
    assert "at least 2 frames" in capsys.readouterr().err
    assert main(["--scenes", "2", "--sequences", "--release", "0"]) == 2
    assert "--release is the RMS pixel change" in capsys.readouterr().err
    assert main(["--scenes", "2", "--sequences", "--alike", "-0.05"]) == 2
    assert "--alike is the RMS pixel difference" in capsys.readouterr().err
    assert main(["--scenes", "2", "--sequences", "--max-speed", "0.1"]) == 2
    assert "--max-speed must be at least" in capsys.readouterr().err


# -- the shipped models ----------------------------------------------------------------------------------


def shipped_or_skip(kind: str) -> Glom:
    from glom_viz.checkpoints import load_shipped, shipped_path

    if not shipped_path(kind).is_file():
        pytest.skip(f"the shipped {kind} model is not here")
    return load_shipped(kind)


def unit(columns: np.ndarray) -> np.ndarray:
    return columns / np.linalg.norm(columns, axis=-1, keepdims=True)


def test_on_one_flat_colour_the_content_only_model_is_one_island_at_every_level_and_position_cuts_it():
    """No position told: a picture of one colour is the same at every patch, and so is every column; the scenes
    model, told position, cuts it by where a column is."""
    flat = torch.tensor([0.4, 0.6, 0.8]).view(1, 3, 1, 1).expand(1, 3, 64, 64).contiguous()
    content = shipped_or_skip("content")
    assert content.config.position_levels == ()
    columns = unit(final_columns(content, flat)[0])  # (patches, levels, dim)
    assert np.einsum("nld,ld->nl", columns, columns[0]).min() > 0.9999
    for level in range(content.config.levels):
        assert len(np.unique(find_islands(columns[:, level], content.grid, "kmeans"))) == 1
    scenes = unit(final_columns(shipped_or_skip("scenes"), flat)[0])
    assert np.einsum("nld,ld->nl", scenes, scenes[0]).min() < 0.95


def test_the_content_only_models_columns_move_with_the_photograph_where_the_scenes_models_stay():
    """Windows two patches apart of the bundled photographs: over their shared patches the content-only model's
    columns agree (cosine 0.993-0.997 at levels 0-3), the scenes model's much less (0.78-0.93)."""
    from glom_viz.images import sample_images

    pairs = photograph_pairs(sample_images(), 64, 8)
    left, right = shared_patches((16, 16), 2)

    def agreement(model: Glom) -> np.ndarray:
        columns = unit(final_columns(model, torch.from_numpy(pairs.reshape(-1, 3, 64, 64))))
        columns = columns.reshape(len(pairs), 2, *columns.shape[1:])
        return np.einsum("pnld,pnld->pnl", columns[:, 0, left], columns[:, 1, right]).mean((0, 1))  # per level

    content, scenes = agreement(shipped_or_skip("content")), agreement(shipped_or_skip("scenes"))
    assert content.min() > 0.98
    assert (content > scenes + 0.05).all()


def test_two_alike_objects_share_an_island_without_position_and_part_when_it_is_told_at_the_start():
    """Two red squares alike to the pixel, far apart on grey: with no position the content-only model's top
    levels give them one vector (cosine 1.000), so one island; told each column's position once, at the start
    of the top level, the balanced model gives each square its own (cosine about 0) and holds each together
    (every column within cosine 0.9 of its square's mean), as the scenes model, told it every step, does."""
    picture = torch.full((1, 3, 64, 64), 0.5)
    red = torch.tensor([0.9, 0.2, 0.2]).view(3, 1, 1)
    picture[:, :, 8:24, 8:24] = red
    picture[:, :, 40:56, 40:56] = red
    first = [row * 16 + column for row in range(2, 6) for column in range(2, 6)]
    second = [row * 16 + column for row in range(10, 14) for column in range(10, 14)]
    for kind, apart in (("content", False), ("balanced", True), ("scenes", True)):
        model = shipped_or_skip(kind)
        columns = unit(final_columns(model, picture)[0])  # (patches, levels, dim)
        for level in (2, 3):
            means = unit(np.stack([columns[first, level].mean(0), columns[second, level].mean(0)]))
            labels = find_islands(columns[:, level], model.grid, "kmeans")
            shared = np.intersect1d(labels[first], labels[second]).size > 0
            assert shared != apart, (kind, level)
            assert (means[0] @ means[1] < 0.5) == apart, (kind, level)
            if apart:
                assert (columns[first, level] @ means[0]).min() > 0.9 and (columns[second, level] @ means[1]).min() > 0.9
