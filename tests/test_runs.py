"""glom_viz.runs against the model's own forward: the states kept, the sequence carried, the non-finite
check, the compact storage, the column probe's pulls; and the precision API every label asks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glom_viz import Glom, GlomConfig, GlomInputError
from glom_viz import model as glom_model
from glom_viz.model import CONTRIBUTIONS, REDUCED_PRECISION_ENV, reduced_precision_is_fast, run_path
from glom_viz.runs import (FLOAT16_SAFE, NET_MOVE, STATES_DTYPE, compact, final_columns, probe_column, run,
                           run_sequence)

TINY = GlomConfig(dim=16, levels=3, image_size=16, patch_size=4)


@pytest.fixture
def model() -> Glom:
    torch.manual_seed(0)
    return Glom.from_config(TINY).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 3, TINY.image_size, TINY.image_size, generator=torch.Generator().manual_seed(1))


def test_run_keeps_every_step_of_the_forward(model, images):
    seen = []
    result = run(model, images[0], 5, progress=lambda step, total: seen.append((step, total)))
    with torch.no_grad():
        expected = model(images[:1], iters=5, return_all=True)[:, 0].numpy()  # (6, N, L, D)
    assert result.states.shape == expected.shape and result.states.dtype == STATES_DTYPE
    np.testing.assert_allclose(result.states.astype(np.float32), expected, rtol=2e-3, atol=2e-3)  # float16
    np.testing.assert_array_equal(result.final, expected[-1])  # the last step at full precision
    assert result.final.dtype == np.float32
    assert seen == [(step, 5) for step in range(6)]
    assert result.finite and result.iterations == 5 and result.path == "fp32" and result.seconds > 0


def test_run_takes_the_models_default_iterations_and_one_picture_only(model, images):
    assert run(model, images[:1]).iterations == 2 * TINY.levels
    with pytest.raises(GlomInputError, match="one picture"):
        run(model, images)


def test_a_sequence_starts_each_frame_from_the_last_ones_final_columns(model, images):
    frames = run_sequence(model, list(images), 3, release=None)  # every column carried as it is
    with torch.no_grad():
        levels = None
        for image, got in zip(images, frames):
            levels = model(image[None], iters=3, levels=levels)
            np.testing.assert_allclose(got.final, levels[0].numpy(), rtol=1e-5, atol=1e-6)
    # run with start= is the same step
    again = run(model, images[1], 3, start=frames[0])
    np.testing.assert_array_equal(again.final, frames[1].final)


def test_a_sequence_that_lets_go_continues_each_frame_from_the_columns_let_go(model, images):
    frames = run_sequence(model, list(images), 3, release=0.2)
    with torch.no_grad():
        start = model.let_go(torch.from_numpy(frames[0].final[None]), images[:1], images[1:2], 0.2)
        expected = model(images[1:2], iters=3, levels=start)[0].numpy()
    np.testing.assert_allclose(frames[1].final, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(run(model, images[1], 3, start=frames[0], before=images[0], release=0.2).final,
                                  frames[1].final)
    # random frames change every patch by far more than 0.2 RMS: each frame starts afresh
    np.testing.assert_allclose(frames[2].final, run(model, images[2], 3).final, rtol=1e-4, atol=1e-5)
    # a still frame keeps every column: the same as carrying them
    still = run_sequence(model, [images[0], images[0]], 3, release=0.2)
    np.testing.assert_array_equal(still[1].final,
                                  run_sequence(model, [images[0], images[0]], 3, release=None)[1].final)
    with pytest.raises(GlomInputError, match="pass before"):
        run(model, images[1], 3, start=frames[0], release=0.2)


def test_nonfinite_states_are_found_and_a_sequence_stops_there(model, images):
    with torch.no_grad():  # finite weights whose columns overflow float32 at the first step
        model.init_levels.mul_(1e30)
        model.bottom_up.net[1].weight.mul_(1e10)
    broken = run(model, images[0], 2)
    assert not broken.finite
    step, level = broken.first_nonfinite
    assert step >= 1 and not np.isfinite(broken.states[step, :, level]).all()
    assert np.isfinite(broken.states[:step]).all()
    with pytest.raises(GlomInputError, match="NaN or Inf"):
        run(model, images[1], 2, start=broken)
    with pytest.raises(GlomInputError, match="NaN or Inf"):
        run_sequence(model, list(images[:2]), 2)


def test_states_stay_float32_where_float16_would_overflow():
    states = np.zeros((2, 4, 2, 3), np.float32)
    stored, first = compact(states)
    assert stored.dtype == STATES_DTYPE and first is None
    states[1, 2, 1, 0] = 2 * FLOAT16_SAFE
    stored, first = compact(states)
    assert stored.dtype == np.float32 and stored[1, 2, 1, 0] == 2 * FLOAT16_SAFE and first is None
    states[1, 0, 0, 0] = np.nan
    assert compact(states)[1] == (1, 0)
    states[1, 2, 1, 0] = -2 * FLOAT16_SAFE  # a negative value overflows float16 too
    assert compact(states)[0].dtype == np.float32
    states[1, 2, 1, 0] = 1.0
    stored, first = compact(states)  # NaN itself does not keep float32
    assert stored.dtype == STATES_DTYPE and first == (1, 0)


def test_compact_states_round_as_numpy_rounds_to_float16():
    states = np.random.default_rng(0).normal(0, 300, (3, 8, 2, 16)).astype(np.float32)
    stored, first = compact(states)
    assert first is None and stored.dtype == STATES_DTYPE
    np.testing.assert_array_equal(stored, states.astype(STATES_DTYPE))
    assert not np.shares_memory(stored, states)


def test_final_columns_in_batches_equal_one_forward(model, images):
    with torch.no_grad():
        expected = model(images, iters=3).numpy()
    np.testing.assert_allclose(final_columns(model, images, 3, batch=2), expected, rtol=1e-5, atol=1e-6)


def test_column_probe_pulls_rebuild_the_step(model, images):
    probe = probe_column(model, images[0], 2)
    with torch.no_grad():
        steps = list(model.iterate(images[:1], 2, contributions=True, attention=True))
    parts = {name: value[0] for name, value in steps[2].contributions.items()}  # (N, L, D)
    weights = model.update_weights  # (4, L)
    N, L = model.num_patches, TINY.levels
    assert probe.attention.shape == (L, N, N)
    np.testing.assert_allclose(probe.attention.sum(-1), 1, atol=1e-5)
    assert set(probe.pulls) == {*CONTRIBUTIONS[1:], NET_MOVE}
    move = steps[2].levels[0] - steps[1].levels[0]
    np.testing.assert_allclose(probe.pulls[NET_MOVE], move.norm(dim=-1).numpy(), rtol=1e-5, atol=1e-6)
    for index, name in enumerate(CONTRIBUTIONS[1:], 1):
        expected = weights[index][None] * (parts[name] - parts["previous"]).norm(dim=-1)
        np.testing.assert_allclose(probe.pulls[name], expected.numpy(), rtol=1e-5, atol=1e-6)
    # the step is the weighted sum of the pulls' directions, so its length is at most their sum
    assert (probe.pulls[NET_MOVE] <= sum(probe.pulls[name] for name in CONTRIBUTIONS[1:]) + 1e-5).all()
    with pytest.raises(GlomInputError, match="step 0"):
        probe_column(model, images[0], 0)


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setattr(glom_model, "_WARNED", set())

    def force(value: str):
        monkeypatch.setenv(REDUCED_PRECISION_ENV, value)
        reduced_precision_is_fast.cache_clear()
    yield force
    reduced_precision_is_fast.cache_clear()


@pytest.mark.parametrize("value, path", [("1", "bf16"), ("int8", "int8"), ("0", "fp32")])
def test_run_path_names_what_a_fast_run_runs(model, images, forced, value, path):
    forced(value)
    assert run_path(TINY.dim, "fast") == path
    assert run_path(TINY.dim, "fp32") == "fp32"
    fast = run(model, images[0], 2, precision="fast")
    assert fast.path == path
    exact = run(model, images[0], 2)
    assert (fast.final == exact.final).all() == (path == "fp32")  # the reduced paths round differently


def test_run_path_asks_for_the_models_dim(monkeypatch):
    """Where bf16 is not faster, fast means int8 nets for a wide model whose int8 nets are faster and fp32
    for a narrow one."""
    monkeypatch.delenv(REDUCED_PRECISION_ENV, raising=False)
    monkeypatch.setattr(glom_model, "reduced_precision_is_fast", lambda device_type, dtype: False)
    monkeypatch.setattr(glom_model, "int8_is_fast", lambda dim, against="fp32": True)
    if not glom_model.int8_is_available():
        pytest.skip("this torch has no fbgemm int8 kernels")
    assert run_path(glom_model.INT8_MIN_DIM, "fast") == "int8"
    assert run_path(glom_model.INT8_MIN_DIM // 2, "fast") == "fp32"
