"""Training runs as data: the folders ``python -m glom_viz.train --out runs/NAME`` writes, opened to be explored.

A run folder holds

    checkpoints/step-0000000.safetensors   the GLOM at every checkpoint, the untrained start first
    model.safetensors                      the latest checkpoint (all an older run kept)
    log.jsonl                              one JSON line per training step: step, elapsed, losses, lr
    trainer.pt                             what --resume needs (never read here)

``open_run(name)`` lists its checkpoints by step and reads its log; a run still training is fine: a
checkpoint being written, or a log line cut short, is left out with a message saying so, and the rest
works. Runs are found only under one folder the server names (``GLOM_VIZ_RUNS``, default ``runs/``):
a run's name is a path below it, each part checked, and a name that leaves the folder (``..``, an
absolute path, a link pointing out) is refused, so a visitor can only pick among the runs listed.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from glom_viz.checkpoints import MAX_HEADER_BYTES, Checkpoint, read_checkpoint
from glom_viz.errors import CheckpointError, RunError
from glom_viz.train import KEPT_DIR, LOG_FILE, MODEL_FILE

RUNS_ENV = "GLOM_VIZ_RUNS"
DEFAULT_ROOT = "runs"
# each part of a run's name: letters, digits, '.', '_', '-', not starting with '.' (no '..', no hidden)
NAME_PART = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
MAX_DEPTH = 3  # runs/NAME, runs/GROUP/NAME (experiments/replay_cpu.py writes runs/replay/s1 ...), one more
MAX_RUNS = 500  # listed at most, newest first
MAX_LOG_BYTES = 64 * 2**20  # ~300k steps of losses; a longer log is read from its end
KEPT = re.compile(r"step-(\d{1,12})\.safetensors")
LOG_FIELDS = ("step", "elapsed", "lr")  # the log's fields that are not losses


@dataclass(frozen=True)
class RunCheckpoint:
    """One checkpoint of a run: its training step and file, and why it cannot be read (None if it can)."""

    step: int
    path: Path
    problem: str | None = None


@dataclass(frozen=True)
class TrainingRun:
    """A training run: its checkpoints by step, its log, and what could not be read.

    checkpoints: every checkpoint found, ordered by step (readable and not; see ``readable``).
    log: the log's records (dicts with "step" and the losses) in order, lines that could not be read
        left out.
    problems: one sentence per thing left out (a checkpoint being written, lines cut short, no checkpoint).
    """

    name: str
    path: Path
    checkpoints: tuple[RunCheckpoint, ...]
    log: tuple[dict, ...]
    problems: tuple[str, ...] = field(default=())

    @property
    def readable(self) -> tuple[RunCheckpoint, ...]:
        """The checkpoints that can be loaded, by step."""
        return tuple(c for c in self.checkpoints if c.problem is None)

    @property
    def steps(self) -> list[int]:
        """The training steps of the readable checkpoints."""
        return [c.step for c in self.readable]

    def checkpoint(self, step: int) -> Checkpoint:
        """The checkpoint at a training step, read and checked (``checkpoints.read_checkpoint``).

        Raises:
            RunError: no readable checkpoint at that step.
            CheckpointError: the file cannot be loaded after all (it changed since it was listed).
        """
        for kept in self.readable:
            if kept.step == step:
                return read_checkpoint(kept.path)
        raise RunError(f"run {self.name} has no readable checkpoint at step {step}: its checkpoints are at "
                       f"steps {', '.join(map(str, self.steps)) or 'none'}")

    def losses(self) -> dict[str, tuple[list[int], list[float]]]:
        """Each logged loss over the steps: name -> (steps, values); lr and elapsed left out."""
        curves: dict[str, tuple[list[int], list[float]]] = {}
        for record in self.log:
            for name, value in record.items():
                if name in LOG_FIELDS or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                if math.isfinite(value):
                    steps, values = curves.setdefault(name, ([], []))
                    steps.append(int(record["step"]))
                    values.append(float(value))
        return curves


def runs_root(environ=os.environ) -> Path:
    """The folder runs are found under: GLOM_VIZ_RUNS, or runs/ in the working directory."""
    return Path(environ.get(RUNS_ENV) or DEFAULT_ROOT)


def find_runs(root: str | os.PathLike | None = None) -> list[str]:
    """The names of the runs under `root` (default ``runs_root()``), newest first.

    A run is a folder holding a log, a model.safetensors or a checkpoints/ folder, at most MAX_DEPTH
    folders down; links are not followed, hidden folders are skipped. A missing root holds no runs.
    """
    root = Path(runs_root() if root is None else root)
    if not root.is_dir():
        return []
    found: list[tuple[float, str]] = []
    for folder, subfolders, files in os.walk(root, followlinks=False):
        relative = Path(folder).relative_to(root)
        depth = len(relative.parts)
        subfolders[:] = sorted(s for s in subfolders if NAME_PART.fullmatch(s) and s != KEPT_DIR) \
            if depth < MAX_DEPTH else []
        if depth and (LOG_FILE in files or MODEL_FILE in files or (Path(folder) / KEPT_DIR).is_dir()):
            try:
                found.append((Path(folder).stat().st_mtime, relative.as_posix()))
            except OSError:
                continue
    found.sort(key=lambda item: (-item[0], item[1]))
    return [name for _, name in found[:MAX_RUNS]]


def run_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """The folder of the run `name` under `root`, after checking that the name stays inside it.

    Raises:
        RunError: a name that is not a relative path of plain parts, that leaves the root, or names no folder.
    """
    root = Path(runs_root() if root is None else root)
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or len(parts) > MAX_DEPTH or not all(NAME_PART.fullmatch(part) for part in parts):
        raise RunError(f"{name!r} is not a run name: a run is a folder under the runs folder, named with "
                       "letters, digits, '.', '_' and '-' (e.g. glom or replay/s1); pick one of the runs listed")
    path = root.joinpath(*parts)
    try:
        inside = path.resolve(strict=True).is_relative_to(root.resolve(strict=True))
    except (OSError, RuntimeError):
        inside = None
    if inside is None or not path.is_dir():
        raise RunError(f"there is no run {name} under the runs folder: pick one of the runs listed, or train "
                       f"one there with python -m glom_viz.train --out {root / name}")
    if not inside:
        raise RunError(f"run {name} leads out of the runs folder (a link): only runs inside it can be opened")
    return path


def open_run(name: str, root: str | os.PathLike | None = None) -> TrainingRun:
    """A run under `root` (default ``runs_root()``) by name, its checkpoints listed and its log read.

    Nothing is loaded yet: each checkpoint's header is checked against its file size, so a checkpoint
    still being written is listed with its problem; ``TrainingRun.checkpoint(step)`` loads one.

    Raises:
        RunError: the name is not a run under the root (see ``run_path``).
    """
    path = run_path(name, root)
    checkpoints, problems = _checkpoints(path, name)
    if not any(kept.problem is None for kept in checkpoints):
        problems.append(f"run {name} has no checkpoint to load yet: the trainer writes one at the start and "
                        "every checkpoint_every steps; its losses are shown meanwhile")
    log, skipped = _read_log(path / LOG_FILE)
    if skipped:
        problems.append(f"{skipped} of the lines of run {name}'s log could not be read (cut short: a run still "
                        "writing it, or killed) and are left out")
    return TrainingRun(name, path, checkpoints, log, tuple(problems))


def _checkpoints(path: Path, name: str) -> tuple[tuple[RunCheckpoint, ...], list[str]]:
    """The kept checkpoints by step, with model.safetensors where it holds a step none of them has; and
    a sentence for each that cannot be read."""
    by_step: dict[int, RunCheckpoint] = {}
    kept_dir = path / KEPT_DIR
    if kept_dir.is_dir() and not kept_dir.is_symlink():
        for entry in sorted(kept_dir.iterdir()):
            match = KEPT.fullmatch(entry.name)
            if match and entry.is_file() and not entry.is_symlink():
                step = int(match.group(1))
                by_step[step] = RunCheckpoint(step, entry, _problem(entry, f"run {name}'s checkpoint at step {step}"))
    problems = [kept.problem for kept in by_step.values() if kept.problem]
    latest = path / MODEL_FILE
    if latest.is_file() and not latest.is_symlink():
        problem = _problem(latest, f"run {name}'s {MODEL_FILE}")
        step = _stored_step(latest) if problem is None else None
        if problem is not None and not by_step:
            problems.append(problem)  # kept checkpoints, where there are, cover it
        elif step is not None and step not in by_step:
            by_step[step] = RunCheckpoint(step, latest)
    return tuple(by_step[step] for step in sorted(by_step)), problems


def _header(path: Path) -> tuple[dict, int]:
    """A safetensors file's header (JSON) and the file size it implies, from its first bytes only."""
    with path.open("rb") as file:
        start = file.read(8)
        if len(start) < 8:
            raise CheckpointError("it is shorter than a safetensors header")
        length = struct.unpack("<Q", start)[0]
        if length > MAX_HEADER_BYTES:
            raise CheckpointError(f"its header claims {length:,} bytes")
        text = file.read(length)
    if len(text) < length:
        raise CheckpointError(f"it ends inside its header ({8 + len(text):,} bytes)")
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(f"its header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise CheckpointError("its header is not a JSON object")
    ends = [entry.get("data_offsets", [0, 0])[1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2 and isinstance(entry["data_offsets"][1], int)]
    return header, 8 + length + max(ends, default=0)


def _problem(path: Path, label: str) -> str | None:
    """Why a checkpoint file cannot be read (a sentence for the user), or None when it looks whole."""
    try:
        _, size = _header(path)
        actual = path.stat().st_size
    except CheckpointError as error:
        return f"{label} cannot be read ({error}): a run still training may be writing it; it is left out"
    except OSError as error:
        return f"{label} cannot be read ({error.strerror or error}); it is left out"
    if actual < size:
        return (f"{label} is cut short ({actual:,} of {size:,} bytes): a run still training may be writing it; "
                "it is left out")
    return None


def _stored_step(path: Path) -> int | None:
    """The training step a checkpoint's metadata records, or None."""
    try:
        header, _ = _header(path)
        return int(header.get("__metadata__", {}).get("step"))
    except (CheckpointError, OSError, TypeError, ValueError, AttributeError):
        return None


def _read_log(path: Path) -> tuple[tuple[dict, ...], int]:
    """A run's log: (records in order, how many lines could not be read). A missing log is empty."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - MAX_LOG_BYTES))
            data = file.read()
    except OSError:
        return (), 0
    lines = data.split(b"\n")
    if size > MAX_LOG_BYTES:
        lines = lines[1:]  # the first line read is a tail of a longer one
    records, skipped = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = record["step"]
        except (ValueError, KeyError, TypeError):
            skipped += 1
            continue
        if not isinstance(step, int) or isinstance(step, bool):
            skipped += 1
            continue
        records.append(record)
    return tuple(records), skipped
