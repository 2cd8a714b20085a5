"""Running GLOM over a picture or a sequence, step by step, into states that can be kept and looked at.

``run`` steps a model over one picture and returns a ``Run``: every step's columns, stored compactly
(float16, float32 where a value would overflow float16), the final columns at full precision (where the
next frame of a sequence starts), where NaN or Inf first appeared, how long it took and which precision
path ran. ``run_sequence`` carries each frame's final columns into the next, as GLOM's slow video does, letting
go of them where the picture changed.
``final_columns`` runs many pictures in batches and keeps only their last step. ``probe_column`` reruns
to one step keeping the consensus attention and how far each contribution pulled every column.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from glom_viz.errors import GlomInputError
from glom_viz.model import ALIKE, CONTRIBUTIONS, RELEASE, RELEASE_REACH, Glom, precision_context, run_path

# the stored states: float16 halves a run's memory, and float32 serves where a value would overflow it
STATES_DTYPE = np.float16
FLOAT16_SAFE = 6.0e4  # float16's largest finite value is 65504
STORED_TORCH_DTYPE = torch.float16  # STATES_DTYPE, as torch names it
BATCH = 16  # pictures per forward in final_columns
NET_MOVE = "net move"  # probe_column's pull of the whole step, beside the contributions'

Progress = Callable[[int, int], None]  # (steps done, steps in all), called after every step


@dataclass(frozen=True, eq=False)
class Run:
    """GLOM's states for one picture: every step, every column, every level.

    states: (T, N, L, D), T = iterations + 1 (step 0 is the initial state), STATES_DTYPE unless a value
        would overflow it (then float32).
    final: (N, L, D) float32, the last step at full precision.
    first_nonfinite: (step, level) where NaN or Inf first appeared, or None.
    seconds: the time GLOM took.
    path: the precision path that ran ("fp32", "bf16", "fp16", "int8"; see ``glom_viz.model.run_path``).
    """

    states: np.ndarray
    final: np.ndarray
    first_nonfinite: tuple[int, int] | None
    seconds: float
    path: str = "fp32"

    @property
    def finite(self) -> bool:
        return self.first_nonfinite is None

    @property
    def iterations(self) -> int:
        return self.states.shape[0] - 1


@dataclass(frozen=True, eq=False)
class ColumnProbe:
    """What made one step: consensus attention (L, N, N), and pulls: name -> (N, L), how far each
    contribution (bottom_up, top_down, consensus) moved each column, and NET_MOVE, the whole step's length."""

    attention: np.ndarray
    pulls: dict[str, np.ndarray]


def _device_of(model: Glom) -> torch.device:
    return next(model.parameters()).device


def _batched(image: torch.Tensor) -> torch.Tensor:
    """(3, S, S) or (1, 3, S, S) -> (1, 3, S, S)."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] != 1:
        raise GlomInputError(f"run takes one picture, (3, S, S) or (1, 3, S, S); got shape {tuple(image.shape)}: "
                             "use final_columns for a batch")
    return image


def _start_levels(start, model: Glom) -> torch.Tensor | None:
    """(1, N, L, D) float32 columns to continue from: a Run's final columns or an array; None starts fresh."""
    if start is None:
        return None
    if isinstance(start, Run):
        if not start.finite:
            raise GlomInputError("the previous frame's columns hold NaN or Inf, so this frame cannot start from "
                                 "them: turn the sequence off, use fp32, or fewer iterations")
        start = start.final
    levels = torch.as_tensor(np.asarray(start, dtype=np.float32) if not torch.is_tensor(start) else start).float()
    if levels.ndim == 3:
        levels = levels[None]
    if not torch.isfinite(levels).all():
        raise GlomInputError("the columns to start from hold NaN or Inf: start fresh instead")
    return levels.to(_device_of(model))


def _continued(model: Glom, image: torch.Tensor, start, before: torch.Tensor | None, release: float | None,
               reach: int, alike: float | None = ALIKE) -> torch.Tensor | None:
    """The (1, N, L, D) columns ``image`` (1, 3, S, S) starts from: `start`'s, let go as far as the picture
    changed from `before` where `release` is given (``Glom.let_go``); None starts fresh."""
    levels = _start_levels(start, model)
    if levels is None or release is None:
        return levels
    if before is None:
        raise GlomInputError("letting carried columns go (release) needs the picture they settled on: pass before")
    with torch.no_grad():
        return model.let_go(levels, _batched(before).to(image.device), image, release, reach, alike)


def compact(states: np.ndarray) -> tuple[np.ndarray, tuple[int, int] | None]:
    """(T, N, L, D) float32 -> (the states as stored, (step, level) of the first NaN or Inf or None)."""
    finite = np.isfinite(states).all(axis=(1, 3))  # (T, L)
    first_nonfinite = None
    if finite.all():  # two reductions, no copies: 20 ms for the seed's run where the copies took 150
        peak = max(float(states.max(initial=0.0)), -float(states.min(initial=0.0)))
    else:
        step, level = np.argwhere(~finite)[0]
        first_nonfinite = (int(step), int(level))
        peak = np.abs(np.nan_to_num(states, nan=0.0, posinf=0.0, neginf=0.0)).max(initial=0.0)
    if peak >= FLOAT16_SAFE:
        return states, first_nonfinite
    # torch's cast rounds as numpy's does (to nearest, ties to even), in half numpy's time
    return torch.from_numpy(np.ascontiguousarray(states, dtype=np.float32)).to(STORED_TORCH_DTYPE).numpy(), first_nonfinite


def run(model: Glom, image: torch.Tensor, iters: int | None = None, *, start=None, before: torch.Tensor | None = None,
        release: float | None = None, reach: int = RELEASE_REACH, alike: float | None = ALIKE,
        precision: str = "fp32", progress: Progress | None = None) -> Run:
    """Step ``model`` over one picture and keep every step.

    Args:
        model: a ``Glom`` (run as it is: put it in eval mode first).
        image: (3, S, S) or (1, 3, S, S) in [0, 1], S the model's image_size.
        iters: GLOM iterations; default the model's 2 * levels.
        start: columns to continue from, (N, L, D) or a previous frame's ``Run``; None starts fresh.
        before: with `start` and `release`, the picture the start columns settled on, shaped like `image`.
        release, reach, alike: with `start`, each column lets go of its carried state as far as the patches
            within `reach` of its own changed from `before` (``Glom.let_go``: fully from an RMS pixel change
            of `release` on), starting from the state of the most alike still column nearby (`alike`: the
            difference from which it takes nothing of it; None: from the fresh start); release None
            carries every column as it is (glom-pytorch's ``levels=``).
        precision: "fp32" (exact), "fast", or "bf16" (fast without the int8 nets; see ``glom_viz.model.run_path``
            for what runs).
        progress: called as progress(step, iters) after every step.

    Returns:
        A ``Run``. Raises GlomInputError for a picture the model cannot take or a start that is not finite.
    """
    device = _device_of(model)
    image = _batched(image).to(device)
    levels = _continued(model, image, start, before, release, reach, alike)
    iters = model.config.levels * 2 if iters is None else int(iters)
    path = run_path(model.config.dim, precision, device.type)
    steps = []
    begun = time.perf_counter()
    with torch.inference_mode(), precision_context(precision, device.type):
        for step in model.iterate(image, iters, levels):
            steps.append(step.levels[0].float().cpu().numpy())  # (N, L, D)
            if progress is not None:
                progress(step.step, iters)
    seconds = time.perf_counter() - begun
    states = np.stack(steps)
    stored, first_nonfinite = compact(states)
    return Run(stored, states[-1].copy(), first_nonfinite, seconds, path)


def run_sequence(model: Glom, images: Sequence[torch.Tensor], iters: int | None = None, *,
                 release: float | None = RELEASE, reach: int = RELEASE_REACH, alike: float | None = ALIKE,
                 precision: str = "fp32", progress: Callable[[int, int, int], None] | None = None) -> list[Run]:
    """``run`` over frames in order, each starting from the previous frame's final columns, which let go
    where the picture changed (``Glom.let_go``, so that islands move with their objects: a column let go starts
    from its most alike still neighbour's state, or afresh); release None carries them as they are.

    progress, if given, is called as progress(frame, step, iters). Raises GlomInputError where a frame's
    columns became NaN or Inf before the last frame (the next cannot start from them).
    """
    runs: list[Run] = []
    for index, image in enumerate(images):
        report = None if progress is None else (lambda step, total, index=index: progress(index, step, total))
        runs.append(run(model, image, iters, start=runs[-1] if runs else None,
                        before=images[index - 1] if index else None, release=release, reach=reach,
                        alike=alike, precision=precision,
                        progress=report))
    return runs


def final_columns(model: Glom, images: torch.Tensor, iters: int | None = None, *, start=None,
                  precision: str = "fp32", batch: int = BATCH) -> np.ndarray:
    """(b, 3, S, S) -> (b, N, L, D) float32: the columns at the final step, ``batch`` pictures per forward;
    with ``start`` (b, N, L, D), each picture continues from those columns (a previous frame's final ones)."""
    model.eval()
    device = _device_of(model)
    out = []
    # no_grad, not inference_mode: a training run that scores its model goes on training the same weights
    with torch.no_grad(), precision_context(precision, device.type):
        for first in range(0, len(images), batch):
            levels = None if start is None else torch.as_tensor(start[first:first + batch]).to(device)
            out.append(model(images[first:first + batch].to(device), iters=iters, levels=levels).float().cpu())
    return torch.cat(out).numpy()


def probe_column(model: Glom, image: torch.Tensor, step: int, *, start=None, before: torch.Tensor | None = None,
                 release: float | None = None, reach: int = RELEASE_REACH, alike: float | None = ALIKE,
                 precision: str = "fp32") -> ColumnProbe:
    """Rerun GLOM to ``step`` (>= 1) keeping that step's attention and each contribution's pull; `start`,
    `before`, `release`, `reach` and `alike` as ``run`` takes them.

    The update is new = sum_c w_c c with the weights w_c summing to one per level, so
    new - previous = sum_c w_c (c - previous): a contribution's pull is w_c |c - previous|.
    """
    if step < 1:
        raise GlomInputError(f"step {step} has no contributions: step 0 is the initial state; pick 1 or more")
    device = _device_of(model)
    image = _batched(image).to(device)
    levels = _continued(model, image, start, before, release, reach, alike)
    with torch.inference_mode(), precision_context(precision, device.type):
        for last in model.iterate(image, step, levels, contributions=True, attention=True):
            pass
    parts = {name: value[0].float().cpu() for name, value in last.contributions.items()}  # (N, L, D)
    weights = model.update_weights.float().cpu()  # (4, L), in CONTRIBUTIONS' order
    previous = parts[CONTRIBUTIONS[0]]
    pulls = {name: (weight[None, :] * (parts[name] - previous).norm(dim=-1)).numpy()
             for name, weight in zip(CONTRIBUTIONS, weights) if name != CONTRIBUTIONS[0]}
    pulls[NET_MOVE] = (last.levels[0].float().cpu() - previous).norm(dim=-1).numpy()
    return ColumnProbe(last.attention[0].float().cpu().numpy(), pulls)
