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
from glom_viz.limits import Limits
from glom_viz.model import Glom, GlomConfig, patch_distances
from glom_viz.text import quoted

FORMAT = "glom-viz"
FORMAT_VERSION = "1"
RESERVED_METADATA = ("format", "format_version", "config")
SHIPPED_CHECKPOINT = Path(__file__).parent / "assets" / "shipped.safetensors"
# the shipped model fine-tuned with no position told to any level: its islands follow what the patches show,
# so they hold on pictures outside the training scenes, where it finds the scenes' objects less well
CONTENT_CHECKPOINT = SHIPPED_CHECKPOINT.with_name("shipped-content.safetensors")
# the content-only model fine-tuned with each column's position told once, in its starting state at the top
# level, whose consensus spans the picture: a whole's island shares one position, so alike objects part while
# islands still move with the scenes; between the other two on objects, the shift test and moving clips
BALANCED_CHECKPOINT = SHIPPED_CHECKPOINT.with_name("shipped-balanced.safetensors")
SHIPPED_PATHS = {"scenes": SHIPPED_CHECKPOINT, "content": CONTENT_CHECKPOINT, "balanced": BALANCED_CHECKPOINT}
SHIPPED_KINDS = tuple(SHIPPED_PATHS)

MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own cap on the JSON header
HASH_CHUNK_BYTES = 2**20
# torch.save wraps state dicts that training scripts often nest under one of these keys
NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model", "module", "ema")
DDP_PREFIX = "module."
# what a glom-pytorch state dict cannot record (it holds no tensor); assumed False unless given
STATE_DICT_SILENT = ("consensus_self",)
# the config fields that shape a GLOM's tensors: what to give when they cannot be read or do not fit
SHAPE_FIELDS = ("dim", "levels", "image_size", "patch_size", "feedforward_mult", "local_consensus_radius")
# torch.save stores tensors uncompressed in its zip archive; a re-zipped file of float weights packs a
# little, zeros pack 1000:1. Beyond this ratio (and a slack for the small entries) an archive is refused
# before torch.load inflates it.
MAX_ARCHIVE_RATIO = 4.0
ARCHIVE_SLACK_BYTES = 2**20
MAX_ARCHIVE_ENTRIES = 10_000  # a GLOM state dict is ~25 entries


@dataclass(frozen=True)
class CheckpointLimits(Limits):
    """What a checkpoint may be and build, checked before any weight is allocated (docs/LIMITS.md).

    A server raises them with ``GLOM_VIZ_MAX_CHECKPOINT_BYTES``, ``GLOM_VIZ_MAX_PARAMETERS`` and
    ``GLOM_VIZ_MAX_PATCHES``; in Python, pass ``read_checkpoint(..., limits=CheckpointLimits(...))``.
    """

    KIND = "checkpoint limit"

    max_checkpoint_bytes: int = 2**30  # 1 GiB; the default GLOM (dim 512, 6 levels) is 90 MiB
    max_parameters: int = 2**28  # 268M weights, 1 GiB in float32; the default GLOM has 24M
    max_patches: int = 4096  # consensus attention is patches x patches per level: 64 MB a level here


LIMITS = CheckpointLimits.from_env()  # what a server allows: the defaults unless its environment raises them

# safetensors' dtypes that torch holds; the model takes the floating ones and bool (DTYPES_TAKEN)
SAFETENSORS_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2, "I16": torch.int16, "U16": torch.uint16, "F16": torch.float16,
    "BF16": torch.bfloat16, "I32": torch.int32, "U32": torch.uint32, "F32": torch.float32,
    "I64": torch.int64, "U64": torch.uint64, "F64": torch.float64,
}
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # converted to float32
DTYPES_TAKEN = "float32, float16, bfloat16 or float64 (bool for the attention mask)"

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


def load_checkpoint(path_or_bytes, *, limits: CheckpointLimits | None = None, **config) -> Glom:
    """A ready ``Glom`` (eval mode, CPU) from a checkpoint file or its bytes.

    Args:
        path_or_bytes: a path, the file's bytes, or an open binary file (an upload).
        limits: what the file may be and build (``LIMITS``, the server's, unless given).
        **config: ``GlomConfig`` fields. For our format they must agree with the stored config (or
            be left out); for a glom-pytorch state dict they complete what the tensors cannot tell
            (``consensus_self``, the extension options) and must agree with what they can.

    Raises:
        CheckpointError: not a checkpoint, code in a pickle, a header that lies, an archive that
            inflates far beyond its size, tensors that are views of less data than they claim, a
            model above the limits, tensors that do not fit (named, both shapes), missing or
            unexpected tensors (named), dtypes the model does not take, NaN or Inf weights.

    Everything is checked before the model's weights are allocated: the file's size, its header or
    archive, and the model its config asks for (built on the meta device, where it costs nothing).
    ``read_checkpoint`` gives the same model with its metadata, hash and what was inferred.
    """
    return read_checkpoint(path_or_bytes, limits=limits, **config).model


def read_checkpoint(path_or_bytes, *, assume: dict | None = None, limits: CheckpointLimits | None = None,
                    **config) -> Checkpoint:
    """Like ``load_checkpoint``, returning the model with its config, metadata, sha256 and a note.

    assume: ``GlomConfig`` fields for a state dict, which cannot store them (``consensus_self``); our
    format carries its whole config, so there they are ignored. The format is read from the bytes, never
    from a file name.
    """
    limits = LIMITS if limits is None else limits
    data, label = _read_bytes(path_or_bytes, limits)
    unknown = sorted((set(config) | set(assume or ())) - {field.name for field in dataclasses.fields(GlomConfig)})
    if unknown:
        raise CheckpointError(
            f"unknown GLOM config fields {unknown}: the fields are {[f.name for f in dataclasses.fields(GlomConfig)]}"
        )
    digest = hashlib.sha256(data).hexdigest()
    if _looks_like_safetensors(data):
        header, metadata = _safetensors_header(data, label)
        if metadata.get("format") == FORMAT:
            model_config = _stored_config(metadata, config, label)
            # the stored config against the header's shapes and the limits, before a tensor is read
            _check_fit(model_config, _meta_tensors(header), label, limits)
            model = _build(model_config, _safetensors_tensors(data, label), label, limits)
            training = {k: v for k, v in metadata.items() if k not in RESERVED_METADATA}
            return Checkpoint(model, model_config, training, digest, FORMAT, None)
        tensors = _safetensors_tensors(data, label)  # as many bytes as the file holds, no more
        source = "state dict (safetensors)"
    elif _looks_like_torch(data):
        tensors = _read_torch(data, label, limits)
        source = "state dict (torch)"
    else:
        raise CheckpointError(
            f"{label} is {_describe(data)}, not a checkpoint: load a glom-viz .safetensors file or a "
            "glom-pytorch state dict saved with torch.save(model.state_dict(), path)"
        )
    tensors, unwrapped = _strip_ddp_prefix(tensors)
    given = {**(assume or {}), **config}
    model_config, inferred, read = _infer_config(tensors, given, label)
    model = _build(model_config, tensors, label, limits, read)
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


def shipped_path(kind: str = "scenes") -> Path:
    """Where a shipped model lies: "scenes" (``SHIPPED_CHECKPOINT``, position told: objects on the project's
    scenes), "content" (``CONTENT_CHECKPOINT``, no position: islands that follow the picture) or "balanced"
    (``BALANCED_CHECKPOINT``, position told once, at the start)."""
    if kind not in SHIPPED_KINDS:
        raise CheckpointError(f"no shipped model {kind!r}: pick one of {', '.join(SHIPPED_KINDS)}")
    return SHIPPED_PATHS[kind]


def load_shipped(kind: str = "scenes") -> Glom:
    """A model that ships with glom-viz (``shipped_path(kind)``), ready in eval mode."""
    path = shipped_path(kind)
    if not path.is_file():
        raise CheckpointError(
            f"the shipped model is missing ({path}): reinstall glom-viz, or train one with "
            "`python -m glom_viz.train` and load it with load_checkpoint(path)"
        )
    return load_checkpoint(path)


# -- reading the bytes ---------------------------------------------------------------------------


def _read_bytes(source, limits: CheckpointLimits) -> tuple[bytes, str]:
    """(the checkpoint's bytes, how to name it in messages), bounded by limits.max_checkpoint_bytes."""
    most = limits.max_checkpoint_bytes
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), "the checkpoint"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"no checkpoint file at {quoted(str(path))}: check the path")
        size = path.stat().st_size
        label = quoted(path.name)
        if size > most:
            raise CheckpointError(_too_big(label, size, most))
        data = path.read_bytes()
    elif hasattr(source, "read"):
        file: BinaryIO = source
        data = file.read(most + 1)
        if not isinstance(data, bytes):
            raise CheckpointError("the checkpoint file was opened as text: open it in binary mode ('rb')")
        label = quoted(str(getattr(source, "name", "the checkpoint")))
    else:
        raise CheckpointError(f"expected a path, bytes or a binary file, got {type(source).__name__}")
    if not data:
        raise CheckpointError(f"{label} is empty (0 bytes): upload or save the checkpoint again")
    if len(data) > most:
        raise CheckpointError(_too_big(label, len(data), most))
    return data, label


def _too_big(label: str, size: int, most: int) -> str:
    return (f"{label} is {size / 2**20:.0f} MB, above the {most / 2**20:.0f} MB limit for checkpoints: a GLOM "
            "of the default size is about 100 MB; check that this is the right file")


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


def _safetensors_header(data: bytes, label: str) -> tuple[dict, dict[str, str]]:
    """The tensor entries and metadata of a safetensors file, checked against its bytes; no tensor read."""
    header_length = struct.unpack("<Q", data[:8])[0]
    if header_length > MAX_HEADER_BYTES or 8 + header_length > len(data):
        raise CheckpointError(
            f"{label} looks like safetensors but its header claims {header_length:,} bytes of a "
            f"{len(data):,}-byte file: the file is truncated or damaged; save or download it again"
        )
    try:
        header = json.loads(data[8 : 8 + header_length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(f"{label} has a safetensors header that is not valid JSON ({_short(error)}): "
                              "the file is damaged; save or download it again") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"{label} has a safetensors header that is not a JSON object: the file is damaged")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{label} has safetensors metadata that is not text: the file is damaged")
    _check_safetensors_entries(header, len(data) - 8 - header_length, label)
    return header, metadata


def _safetensors_tensors(data: bytes, label: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose header has passed (each exactly its bytes in the file)."""
    try:
        return safetensors_load(data)
    except (SafetensorError, ValueError, TypeError, KeyError, RuntimeError, OverflowError) as error:
        raise CheckpointError(f"{label} could not be read as safetensors ({_short(error)}): the file is damaged; "
                              "save or download it again") from error


def _meta_tensors(header: dict) -> dict[str, torch.Tensor]:
    """The header's tensors on the meta device: shapes and dtypes, no data."""
    return {name: torch.empty(entry["shape"], dtype=SAFETENSORS_DTYPES[entry["dtype"]], device="meta")
            for name, entry in header.items()}


def _check_safetensors_entries(header: dict, buffer_bytes: int, label: str) -> None:
    """Each tensor's dtype, shape and byte range agree, and the ranges tile the data exactly."""
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise CheckpointError(f"{label}: the header entry for {quoted(name)} is not a tensor description")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(
                f"{label}: tensor {quoted(name)} has dtype {quoted(str(dtype))}, which glom-viz cannot read: save "
                f"the weights as {DTYPES_TAKEN}"
            )
        if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                for s in shape)):
            raise CheckpointError(f"{label}: tensor {quoted(name)} has an invalid shape {_short(shape)}: the file "
                                  "is damaged")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= buffer_bytes):
            raise CheckpointError(
                f"{label}: tensor {quoted(name)} claims bytes {_short(offsets)} of a {buffer_bytes:,}-byte data "
                "section: the header lies about the data; the file is damaged or was not written by safetensors"
            )
        claimed = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
        if claimed != offsets[1] - offsets[0]:
            raise CheckpointError(
                f"{label}: tensor {quoted(name)} claims shape {tuple(shape)} of {dtype} ({claimed:,} bytes) but "
                f"its data spans {offsets[1] - offsets[0]:,} bytes: the header lies about the data; the file is "
                "damaged or was not written by safetensors"
            )
        spans.append((offsets[0], offsets[1], name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise CheckpointError(
                f"{label}: tensor {quoted(name)} starts at byte {begin:,} where {position:,} was expected "
                "(tensors overlap or leave holes): the header lies about the data; the file is damaged"
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


def _read_torch(data: bytes, label: str, limits: CheckpointLimits) -> dict[str, torch.Tensor]:
    """A state dict from torch.save bytes, with weights_only: never runs code from the file.

    A zip archive's entries are checked first (torch.load allocates what its directory claims), and
    every tensor after: a plain, dense CPU tensor whose own data is in the file.
    """
    if data[:4] == b"PK\x03\x04":
        _check_archive(data, label, limits)
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
    tensors = _state_dict_from(loaded, label)
    _check_plain(tensors, label)
    return tensors


def _check_archive(data: bytes, label: str, limits: CheckpointLimits) -> None:
    """A torch.save zip archive unpacks to no more than the limit, nor far more than its own size."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, struct.error,
            UnicodeDecodeError, NotImplementedError) as error:
        raise CheckpointError(
            f"{label} could not be read as a torch checkpoint (not a readable zip archive: {_short(error)}): it "
            "is damaged or not a checkpoint; save or download it again"
        ) from None
    if len(entries) > MAX_ARCHIVE_ENTRIES:
        raise CheckpointError(f"{label} is a zip archive of {len(entries):,} files, where a GLOM state dict has a "
                              "few dozen: it is not a torch checkpoint; save the weights with torch.save")
    unpacked = sum(entry.file_size for entry in entries)
    if unpacked > limits.max_checkpoint_bytes:
        raise CheckpointError(
            f"{label} unpacks to {unpacked / 2**20:,.0f} MB, above the {limits.max_checkpoint_bytes / 2**20:,.0f} MB "
            "limit for checkpoints; nothing was unpacked: check that this is the right file"
        )
    if unpacked > max(ARCHIVE_SLACK_BYTES, MAX_ARCHIVE_RATIO * len(data)):
        raise CheckpointError(
            f"{label} is a zip archive of {len(data):,} bytes whose entries unpack to {unpacked:,} bytes "
            f"({unpacked / len(data):,.0f} times its size); nothing was unpacked. torch.save stores tensors "
            "uncompressed, so this is a zip bomb or was re-compressed: save the weights again with torch.save"
        )


def _check_plain(tensors: dict[str, torch.Tensor], label: str) -> None:
    """Every tensor dense, on the CPU, contiguous and backed by its own bytes of the file.

    A pickle decides each tensor's shape and strides over the storages it loads: stride 0 (or
    overlapping strides, or many tensors over one storage) makes a few bytes stand for gigabytes,
    which the model's copy would then allocate.
    """
    held: dict[int, int] = {}
    claimed = 0
    for name, tensor in tensors.items():
        if tensor.layout != torch.strided or tensor.device.type != "cpu" or tensor.is_quantized:
            kind = tensor.device.type if tensor.device.type != "cpu" else str(tensor.layout).replace("torch.", "")
            raise CheckpointError(
                f"{label}: tensor {quoted(name)} is a {kind} tensor, not a plain one with its values in the file: "
                "save the model's weights with torch.save(model.state_dict(), path)"
            )
        size = tensor.numel() * tensor.element_size()
        if size == 0:
            continue
        storage = tensor.untyped_storage()
        if not tensor.is_contiguous() or storage.nbytes() < size:
            raise CheckpointError(
                f"{label}: tensor {quoted(name)} of shape {tuple(tensor.shape)} is a view with strides "
                f"{tuple(tensor.stride())} over {storage.nbytes():,} bytes, not a plain tensor of its {size:,} "
                "bytes (a file can make a few bytes stand for gigabytes this way): save the weights with "
                "torch.save(model.state_dict(), path)"
            )
        held[storage.data_ptr()] = storage.nbytes()
        claimed += size
    if claimed > sum(held.values()):
        raise CheckpointError(
            f"{label}: its tensors claim {claimed:,} bytes of weights but share {sum(held.values()):,} bytes of "
            "data in the file: save the model's own weights with torch.save(model.state_dict(), path)"
        )


def _state_dict_from(loaded, label: str) -> dict[str, torch.Tensor]:
    """The {name: tensor} inside what torch.load gave, unwrapping one common nesting."""
    if isinstance(loaded, dict) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return _named_tensors(loaded, label)
    if isinstance(loaded, dict):
        for key in NESTED_STATE_KEYS:
            inner = loaded.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return _named_tensors(inner, label)
        odd = [f"{quoted(str(k))} ({type(v).__name__})" for k, v in loaded.items() if not isinstance(v, torch.Tensor)][:3]
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
    if isinstance(hidden, torch.Tensor) and hidden.ndim == 3 and inferred.get("dim", 0) > 0:
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
    unmasked = patch_distances(side)[~mask[0]]
    return float(unmasked.max()) if unmasked.numel() else None


def check_limits(config: GlomConfig, limits: CheckpointLimits | None = None, label: str = "this GLOM") -> None:
    """Raise ``CheckpointError`` when a model of ``config`` is above ``limits`` (patches, weights).

    Found on the meta device, so asking costs nothing; the app asks before building a random model.
    """
    limits = LIMITS if limits is None else limits
    _check_patches(config, label, limits)
    _check_parameters(_meta_model(config, label), config, label, limits)


def _check_patches(config: GlomConfig, label: str, limits: CheckpointLimits) -> None:
    patches = config.num_patches
    if patches > limits.max_patches:
        raise CheckpointError(
            f"{label} has {patches:,} patches ({config.image_size} px images in {config.patch_size} px patches), "
            f"above the limit of {limits.max_patches:,} (consensus attention grows with their square): use a "
            "model with larger patches or smaller images (a private server can raise the limit: docs/LIMITS.md)"
        )


def _meta_model(config: GlomConfig, label: str) -> Glom:
    try:
        with torch.device("meta"):
            return Glom(**config.to_dict())
    except (ConfigError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{label}: no GLOM can be built from its config ({_short(error)})") from error


def _check_parameters(meta: Glom, config: GlomConfig, label: str, limits: CheckpointLimits) -> None:
    parameters = sum(p.numel() for p in meta.parameters())
    if parameters > limits.max_parameters:
        raise CheckpointError(
            f"{label} has {parameters:,} weights ({_settings(config)}), above the limit of "
            f"{limits.max_parameters:,} ({limits.max_parameters * 4 / 2**30:.1f} GB in float32): use a smaller "
            "model (a private server with the memory for it can raise the limit: docs/LIMITS.md)"
        )


def _check_fit(config: GlomConfig, tensors: dict[str, torch.Tensor], label: str, limits: CheckpointLimits,
               read: dict | None = None) -> None:
    """The model ``config`` asks for fits the limits and ``tensors`` (real or meta): names, shapes, dtypes.

    All on the meta device, so a config naming a huge model costs nothing: shapes are checked first (a
    config that does not fit its tensors is named as such), then the model's size against the limits.
    read: for a state dict, the fields read from its tensors: a tensor that does not fit then names the
    fields that shape it (CheckpointError.fields), to be given.
    """
    _check_patches(config, label, limits)
    meta = _meta_model(config, label)
    expected = meta.state_dict()
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
            reason = (f"{label}: tensor {quoted(name)} has shape {tuple(tensor.shape)} in the checkpoint but a GLOM "
                      f"with {settings} needs {tuple(wanted.shape)}")
            raise CheckpointError(f"{reason}: pass the config the checkpoint was trained with",
                                  fields=SHAPE_FIELDS if read is not None else (), read=read, reason=reason)
        taken = (torch.bool,) if wanted.dtype == torch.bool else WEIGHT_DTYPES
        if tensor.dtype not in taken:
            kind = "a mask of bool" if wanted.dtype == torch.bool else "weights"
            raise CheckpointError(
                f"{label}: tensor {quoted(name)} holds {tensor.dtype} values where the model keeps {kind}: "
                f"glom-viz takes {DTYPES_TAKEN}; save the model's state dict in one of those"
            )
    _check_parameters(meta, config, label, limits)


def _build(config: GlomConfig, tensors: dict[str, torch.Tensor], label: str, limits: CheckpointLimits,
           read: dict | None = None) -> Glom:
    """A Glom of ``config`` holding ``tensors``, after checking every name, shape, dtype and value (read: as
    for ``_check_fit``)."""
    _check_fit(config, tensors, label, limits, read)
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
                f"{label}: tensor {quoted(name)} holds {bad:,} NaN or Inf values of {tensor.numel():,}: the run it "
                "came from diverged; use an earlier checkpoint"
            )


def _settings(config: GlomConfig) -> str:
    return (f"dim={config.dim}, levels={config.levels}, image_size={config.image_size}, "
            f"patch_size={config.patch_size}, local_consensus_radius={config.local_consensus_radius:g}, "
            f"feedforward_mult={config.feedforward_mult}")


def _names(names: list[str], most: int = 5) -> str:
    shown = ", ".join(quoted(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _some_names(tensors: dict) -> str:
    return _names(list(tensors), most=4) if tensors else "no tensors"


def _short(value) -> str:
    """An exception's (or a value's) first line, at most 160 characters."""
    text = str(value).strip().splitlines()[0] if str(value).strip() else type(value).__name__
    return text if len(text) <= 160 else text[:157] + "..."
