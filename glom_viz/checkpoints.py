"""Checkpoints are data: safetensors for ours, ``torch.load(weights_only=True)`` for glom-pytorch's.

Our format is a safetensors file of the model's state dict with ``{"format": "glom-viz", "config":
<GlomConfig as JSON>}`` and any training information in its metadata; it loads with the config it
was saved with. A glom-pytorch ``.pt``/``.pth`` state dict (or a safetensors file without our
metadata) loads with the config the caller gives, completed from the tensor shapes (dim, levels,
patch_size, image_size, local_consensus_radius).

Nothing is ever unpickled with code: a pickle asking for any global beyond plain tensors and
containers is refused by ``weights_only`` before anything of it runs. Every tensor is checked
against the model before loading: missing and unexpected names, shapes (both shapes named), dtypes,
and non-finite values. Every failure is a ``CheckpointError`` saying what is wrong and what to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import pickle
import re
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from glom_viz.errors import CheckpointError, ConfigError
from glom_viz.model import Glom, GlomConfig

FORMAT = "glom-viz"
FORMAT_VERSION = "1"
RESERVED_METADATA = ("format", "format_version", "config")
SHIPPED_CHECKPOINT = Path(__file__).parent / "assets" / "shipped.safetensors"

MAX_CHECKPOINT_ENV = "GLOM_VIZ_MAX_CHECKPOINT_BYTES"
DEFAULT_MAX_CHECKPOINT_BYTES = 2**30  # 1 GiB; the default GLOM (dim 512, 6 levels) is 90 MiB
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own cap on the JSON header
HASH_CHUNK_BYTES = 2**20
# torch.save wraps state dicts that training scripts often nest under one of these keys
NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model", "module", "ema")
DDP_PREFIX = "module."
# what a glom-pytorch state dict cannot record (it holds no tensor); assumed False unless given
STATE_DICT_SILENT = ("consensus_self",)
# the config fields that shape a GLOM's tensors: what to give when they cannot be read or do not fit
SHAPE_FIELDS = ("dim", "levels", "image_size", "patch_size", "feedforward_mult", "local_consensus_radius")


def _max_checkpoint_bytes(environ=os.environ) -> int:
    """The size limit for checkpoints: the default, or the server's GLOM_VIZ_MAX_CHECKPOINT_BYTES."""
    text = environ.get(MAX_CHECKPOINT_ENV)
    if text is None:
        return DEFAULT_MAX_CHECKPOINT_BYTES
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{MAX_CHECKPOINT_ENV}={text!r} must be a positive number of bytes, "
                          f"e.g. {MAX_CHECKPOINT_ENV}={4 * 2**30}")
    return value


MAX_CHECKPOINT_BYTES = _max_checkpoint_bytes()

SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}

# What torch.load and its unpickler raise on bytes that are not a torch file. weights_only refusals
# are pickle.UnpicklingError and are told apart by their message.
TORCH_LOAD_FAILURES = (
    pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, KeyError, AttributeError,
    IndexError, struct.error, UnicodeDecodeError, OverflowError, MemoryError, zipfile.BadZipFile,
    ImportError, NotImplementedError, AssertionError, ZeroDivisionError,
)
UNSAFE_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")  # in weights_only's refusal: the callable the pickle asks for


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the ready model and what is known about it.

    model: the ``Glom`` in eval mode, on the CPU.
    config: its ``GlomConfig``.
    metadata: the training information stored with it (our format only; str -> str).
    sha256: of the checkpoint's bytes.
    source: ``"glom-viz"``, ``"state dict (torch)"`` or ``"state dict (safetensors)"``.
    note: what was inferred or assumed to build the model, for the user; None for our format.
    read: the config fields read from a state dict's tensor shapes.
    assumed: the config fields a state dict cannot record and that were assumed (not given).
    """

    model: Glom
    config: GlomConfig
    metadata: dict[str, str]
    sha256: str
    source: str
    note: str | None
    read: dict = dataclasses.field(default_factory=dict)
    assumed: tuple[str, ...] = ()


def save_checkpoint(model: Glom, path: str | os.PathLike, **metadata) -> str:
    """Write ``model`` as a glom-viz safetensors checkpoint; returns the file's sha256.

    Args:
        model: a ``glom_viz.Glom`` (its ``config`` goes into the metadata).
        path: where to write; the file is replaced atomically, parent folders are made.
        **metadata: training information (step, loss, command, ...); strings are kept as they are,
            anything else is stored as JSON.

    Raises:
        CheckpointError: a reserved metadata key, or weights that are NaN or Inf (a checkpoint of a
            diverged run would only poison the next one).
    """
    config = getattr(model, "config", None)
    if not isinstance(config, GlomConfig):
        raise CheckpointError(f"save_checkpoint needs a glom_viz.Glom (with a .config), got {type(model).__name__}")
    reserved = sorted(set(metadata) & set(RESERVED_METADATA))
    if reserved:
        raise CheckpointError(f"metadata keys {reserved} are reserved for the checkpoint format: rename them")
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    _check_finite(tensors, "the model")
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(config.to_dict()),
        **{key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()},
    }
    data = safetensors_save(tensors, metadata=header)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(path_or_bytes, **config) -> Glom:
    """A ready ``Glom`` (eval mode, CPU) from a checkpoint file or its bytes.

    Args:
        path_or_bytes: a path, the file's bytes, or an open binary file (an upload).
        **config: ``GlomConfig`` fields. For our format they must agree with the stored config (or
            be left out); for a glom-pytorch state dict they complete what the tensors cannot tell
            (``consensus_self``, the extension options) and must agree with what they can.

    Raises:
        CheckpointError: not a checkpoint, code in a pickle, a header that lies, tensors that do not
            fit (named, both shapes), missing or unexpected tensors (named), NaN or Inf weights.

    ``read_checkpoint`` gives the same model with its metadata, hash and what was inferred.
    """
    return read_checkpoint(path_or_bytes, **config).model


def read_checkpoint(path_or_bytes, *, assume: dict | None = None, **config) -> Checkpoint:
    """Like ``load_checkpoint``, returning the model with its config, metadata, sha256 and a note.

    assume: ``GlomConfig`` fields for a state dict, which cannot store them (``consensus_self``); our
    format carries its whole config, so there they are ignored. The format is read from the bytes, never
    from a file name.
    """
    data, label = _read_bytes(path_or_bytes)
    unknown = sorted((set(config) | set(assume or ())) - {field.name for field in dataclasses.fields(GlomConfig)})
    if unknown:
        raise CheckpointError(
            f"unknown GLOM config fields {unknown}: the fields are {[f.name for f in dataclasses.fields(GlomConfig)]}"
        )
    digest = hashlib.sha256(data).hexdigest()
    if _looks_like_safetensors(data):
        tensors, metadata = _read_safetensors(data, label)
        if metadata.get("format") == FORMAT:
            model_config = _stored_config(metadata, config, label)
            model = _build(model_config, tensors, label)
            training = {k: v for k, v in metadata.items() if k not in RESERVED_METADATA}
            return Checkpoint(model, model_config, training, digest, FORMAT, None)
        source = "state dict (safetensors)"
    elif _looks_like_torch(data):
        tensors = _read_torch(data, label)
        source = "state dict (torch)"
    else:
        raise CheckpointError(
            f"{label} is {_describe(data)}, not a checkpoint: load a glom-viz .safetensors file or a "
            "glom-pytorch state dict saved with torch.save(model.state_dict(), path)"
        )
    tensors, unwrapped = _strip_ddp_prefix(tensors)
    given = {**(assume or {}), **config}
    model_config, inferred, read = _infer_config(tensors, given, label)
    model = _build(model_config, tensors, label, read)
    note = "; ".join(([unwrapped] if unwrapped else []) + inferred) or None
    assumed = tuple(name for name in STATE_DICT_SILENT if name not in given)
    return Checkpoint(model, model_config, {}, digest, source, note, read, assumed)


def checkpoint_hash(path_or_bytes) -> str:
    """sha256 (hex) of a checkpoint's bytes, read in chunks from a path."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return hashlib.sha256(path_or_bytes).hexdigest()
    path = Path(path_or_bytes)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}: check the path")
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_shipped() -> Glom:
    """The model that ships with glom-viz (``SHIPPED_CHECKPOINT``), ready in eval mode."""
    if not SHIPPED_CHECKPOINT.is_file():
        raise CheckpointError(
            f"the shipped model is missing ({SHIPPED_CHECKPOINT}): reinstall glom-viz, or train one with "
            "`python -m glom_viz.train` and load it with load_checkpoint(path)"
        )
    return load_checkpoint(SHIPPED_CHECKPOINT)


# -- reading the bytes ---------------------------------------------------------------------------


def _read_bytes(source) -> tuple[bytes, str]:
    """(the checkpoint's bytes, how to name it in messages), bounded by MAX_CHECKPOINT_BYTES."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), "the checkpoint"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"no checkpoint file at {path}: check the path")
        size = path.stat().st_size
        if size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(_too_big(f"'{path.name}'", size))
        data, label = path.read_bytes(), f"'{path.name}'"
    elif hasattr(source, "read"):
        file: BinaryIO = source
        data = file.read(MAX_CHECKPOINT_BYTES + 1)
        if not isinstance(data, bytes):
            raise CheckpointError("the checkpoint file was opened as text: open it in binary mode ('rb')")
        label = f"'{getattr(source, 'name', 'the checkpoint')}'"
    else:
        raise CheckpointError(f"expected a path, bytes or a binary file, got {type(source).__name__}")
    if not data:
        raise CheckpointError(f"{label} is empty (0 bytes): upload or save the checkpoint again")
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(_too_big(label, len(data)))
    return data, label


def _too_big(label: str, size: int) -> str:
    return (f"{label} is {size / 2**20:.0f} MB, above the {MAX_CHECKPOINT_BYTES / 2**20:.0f} MB limit for "
            "checkpoints: a GLOM of the default size is about 100 MB; check that this is the right file")


def _looks_like_safetensors(data: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON object."""
    return len(data) >= 10 and data[8:9] == b"{"


def _looks_like_torch(data: bytes) -> bool:
    """torch.save's zip archive, or the legacy format and plain pickles (protocol 2+)."""
    return data[:4] == b"PK\x03\x04" or data[:1] == b"\x80"


def _describe(data: bytes) -> str:
    head = data[:64]
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8\xff") or head.startswith(b"GIF8"):
        return "an image"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if not text or sum(ch.isprintable() or ch in "\t\r\n" for ch in text) < 0.95 * len(text):
        return f"{len(data):,} bytes in no format we know"
    if text.lstrip().startswith(("{", "[")):
        return "a JSON text file"
    return "a text file"


# -- safetensors ---------------------------------------------------------------------------------


def _read_safetensors(data: bytes, label: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, its header checked against the bytes first."""
    header_length = struct.unpack("<Q", data[:8])[0]
    if header_length > MAX_HEADER_BYTES or 8 + header_length > len(data):
        raise CheckpointError(
            f"{label} looks like safetensors but its header claims {header_length:,} bytes of a "
            f"{len(data):,}-byte file: the file is truncated or damaged; save or download it again"
        )
    try:
        header = json.loads(data[8 : 8 + header_length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(f"{label} has a safetensors header that is not valid JSON ({error}): "
                              "the file is damaged; save or download it again") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"{label} has a safetensors header that is not a JSON object: the file is damaged")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{label} has safetensors metadata that is not text: the file is damaged")
    _check_safetensors_entries(header, len(data) - 8 - header_length, label)
    try:
        tensors = safetensors_load(data)
    except (SafetensorError, ValueError, TypeError, KeyError, RuntimeError, OverflowError) as error:
        raise CheckpointError(f"{label} could not be read as safetensors ({error}): the file is damaged; "
                              "save or download it again") from error
    return tensors, metadata


def _check_safetensors_entries(header: dict, buffer_bytes: int, label: str) -> None:
    """Each tensor's dtype, shape and byte range agree, and the ranges tile the data exactly."""
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise CheckpointError(f"{label}: the header entry for '{name}' is not a tensor description")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in SAFETENSORS_ITEMSIZE:
            raise CheckpointError(f"{label}: tensor '{name}' has unknown dtype {dtype!r}: the file is damaged")
        if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                for s in shape)):
            raise CheckpointError(f"{label}: tensor '{name}' has an invalid shape {shape!r}: the file is damaged")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= buffer_bytes):
            raise CheckpointError(
                f"{label}: tensor '{name}' claims bytes {offsets!r} of a {buffer_bytes:,}-byte data section: "
                "the header lies about the data; the file is damaged or was not written by safetensors"
            )
        claimed = math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype]
        if claimed != offsets[1] - offsets[0]:
            raise CheckpointError(
                f"{label}: tensor '{name}' claims shape {tuple(shape)} of {dtype} ({claimed:,} bytes) but its "
                f"data spans {offsets[1] - offsets[0]:,} bytes: the header lies about the data; the file is "
                "damaged or was not written by safetensors"
            )
        spans.append((offsets[0], offsets[1], name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise CheckpointError(
                f"{label}: tensor '{name}' starts at byte {begin:,} where {position:,} was expected (tensors "
                "overlap or leave holes): the header lies about the data; the file is damaged"
            )
        position = end
    if position != buffer_bytes:
        raise CheckpointError(
            f"{label}: the tensors cover {position:,} of {buffer_bytes:,} data bytes: the header lies about "
            "the data; the file is damaged"
        )


def _stored_config(metadata: dict[str, str], overrides: dict, label: str) -> GlomConfig:
    """The config saved in our metadata; the caller's fields must agree with it."""
    version = metadata.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{label} is glom-viz checkpoint format {version}; this glom-viz reads "
                              f"format {FORMAT_VERSION}: upgrade glom-viz")
    try:
        stored = GlomConfig.from_dict(json.loads(metadata["config"]))
    except (KeyError, json.JSONDecodeError, TypeError, AttributeError, ValueError) as error:
        raise CheckpointError(f"{label} is a glom-viz checkpoint whose stored config cannot be read "
                              f"({error}): the file is damaged; save it again") from error
    try:
        requested = dataclasses.replace(stored, **overrides)
    except (ConfigError, TypeError, ValueError) as error:
        raise CheckpointError(f"the config you passed cannot work: {error}") from error
    differing = [f.name for f in dataclasses.fields(GlomConfig)
                 if getattr(requested, f.name) != getattr(stored, f.name)]
    if differing:
        pairs = ", ".join(f"{name}={getattr(stored, name)!r} (you passed {getattr(requested, name)!r})"
                          for name in differing)
        raise CheckpointError(
            f"{label} was saved with {pairs}: leave {', '.join(differing)} out (our checkpoints carry "
            "their config), or load a checkpoint made with the config you want"
        )
    return stored


# -- torch.load ----------------------------------------------------------------------------------


def _read_torch(data: bytes, label: str) -> dict[str, torch.Tensor]:
    """A state dict from torch.save bytes, with weights_only: never runs code from the file."""
    try:
        loaded = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        reason = str(error)
        code = UNSAFE_GLOBAL.search(reason)
        if code:
            raise CheckpointError(
                f"{label} was refused: it is a pickle that carries code (it asks for {code.group(1)}, which "
                "would run on loading); nothing of it was run. Only plain tensors are loaded: re-save the "
                "weights with torch.save(model.state_dict(), path) or glom_viz.checkpoints.save_checkpoint"
            ) from None
        if "Weights only" in reason or "weights_only" in reason:
            raise CheckpointError(
                f"{label} was refused: it is a pickle the safe loader does not accept (not torch.save's "
                "format of plain tensors); nothing of it was run. Re-save the weights with "
                "torch.save(model.state_dict(), path) or glom_viz.checkpoints.save_checkpoint"
            ) from None
        raise CheckpointError(f"{label} is not a torch checkpoint ({_short(error)}): check the file") from None
    except TORCH_LOAD_FAILURES as error:
        raise CheckpointError(
            f"{label} could not be read as a torch checkpoint ({_short(error)}): it is damaged or not a "
            "checkpoint; save or download it again"
        ) from None
    return _state_dict_from(loaded, label)


def _state_dict_from(loaded, label: str) -> dict[str, torch.Tensor]:
    """The {name: tensor} inside what torch.load gave, unwrapping one common nesting."""
    if isinstance(loaded, dict) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return _named_tensors(loaded, label)
    if isinstance(loaded, dict):
        for key in NESTED_STATE_KEYS:
            inner = loaded.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return _named_tensors(inner, label)
        odd = [f"'{k}' ({type(v).__name__})" for k, v in loaded.items() if not isinstance(v, torch.Tensor)][:3]
        raise CheckpointError(
            f"{label} holds a dict that is not a state dict (not tensors: {', '.join(odd) or 'it is empty'}): "
            "save the model's weights with torch.save(model.state_dict(), path)"
        )
    raise CheckpointError(
        f"{label} holds a {type(loaded).__name__}, not a state dict: save the model's weights with "
        "torch.save(model.state_dict(), path)"
    )


def _named_tensors(tensors: dict, label: str) -> dict[str, torch.Tensor]:
    if not all(isinstance(k, str) for k in tensors):
        raise CheckpointError(f"{label} has tensor names that are not strings: it is not a state dict")
    return dict(tensors)


def _strip_ddp_prefix(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str | None]:
    """DistributedDataParallel saves 'module.<name>'; take the names off the wrapper."""
    if tensors and all(name.startswith(DDP_PREFIX) for name in tensors):
        return {name[len(DDP_PREFIX):]: t for name, t in tensors.items()}, "names unwrapped from 'module.' (DDP)"
    return tensors, None


# -- building the model --------------------------------------------------------------------------


def _infer_config(tensors: dict[str, torch.Tensor], given: dict, label: str) -> tuple[GlomConfig, list[str], dict]:
    """A config from the caller's fields, completed from the tensor shapes: (config, notes saying what was
    read or assumed, the fields read)."""
    inferred: dict = {}
    init_levels = tensors.get("init_levels")
    if isinstance(init_levels, torch.Tensor) and init_levels.ndim == 2:
        inferred["levels"], inferred["dim"] = map(int, init_levels.shape)
    to_tokens = tensors.get("image_to_tokens.1.weight")
    if isinstance(to_tokens, torch.Tensor) and to_tokens.ndim == 2:
        patch_size = math.isqrt(int(to_tokens.shape[1]) // 3)
        if patch_size > 0 and 3 * patch_size**2 == to_tokens.shape[1]:
            inferred["patch_size"] = patch_size
    pos_emb = tensors.get("pos_emb.weight")
    if isinstance(pos_emb, torch.Tensor) and pos_emb.ndim == 2 and "patch_size" in inferred:
        side = math.isqrt(int(pos_emb.shape[0]))
        if side > 0 and side * side == pos_emb.shape[0]:
            inferred["image_size"] = side * inferred["patch_size"]
    hidden = tensors.get("bottom_up.net.1.weight")  # (levels * dim * feedforward_mult, dim, 1)
    if isinstance(hidden, torch.Tensor) and hidden.ndim == 3 and "dim" in inferred and inferred["dim"] > 0:
        mult, rest = divmod(int(hidden.shape[0]), inferred["levels"] * inferred["dim"])
        if mult > 0 and not rest:
            inferred["feedforward_mult"] = mult
    mask = tensors.get("attention.non_local_mask")
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.ndim == 3 and mask.shape[-1] > 0:
        radius = _radius_of_mask(mask)
        if radius is not None:
            inferred["local_consensus_radius"] = radius
    elif mask is None:
        inferred["local_consensus_radius"] = 0

    read = {key: value for key, value in inferred.items() if key not in given}
    values = {**read, **given}
    missing = [name for name in ("dim", "levels", "image_size", "patch_size") if name not in values]
    if missing:
        reason = (f"{label}: {', '.join(missing)} cannot be read from the tensors (is it a GLOM state dict? it "
                  f"has {_some_names(tensors)})")
        raise CheckpointError(f"{reason}: pass {', '.join(f'{m}=...' for m in missing)}", fields=tuple(missing),
                              read=read, reason=reason)
    try:
        config = GlomConfig(**values)
    except (ConfigError, TypeError, ValueError) as error:
        reason = f"{label}: no GLOM can be built from this config ({error})"
        raise CheckpointError(reason, fields=tuple(f for f in SHAPE_FIELDS if f in values), read=read,
                              reason=reason) from error
    notes = []
    shapes = {k: v for k, v in read.items() if k != "local_consensus_radius"}
    if shapes:
        notes.append("read from the tensor shapes: " + ", ".join(f"{k}={v}" for k, v in shapes.items()))
    if read.get("local_consensus_radius"):
        notes.append(f"local_consensus_radius={read['local_consensus_radius']:g} read from attention.non_local_mask")
    for name in STATE_DICT_SILENT:
        if name not in given:
            notes.append(f"{name}=False assumed (a state dict does not record it)")
    return config, notes, read


def _radius_of_mask(mask: torch.Tensor) -> float | None:
    """The local consensus radius a glom-pytorch mask was made with: its largest unmasked distance."""
    side = math.isqrt(int(mask.shape[-1]))
    if side * side != mask.shape[-1] or mask.shape != (1, side * side, side * side):
        return None
    coords = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")).float()
    coords = coords.reshape(2, -1).T
    distances = torch.cdist(coords, coords)
    unmasked = distances[~mask[0]]
    return float(unmasked.max()) if unmasked.numel() else None


def _build(config: GlomConfig, tensors: dict[str, torch.Tensor], label: str, read: dict | None = None) -> Glom:
    """A Glom of ``config`` holding ``tensors``, after checking every name, shape, dtype and value.

    read: for a state dict, the fields read from its tensors: a tensor that does not fit then names the
    fields that shape it (CheckpointError.fields), to be given."""
    try:
        # shapes first, on the meta device: a config naming a huge model costs no memory before the
        # file's tensors are seen to match it
        with torch.device("meta"):
            expected = Glom(**config.to_dict()).state_dict()
    except (ConfigError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{label}: no GLOM can be built from its config ({error})") from error
    settings = _settings(config)
    missing = [name for name in expected if name not in tensors]
    unexpected = [name for name in tensors if name not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {_names(unexpected)}")
        raise CheckpointError(
            f"{label} does not match a GLOM with {settings}: {'; '.join(parts)}. "
            "Is it a glom-pytorch/glom-viz checkpoint, with these options?"
        )
    for name, wanted in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(wanted.shape):
            reason = (f"{label}: tensor '{name}' has shape {tuple(tensor.shape)} in the checkpoint but a GLOM with "
                      f"{settings} needs {tuple(wanted.shape)}")
            raise CheckpointError(f"{reason}: pass the config the checkpoint was trained with",
                                  fields=SHAPE_FIELDS if read is not None else (), read=read, reason=reason)
        if wanted.is_floating_point() != tensor.is_floating_point() or (wanted.dtype == torch.bool) != (
                tensor.dtype == torch.bool):
            raise CheckpointError(
                f"{label}: tensor '{name}' holds {tensor.dtype} values where the model keeps {wanted.dtype}: "
                "the file is not a GLOM checkpoint or is damaged"
            )
    _check_finite(tensors, label)
    model = Glom(**config.to_dict())
    expected = model.state_dict()
    if "attention.non_local_mask" in expected and not torch.equal(tensors["attention.non_local_mask"],
                                                                   expected["attention.non_local_mask"]):
        reason = (f"{label}: tensor 'attention.non_local_mask' is not the mask of local_consensus_radius="
                  f"{config.local_consensus_radius:g} on the {config.grid[0]}x{config.grid[1]} patch grid")
        raise CheckpointError(f"{reason}: pass the radius the model was trained with",
                              fields=("local_consensus_radius",) if read is not None else (), read=read, reason=reason)
    model.load_state_dict({name: tensors[name] for name in expected}, strict=True)
    return model.eval()


def _check_finite(tensors: dict[str, torch.Tensor], label: str) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{label}: tensor '{name}' holds {bad:,} NaN or Inf values of {tensor.numel():,}: the run it "
                "came from diverged; use an earlier checkpoint"
            )


def _settings(config: GlomConfig) -> str:
    return (f"dim={config.dim}, levels={config.levels}, image_size={config.image_size}, "
            f"patch_size={config.patch_size}, local_consensus_radius={config.local_consensus_radius:g}, "
            f"feedforward_mult={config.feedforward_mult}")


def _names(names: list[str], most: int = 5) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _some_names(tensors: dict) -> str:
    return _names(list(tensors), most=4) if tensors else "no tensors"


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."
