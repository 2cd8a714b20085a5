"""glom_viz.Glom against the reference, glom-pytorch 0.0.14: same parameters, same states, same API."""

import pathlib
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

glom_pytorch = pytest.importorskip("glom_pytorch")

from glom_viz import ConfigError, Glom, GlomConfig, GlomInputError  # noqa: E402
from glom_viz import model as glom_model  # noqa: E402
from glom_viz.model import (REDUCED_PRECISION_ENV, precision_context, precision_path, reduced_precision_is_fast,  # noqa: E402
                            run_path)

# glom-pytorch 0.0.14's README, whose examples are the API glom_viz honours (a copy: CI has only this repository)
SEED_README = pathlib.Path(__file__).resolve().parent / "fixtures" / "glom-pytorch-README.md"

CONFIGS = [
    dict(dim=32, levels=3, image_size=32, patch_size=8),
    dict(dim=24, levels=4, image_size=30, patch_size=5, local_consensus_radius=1.5),  # odd sizes, local
    dict(dim=16, levels=2, image_size=16, patch_size=4, consensus_self=True),
    dict(dim=40, levels=5, image_size=21, patch_size=7, consensus_self=True, local_consensus_radius=1),
]


def twins(config, seed=0):
    """A glom-pytorch model and ours holding the same weights."""
    torch.manual_seed(seed)
    reference = glom_pytorch.Glom(**config)
    ours = Glom(**config)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_states_match_glom_pytorch(config):
    reference, ours = twins(config)
    img = torch.randn(2, 3, config["image_size"], config["image_size"])
    expected = reference(img, iters=4, return_all=True)
    got = ours(img, iters=4, return_all=True)
    assert got.shape == expected.shape == (5, 2, ours.num_patches, config["levels"], config["dim"])
    assert relative_error(got, expected) < 1e-4
    # continuation through levels=, as for consecutive frames
    img2 = torch.randn_like(img)
    assert relative_error(ours(img2, levels=got[-1], iters=3), reference(img2, levels=expected[-1], iters=3)) < 1e-4


def test_state_dict_names_and_shapes_are_glom_pytorch_s():
    for config in CONFIGS:
        reference, ours = twins(config)
        ref_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
        our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        assert our_shapes == ref_shapes


def test_default_iterations_and_shapes():
    _, ours = twins(CONFIGS[0])
    img = torch.randn(1, 3, 32, 32)
    assert ours(img).shape == (1, 16, 3, 32)
    assert ours(img, return_all=True).shape == (3 * 2 + 1, 1, 16, 3, 32)
    assert ours(img, iters=0, return_all=True).shape == (1, 1, 16, 3, 32)


def test_iterate_equals_forward_return_all():
    _, ours = twins(CONFIGS[1])
    img = torch.randn(2, 3, 30, 30)
    steps = list(ours.iterate(img, iters=5))
    assert [s.step for s in steps] == list(range(6))
    assert torch.equal(torch.stack([s.levels for s in steps]), ours(img, iters=5, return_all=True))
    # step 0: every column holds the same initial vector per level
    assert torch.allclose(steps[0].levels, ours.init_levels.expand_as(steps[0].levels))


def test_contributions_rebuild_the_step_and_attention_is_a_distribution():
    _, ours = twins(CONFIGS[1])
    img = torch.randn(1, 3, 30, 30)
    steps = list(ours.iterate(img, iters=3, contributions=True, attention=True))
    assert steps[0].contributions is None and steps[0].attention is None
    L = ours.config.levels
    for before, step in zip(steps, steps[1:]):
        parts = step.contributions
        assert set(parts) == {"previous", "bottom_up", "top_down", "consensus"}
        assert torch.equal(parts["previous"], before.levels)
        assert torch.count_nonzero(parts["top_down"][:, :, -1]) == 0  # nothing above the top level
        mean = (parts["previous"] + parts["bottom_up"] + parts["top_down"] + parts["consensus"])
        counts = torch.tensor([4.0] * (L - 1) + [3.0]).view(1, 1, L, 1)
        assert torch.allclose(mean / counts, step.levels, atol=1e-5)
        attention = step.attention
        assert attention.shape == (1, L, ours.num_patches, ours.num_patches)
        assert torch.allclose(attention.sum(-1), torch.ones(()), atol=1e-5)
        # radius 1.5 on the grid: a column never attends to one three patches away
        assert attention[0, :, 0, 3].abs().max() == 0


def test_which_levels_selects_contributions_and_attention():
    _, ours = twins(CONFIGS[0])
    img = torch.randn(1, 3, 32, 32)
    full = list(ours.iterate(img, iters=2, contributions=True, attention=True))[-1]
    some = list(ours.iterate(img, iters=2, contributions=True, attention=True, which_levels=[2]))[-1]
    assert some.attention.shape == (1, 1, 16, 16)
    assert torch.equal(some.attention[:, 0], full.attention[:, 2])
    assert torch.equal(some.contributions["consensus"][:, :, 0], full.contributions["consensus"][:, :, 2])
    with pytest.raises(GlomInputError, match="which_levels"):
        next(ours.iterate(img, which_levels=[3]))


def test_gradients_are_finite_and_reach_every_parameter():
    _, ours = twins(CONFIGS[1])
    img = torch.randn(2, 3, 30, 30)
    states = ours(img + torch.randn_like(img), iters=4, return_all=True)
    loss = states[-1, :, :, -1].pow(2).mean() + states[2].mean()
    loss.backward()
    for name, p in ours.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


FUSED_CONFIGS = [  # the consensus runs fused where the diagonal's replacement is a constant
    dict(dim=16, levels=4, image_size=32, patch_size=4, consensus_cosine=True, attention_scale=8.0,
         consensus_radii=(1.5, 2.0, 0.0, 3.0)),  # per-level bands, one level global
    dict(dim=24, levels=3, image_size=30, patch_size=5, consensus_self=True, local_consensus_radius=1.5),
    dict(dim=16, levels=3, image_size=16, patch_size=4, consensus_cosine=True),  # global, no mask
]


@pytest.mark.parametrize("config", FUSED_CONFIGS, ids=["radii", "self-local", "cosine-global"])
def test_the_fused_consensus_gives_the_explicit_attentions_states_and_gradients(config):
    """The fused, banded consensus (no attention weights kept) against the explicit n x n attention."""
    torch.manual_seed(0)
    model = Glom(**config)
    b, n = 2, model.num_patches
    levels = torch.randn(config["levels"], b, n, config["dim"], requires_grad=True)
    with torch.inference_mode():  # the pieces the consensus keeps serve forwards with gradients after inference
        model._consensus(levels.detach(), torch.float32)
    fused, none = model._consensus(levels, torch.float32)
    explicit, attention = model._consensus(levels, torch.float32, weights=True)
    assert none is None and attention.shape == (config["levels"], b, n, n)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    # off the CPU: one call over every level, the biases stacked
    scale = config.get("attention_scale") or config["dim"] ** -0.5
    diagonal = "kept" if config.get("consensus_self") else "constant"
    (whole,) = model.attention.blocks(config["levels"], model.grid[0], scale, torch.float32, torch.device("cpu"),
                                      diagonal, banded=False)
    keys = F.normalize(levels, dim=-1)
    queries = keys if config.get("consensus_cosine") else levels
    unbanded = F.scaled_dot_product_attention(queries, keys, levels, attn_mask=whole.bias, scale=scale)
    torch.testing.assert_close(unbanded, explicit, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(fused)
    (fused_grad,) = torch.autograd.grad((fused * weights).sum(), levels)
    (explicit_grad,) = torch.autograd.grad((explicit * weights).sum(), levels)
    torch.testing.assert_close(fused_grad, explicit_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config", [FUSED_CONFIGS[0], CONFIGS[1], dict(dim=16, levels=3, image_size=16, patch_size=4)],
                         ids=["fused-radii", "explicit-local", "explicit-global"])
def test_levels_the_image_has_not_reached_are_computed_once_for_the_batch(config, monkeypatch):
    """Level l holds the same columns in every image for the first l steps: sharing their nets and consensus
    gives every image's own computation, states and gradients."""
    torch.manual_seed(0)
    model = Glom(**config)
    img = torch.rand(3, 3, config["image_size"], config["image_size"])
    shared = model(img, iters=config["levels"] + 1, return_all=True)
    (shared_grads) = torch.autograd.grad(shared[-1].square().sum(), list(model.parameters()))
    original = Glom._update
    monkeypatch.setattr(Glom, "_update", lambda self, *args, shared_from=None, **kwargs: original(self, *args, **kwargs))
    alone = model(img, iters=config["levels"] + 1, return_all=True)
    alone_grads = torch.autograd.grad(alone[-1].square().sum(), list(model.parameters()))
    torch.testing.assert_close(shared, alone, rtol=1e-5, atol=1e-5)
    for a, b in zip(shared_grads, alone_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for step in range(1, config["levels"]):  # the levels above the image's reach agree across images
        assert torch.equal(shared[step, 0, :, step:], shared[step, 2, :, step:])


@pytest.mark.parametrize("radius, side", [(1.5, 6), (2.0, 16), (4.0, 16), (6.0, 16), (20.0, 8)])
def test_consensus_bands_hold_every_key_a_query_may_attend(radius, side):
    blocked = glom_model.patch_distances(side) > radius
    bands = glom_model.consensus_bands(blocked, side)
    covered = torch.zeros_like(blocked)
    for q0, q1, k0, k1 in bands:
        assert (q1 - q0) % side == 0 or q1 == side * side  # whole grid rows
        covered[q0:q1, k0:k1] = True
    assert [band[0] for band in bands] == sorted(band[0] for band in bands) and bands[-1][1] == side * side
    assert not (~blocked & ~covered).any()  # every allowed pair is computed
    if radius < side / 4:
        assert covered.sum() < blocked.numel()  # and local radii skip work


@pytest.fixture
def reduced_precision(monkeypatch):
    """Force a precision path under autocast with the environment variable: True runs autocast's bf16 even
    where this CPU emulates it (slowly), False exact fp32, "int8" the int8 nets; warnings start afresh."""
    monkeypatch.setattr(glom_model, "_WARNED", set())

    def force(on):
        monkeypatch.setenv(REDUCED_PRECISION_ENV, on if isinstance(on, str) else "1" if on else "0")
        reduced_precision_is_fast.cache_clear()
    yield force
    reduced_precision_is_fast.cache_clear()


@pytest.fixture
def bf16_native(monkeypatch):
    """Pretend the CPU's bf16 is (True) or is not (False) faster than fp32, whatever this one's is, and that its
    int8 nets are (int8=True) or are not faster than the rival path from INT8_MIN_DIM up (default: where bf16
    is not); no forcing."""
    monkeypatch.setattr(glom_model, "_WARNED", set())
    monkeypatch.delenv(REDUCED_PRECISION_ENV, raising=False)

    def pretend(native: bool, int8: bool | None = None):
        int8 = not native if int8 is None else int8
        monkeypatch.setattr(glom_model, "reduced_precision_is_fast", lambda device_type, dtype: native)
        monkeypatch.setattr(glom_model, "int8_is_fast", lambda dim, against="fp32": int8)
    return pretend


@pytest.fixture
def probe(monkeypatch):
    """Stand in for the timed probes: ``probe(fp32=1.0, reduced=0.5, int8=2.0)`` makes every probe report these
    seconds (what the products were is recorded in ``probe.products``); the probes' caches start afresh."""
    monkeypatch.delenv(REDUCED_PRECISION_ENV, raising=False)
    monkeypatch.setattr(glom_model, "_WARNED", set())
    products = []

    def report(**seconds):
        def probe_seconds(named, *args, **kwargs):
            products.append(dict(named))
            return {name: seconds.get(name, 1.0) for name in named}
        monkeypatch.setattr(glom_model, "probe_seconds", probe_seconds)
        glom_model.forget_probes()
    report.products = products
    yield report
    glom_model.forget_probes()


def mean_cosine_per_level(states, exact):
    """(T, b, n, L, d) twice -> (L,): each level's mean per-vector cosine similarity over steps and columns."""
    return F.cosine_similarity(states, exact, dim=-1).mean(dim=(0, 1, 2))


def exact_and_autocast(model, img, iters):
    """The states (T, b, n, L, d) of one image in exact fp32 and under bf16 autocast, gradients off."""
    with torch.inference_mode():
        exact = model(img, iters=iters, return_all=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model(img, iters=iters, return_all=True)
    return exact, fast


def test_bf16_autocast_states_stay_close_to_fp32(reduced_precision):
    reduced_precision(True)
    _, ours = twins(dict(dim=64, levels=4, image_size=32, patch_size=4))
    img = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        exact = ours(img, iters=8, return_all=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert precision_path("cpu") == "bf16"
            fast = ours(img, iters=8, return_all=True)
    assert fast.dtype == torch.float32  # states stay fp32 between steps
    assert mean_cosine_per_level(fast, exact).min() > 0.995
    assert not torch.equal(fast, exact)  # the fast path did run in bf16


def test_autocast_falls_back_to_exact_fp32_where_bf16_is_not_native(bf16_native):
    """With gradients on, a CPU without native bf16 runs autocast in exact fp32 (int8 is inference only),
    and says so once per process, not once per forward."""
    bf16_native(False)
    _, ours = twins(CONFIGS[0])
    img = torch.rand(1, 3, 32, 32)
    exact = ours(img, iters=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.warns(UserWarning, match="not native.*inference only"):
            fallback = ours(img, iters=3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            again = ours(img, iters=3)
            assert precision_path("cpu") == "fp32"
    assert torch.equal(fallback, exact) and torch.equal(again, exact)
    fallback.pow(2).mean().backward()  # gradients reach the weights, in fp32
    assert torch.isfinite(ours.bottom_up.net[1].weight.grad).all()


def test_forbidding_reduced_precision_runs_exact_fp32_and_warns_once(reduced_precision):
    reduced_precision(False)
    _, ours = twins(CONFIGS[0])
    img = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        exact = ours(img, iters=3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with pytest.warns(UserWarning, match=f"{REDUCED_PRECISION_ENV}=0"):
                fallback = ours(img, iters=3)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert torch.equal(ours(img, iters=3), exact)
                assert precision_path("cpu") == "fp32"
    assert torch.equal(fallback, exact)


INT8_CONFIG = dict(dim=128, levels=4, image_size=32, patch_size=4)  # int8 serves dim >= 128 unforced


def test_int8_states_stay_close_to_fp32_where_bf16_is_not_native(bf16_native):
    bf16_native(False)
    _, ours = twins(INT8_CONFIG)
    img = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        exact = ours(img, iters=8, return_all=True)
        with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
            warnings.simplefilter("error")  # the int8 path is documented, not warned about
            assert precision_path("cpu") == "int8"
            fast = ours(img, iters=8, return_all=True)
            steps = list(ours.iterate(img, iters=8))
    assert fast.dtype == torch.float32 and fast.shape == exact.shape
    assert mean_cosine_per_level(fast, exact).min() > 0.995
    assert not torch.equal(fast, exact)  # int8 did run
    assert torch.equal(torch.stack([s.levels for s in steps]), fast)  # iterate and forward share the path
    # continuation from a previous frame's columns stays close too
    with torch.inference_mode():
        exact_next = ours(img.flip(-1), levels=exact[-1], iters=4, return_all=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast_next = ours(img.flip(-1), levels=exact[-1], iters=4, return_all=True)
    assert mean_cosine_per_level(fast_next, exact_next).min() > 0.995


def test_int8_states_of_the_shipped_trained_model_stay_close_to_fp32(bf16_native, monkeypatch):
    """A trained model (layer-normed levels, cosine consensus, its own weights) keeps its states under int8."""
    from glom_viz.checkpoints import load_shipped

    bf16_native(False)
    monkeypatch.setenv(REDUCED_PRECISION_ENV, "int8")  # its dim (64) is too small for int8 unforced
    model = load_shipped()
    img = torch.rand(1, 3, model.config.image_size, model.config.image_size)
    exact, fast = exact_and_autocast(model, img, iters=8)
    assert mean_cosine_per_level(fast, exact).min() > 0.995
    assert not torch.equal(fast, exact)


def test_int8_is_for_inference_only_and_follows_the_environment(bf16_native, reduced_precision):
    bf16_native(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            assert precision_path("cpu") == "int8"
        with pytest.warns(UserWarning, match="inference only"):
            assert precision_path("cpu") == "fp32"  # gradients on
    assert precision_path("cpu") == "fp32"  # no autocast: exact
    bf16_native(True)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert precision_path("cpu") == "bf16"
        reduced_precision("int8")  # forced on, even where bf16 is native
        assert precision_path("cpu") == "int8"
        reduced_precision(False)  # forced off
        with pytest.warns(UserWarning, match="forbids"):
            assert precision_path("cpu") == "fp32"


def test_small_models_run_exact_fp32_under_autocast_where_bf16_is_not_native(bf16_native):
    """Below INT8_MIN_DIM int8 is no faster than fp32: an unforced autocast runs fp32 and says so once."""
    bf16_native(False)
    _, ours = twins(CONFIGS[0])  # dim 32
    assert ours.config.dim < glom_model.INT8_MIN_DIM
    img = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        exact = ours(img, iters=3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with pytest.warns(UserWarning, match="below dim"):
                fallback = ours(img, iters=3)
            assert precision_path("cpu", dim=ours.config.dim) == "fp32"
            assert precision_path("cpu", dim=glom_model.INT8_MIN_DIM) == "int8"
    assert torch.equal(fallback, exact)


@pytest.mark.skipif(not glom_model.int8_is_available(), reason="this torch has no fbgemm int8 kernels")
@pytest.mark.parametrize("int8_seconds, path", [(2.0, "fp32"), (1.0, "fp32"), (0.5, "int8")])
def test_int8_runs_only_where_its_probe_finds_it_clearly_faster_than_fp32(monkeypatch, probe, int8_seconds, path):
    """The int8 nets are chosen by a timed probe, not by the dim alone: slower, or faster by less than the
    margin, and an inference forward under autocast runs exact fp32 (saying why once); clearly faster, int8."""
    monkeypatch.setattr(glom_model, "reduced_precision_is_fast", lambda device_type, dtype: False)
    probe(fp32=1.0, int8=int8_seconds)
    _, ours = twins(INT8_CONFIG)
    img = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        exact = ours(img, iters=3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fast = ours(img, iters=3)
                assert precision_path("cpu", dim=INT8_CONFIG["dim"]) == path
    said = [str(w.message) for w in caught if "GLOM runs in fp32" in str(w.message)]
    if path == "fp32":
        assert torch.equal(fast, exact)
        assert len(said) == 1 and "ran no faster than fp32" in said[0]
    else:
        assert not torch.equal(fast, exact) and not said
    assert [set(products) for products in probe.products] == [{"fp32", "int8"}]  # probed once per process


@pytest.mark.skipif(not glom_model.int8_is_available(), reason="this torch has no fbgemm int8 kernels")
@pytest.mark.parametrize("int8_seconds, path", [(0.5, "int8"), (1.0, "bf16")])
def test_where_bf16_is_fast_int8_must_beat_bf16_nets_and_serves_inference_only(monkeypatch, probe, int8_seconds,
                                                                               path):
    monkeypatch.setattr(glom_model, "reduced_precision_is_fast", lambda device_type, dtype: True)
    probe(bf16=1.0, int8=int8_seconds)
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("error")  # either is a fast path: nothing to warn about
        with torch.inference_mode():
            assert precision_path("cpu", dim=256) == path
        assert precision_path("cpu", dim=256) == "bf16"  # with gradients: never int8
    assert [set(products) for products in probe.products] == [{"bf16", "int8"}]


@pytest.mark.skipif(not glom_model.int8_is_available(), reason="this torch has no fbgemm int8 kernels")
@pytest.mark.parametrize("bf16_fast, path", [(True, "bf16"), (False, "fp32")])
def test_a_bf16_request_never_runs_the_int8_nets(monkeypatch, probe, bf16_fast, path):
    """Where the int8 nets beat everything, "fast" runs them and "bf16" runs autocast's dtype where that beats
    fp32, else fp32: its states are those of bf16 (or exact fp32), never the int8 nets'."""
    monkeypatch.setattr(glom_model, "reduced_precision_is_fast", lambda device_type, dtype: bf16_fast)
    probe(fp32=1.0, bf16=1.0, int8=0.1)
    _, ours = twins(INT8_CONFIG)
    img = torch.rand(1, 3, 32, 32)
    dim = INT8_CONFIG["dim"]
    assert (run_path(dim, "fast"), run_path(dim, "bf16"), run_path(dim, "fp32")) == ("int8", path, "fp32")
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 no faster: fp32, said once
        with precision_context("fast"):
            assert precision_path("cpu", dim=dim) == "int8"
            int8 = ours(img, iters=3)
        with precision_context("bf16"):
            assert precision_path("cpu", dim=dim) == path
            asked = ours(img, iters=3)
        monkeypatch.setenv(REDUCED_PRECISION_ENV, "1")  # autocast's dtype, forced: no int8
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=path == "bf16"):
            expected = ours(img, iters=3)
    assert torch.equal(asked, expected) and not torch.equal(asked, int8)


@pytest.mark.skipif(not glom_model.int8_is_available(), reason="this torch has no fbgemm int8 kernels")
def test_the_int8_probe_times_the_models_nets_within_a_cheap_width(monkeypatch, probe):
    """Below INT8_MIN_DIM nothing is timed; from there the nets of the model's dim, and wider models at
    INT8_PROBE_MAX_DIM, each width once."""
    widths = []
    monkeypatch.setattr(glom_model, "_net", lambda path, dim, rows: widths.append((path, dim, rows)))
    probe(fp32=1.0, int8=0.5)
    assert not glom_model.int8_is_fast(glom_model.INT8_MIN_DIM - 1) and not probe.products
    assert glom_model.int8_is_fast(glom_model.INT8_MIN_DIM)
    top = glom_model.INT8_PROBE_MAX_DIM
    assert glom_model.int8_is_fast(4 * top) and glom_model.int8_is_fast(top)
    rows = glom_model.INT8_PROBE_ROWS
    assert widths == [(p, glom_model.INT8_MIN_DIM, rows) for p in ("fp32", "int8")] + [(p, top, rows)
                                                                                       for p in ("fp32", "int8")]


@pytest.mark.parametrize("flags, reduced_seconds, fast, probed", [
    ({"avx512_bf16"}, 2.0, False, True),       # native vector products, timed slower: fp32
    ({"avx512_bf16"}, 0.5, True, True),        # timed clearly faster: bf16
    ({"avx512_bf16", "amx_bf16"}, 2.0, True, False),  # matrix units: fast without timing
    ({"avx2"}, 0.5, False, False),             # emulated: slow without timing
    (None, 0.5, True, True),                   # flags unreadable: timed
])
def test_bf16_is_chosen_by_the_flags_where_they_settle_it_else_by_its_probe(monkeypatch, probe, flags,
                                                                             reduced_seconds, fast, probed):
    monkeypatch.setattr(glom_model, "cpu_flags", lambda: None if flags is None else frozenset(flags))
    probe(fp32=1.0, reduced=reduced_seconds)
    assert reduced_precision_is_fast("cpu", torch.bfloat16) is fast
    assert bool(probe.products) is probed


def test_the_probe_times_every_product_on_one_thread_and_restores_the_threads():
    threads = torch.get_num_threads()
    seen = []

    def product():
        seen.append(torch.get_num_threads())
        return torch.ones(4) @ torch.ones(4)

    def broken():
        raise RuntimeError("no such kernel")
    seconds = glom_model.probe_seconds({"a": product, "b": product}, repeats=2, rounds=2)
    assert set(seconds) == {"a", "b"} and all(0 <= s < float("inf") for s in seconds.values())
    assert set(seen) == {1} and len(seen) == 2 * (1 + 2 * 2)  # a warm-up call, then repeats x rounds each
    with pytest.raises(RuntimeError):
        glom_model.probe_seconds({"a": product, "b": broken})
    assert torch.get_num_threads() == threads
    dtypes = []  # called from a forward under autocast, an fp32 product still runs in fp32
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        glom_model.probe_seconds({"fp32": lambda: dtypes.append(torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype)})
    assert set(dtypes) == {torch.float32}


@pytest.mark.skipif(not glom_model.int8_is_available(), reason="this torch has no fbgemm int8 kernels")
def test_int8_nets_with_a_fast_bf16_consensus_stay_close_to_fp32(bf16_native):
    """Where bf16 is fast and the int8 nets faster still, the int8 path runs its consensus in bf16."""
    bf16_native(True, int8=True)
    _, ours = twins(INT8_CONFIG)
    img = torch.rand(1, 3, 32, 32)
    exact, fast = exact_and_autocast(ours, img, iters=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert glom_model.consensus_dtype("int8", "cpu") == torch.bfloat16
    assert mean_cosine_per_level(fast, exact).min() > 0.995
    bf16_native(False, int8=True)
    _, only_nets = exact_and_autocast(ours, img, iters=8)
    assert not torch.equal(fast, only_nets)  # the consensus did run in bf16


def test_a_misspelt_precision_setting_is_refused_with_the_choices(reduced_precision):
    reduced_precision("bf16")
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ConfigError, match="1 .*int8.* 0"):
        precision_path("cpu")


@pytest.mark.parametrize("path, changed", [("int8", "top_down.net.3.bias"), (True, "top_down.net.3.bias"),
                                           (True, "bottom_up.net.1.weight")])
def test_prepared_weights_follow_parameter_updates(reduced_precision, path, changed):
    """The int8 and bf16 paths keep their packed or cast weights between forwards, and a parameter
    update (an optimiser step) makes them pack or cast again."""
    reduced_precision(path)
    _, ours = twins(CONFIGS[0])
    img = torch.randn(1, 3, 32, 32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = ours(img, iters=2)
        assert torch.equal(ours(img, iters=2), before)  # kept weights give the same states
    with torch.no_grad():
        ours.get_parameter(changed).mul_(2).add_(1.0)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        after = ours(img, iters=2)
    assert not torch.allclose(before, after)


def test_extensions_default_to_glom_pytorch_and_change_the_update():
    config = dict(dim=32, levels=3, image_size=32, patch_size=8)
    reference, plain = twins(config)
    img = torch.randn(1, 3, 32, 32)
    expected = reference(img, iters=3)
    for extension in [dict(attention_scale=5.0), dict(consensus_cosine=True, attention_scale=10.0),
                      dict(contribution_weights=(1, 2, 1, 3)), dict(level_norm="layernorm"),
                      dict(level_norm="l2"), dict(consensus_radii=(1, 2, 0)), dict(position_levels=(0,))]:
        model = Glom(**config, **extension)
        model.load_state_dict(reference.state_dict(), strict=True)  # no new parameters
        out = model(img, iters=3)
        assert torch.isfinite(out).all()
        assert relative_error(out, expected) > 1e-3, extension
    normed = Glom(**config, level_norm="l2")
    normed.load_state_dict(reference.state_dict())
    assert torch.allclose(normed(img, iters=2).norm(dim=-1), torch.ones(()), atol=1e-5)


def test_widening_the_mlps_keeps_the_function_and_adds_room():
    config = dict(dim=16, levels=3, image_size=32, patch_size=8)
    narrow, wide = Glom(**config), Glom(**config, feedforward_mult=8)
    assert wide.bottom_up.weights()[0].shape == (3, 16, 16 * 8)
    wide.load_state_dict({k: v for k, v in narrow.state_dict().items() if not k.startswith(("bottom_up", "top_down"))},
                         strict=False)
    wide.bottom_up.widen_from(narrow.bottom_up)
    wide.top_down.widen_from(narrow.top_down)
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(wide(img, iters=4), narrow(img, iters=4), atol=1e-5)
    # the new hidden units start silent but not dead: their input weights are the fresh ones
    w_in, _, w_out, _ = wide.top_down.weights()
    assert torch.count_nonzero(w_out[:, 16 * 4:]) == 0 and w_in[..., 16 * 4:].abs().sum() > 0
    with pytest.raises(ConfigError, match="cannot widen"):
        narrow.bottom_up.widen_from(wide.bottom_up)


def test_without_position_the_columns_move_with_the_picture():
    # global consensus and no position: moving the picture by whole patches (cyclically) moves every
    # column with its patch, exactly; told the position, the columns are not the moved ones
    config = dict(dim=16, levels=3, image_size=32, patch_size=4, consensus_cosine=True, attention_scale=8.0)
    torch.manual_seed(0)
    told = Glom(**config)
    blind = Glom(**config, position_levels=())
    blind.load_state_dict(told.state_dict())
    img = torch.rand(1, 3, 32, 32)
    moved = img.roll((4, 8), dims=(2, 3))  # one patch down, two across
    side = 8
    with torch.no_grad():
        for model, equal in ((blind, True), (told, False)):
            columns = model(img, iters=4).view(1, side, side, 3, 16).roll((1, 2), dims=(1, 2)).flatten(1, 2)
            assert torch.allclose(model(moved, iters=4), columns, atol=1e-5) == equal
        # position for the lowest level's top-down only: the same as the full model there, none elsewhere
        some = Glom(**config, position_levels=(0,))
        some.load_state_dict(told.state_dict())
        assert not torch.allclose(some(img, iters=3), told(img, iters=3))
        assert not torch.allclose(some(img, iters=3), blind(img, iters=3))
        # in a batch, where the levels the image has not reached yet are computed once for all images,
        # each image's columns are its own alone; told every level is the full model
        batch = torch.rand(3, 3, 32, 32)
        for position_levels in ((0,), (1,)):
            some = Glom(**config, position_levels=position_levels)
            some.load_state_dict(told.state_dict())
            together = some(batch, iters=3)
            for i in range(3):
                torch.testing.assert_close(together[i:i + 1], some(batch[i:i + 1], iters=3), atol=1e-5, rtol=1e-4)
        every = Glom(**config, position_levels=(0, 1))
        every.load_state_dict(told.state_dict())
        torch.testing.assert_close(every(batch, iters=3), told(batch, iters=3), atol=1e-5, rtol=1e-4)


def test_a_position_told_at_the_start_is_in_the_starting_state_alone():
    # the starting state holds each column's position at the levels named, init_levels elsewhere; no new
    # parameters, so any state dict loads
    config = dict(dim=16, levels=3, image_size=32, patch_size=4, consensus_cosine=True, attention_scale=8.0,
                  position_levels=())
    torch.manual_seed(0)
    blind = Glom(**config)
    started = Glom(**config, start_position_levels=(2,))
    started.load_state_dict(blind.state_dict(), strict=True)
    start = started.starting_state()
    assert start.shape == (64, 3, 16)
    torch.testing.assert_close(start[:, :2], blind.init_levels[:2].expand(64, 2, 16))
    torch.testing.assert_close(start[:, 2], blind.init_levels[2] + blind.pos_emb.weight)
    assert torch.equal(blind.starting_state(), blind.init_levels.expand(64, 3, 16))
    batch = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        first = next(iter(started.iterate(batch, iters=0))).levels
        torch.testing.assert_close(first, start.expand(3, -1, -1, -1))
        # it changes the columns, and each picture's in a batch are its own alone
        together = started(batch, iters=4)
        assert relative_error(together, blind(batch, iters=4)) > 1e-3
        for i in range(3):
            torch.testing.assert_close(together[i:i + 1], started(batch[i:i + 1], iters=4), atol=1e-5, rtol=1e-4)
        # a column let go that finds no alike still column starts from its own starting state
        settled = started(batch[:1], iters=3)
        after = batch[:1].clone()
        after[:, :, :8, :8] = 1.0 - after[:, :, :8, :8]
        carried = started.let_go(settled, batch[:1], after, 0.1, reach=0, alike=None)
        torch.testing.assert_close(carried[0, 0], start[0])
        torch.testing.assert_close(carried[0, 63], settled[0, 63])


def test_config_round_trips():
    config = GlomConfig(dim=32, levels=3, image_size=32, patch_size=8, contribution_weights=(1, 1, 1, 2),
                        consensus_radii=(1, 2, 3), position_levels=(1, 0), start_position_levels=[2, 1])
    assert config.position_levels == (0, 1) and config.start_position_levels == (1, 2)
    assert GlomConfig.from_dict(config.to_dict()) == config
    assert Glom.from_config(config).config == config
    with pytest.raises(ConfigError, match="unknown"):
        GlomConfig.from_dict({"dim": 8, "depth": 3})


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=30, patch_size=7), "not divisible"),
    (dict(levels=1), "levels at least 2"),
    (dict(level_norm="batch"), "level_norm"),
    (dict(contribution_weights=(1, 1)), "four"),
    (dict(consensus_radii=(1, 2)), "one non-negative radius per level"),
    (dict(feedforward_mult=0), "feedforward_mult"),
    (dict(position_levels=(2,)), "top level has none"),
    (dict(start_position_levels=(3,)), "start_position_levels name levels"),
])
def test_impossible_configs_are_refused_with_the_reason(kwargs, match):
    base = dict(dim=16, levels=3, image_size=32, patch_size=8)
    with pytest.raises(ConfigError, match=match):
        Glom(**{**base, **kwargs})


@pytest.mark.parametrize("img, match", [
    (torch.randn(1, 3, 16, 16), r"shape \(b, 3, 32, 32\)"),
    (torch.randn(1, 1, 32, 32), r"got \(1, 1, 32, 32\)"),
    (torch.randn(3, 32, 32), "shape"),
    (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "floating point"),
])
def test_bad_images_get_a_value_error_saying_what_was_expected(img, match):
    model = Glom(dim=16, levels=3, image_size=32, patch_size=8)
    with pytest.raises(ValueError, match=match):
        model(img)


def test_bad_levels_to_continue_from_are_refused():
    model = Glom(dim=16, levels=3, image_size=32, patch_size=8)
    img = torch.randn(1, 3, 32, 32)
    with pytest.raises(GlomInputError, match="levels to continue from"):
        model(img, levels=torch.zeros(1, 16, 2, 16))


def readme_examples():
    blocks = re.findall(r"```python\n(.*?)```", SEED_README.read_text(), flags=re.S)
    return [b.replace("from glom_pytorch import Glom", "from glom_viz import Glom") for b in blocks]


@pytest.mark.slow
def test_seed_readme_examples_run_unchanged_but_for_the_import():
    examples = readme_examples()
    assert len(examples) == 4
    for code in examples:
        assert "glom_pytorch" not in code
        namespace = {}
        exec(compile(code, "seed-readme-example", "exec"), namespace)  # noqa: S102 - our own test text
        if "loss" in namespace:  # the denoising example
            model = namespace["model"]
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads)
        if "levels3" in namespace:
            assert namespace["levels3"].shape == (1, 256, 6, 512)
        if "top_level_output" in namespace:
            assert namespace["top_level_output"].shape == (1, 256, 512)


@pytest.mark.slow
@pytest.mark.parametrize("bf16_fast", [False, True])  # the consensus in fp32, or in bf16
def test_int8_states_stay_close_to_fp32_at_the_seed_size(bf16_native, bf16_fast):
    """The bar at the seed's size: 224 px, patch 14, dim 512, 6 levels, 12 iterations."""
    bf16_native(bf16_fast, int8=True)
    torch.manual_seed(0)
    model = Glom(dim=512, levels=6, image_size=224, patch_size=14).eval()
    img = torch.rand(1, 3, 224, 224)
    exact, fast = exact_and_autocast(model, img, iters=12)
    assert mean_cosine_per_level(fast, exact).min() > 0.995
    assert not torch.equal(fast, exact)


def test_letting_go_keeps_unchanged_columns_and_starts_changed_ones_afresh():
    torch.manual_seed(0)
    model = Glom(dim=16, levels=3, image_size=32, patch_size=4).eval()
    before = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        settled = model(before, iters=3)
        # the same frame again: every column keeps its state, so the continuation is glom-pytorch's levels=
        assert torch.equal(model.let_go(settled, before, before, 0.1), settled)
        after = before.clone()
        after[:, :, 4:8, 8:12] = 1 - after[:, :, 4:8, 8:12]  # patch (1, 2) changes, far beyond any release
        after[1, :, :4, :4] += 0.02  # patch 0 of the second image drifts by 0.02 RMS
        fresh = model.init_levels.expand(2, 3, 16)
        for reach, around in ((0, [(1, 2)]), (1, [(r, c) for r in range(3) for c in range(1, 4)]),
                              (2, [(r, c) for r in range(4) for c in range(8) if c <= 4])):
            carried = model.let_go(settled, before, after, 0.1, reach)
            let_go = torch.zeros(64, dtype=torch.bool)
            let_go[[r * 8 + c for r, c in around]] = True
            assert torch.equal(carried[:, let_go], fresh[:, None].expand(-1, int(let_go.sum()), -1, -1)), reach
            # the rest is kept, patch 0's drift below half the release too
            assert torch.equal(carried[:, ~let_go], settled[:, ~let_go]), reach
        # between half the release and the release, the column blends linearly toward the fresh start
        halfway = model.let_go(settled, before, after, 0.02 / 0.75, reach=0)
        assert torch.allclose(halfway[1, 0], 0.5 * settled[1, 0] + 0.5 * model.init_levels, atol=1e-5)
        # every patch changed: the continuation is a fresh run
        assert torch.allclose(model(1 - before, iters=3, levels=model.let_go(settled, before, 1 - before, 0.1)),
                              model(1 - before, iters=3), atol=1e-5)
    for release in (0, -0.1, float("nan")):
        with pytest.raises(GlomInputError, match="release"):
            model.let_go(settled, before, after, release)
    with pytest.raises(GlomInputError, match="shape"):
        model.let_go(settled, before, after[:1], 0.1)
    with pytest.raises(GlomInputError, match="reach"):
        model.let_go(settled, before, after, 0.1, reach=-1)


def test_alike_neighbours_agrees_with_a_direct_search():
    torch.manual_seed(1)
    image = torch.rand(2, 3, 24, 24)  # a 6 x 6 grid of 4 px patches
    allowed = torch.rand(2, 36) < 0.4
    allowed[1, :] = False
    allowed[1, 35] = True  # image 1: one allowed patch, out of reach of most
    for radius in (1, 2):
        index, difference = glom_model.alike_neighbours(image, allowed, 4, radius)
        pixels = image.unfold(2, 4, 4).unfold(3, 4, 4)  # (b, 3, 6, 6, 4, 4)
        for b in range(2):
            for patch in range(36):
                row, col = divmod(patch, 6)
                best, best_index = float("inf"), patch
                for other in range(36):
                    r, c = divmod(other, 6)
                    if allowed[b, other] and max(abs(r - row), abs(c - col)) <= radius:
                        rms = (pixels[b, :, row, col] - pixels[b, :, r, c]).square().mean().sqrt().item()
                        if rms < best:
                            best, best_index = rms, other
                assert index[b, patch].item() == best_index, (b, patch, radius)
                if best == float("inf"):
                    assert torch.isinf(difference[b, patch])
                else:
                    assert difference[b, patch].item() == pytest.approx(best, rel=1e-5, abs=1e-6)


def test_a_column_let_go_starts_from_the_most_alike_still_column_nearby():
    torch.manual_seed(0)
    model = Glom(dim=16, levels=3, image_size=32, patch_size=4).eval()
    before = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        settled = model(before, iters=3)
        after = before.clone()
        # patch (1, 2) now shows what the still patch (1, 4) shows: two patches on, beyond the ring let go
        after[:, :, 4:8, 8:12] = before[:, :, 4:8, 16:20]
        carried = model.let_go(settled, before, after, 0.1, reach=1)
        assert torch.equal(carried[0, 1 * 8 + 2], settled[0, 1 * 8 + 4])
        # the rest of the ring let go looks like no still column: it starts afresh, the still ones keep theirs
        ring = [r * 8 + c for r in range(3) for c in range(1, 4) if (r, c) != (1, 2)]
        assert torch.equal(carried[0, ring], model.init_levels.expand(len(ring), 3, 16))
        kept = torch.ones(64, dtype=torch.bool)
        kept[ring + [1 * 8 + 2]] = False
        assert torch.equal(carried[0, kept], settled[0, kept])
        # told to start afresh, it does
        afresh = model.let_go(settled, before, after, 0.1, reach=1, alike=None)
        assert torch.equal(afresh[0, 1 * 8 + 2], model.init_levels)
        # between half of `alike` and `alike`, the start blends linearly from the still column's state
        after[:, :, 4:8, 8:12] += 0.0375  # RMS 0.0375 from patch (1, 4): midway between 0.025 and 0.05
        halfway = model.let_go(settled, before, after, 0.1, reach=1, alike=0.05)
        assert torch.allclose(halfway[0, 1 * 8 + 2], 0.5 * settled[0, 1 * 8 + 4] + 0.5 * model.init_levels,
                              atol=1e-5)
        # an unchanged frame keeps every column exactly, whatever alike is
        for alike in (0.05, 1.0, None):
            assert torch.equal(model.let_go(settled, before, before, 0.1, alike=alike), settled)
    for alike in (0, -0.05, float("nan")):
        with pytest.raises(GlomInputError, match="alike"):
            model.let_go(settled, before, after, 0.1, alike=alike)


@pytest.mark.skipif(not glom_model.onednn_is_available(), reason="this torch or CPU has no oneDNN bf16 kernels")
def test_onednn_packed_nets_compute_the_batched_bf16_nets():
    torch.manual_seed(0)
    net = glom_model.GroupedFeedForward(dim=32, groups=3)
    x = torch.randn(2, 40, 32)
    with torch.inference_mode():
        batched = net.prepare("bf16")(x, slice(1, 3))
        packed = net.prepare("bf16", onednn=True)
        assert packed.onednn is not None
        out = torch.full_like(x, float("nan"))
        assert packed(x, slice(1, 3), out=out) is out
        exact = net.prepare("fp32")(x, slice(1, 3))
    assert relative_error(out, exact) < 0.02
    assert relative_error(out, batched) < 0.02


@pytest.mark.parametrize("onednn_seconds, packed", [(1.0, False), (0.5, True)])
def test_the_forward_packs_its_bf16_nets_only_where_the_probe_finds_it_faster(monkeypatch, probe, onednn_seconds,
                                                                              packed):
    monkeypatch.setattr(glom_model, "reduced_precision_is_fast", lambda device_type, dtype: True)
    monkeypatch.setattr(glom_model, "int8_is_fast", lambda dim, against="fp32": False)
    probe(batched=1.0, onednn=onednn_seconds)
    _, ours = twins(dict(dim=32, levels=3, image_size=16, patch_size=4))
    img = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        exact = ours(img, iters=6, return_all=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = ours(img, iters=6, return_all=True)
    nets = ours._prepared_cache["bf16"][1]
    assert all((net.onednn is not None) == (packed and glom_model.onednn_is_available()) for net in nets)
    assert mean_cosine_per_level(fast, exact).min() > 0.995


def test_nets_that_onednn_cannot_pack_run_batched_with_one_warning(monkeypatch):
    monkeypatch.setattr(glom_model, "_WARNED", set())
    monkeypatch.setattr(glom_model, "onednn_is_available", lambda: True)

    def refuse(*args, **kwargs):
        raise RuntimeError("no kernel for this CPU")
    monkeypatch.setattr(glom_model, "OneDnnLinear", refuse)
    torch.manual_seed(0)
    net = glom_model.GroupedFeedForward(dim=16, groups=2)
    x = torch.randn(2, 8, 16)
    with pytest.warns(UserWarning, match="oneDNN could not pack") as caught, torch.inference_mode():
        prepared = net.prepare("bf16", onednn=True)
        again = net.prepare("bf16", onednn=True)
    assert len(caught) == 1
    assert prepared.onednn is None and again.onednn is None
    with torch.inference_mode():
        assert torch.equal(prepared(x, slice(0, 2)), net.prepare("bf16")(x, slice(0, 2)))


@pytest.mark.parametrize("reduced_seconds, trains_in", [(1.0, torch.float32), (0.5, torch.bfloat16)])
def test_the_fused_consensus_trains_in_bf16_only_where_its_probe_finds_it_faster(probe, reduced_seconds, trains_in):
    probe(fp32=1.0, reduced=reduced_seconds)
    assert glom_model.fused_training_dtype(torch.bfloat16, 64) == trains_in
    assert glom_model.fused_training_dtype(torch.float32, 64) == torch.float32  # nothing to probe
    assert [set(products) for products in probe.products] == [{"fp32", "reduced"}]
