"""Checkpoints are data: round trips, glom-pytorch state dicts, and every refusal named."""

import io
import json
import pickle
import struct

import glom_pytorch
import pytest
import torch
from safetensors.torch import save as safetensors_save

import glom_viz.checkpoints as checkpoints
from fixtures.hostile import code_carrying_pickle, code_carrying_torch_file, safetensors_bytes
from glom_viz.checkpoints import (
    CheckpointLimits,
    checkpoint_hash,
    load_checkpoint,
    load_shipped,
    read_checkpoint,
    save_checkpoint,
)
from glom_viz.errors import CheckpointError, ConfigError
from glom_viz.model import Glom

TINY = dict(dim=16, levels=3, image_size=32, patch_size=8)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def images(b=2):
    return torch.rand(b, 3, TINY["image_size"], TINY["image_size"], generator=torch.Generator().manual_seed(1))


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def glom_pytorch_state(**options) -> dict:
    return glom_pytorch.Glom(**{**TINY, **options}).state_dict()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


# -- our format -----------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {},
    dict(local_consensus_radius=1.5, consensus_self=True),
    dict(level_norm="l2", contribution_weights=(1.0, 2.0, 1.0, 3.0), consensus_radii=(0.0, 1.5, 2.5),
         attention_scale=4.0, consensus_cosine=True),
])
def test_round_trip_keeps_weights_config_and_forward(tmp_path, options):
    model = Glom(**TINY, **options)
    path = tmp_path / "run" / "model.safetensors"
    digest = save_checkpoint(model, path, step=120, loss=0.25, command="python -m glom_viz.train")
    loaded = read_checkpoint(path)
    assert loaded.config == model.config and loaded.source == "glom-viz" and loaded.note is None
    assert loaded.metadata == {"step": "120", "loss": "0.25", "command": "python -m glom_viz.train"}
    assert digest == loaded.sha256 == checkpoint_hash(path) == checkpoint_hash(path.read_bytes())
    assert not loaded.model.training
    assert_same_weights(model, loaded.model)
    with torch.no_grad():
        assert torch.equal(model.eval()(images(), return_all=True), loaded.model(images(), return_all=True))
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temporary left behind


def test_loads_from_bytes_and_open_files(tmp_path):
    model = Glom(**TINY)
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path)
    assert_same_weights(model, load_checkpoint(path.read_bytes()))
    assert_same_weights(model, load_checkpoint(str(path)))
    with path.open("rb") as file:
        assert_same_weights(model, load_checkpoint(file))


def test_config_overrides_must_agree_with_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(Glom(**TINY), path)
    assert load_checkpoint(path, levels=3, dim=16).config.levels == 3
    with pytest.raises(CheckpointError, match=r"levels=3 \(you passed 4\)"):
        load_checkpoint(path, levels=4)
    with pytest.raises(CheckpointError, match="level_norm='none' \\(you passed 'l2'\\)"):
        load_checkpoint(path, level_norm="l2")
    with pytest.raises(CheckpointError, match="unknown GLOM config fields \\['depth'\\]"):
        load_checkpoint(path, depth=3)


def test_save_refuses_reserved_metadata_and_non_finite_weights(tmp_path):
    model = Glom(**TINY)
    with pytest.raises(CheckpointError, match="reserved"):
        save_checkpoint(model, tmp_path / "a.safetensors", config="mine")
    with torch.no_grad():
        model.top_down.net[3].bias[0] = float("nan")
    with pytest.raises(CheckpointError, match="'top_down.net.3.bias' holds 1 NaN or Inf"):
        save_checkpoint(model, tmp_path / "b.safetensors")
    assert not (tmp_path / "b.safetensors").exists()


def test_stored_config_that_does_not_fit_its_tensors_names_the_tensor():
    tensors = {k: v.contiguous() for k, v in Glom(**TINY).state_dict().items()}
    wrong = json.dumps({**Glom(**TINY).config.to_dict(), "dim": 24})
    data = safetensors_save(tensors, metadata={"format": "glom-viz", "config": wrong})
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(data)
    message = str(caught.value)
    assert "'init_levels'" in message and "(3, 16)" in message and "(3, 24)" in message


@pytest.mark.parametrize("huge", [dict(feedforward_mult=10**9), dict(dim=10**6)])
def test_a_stored_config_naming_a_huge_model_is_refused_before_anything_is_allocated(huge):
    # built for real, either config would need terabytes; its shapes alone are checked against the file
    tensors = {k: v.contiguous() for k, v in Glom(**TINY).state_dict().items()}
    data = safetensors_save(tensors, metadata={"format": "glom-viz",
                                               "config": json.dumps({**Glom(**TINY).config.to_dict(), **huge})})
    with pytest.raises(CheckpointError, match="has shape .* in the checkpoint"):
        load_checkpoint(data)


# -- glom-pytorch state dicts ---------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:torch.meshgrid")
@pytest.mark.parametrize("options", [{}, dict(local_consensus_radius=1.5)])
def test_glom_pytorch_state_dict_loads_and_gives_the_same_states(options):
    reference = glom_pytorch.Glom(**TINY, **options).eval()
    loaded = read_checkpoint(torch_bytes(reference.state_dict()))
    assert loaded.source == "state dict (torch)"
    assert "dim=16" in loaded.note and "levels=3" in loaded.note and "patch_size=8" in loaded.note
    assert "image_size=32" in loaded.note and "consensus_self=False assumed" in loaded.note
    assert (loaded.config.local_consensus_radius > 0) == bool(options)
    assert_same_weights(reference, loaded.model)
    with torch.no_grad():
        expected = reference(images(), return_all=True)
        got = loaded.model(images(), return_all=True)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_torch_load_is_called_with_weights_only(monkeypatch):
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    load_checkpoint(torch_bytes(glom_pytorch_state()))
    assert calls and all(call.get("weights_only") is True for call in calls)


def test_caller_config_completes_a_state_dict():
    data = torch_bytes(glom_pytorch_state(consensus_self=True))
    loaded = read_checkpoint(data, consensus_self=True, image_size=32)
    assert loaded.config.consensus_self and "consensus_self" not in loaded.note
    assert "image_size" not in loaded.note  # given, not read


def test_assumed_fields_complete_a_state_dict_and_leave_our_format_alone(tmp_path):
    """The format is read from the bytes: a state dict takes what is assumed, ours keeps its own config,
    whatever the file is called."""
    state = glom_pytorch_state(consensus_self=True)
    for data in (torch_bytes(state), safetensors_save({k: v.contiguous() for k, v in state.items()})):
        loaded = read_checkpoint(data, assume={"consensus_self": True})
        assert loaded.source.startswith("state dict") and loaded.config.consensus_self
        assert "consensus_self" not in loaded.note
    ours = Glom(**TINY, consensus_self=False)
    save_checkpoint(ours, tmp_path / "named-like-a.pt")
    loaded = read_checkpoint((tmp_path / "named-like-a.pt").read_bytes(), assume={"consensus_self": True})
    assert loaded.source == "glom-viz" and not loaded.config.consensus_self
    with pytest.raises(CheckpointError, match="unknown GLOM config fields"):
        read_checkpoint(torch_bytes(state), assume={"self_attention": True})


def test_a_state_dict_of_wider_mlps_loads_with_its_width_read_from_the_tensors():
    wide = Glom(**TINY, feedforward_mult=2)
    loaded = read_checkpoint(torch_bytes(wide.state_dict()))
    assert loaded.config.feedforward_mult == 2 and loaded.read["feedforward_mult"] == 2
    assert "feedforward_mult=2" in loaded.note and loaded.assumed == ("consensus_self",)
    assert_same_weights(loaded.model, wide)
    given = read_checkpoint(torch_bytes(wide.state_dict()), assume={"consensus_self": False})
    assert given.assumed == () and "consensus_self" not in given.note


def test_what_a_checkpoint_needs_is_named_for_a_page_to_ask_for():
    """A state dict whose shapes do not tell the config: the error names the fields and what was read,
    and its reason carries no advice for the Python API (a page offers the fields instead)."""
    state = glom_pytorch_state()
    state["pos_emb.weight"] = torch.zeros(20, 16)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(torch_bytes(state))
    error = caught.value
    assert error.fields == ("image_size",) and error.read["patch_size"] == 8 and error.read["dim"] == 16
    assert "pass" not in error.reason and "image_size cannot be read" in error.reason
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(torch_bytes(state), image_size=32)
    assert "feedforward_mult" in caught.value.fields and "pass" not in caught.value.reason
    again = pickle.loads(pickle.dumps(error))  # as a cache or another process hands it back
    assert (again.fields, again.read, again.reason, str(again)) == (error.fields, error.read, error.reason, str(error))


def test_nested_and_ddp_state_dicts_load():
    state = glom_pytorch_state()
    nested = torch_bytes({"state_dict": state, "step": 7})
    assert_same_weights(load_checkpoint(nested), load_checkpoint(torch_bytes(state)))
    wrapped = read_checkpoint(torch_bytes({f"module.{k}": v for k, v in state.items()}))
    assert "module." in wrapped.note
    assert torch.equal(wrapped.model.init_levels, state["init_levels"])


def test_safetensors_state_dict_without_our_metadata_loads_like_a_state_dict():
    state = {k: v.contiguous() for k, v in glom_pytorch_state().items()}
    loaded = read_checkpoint(safetensors_save(state))
    assert loaded.source == "state dict (safetensors)" and "dim=16" in loaded.note
    assert torch.equal(loaded.model.pos_emb.weight, state["pos_emb.weight"])


# -- refusals -------------------------------------------------------------------------------------


def test_code_carrying_pickles_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    for payload in (code_carrying_pickle(marker), code_carrying_torch_file(marker)):
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(payload)
        message = str(caught.value)
        assert "refused" in message and "carries code" in message and "nothing of it was run" in message
        assert not marker.exists()
    # the payload is real: an ordinary unpickler runs it
    proof = tmp_path / "proof"
    pickle.loads(code_carrying_pickle(proof))
    assert proof.read_text() == "pickle code ran"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 5")
def test_new_protocol_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(CheckpointError, match="refused.*nothing of it was run"):
        load_checkpoint(code_carrying_pickle(marker, protocol=5))
    assert not marker.exists()


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"weights: [1, 2, 3]\n", "text file, not a checkpoint"),
    (b'{"init_levels": [[0.1]]}', "JSON text file"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "an image, not a checkpoint"),
    (bytes(range(256)) * 4, "no format we know"),
    (b"PK\x03\x04" + b"\x00" * 100, "could not be read as a torch checkpoint"),
    (b"\x80\x02" + b"\x00" * 100, "refused: it is a pickle the safe loader does not accept"),
], ids=["empty", "text", "json", "png", "binary", "zip", "pickle"])
def test_not_a_checkpoint(data, words):
    with pytest.raises(CheckpointError, match=words):
        load_checkpoint(data)


def test_missing_file_and_wrong_argument(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file at"):
        load_checkpoint(tmp_path / "nowhere.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint file at"):
        checkpoint_hash(tmp_path / "nowhere.safetensors")
    with pytest.raises(CheckpointError, match="expected a path, bytes or a binary file"):
        load_checkpoint(12345)


def test_size_limit(monkeypatch, tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(Glom(**TINY), path)
    small = CheckpointLimits(max_checkpoint_bytes=path.stat().st_size - 1)
    for source in (path, path.read_bytes()):
        with pytest.raises(CheckpointError, match="above the .* limit for checkpoints"):
            load_checkpoint(source, limits=small)
    monkeypatch.setattr(checkpoints, "LIMITS", small)  # the server's limits are read at each call
    with pytest.raises(CheckpointError, match="above the .* limit for checkpoints"):
        load_checkpoint(path)


def test_limits_from_the_environment():
    assert CheckpointLimits.from_env({}) == CheckpointLimits()
    assert CheckpointLimits().max_checkpoint_bytes == 2**30
    limits = CheckpointLimits.from_env({"GLOM_VIZ_MAX_CHECKPOINT_BYTES": "4_000_000_000",
                                        "GLOM_VIZ_MAX_PARAMETERS": "500000000", "GLOM_VIZ_MAX_PATCHES": "9000"})
    assert limits == CheckpointLimits(max_checkpoint_bytes=4 * 10**9, max_parameters=5 * 10**8, max_patches=9000)
    for bad in ("lots", "0", "-5"):
        with pytest.raises(ConfigError, match="GLOM_VIZ_MAX_CHECKPOINT_BYTES"):
            CheckpointLimits.from_env({"GLOM_VIZ_MAX_CHECKPOINT_BYTES": bad})


def test_non_state_dict_contents_are_refused():
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        load_checkpoint(torch_bytes([torch.zeros(3)]))
    with pytest.raises(CheckpointError, match="'step' \\(int\\)"):
        load_checkpoint(torch_bytes({"step": 3, "weights": [torch.zeros(2)]}))


F32 = 4


@pytest.mark.parametrize("header, buffer, words", [
    ({"init_levels": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 16]}}, b"\x00" * 16,
     "claims shape (1000, 1000) of F32 (4,000,000 bytes) but its data spans 16 bytes"),
    ({"init_levels": {"dtype": "F32", "shape": [4], "data_offsets": [0, 4 * F32]}}, b"\x00" * 8,
     "claims bytes [0, 16] of a 8-byte data section"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\x00" * 12, "overlap or leave holes"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 32, "cover 8 of 32 data bytes"),
    ({"a": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 8, "has dtype 'Q99', which glom-viz cannot read"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\x00" * 8, "invalid shape"),
    ({"__metadata__": {"format": 3}}, b"", "metadata that is not text"),
], ids=["shape", "beyond", "overlap", "hole", "dtype", "negative", "metadata"])
def test_safetensors_header_that_lies_is_refused(header, buffer, words):
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(safetensors_bytes(header, buffer))
    assert words in str(caught.value)


def test_safetensors_header_length_beyond_the_file():
    good = safetensors_save({"a": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="header claims"):
        load_checkpoint(struct.pack("<Q", 10**9) + good[8:])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(good[:8] + b"{" + b"\xff" * (len(good) - 9))


def test_tensor_that_does_not_fit_names_it_and_both_shapes():
    state = glom_pytorch_state()
    state["pos_emb.weight"] = torch.zeros(20, 16)  # 20 patches is no square grid
    with pytest.raises(CheckpointError, match="image_size cannot be read from the tensors.*pass image_size="):
        load_checkpoint(torch_bytes(state))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(torch_bytes(state), image_size=32)
    message = str(caught.value)
    assert "'pos_emb.weight'" in message and "(20, 16)" in message and "(16, 16)" in message


def test_caller_config_against_the_tensors_names_the_tensor():
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(torch_bytes(glom_pytorch_state()), image_size=64)
    assert "'pos_emb.weight'" in str(caught.value) and "(16, 16)" in str(caught.value)
    assert "(64, 16)" in str(caught.value)
    with pytest.raises(CheckpointError, match="'attention.non_local_mask' is not the mask of local_consensus_radius=2.5"):
        load_checkpoint(torch_bytes(glom_pytorch_state(local_consensus_radius=1.5)), local_consensus_radius=2.5)


def test_missing_and_unexpected_tensors_are_named():
    state = glom_pytorch_state()
    del state["top_down.net.3.bias"]
    state["decoder.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(torch_bytes(state))
    message = str(caught.value)
    assert "missing 'top_down.net.3.bias'" in message and "unexpected 'decoder.weight'" in message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_and_named(value):
    state = glom_pytorch_state()
    state["bottom_up.net.1.weight"][5, 3, 0] = value
    with pytest.raises(CheckpointError, match="'bottom_up.net.1.weight' holds 1 NaN or Inf values"):
        load_checkpoint(torch_bytes(state))


def test_integer_weights_are_refused():
    state = glom_pytorch_state()
    state["init_levels"] = torch.zeros(3, 16, dtype=torch.int64)
    with pytest.raises(CheckpointError, match="'init_levels' holds torch.int64"):
        load_checkpoint(torch_bytes(state))


def test_half_precision_weights_load_as_float32():
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in glom_pytorch_state().items()}
    model = load_checkpoint(torch_bytes(state))
    assert model.init_levels.dtype == torch.float32
    assert torch.equal(model.init_levels, state["init_levels"].float())


# -- the shipped model ----------------------------------------------------------------------------


def test_load_shipped_reads_the_shipped_path(tmp_path, monkeypatch):
    path = tmp_path / "shipped.safetensors"
    monkeypatch.setitem(checkpoints.SHIPPED_PATHS, "scenes", path)
    with pytest.raises(CheckpointError, match="shipped model is missing"):
        load_shipped()
    model = Glom(**TINY)
    save_checkpoint(model, path)
    assert_same_weights(model, load_shipped())


@pytest.mark.parametrize("kind", checkpoints.SHIPPED_KINDS)
def test_load_shipped_reads_each_shipped_model_and_refuses_others(tmp_path, monkeypatch, kind):
    path = tmp_path / f"shipped-{kind}.safetensors"
    monkeypatch.setitem(checkpoints.SHIPPED_PATHS, kind, path)
    with pytest.raises(CheckpointError, match="shipped model is missing"):
        load_shipped(kind)
    model = Glom(**TINY)
    save_checkpoint(model, path)
    assert_same_weights(model, load_shipped(kind))
    with pytest.raises(CheckpointError, match="no shipped model 'photos': pick one of scenes, content, balanced"):
        load_shipped("photos")


def test_shipped_checkpoint_lives_in_the_package():
    assert checkpoints.SHIPPED_CHECKPOINT.parent.name == "assets"
    assert checkpoints.SHIPPED_CHECKPOINT.parent.parent.name == "glom_viz"
    if checkpoints.SHIPPED_CHECKPOINT.exists():
        assert not load_shipped().training


# -- bounded before anything is allocated ----------------------------------------------------------


@pytest.mark.parametrize("make, words", [
    (lambda t: t.t().contiguous().t(), "is a view with strides"),  # transposed: not contiguous
    (lambda t: torch.zeros(1).expand(t.shape), "is a view with strides (0, 0) over 4 bytes"),
    (lambda t: torch.sparse_coo_tensor(torch.zeros(2, 1, dtype=torch.long), torch.ones(1), t.shape),
     "is a sparse_coo tensor, not a plain one"),
    (lambda t: torch.empty(t.shape, device="meta"), "is a meta tensor, not a plain one"),
], ids=["transposed", "stride-0", "sparse", "meta"])
def test_tensors_that_are_not_plain_data_are_refused(make, words):
    state = glom_pytorch_state()
    state["init_levels"] = make(state["init_levels"])
    with pytest.raises(CheckpointError, match="'init_levels'") as caught:
        load_checkpoint(torch_bytes(state))
    assert words in str(caught.value)


def test_an_archive_that_unpacks_beyond_the_limit_is_refused_before_unpacking(monkeypatch):
    from fixtures.hostile import torch_zip_bomb

    def never(*args, **kwargs):
        raise AssertionError("torch.load was reached")

    bomb = torch_zip_bomb(2**22)  # 4 MiB of zeros in a few KB
    monkeypatch.setattr(torch, "load", never)
    with pytest.raises(CheckpointError, match="unpacks to 4 MB, above the 2 MB limit"):
        load_checkpoint(bomb, limits=CheckpointLimits(max_checkpoint_bytes=2**21))
    with pytest.raises(CheckpointError, match=r"times its size\); nothing was unpacked.*zip bomb"):
        load_checkpoint(bomb)


def test_a_model_above_the_limits_is_refused_from_its_meta_model():
    data = torch_bytes(glom_pytorch_state())
    weights = sum(p.numel() for p in Glom(**TINY).parameters())
    with pytest.raises(CheckpointError, match=f"has {weights:,} weights .* above the limit of 1,000"):
        load_checkpoint(data, limits=CheckpointLimits(max_parameters=1000))
    with pytest.raises(CheckpointError, match="has 16 patches .* above the limit of 8"):
        load_checkpoint(data, limits=CheckpointLimits(max_patches=8))
    assert load_checkpoint(data, limits=CheckpointLimits(max_parameters=weights, max_patches=16)).config.dim == 16
    with pytest.raises(CheckpointError, match="the random GLOM has 16 patches"):
        checkpoints.check_limits(Glom(**TINY).config, CheckpointLimits(max_patches=8), "the random GLOM")
    checkpoints.check_limits(Glom(**TINY).config)  # within the defaults


def test_our_format_is_checked_against_its_header_before_its_tensors_are_read(monkeypatch, tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(Glom(**TINY), path)

    def never(*args, **kwargs):
        raise AssertionError("the tensors were read")

    monkeypatch.setattr(checkpoints, "safetensors_load", never)
    with pytest.raises(CheckpointError, match="above the limit of 1,000"):
        load_checkpoint(path, limits=CheckpointLimits(max_parameters=1000))


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.int8, torch.complex64])
def test_dtypes_the_model_does_not_take_are_refused_naming_those_it_does(dtype):
    state = glom_pytorch_state()
    state["pos_emb.weight"] = state["pos_emb.weight"].to(dtype)
    for data in (torch_bytes(state), safetensors_save({k: v.contiguous() for k, v in state.items()})
                 if dtype != torch.complex64 else None):
        if data is None:
            continue
        with pytest.raises(CheckpointError, match="'pos_emb.weight' holds .* glom-viz takes float32, float16, "
                                                  "bfloat16 or float64"):
            load_checkpoint(data)


@pytest.mark.parametrize("kind", checkpoints.SHIPPED_KINDS)
def test_the_shipped_provenance_names_the_shipped_weights(kind):
    """The package's record of how a shipped model was made is of these very weights, and its config theirs."""
    path = checkpoints.shipped_path(kind)
    provenance = json.loads(path.with_name(path.stem + "-provenance.json").read_text())
    shipped = read_checkpoint(path)
    assert provenance["sha256"] == shipped.sha256
    config = shipped.config
    for field in ("dim", "levels", "image_size", "patch_size"):
        assert provenance["train_config"][field] == getattr(config, field)
    assert [row["level"] for row in provenance["evaluation"]["levels"]] == list(range(config.levels))
