"""Self-supervised training of GLOM on synthetic scenes or your own folder (``python -m glom_viz.train``).

Masks are never used: the pictures are the only thing the loss sees. The data are the project's
synthetic scenes (``glom_viz.scenes``), or with ``--data DIR`` a folder (or zip) in ``glom_viz.data``'s
layout: its pictures, their second frames in next/ and consecutive frames of its videos/ (masks/ and
parts/ are never read). The objective adds up

- **denoising** (glom-pytorch's README): reconstruct the clean image from one level of the columns
  of a noisy image, through a linear patch decoder;
- **masked-patch filling** (Hinton's paper, section 3): some patches are replaced by noise, and their
  reconstruction error counts ``mask_weight`` times more, so columns must fill them in from context;
- **contrastive agreement** of top-ish levels: the image is seen twice, with different noise and masks;
  a column's vector at a contrasted level must pick out the same column of the other view among the
  columns of that image that lie further than that level's radius away. Near columns are neither
  pulled nor pushed, so islands up to that size can form, while distant regions must stay apart;
- **common fate** (``motion_weight``): each training scene also comes as a second frame in which every
  object has moved its own way (``scenes.make_moving_scene``). ``glom_viz.motion`` finds from the two
  frames' pixels alone which patches moved together; at each level in ``motion_levels`` a column of
  the first frame must then agree with the columns that moved with it, and not with those that moved
  otherwise (a supervised-contrastive loss on these groups). The model sees only the first frame, so
  it must learn to tell from a still image what would move together: objects.
- **similarity** (``similarity_weight``): at each level in ``similarity_levels``, the same loss on
  regions of similar colour in the still image (``motion.similarity_groups``): the Gestalt cue that
  on these scenes picks out parts, for the levels below the objects. With ``similarity_still`` the
  regions that the two frames show still join into one group, so the background is one whole here too.

Two more terms take islands outside the training world:

- **the continuation path** (``carry_share``): that share of a batch's scenes is shown as its second frame,
  the columns continuing (glom-pytorch's ``levels=``) from those the model settled into on the first frame,
  and every term scores them there; so a column whose object moved on must let go of its old island;
- **shift consistency** (``shift_weight``): the first view moved by up to ``max_view_shift`` whole patches
  (its border repeated) must give the same columns for the same content: an island decided by where a
  column is, not by what it shows, costs.

On a folder, common fate comes from its pairs of frames (``motion.common_fate``: the region shifts
where they hold, optical flow where they do not), and similarity from each picture itself; each
picture's groups are found once and kept; ``data_share`` below 1 mixes the folder into the built-in scenes,
which fill the rest of each batch (first) with their common fate and continuation. With ``--data`` alone the
run follows ``DATA_RECIPE`` (the shipped model's last stages, at the CPU's batch of 16), common fate included
when the folder has second frames or videos; ``--init`` takes the model's shape from the checkpoint;
``--max-minutes M`` stops cleanly after M minutes of wall clock with a final checkpoint, the learning
rate's cosine then following the clock.

Every term is a mean over images, so data-parallel gradients equal single-process ones.

The loop reports through callbacks (``Trainer.set_callback(event, fn)``, events in ``EVENTS``), so the
CLI's progress bar, a notebook and the app drive the same loop. Run with ``torchrun --nproc_per_node N``
for data parallelism (DDP, gloo on CPU): each process takes an equal share of every batch.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import threading
import time
import warnings
import zipfile
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import nn

from glom_viz.errors import CheckpointError, ConfigError, DataError
from glom_viz.limits import usable_cpus
from glom_viz.model import (Glom, GlomConfig, known_fields, patch_distances,
                            reduced_precision_is_fast, resize_position_embedding)
from glom_viz.motion import MOTION_METHODS, PATCH_AGREEMENT, SIMILARITY_SCALE, common_fate, patch_groups, similarity_groups
from glom_viz.scenes import MAX_SHIFT, MIN_SHIFT_GAP, TRAIN_SEEDS, make_batch, make_moving_scene, make_scene

EVENTS = ("on_step_end", "on_checkpoint", "on_train_end")
MODEL_FILE = "model.safetensors"
TRAINER_FILE = "trainer.pt"
LOG_FILE = "log.jsonl"
KEPT_DIR = "checkpoints"  # a run's kept checkpoints, one per checkpoint_every steps


def kept_checkpoint_name(step: int) -> str:
    """The file name of the checkpoint kept at a training step (zero-padded, so names sort by step)."""
    return f"step-{step:07d}.safetensors"

GRAY = 0.5  # masked patches are noise around mid-gray
MASKED_LOGIT = -1e4  # a finite "minus infinity": rows with nothing to compare stay finite through logsumexp
# the GlomConfig fields a TrainConfig carries
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(GlomConfig))
# the GlomConfig fields a checkpoint for --init must share with the run (image_size and
# feedforward_mult shape parameters too, but --init can resize and widen those)
SHAPE_FIELDS = ("dim", "levels", "patch_size")
# the TrainConfig fields a scene's motion and similarity groups depend on, beside the scene itself
GROUP_FIELDS = ("image_size", "patch_size", "max_shift", "similarity_scale", "similarity_still", "group_agreement")
# the trainer's own micro-batches hold at most this many scenes (benchmarks/train_step.py), each costing as
# much again as this many scenes (the per-product overheads)
MICRO_BATCH = 16
MICRO_BATCH_OVERHEAD = 0.5
# the defaults of a run on a folder (--data): the shipped model's last stages (experiments/shipped.json,
# fine_tune), at batch 16 as its CPU stages ran; a fresh decoder trains alone for its first steps when
# the run starts from --init. motion_weight is dropped where the folder has no second frames.
DATA_RECIPE = dict(batch_size=16, contrast_weight=0.0, motion_weight=1.0, motion_levels=(2, 3),
                   similarity_weight=1.0, similarity_levels=(1,), similarity_scale=200.0, group_agreement=0.3,
                   iters_max=14, group_balance=0.5, warmup=20, lr=7e-4, steps=1000)
DATA_DECODER_WARMUP = 50
# with --max-minutes and no --steps, the schedule follows the clock and the step count only bounds it
UNBOUNDED_STEPS = 10**9


# the shipped model's architecture, the recipe's: TrainConfig's model fields default to it, where
# GlomConfig's own defaults are glom-pytorch's
RECIPE_MODEL = GlomConfig(dim=64, levels=4, image_size=64, patch_size=4, attention_scale=8.0, consensus_cosine=True,
                          contribution_weights=(1.0, 1.0, 1.0, 2.0), level_norm="layernorm",
                          consensus_radii=(2.0, 3.0, 4.0, 6.0))
# TrainConfig's first fields: every GlomConfig field (MODEL_FIELDS), defaulting to RECIPE_MODEL's value
ModelFields = dataclasses.make_dataclass(
    "ModelFields", [(f.name, f.type, dataclasses.field(default=getattr(RECIPE_MODEL, f.name)))
                    for f in dataclasses.fields(GlomConfig)])
ModelFields.__module__ = __name__


@dataclass
class TrainConfig(ModelFields):
    """Everything one training run depends on: the model's GlomConfig fields (ModelFields), then these.

    The defaults are the shipped model's recipe (``experiments/shipped.json``), run on ``device``; the
    architecture options at their GlomConfig defaults give plain glom-pytorch.
    """

    iters: int = 8
    # 0: every step settles `iters` steps; N > iters: each training step draws its count from iters..N,
    # so islands must hold past the count the app opens on instead of peaking there and dissolving
    iters_max: int = 0
    # data: 0 = fresh scenes in seed order; N = each batch drawn at random from the first N training seeds
    batch_size: int = 64
    # micro-batches per step: each runs forward and backward alone and their gradients add up to the
    # batch's, so a large batch costs memory and cache for batch_size / accumulate scenes only (on a
    # CPU a step at batch 256 ran 3.6x faster as 16 micro-batches of 16: benchmarks/train_step.py).
    # 0: the trainer picks (micro_batch_plan): micro-batches of at most MICRO_BATCH scenes, shared evenly
    # among the threads
    accumulate: int = 0
    # CPU threads: micro-batches run side by side on this many threads, one core each (0: every core this
    # process may use, shared among data-parallel processes)
    threads: int = 0
    scenes: int = 30_000
    flip: bool = True  # mirror half of the scenes left-right
    # objective
    noise_std: float = 0.2
    mask_ratio: float = 0.25
    mask_weight: float = 2.0
    recon_level: int = 1
    contrast_weight: float = 0.25
    contrast_levels: tuple[int, ...] = (2, 3)
    contrast_radii: tuple[float, ...] = (3.5, 6.0)
    temperature: float = 0.2
    motion_weight: float = 0.0
    motion_levels: tuple[int, ...] = (3,)
    max_shift: int = MAX_SHIFT  # pixels each object may move between the two frames, per axis
    similarity_weight: float = 0.0
    similarity_levels: tuple[int, ...] = (1,)
    similarity_scale: float = SIMILARITY_SCALE  # Felzenszwalb's scale: larger, coarser regions
    similarity_still: bool = True  # regions seen still between the two frames form one group
    # a patch joins a motion or similarity group when this share of its pixels is in it; 0.5 lets
    # edge patches join the side they mostly show, as the evaluation's majority truth does
    group_agreement: float = PATCH_AGREEMENT
    # each anchor of the grouped terms weighs (its group's size) ** -group_balance: 0 = every anchor
    # alike, so the background (most of a scene's patches) dominates; 1 = every group alike
    group_balance: float = 0.0
    # anchors of the grouped terms on a group's edge (a patch beside, in 4-neighbourhood, a patch of
    # another group) weigh this many times more: most of the object level's errors are outline patches
    group_edge_weight: float = 1.0
    # start from this checkpoint's weights (same SHAPE_FIELDS; its MLPs may be narrower, its image size
    # another), or from scratch
    init: str | None = None
    # for this many first steps the reconstruction trains the decoder alone: a decoder fresh from
    # --init is random, and its gradients would otherwise pull a trained model's recon level about
    decoder_warmup: int = 0
    # the continuation path: this share of each batch's scenes is shown as the scene's second frame, its
    # columns continuing from those settled on the first frame (no gradient through the first)
    carry_share: float = 0.0
    # ...carried as they are (0), or let go where the clean frames differ, fully from this RMS pixel change
    # on (``Glom.let_go`` with its default reach and alike), as sequences run them
    carry_release: float = 0.0
    # shift consistency: 1 - cosine between the columns of the first view and of that view moved by up to
    # max_view_shift whole patches (each axis, never both zero), over the patches both show, at
    # shift_levels (empty: every level)
    shift_weight: float = 0.0
    shift_levels: tuple[int, ...] = ()
    max_view_shift: int = 3
    # a folder (or .zip) in glom_viz.data's layout to train on instead of the built-in scenes, made to
    # fit the model by `fit` ("crop", "pad", "stretch"); its pairs' common fate by `motion_method`
    # ("shift", "flow" or "auto": motion.common_fate). The built-in scenes always use the shifts.
    data: str | None = None
    fit: str = "crop"
    motion_method: str = "auto"
    # the share of each batch drawn from `data`; the rest are built-in scenes, with their common fate and
    # continuation, so a run can learn a folder's pictures without unlearning the scenes' parts and wholes
    # (each term is a mean over the whole batch: pictures without common fate weigh the scenes' down by the share)
    data_share: float = 1.0
    # optimisation
    steps: int = 1294
    # stop cleanly after this many minutes of wall clock (0: no limit), with a final checkpoint
    max_minutes: float = 0.0
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 30
    grad_clip: float = 1.0
    bf16: bool = True
    seed: int = 0
    device: str = "cpu"
    # output
    out: str = "runs/glom"
    checkpoint_every: int = 100
    # a folder that keeps the scenes' motion and similarity groups between runs (GroupsStore): the stages of
    # a recipe with the same group settings find each scene's groups once. None: this run's memory only
    groups_cache: str | None = None
    # also keep every checkpoint, the untrained start included, as checkpoints/step-NNNNNNN.safetensors
    # (the GLOM alone: 1 MB at the shipped size, 90 MB at glom-pytorch's default), so that the app can
    # scrub the run over training time (glom_viz.training_runs)
    keep_checkpoints: bool = True

    def __post_init__(self):
        for key in ("contribution_weights", "consensus_radii"):
            if getattr(self, key) is not None:
                setattr(self, key, tuple(float(x) for x in getattr(self, key)))
        if self.position_levels is not None:
            self.position_levels = tuple(int(x) for x in self.position_levels)
        self.start_position_levels = tuple(int(x) for x in self.start_position_levels)
        self.contrast_levels = tuple(int(x) for x in self.contrast_levels)
        self.motion_levels = tuple(int(x) for x in self.motion_levels)
        self.similarity_levels = tuple(int(x) for x in self.similarity_levels)
        self.shift_levels = tuple(int(x) for x in self.shift_levels)
        self.contrast_radii = tuple(float(x) for x in self.contrast_radii)

    def model_config(self) -> GlomConfig:
        """The GlomConfig of this run; raises ConfigError for shapes that cannot work."""
        return GlomConfig(**{name: getattr(self, name) for name in MODEL_FIELDS})

    def validate(self) -> None:
        """Raise ConfigError, saying what to change, for a run that cannot work."""
        self.model_config()
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}: there is no data to train on")
        if self.accumulate < 0 or self.accumulate > self.batch_size or (self.accumulate
                                                                        and self.batch_size % self.accumulate):
            raise ConfigError(f"accumulate {self.accumulate} must be a count of equal micro-batches that splits "
                              f"batch_size {self.batch_size}: use a divisor of it, or 0 to let the trainer pick")
        cpus = usable_cpus()
        if not 0 <= self.threads <= cpus:
            raise ConfigError(f"threads {self.threads} cannot run here: this process may use {cpus} CPU core(s); "
                              f"pass 1 to {cpus}, or 0 for all of them")
        if self.scenes < 0:
            raise ConfigError(f"scenes must be 0 (a fresh scene every time) or a positive count, got {self.scenes}")
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")
        if self.iters < 1:
            raise ConfigError(f"iters must be at least 1 for the columns to settle, got {self.iters}")
        if self.decoder_warmup < 0:
            raise ConfigError(f"decoder_warmup is a number of steps, 0 or more, got {self.decoder_warmup}")
        if self.iters_max and self.iters_max < self.iters:
            raise ConfigError(f"iters_max must be 0 (always iters) or at least iters ({self.iters}), got {self.iters_max}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} asked for, but torch sees no CUDA GPU here: use --device cpu")
        if not -self.levels <= self.recon_level < self.levels:
            raise ConfigError(f"recon_level {self.recon_level} is not a level of a {self.levels}-level model")
        if len(self.contrast_radii) != len(self.contrast_levels):
            raise ConfigError(
                f"give one contrast radius per contrasted level: contrast_levels={self.contrast_levels}, "
                f"contrast_radii={self.contrast_radii}"
            )
        if self.contrast_weight > 0 and not self.contrast_levels:
            raise ConfigError("contrast_weight > 0 needs contrast_levels (and their radii), or set contrast_weight 0")
        if any(not 0 <= l < self.levels for l in self.contrast_levels):
            raise ConfigError(f"contrast_levels must lie in 0..{self.levels - 1}, got {self.contrast_levels}")
        for term in ("motion", "similarity"):
            weight, levels = getattr(self, f"{term}_weight"), getattr(self, f"{term}_levels")
            if weight > 0 and not levels:
                raise ConfigError(f"{term}_weight > 0 needs {term}_levels, or set {term}_weight 0")
            if weight > 0 and any(not 0 <= l < self.levels for l in levels):
                raise ConfigError(f"{term}_levels must lie in 0..{self.levels - 1}, got {levels}")
        if (self.motion_weight > 0 or self.similarity_weight > 0) and not 0 < self.group_agreement <= 1:
            raise ConfigError(f"group_agreement is a share of a patch's pixels in (0, 1], got {self.group_agreement}")
        if not self.group_edge_weight > 0:
            raise ConfigError(f"group_edge_weight multiplies the weight of anchors on a group's edge; it must be "
                              f"positive, got {self.group_edge_weight}")
        if not 0 <= self.group_balance <= 1:
            raise ConfigError(f"group_balance is an exponent in [0, 1] (0: anchors alike, 1: groups alike), "
                              f"got {self.group_balance}")
        if self.similarity_weight > 0 and not self.similarity_scale > 0:
            raise ConfigError(f"similarity_scale must be > 0, got {self.similarity_scale}")
        if (self.motion_weight > 0 or self.similarity_weight > 0 and self.similarity_still) \
                and self.max_shift < MIN_SHIFT_GAP:
            raise ConfigError(f"max_shift must be at least {MIN_SHIFT_GAP} px for objects to move apart, "
                              f"got {self.max_shift}")
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ConfigError(f"noise_std must be a finite number >= 0, got {self.noise_std}")
        if not 0 <= self.mask_ratio < 1:
            raise ConfigError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if not 0 <= self.carry_share <= 1:
            raise ConfigError(f"carry_share is the share of scenes continued from their first frame, in [0, 1], "
                              f"got {self.carry_share}")
        if not (math.isfinite(self.carry_release) and self.carry_release >= 0):
            raise ConfigError(f"carry_release is the RMS pixel change from which a carried column lets go, 0 "
                              f"(carried as it is) or more, got {self.carry_release}")
        if self.carry_release > 0 and self.carry_share == 0:
            raise ConfigError("carry_release lets carried columns go, but no scene is carried: set carry_share > 0")
        if self.carry_share > 0 and self.max_shift < MIN_SHIFT_GAP:
            raise ConfigError(f"carry_share needs objects that move between the frames: max_shift at least "
                              f"{MIN_SHIFT_GAP} px, got {self.max_shift}")
        if not (math.isfinite(self.shift_weight) and self.shift_weight >= 0):
            raise ConfigError(f"shift_weight must be a finite number >= 0, got {self.shift_weight}")
        side = self.image_size // self.patch_size
        if self.shift_weight > 0 and not 1 <= self.max_view_shift < side:
            raise ConfigError(f"max_view_shift must be between 1 and {side - 1} patches for the moved view to share "
                              f"patches with the first, got {self.max_view_shift}")
        if any(not 0 <= l < self.levels for l in self.shift_levels):
            raise ConfigError(f"shift_levels must lie in 0..{self.levels - 1} (empty: every level), got {self.shift_levels}")
        if not (math.isfinite(self.max_minutes) and self.max_minutes >= 0):
            raise ConfigError(f"max_minutes is a wall-clock budget in minutes, 0 (none) or more, got {self.max_minutes}")
        if self.motion_method not in MOTION_METHODS:
            raise ConfigError(f"motion_method is one of {', '.join(MOTION_METHODS)}, got {self.motion_method!r}")
        from glom_viz.images import FITS

        if self.fit not in FITS:
            raise ConfigError(f"fit is one of {', '.join(FITS)}, got {self.fit!r}")
        if self.data is not None and not Path(self.data).exists():
            raise ConfigError(f"--data {self.data}: no such folder. A dataset is a folder with its pictures in "
                              f"images/ (and optionally next/, videos/): see the README, 'Bringing your own data'")
        if not 0 < self.data_share <= 1:
            raise ConfigError(f"data_share is the share of each batch drawn from --data, in (0, 1], got {self.data_share}")
        if self.data_share < 1 and self.data is None:
            raise ConfigError("data_share mixes a --data folder's pictures into the scenes' batches: give --data")
        if self.data is not None and self.data_share == 1 and self.carry_share > 0:
            raise ConfigError("carry_share continues the built-in moving scenes from their first frame; a --data "
                              "folder has no such pairs here: set carry_share 0, or mix scenes in with --data-share")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        return cls(**known_fields(cls, values, "training config"))


def draw_corruption(shape: tuple[int, int, int, int], patch_size: int, noise_std: float, mask_ratio: float,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel noise (b, 3, s, s) and the patches to mask (b, patches) bool, row-major."""
    b, _, s, _ = shape
    noise = torch.randn(shape, generator=generator) * noise_std
    masked = torch.rand((b, (s // patch_size) ** 2), generator=generator) < mask_ratio
    return noise, masked


def corrupt(images: torch.Tensor, noise: torch.Tensor, masked: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Add the noise, and replace masked patches by noise around gray: (b, 3, s, s) -> (b, 3, s, s)."""
    side = images.shape[-1] // patch_size
    pixel_mask = rearrange(masked, "b (h w) -> b () h w", h=side)
    pixel_mask = pixel_mask.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)
    return torch.where(pixel_mask, GRAY + noise, images + noise)


class Learner(nn.Module):
    """A GLOM and its patch decoder; forward returns the training losses of one batch."""

    def __init__(self, config: TrainConfig):
        super().__init__()
        self.config = config
        self.glom = Glom(**config.model_config().to_dict())
        side = config.image_size // config.patch_size
        self.decoder = nn.Sequential(
            nn.Linear(config.dim, config.patch_size ** 2 * 3),
            Rearrange("b (h w) (p1 p2 c) -> b c (h p1) (w p2)", p1=config.patch_size, p2=config.patch_size, h=side),
        )
        self.register_buffer("distances", patch_distances(side), persistent=False)

    def columns(self, noisy: torch.Tensor, iters: int | None = None, start: torch.Tensor | None = None) -> torch.Tensor:
        """(b, 3, s, s) -> final columns (b, patches, levels, dim) after `iters` (default config.iters) steps,
        from the initial state or continuing from `start` (b, patches, levels, dim)."""
        return self.glom(noisy, iters=iters or self.config.iters, levels=start)

    def continued_from(self, before: torch.Tensor, carried: torch.Tensor, iters: int | None = None,
                       frames: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The start of every scene: (b, 3, s, s) noisy first frames and (b,) bool -> (b, patches, levels, dim),
        the columns settled on the first frame where carried (no gradient flows back through that frame),
        the model's initial state elsewhere; with `frames` (the clean first and second frames, (b, 3, s, s)
        each), carried columns let go where those differ (``Glom.let_go`` from config.carry_release on)."""
        glom = self.glom
        start = glom.starting_state()[None].expand(len(before), -1, -1, -1)
        if not carried.any():
            return start
        with torch.no_grad():
            settled = self.columns(before[carried], iters)
            if frames is not None:
                first, second = frames
                settled = glom.let_go(settled, first[carried], second[carried], self.config.carry_release)
        start = start.clone()
        start[carried] = settled.to(start.dtype)
        return start

    def forward(self, images: torch.Tensor, views: list[tuple[torch.Tensor, torch.Tensor]],
                groups: dict[str, torch.Tensor] | None = None, iters: int | None = None,
                decoder_only: bool = False, before: tuple[torch.Tensor, torch.Tensor] | None = None,
                moved: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """images (b, 3, s, s) clean; views: one or two (noisy images, masked patches); groups: for the
        "motion" and "similarity" terms, (b, patches) each patch's group (-1: none); iters: settling
        steps (default config.iters); decoder_only: the reconstruction sends the GLOM no gradient;
        before: (noisy first frames (b, 3, s, s), carried (b,) bool[, clean first frames, clean second
        frames]) for the continuation path: carried scenes' columns start from those settled on their first
        frame (let go where the clean frames differ, when they are given); moved: (the first view moved
        (b, 3, s, s), its shift (b, 2) in patches) for shift consistency -> named losses."""
        c = self.config
        losses = {}
        start = None if before is None else self.continued_from(before[0], before[1], iters, before[2:] or None)
        states = [self.columns(noisy, iters, start) for noisy, _ in views]
        recon = torch.zeros((), device=images.device)
        for (_, masked), columns in zip(views, states):
            recon_level = columns[:, :, c.recon_level].float()
            if decoder_only:  # a zero gradient rather than none, so DDP still sees every parameter used
                recon_level = recon_level.detach() + 0 * recon_level
            decoded = self.decoder(recon_level)
            error = rearrange((decoded - images) ** 2, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)",
                              p1=c.patch_size, p2=c.patch_size).mean(-1)
            weight = 1 + (c.mask_weight - 1) * masked.float()
            # a mean per image, then over images: shares of a batch average to the whole batch's loss
            recon = recon + ((error * weight).sum(-1) / weight.sum(-1)).mean()
        losses["reconstruction"] = recon / len(views)
        if c.contrast_weight > 0 and len(states) == 2:
            contrast = sum(
                self.contrast(states[0][:, :, level], states[1][:, :, level], radius)
                for level, radius in zip(c.contrast_levels, c.contrast_radii)
            ) / len(c.contrast_levels)
            losses["contrast"] = contrast
        for term, levels in (("motion", c.motion_levels), ("similarity", c.similarity_levels)):
            if groups and term in groups:
                losses[term] = sum(self.grouped_contrast(states[0][:, :, level], groups[term])
                                   for level in levels) / len(levels)
        if moved is not None:
            # the moved view always starts fresh: for a carried scene the term also asks the continued
            # columns to be those a fresh look at the same content gives
            moved_states = self.columns(moved[0], iters)
            levels = c.shift_levels or tuple(range(c.levels))
            losses["shift"] = sum(shift_consistency(states[0][:, :, level], moved_states[:, :, level], moved[1])
                                  for level in levels) / len(levels)
        losses["total"] = (losses["reconstruction"] + c.contrast_weight * losses.get("contrast", 0.0)
                           + c.motion_weight * losses.get("motion", 0.0)
                           + c.similarity_weight * losses.get("similarity", 0.0)
                           + c.shift_weight * losses.get("shift", 0.0))
        return losses

    def grouped_contrast(self, columns: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Supervised-contrastive loss on groups of patches within each image: (b, n, d), (b, n) -> scalar.

        Every column with a group is an anchor; its positives are the other columns of its group, its
        negatives the columns of other groups (columns without a group take no part). Per anchor, the
        mean log-probability of its positives (SupCon's L_out); a mean over anchors weighted by
        (group size) ** -group_balance, times group_edge_weight for anchors on a group's edge, then over images.
        """
        z = F.normalize(columns.float(), dim=-1)
        logits = torch.einsum("bid,bjd->bij", z, z) / self.config.temperature
        grouped = groups >= 0
        eye = torch.eye(groups.shape[1], dtype=torch.bool, device=groups.device)
        pairs = grouped[:, :, None] & grouped[:, None, :] & ~eye
        logits = torch.where(pairs, logits, torch.full_like(logits, MASKED_LOGIT))
        log_prob = logits - logits.logsumexp(-1, keepdim=True)
        positive = pairs & (groups[:, :, None] == groups[:, None, :])
        positives = positive.sum(-1)
        # (b, n) each anchor's weight: 0 without positives; its group has positives + 1 columns
        weight = (positives > 0) * (positives + 1.0) ** -self.config.group_balance
        if self.config.group_edge_weight != 1.0:
            side = self.config.image_size // self.config.patch_size
            weight = weight * torch.where(group_edges(groups, side), self.config.group_edge_weight, 1.0)
        per_anchor = -torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(-1) / positives.clamp(min=1)
        return ((per_anchor * weight).sum(-1) / weight.sum(-1).clamp(min=1e-12)).mean()

    def contrast(self, view_a: torch.Tensor, view_b: torch.Tensor, radius: float) -> torch.Tensor:
        """InfoNCE within each image: (b, n, d) x (b, n, d) -> scalar.

        The positive of column i is column i of the other view; its negatives are that view's columns
        further than `radius` patches away. Symmetric in the two views.
        """
        a, b = F.normalize(view_a.float(), dim=-1), F.normalize(view_b.float(), dim=-1)
        logits = torch.einsum("bid,bjd->bij", a, b) / self.config.temperature
        near = (self.distances <= radius) & ~torch.eye(len(self.distances), dtype=torch.bool, device=a.device)
        logits = logits.masked_fill(near, float("-inf"))
        targets = torch.arange(logits.shape[1], device=a.device).expand(logits.shape[0], -1)
        # cross_entropy wants classes on dim 1: (b, j, i) scores view a's anchors i, (b, i, j) view b's anchors j
        return 0.5 * (F.cross_entropy(logits.transpose(1, 2), targets) + F.cross_entropy(logits, targets))


def group_edges(groups: torch.Tensor, side: int) -> torch.Tensor:
    """(b, side * side) groups, row-major, -1 = none -> (b, n) bool: grouped patches with a 4-neighbour in another group."""
    grid = F.pad(groups.view(-1, side, side), (1, 1, 1, 1), value=-1)
    centre = grid[:, 1:-1, 1:-1]
    edge = torch.zeros_like(centre, dtype=torch.bool)
    for neighbour in (grid[:, :-2, 1:-1], grid[:, 2:, 1:-1], grid[:, 1:-1, :-2], grid[:, 1:-1, 2:]):
        edge |= (neighbour >= 0) & (neighbour != centre)
    return (edge & (centre >= 0)).flatten(1)


def move_view(images: torch.Tensor, shifts: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(b, 3, s, s) images and (b, 2) (down, across) shifts in whole patches -> the images moved so, the
    rows and columns moved in from outside repeating the border."""
    side = images.shape[-1]
    pixels = torch.arange(side, device=images.device)
    rows = (pixels[None] - shifts[:, :1] * patch_size).clamp(0, side - 1)  # (b, s) the source row of each row
    cols = (pixels[None] - shifts[:, 1:] * patch_size).clamp(0, side - 1)
    moved = torch.gather(images, 2, rows[:, None, :, None].expand(-1, images.shape[1], -1, side))
    return torch.gather(moved, 3, cols[:, None, None, :].expand(-1, images.shape[1], side, -1))


def shift_consistency(columns: torch.Tensor, moved: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """(b, n, d) columns of a view, (b, n, d) of the view moved by (b, 2) whole patches -> scalar: the mean
    over images of 1 - cosine between the columns that show the same patch of content, over those both show."""
    b, n, d = columns.shape
    side = math.isqrt(n)
    rows, cols = torch.meshgrid(torch.arange(side, device=columns.device), torch.arange(side, device=columns.device),
                                indexing="ij")
    to_row, to_col = rows.flatten()[None] + shifts[:, :1], cols.flatten()[None] + shifts[:, 1:]
    shown = (to_row >= 0) & (to_row < side) & (to_col >= 0) & (to_col < side)  # (b, n)
    partner = (to_row.clamp(0, side - 1) * side + to_col.clamp(0, side - 1))[..., None].expand(b, n, d)
    cosine = F.cosine_similarity(columns.float(), torch.gather(moved.float(), 1, partner), dim=-1)
    return (((1 - cosine) * shown).sum(-1) / shown.sum(-1).clamp(min=1)).mean()


def batch_scenes(config: TrainConfig, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The step's scene seeds (batch_size,) and which of them are mirrored (batch_size,) bool.

    The same in every process, so data-parallel ranks split one batch.
    """
    index, flips = _draw_batch(config, step, config.scenes)
    return TRAIN_SEEDS.start + index, flips


def batch_pictures(config: TrainConfig, step: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``batch_scenes`` for a dataset of `count` pictures: the step's picture indices and mirror flags."""
    return _draw_batch(config, step, count)


def _draw_batch(config: TrainConfig, step: int, pool: int) -> tuple[np.ndarray, np.ndarray]:
    """(batch_size,) indices drawn at random from range(pool) (0: fresh ones in order) and mirror flags."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    if pool:
        index = torch.randint(pool, (config.batch_size,), generator=generator).numpy()
    else:
        index = np.arange(step * config.batch_size, (step + 1) * config.batch_size) % len(TRAIN_SEEDS)
    flips = torch.rand(config.batch_size, generator=generator).numpy() < 0.5
    return index, flips & config.flip


def settling_steps(config: TrainConfig, step: int) -> int:
    """The step's settling steps: config.iters, or with iters_max one count from iters..iters_max,
    seeded by (seed, step) so that every data-parallel process settles as long."""
    if not config.iters_max:
        return config.iters
    generator = torch.Generator().manual_seed(config.seed * 999_983 + step)
    return int(torch.randint(config.iters, config.iters_max + 1, (), generator=generator))


def draw_views(config: TrainConfig, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The corruption (noise, masked) of the whole batch for each view: one, or two with the contrastive term.

    Seeded by (seed, step), so every data-parallel process draws the same and takes its share.
    """
    generator = torch.Generator().manual_seed(config.seed * 100_003 + step)
    shape = (config.batch_size, 3, config.image_size, config.image_size)
    count = 2 if config.contrast_weight > 0 else 1
    return [draw_corruption(shape, config.patch_size, config.noise_std, config.mask_ratio, generator)
            for _ in range(count)]


def draw_carried(config: TrainConfig, step: int) -> np.ndarray:
    """(batch_size,) bool: the step's scenes shown as their second frame, continuing from the first
    (``carry_share`` of them on average); the same in every data-parallel process."""
    if not config.carry_share:
        return np.zeros(config.batch_size, bool)
    generator = torch.Generator().manual_seed(config.seed * 300_007 + step)
    return torch.rand(config.batch_size, generator=generator).numpy() < config.carry_share


def draw_first_frames(config: TrainConfig, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The corruption (noise, masked) of the whole batch's first frames on the continuation path,
    seeded by (seed, step) as ``draw_views``."""
    generator = torch.Generator().manual_seed(config.seed * 500_009 + step)
    shape = (config.batch_size, 3, config.image_size, config.image_size)
    return draw_corruption(shape, config.patch_size, config.noise_std, config.mask_ratio, generator)


def draw_view_shifts(config: TrainConfig, step: int) -> torch.Tensor:
    """(batch_size, 2) (down, across) shifts in whole patches of the moved view, each axis in
    -max_view_shift..max_view_shift and never both zero; the same in every data-parallel process."""
    generator = torch.Generator().manual_seed(config.seed * 400_009 + step)
    span = 2 * config.max_view_shift + 1
    # every non-zero shift alike: an index into the span x span grid that skips its centre
    index = torch.randint(span * span - 1, (config.batch_size,), generator=generator)
    index = index + (index >= span * span // 2).long()
    return torch.stack((index // span, index % span), -1) - config.max_view_shift


def scene_groups(seeds: np.ndarray, flips: np.ndarray, config: TrainConfig,
                 cache: dict | None = None, second: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """(b,) seeds and mirror flags -> for each grouping term switched on, (b, patches) long: each patch's group.

    "motion": the common-fate group between the scene's two frames; "similarity": the region of
    similar colour in the first frame. Found by ``glom_viz.motion`` from pixels alone (mirrored as the
    model sees them); `cache` keeps each scene's groups, since scenes repeat when drawn from a pool.
    `second` (b,) bool: the scenes seen as their second frame, whose groups are the second frame's.
    """
    terms = tuple(term for term in ("motion", "similarity") if getattr(config, f"{term}_weight") > 0)
    rows = {term: [] for term in terms}
    second = np.zeros(len(seeds), bool) if second is None else second
    for seed, flip, frame in zip(seeds.tolist(), flips.tolist(), second.astype(int).tolist()):
        key = groups_key(config, terms, seed, flip, frame)
        groups = None if cache is None else cache.get(key)
        if groups is None:
            groups = _groups_of_scene(seed, flip, config, terms, frame)
            if cache is not None:
                cache[key] = groups
        for term in terms:
            rows[term].append(groups[term])
    return {term: torch.from_numpy(np.stack(row)).long() for term, row in rows.items()}


class GroupsStore:
    """The groups cache of ``scene_groups``, kept in a folder between runs: a dict of groups_key -> groups.

    One file per set of group settings and process rank (``<settings hash>-<rank>.npz``, int16 rows of
    patches), read when a key of those settings is first asked for; ``flush`` writes what is new. The files
    are data (no pickles); one that cannot be read is ignored, so its scenes' groups are found again.
    """

    def __init__(self, directory: str | Path, rank: int = 0):
        self.directory, self.rank = Path(directory), rank
        self.groups: dict[tuple, dict[str, np.ndarray]] = {}
        self.read: set[str] = set()
        self.unsaved: set[str] = set()
        self.reading = threading.Lock()  # micro-batches on threads ask at once: one reads, the others wait

    @staticmethod
    def _settings(key: tuple) -> tuple[str, tuple]:
        """(the file stem of a key's settings, the settings): the terms and GROUP_FIELDS, without the scene."""
        terms, settings = key[0], key[3:]
        text = json.dumps([list(terms), list(settings)])
        return hashlib.sha1(text.encode()).hexdigest()[:16], (terms, settings)

    def _read(self, stem: str) -> None:
        for path in sorted(self.directory.glob(f"{stem}-*.npz")):
            try:
                with np.load(path, allow_pickle=False) as stored:
                    terms = tuple(json.loads(str(stored["terms"])))
                    settings = tuple(json.loads(str(stored["settings"])))
                    rows = {term: stored[term] for term in terms}
                    for i, (seed, flip) in enumerate(zip(stored["seeds"].tolist(), stored["flips"].tolist())):
                        self.groups.setdefault((terms, seed, bool(flip), *settings),
                                               {term: rows[term][i].astype(np.int64) for term in terms})
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
                warnings.warn(f"ignoring the unreadable groups cache {path} ({error}): its scenes' groups are "
                              f"found again")
        self.read.add(stem)

    def get(self, key: tuple, default=None):
        stem, _ = self._settings(key)
        if stem not in self.read:
            with self.reading:
                if stem not in self.read:
                    self._read(stem)
        return self.groups.get(key, default)

    def __setitem__(self, key: tuple, groups: dict[str, np.ndarray]) -> None:
        self.groups[key] = groups
        self.unsaved.add(self._settings(key)[0])

    def __len__(self) -> int:
        return len(self.groups)

    def flush(self) -> None:
        """Write the groups of every settings with new ones, each file whole (written aside, then renamed)."""
        if not self.unsaved:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for stem in sorted(self.unsaved):
            keys = [key for key in self.groups if self._settings(key)[0] == stem]
            terms, settings = self._settings(keys[0])[1]
            path = self.directory / f"{stem}-{self.rank}.npz"
            partial = path.with_suffix(".partial.npz")
            # group ids run from -1 (none) to a few dozen
            np.savez_compressed(partial, terms=json.dumps(list(terms)), settings=json.dumps(list(settings)),
                                seeds=np.array([key[1] for key in keys]), flips=np.array([key[2] for key in keys]),
                                **{term: np.stack([self.groups[key][term] for key in keys]).astype(np.int16)
                                   for term in terms})
            partial.replace(path)
        self.unsaved.clear()


def groups_key(config: TrainConfig, terms: tuple[str, ...], seed: int, flip: bool, frame: int = 0) -> tuple:
    """The groups cache's key of one scene: the terms, the scene, and the settings its groups depend on;
    a second frame's key ends in its frame number (so ``GroupsStore`` keeps it in a file of its own)."""
    return (terms, seed, flip, *(getattr(config, field) for field in GROUP_FIELDS), *((frame,) if frame else ()))


def scene_frames(seed: int, flip: bool, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """The two frames (s, s, 3) of a training scene, mirrored as the model sees them."""
    return tuple(scene.image[:, ::-1] if flip else scene.image
                 for scene in make_moving_scene(seed, config.image_size, config.max_shift))


def _groups_of_scene(seed: int, flip: bool, config: TrainConfig, terms: tuple[str, ...],
                     frame: int = 0) -> dict[str, np.ndarray]:
    """One scene's (patches,) groups for each term, in its first frame or (frame 1) its second, compared
    with the other frame; the two frames are compared once for both terms."""
    labels = still = None
    if "motion" in terms or config.similarity_still or frame:
        first, second = scene_frames(seed, flip, config)
        if frame:  # the second frame's groups: what moved together on the way back to the first
            first, second = second, first
        # the scenes' objects move by whole pixels: the region shifts, never the flow
        labels, still, _ = common_fate(first, second, config.max_shift, "shift")
    else:
        first = make_scene(seed, config.image_size).image
        first = first[:, ::-1] if flip else first
    groups = {}
    if "motion" in terms:
        groups["motion"] = patch_groups(labels, config.patch_size, config.group_agreement)
    if "similarity" in terms:
        groups["similarity"] = similarity_groups(first, config.patch_size, config.similarity_scale, still,
                                                 config.group_agreement)
    return groups


def micro_batch_plan(share: int, threads: int) -> int:
    """How many micro-batches a process's share of a batch runs as, on ``threads`` side by side.

    The count that finishes first, each micro-batch costing its scenes plus MICRO_BATCH_OVERHEAD and each
    thread running its micro-batches one after another, among the even splits into at most MICRO_BATCH
    scenes; the fewest micro-batches among equals. A CPU runs micro-batches of 16 several times faster per
    scene than one large batch (their activations stay in cache), and two threads on two micro-batches
    run twice as fast as two threads sharing each product.
    """
    counts = [count for count in range(1, share + 1) if share % count == 0 and share // count <= MICRO_BATCH]
    return min(counts, key=lambda count: (-(-count // threads) * (share / count + MICRO_BATCH_OVERHEAD), count))


def picture_groups(dataset, indices: np.ndarray, flips: np.ndarray, config: TrainConfig,
                   cache: dict) -> dict[str, torch.Tensor]:
    """``scene_groups`` for pictures of a dataset: (b,) indices and mirror flags -> per term (b, patches) long.

    Each picture's groups are found once, unmirrored, and kept in `cache`; a mirrored picture's are
    the same groups mirrored on the patch grid (its patches are the mirrored picture's, exactly).
    """
    terms = tuple(term for term in ("motion", "similarity") if getattr(config, f"{term}_weight") > 0)
    side = config.image_size // config.patch_size
    rows = {term: [] for term in terms}
    for index, flip in zip(indices.tolist(), flips.tolist()):
        key = (terms, index, config.motion_method, *(getattr(config, field) for field in GROUP_FIELDS))
        groups = cache.get(key)
        if groups is None:
            groups = cache[key] = _groups_of_picture(dataset.samples[index], config, terms)
        for term in terms:
            found = groups[term]
            rows[term].append(found.reshape(side, side)[:, ::-1].ravel() if flip else found)
    return {term: torch.from_numpy(np.stack(row)).long() for term, row in rows.items()}


def _groups_of_picture(sample, config: TrainConfig, terms: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One picture's (patches,) groups per term: common fate from its pair (none without a second
    frame: every patch UNCLEAR), similarity from the picture, its still pixels joined where seen."""
    first = sample.image.astype(np.float64) / 255.0
    labels = still = None
    if sample.next is not None and ("motion" in terms or config.similarity_still):
        labels, still, _ = common_fate(first, sample.next.astype(np.float64) / 255.0, config.max_shift,
                                       config.motion_method)
    groups = {}
    if "motion" in terms:
        patches = (config.image_size // config.patch_size) ** 2
        groups["motion"] = (np.full(patches, -1) if labels is None else
                            patch_groups(labels, config.patch_size, config.group_agreement))
    if "similarity" in terms:
        groups["similarity"] = similarity_groups(first, config.patch_size, config.similarity_scale,
                                                 still if config.similarity_still else None, config.group_agreement)
    return groups


def learning_rate(config: TrainConfig, step: int, clock_share: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to a tenth, over the steps or (with max_minutes) the clock,
    whichever has gone further: `clock_share` is the share of the wall-clock budget spent."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = max((step - config.warmup) / max(1, config.steps - config.warmup), clock_share)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Trainer:
    """The training loop; progress goes to callbacks.

    Events: ``on_step_end(trainer)`` (``trainer.step``, ``trainer.losses``), ``on_checkpoint(trainer, path)``,
    ``on_train_end(trainer)``. ``trainer.history`` holds every step's losses.
    """

    def __init__(self, config: TrainConfig):
        self._clock = time.monotonic()  # the wall-clock budget counts from here: loading data is part of it
        self.prior_seconds = 0.0  # wall-clock seconds of the run's earlier sessions (resume)
        config.validate()
        self.config = config
        self.device = torch.device(config.device)
        # bf16 only where it is native: emulated bf16 runs many times slower than fp32
        self.autocast = config.bf16 and reduced_precision_is_fast(self.device.type, torch.bfloat16)
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        if config.batch_size % self.world:
            raise ConfigError(f"batch_size {config.batch_size} does not split over {self.world} processes: "
                              f"use a multiple of {self.world}")
        # threads: this process's share of the cores; micro-batches side by side on them, one core each
        # (data-parallel processes run theirs one after another, DDP adding up the gradients once)
        self.threads = config.threads or max(1, usable_cpus() // self.world)
        share = config.batch_size // self.world
        self.accumulate = config.accumulate or micro_batch_plan(share, self.threads if self.world == 1 else 1)
        if share % self.accumulate:
            raise ConfigError(
                f"batch_size {config.batch_size} does not split over {self.world} processes x "
                f"{self.accumulate} micro-batches: use a multiple of {self.world * self.accumulate}"
            )
        self.workers = min(self.threads, self.accumulate) if self.world == 1 else 1
        torch.manual_seed(config.seed)
        self.learner = Learner(config).to(self.device)
        self.model = self.learner.glom
        if config.init:
            self._start_from(config.init)
        self._groups_cache = GroupsStore(config.groups_cache, self.rank) if config.groups_cache else {}
        self._picture_groups: dict = {}  # a folder's pictures: found once per run
        self.dataset = self._load_data() if config.data else None
        self.optimizer = torch.optim.AdamW(self.learner.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0
        self.losses: dict[str, float] = {}
        self.history: list[dict] = []
        self.elapsed = 0.0
        self.stopped_by_clock = False  # fit ended before its steps because max_minutes ran out
        self._recent_steps: deque[float] = deque(maxlen=5)  # seconds of the last steps, to foresee the next
        self.callbacks: dict[str, list[Callable]] = defaultdict(list)
        self._parallel = (
            nn.parallel.DistributedDataParallel(self.learner) if self.world > 1 else self.learner
        )

    def _start_from(self, path: str | Path) -> None:
        """Take the GLOM weights of a checkpoint with this run's dim, levels and patch size.

        The update rule's options (consensus radii, attention scale, contribution weights, level norm)
        hold no parameters, so a run may fine-tune a checkpoint into other settings of them. A larger
        feedforward_mult widens the checkpoint's MLPs (``GroupedFeedForward.widen_from``); another
        image size resizes its position embedding to the new patch grid (``resize_position_embedding``;
        the consensus radii, counted in patches, are the run's to scale).
        """
        from glom_viz.checkpoints import load_checkpoint

        if not Path(path).is_file():
            raise CheckpointError(f"--init {path}: no such checkpoint file")
        glom = load_checkpoint(path, **{name: getattr(self.config, name) for name in SHAPE_FIELDS})
        have, want = glom.config.feedforward_mult, self.config.feedforward_mult
        if have > want:
            raise CheckpointError(
                f"--init {path}: its MLPs are wider (feedforward_mult {have}) than this run's ({want}); "
                f"a run can widen a checkpoint's MLPs but not narrow them"
            )
        source = glom.state_dict()
        if glom.config.image_size != self.config.image_size:
            source["pos_emb.weight"] = resize_position_embedding(source["pos_emb.weight"], self.model.grid[0])
            source.pop("attention.non_local_mask", None)  # the run's own, for its grid
        widen = have < want
        nets = ("bottom_up.", "top_down.")
        state = self.model.state_dict()
        state.update({k: v for k, v in source.items() if not (widen and k.startswith(nets))})
        self.model.load_state_dict(state)
        if widen:
            # wider MLPs than the checkpoint's: the same function to start from, with room to grow
            self.model.bottom_up.widen_from(glom.bottom_up)
            self.model.top_down.widen_from(glom.top_down)

    def _load_data(self):
        """The run's folder as the model sees it, masks unread; raises ConfigError where it cannot serve."""
        from glom_viz.data import load_dataset

        c = self.config
        try:
            dataset = load_dataset(c.data, c.image_size, c.fit, read_masks=False)
        except DataError as error:
            raise ConfigError(str(error)) from error
        if c.motion_weight > 0 and c.data_share == 1 and not dataset.with_next():
            raise ConfigError(f"--data {c.data}: none of its {len(dataset)} pictures has a second frame (next/ or "
                              "videos/), and common fate needs one: add them, or set --motion-weight 0")
        return dataset

    def wall_seconds(self) -> float:
        """Wall-clock seconds of the run: this session's since the trainer was made, and earlier sessions'."""
        return self.prior_seconds + time.monotonic() - self._clock

    def clock_share(self) -> float:
        """The share of the max_minutes budget spent (0 without one)."""
        return self.wall_seconds() / (60 * self.config.max_minutes) if self.config.max_minutes else 0.0

    def set_callback(self, event: str, fn: Callable) -> "Trainer":
        """Replace the callbacks of an event by fn."""
        self._check_event(event)
        self.callbacks[event] = [fn]
        return self

    def add_callback(self, event: str, fn: Callable) -> "Trainer":
        self._check_event(event)
        self.callbacks[event].append(fn)
        return self

    def _check_event(self, event: str) -> None:
        if event not in EVENTS:
            raise ConfigError(f"unknown training event {event!r}; events are {EVENTS}")

    def _fire(self, event: str, *args) -> None:
        for fn in self.callbacks[event]:
            fn(self, *args)

    def shard(self, step: int, micro: int | None = None) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]],
                                                                  dict[str, torch.Tensor], dict]:
        """One micro-batch of this process's share of the step's batch (None: the whole share): clean images,
        their views, groups per term, and the continuation and shift inputs (``Learner.forward``'s `before`
        and `moved`, where switched on). The batch splits into world x accumulate equal parts, this
        process's in a row."""
        c = self.config
        if micro is None:
            part, parts = self.rank, self.world
        else:
            part, parts = self.rank * self.accumulate + micro, self.world * self.accumulate
        share = slice(part * c.batch_size // parts, (part + 1) * c.batch_size // parts)
        # the batch's rows: its scenes first, then its folder's pictures (data_share of the batch)
        scene_count = c.batch_size if self.dataset is None else c.batch_size - round(c.data_share * c.batch_size)
        rows = np.arange(share.start, share.stop)
        scene_rows, picture_rows = rows[rows < scene_count], rows[rows >= scene_count] - scene_count
        parts_of_batch, flips, found_parts = [], [], []
        seeds = scene_flips = None
        carried = np.zeros(len(rows), bool)  # the continuation path runs on the built-in scenes
        if scene_rows.size:
            seeds, scene_flips = (values[scene_rows] for values in batch_scenes(c, step))
            carried[:len(scene_rows)] = draw_carried(c, step)[scene_rows]
            parts_of_batch.append(make_batch(seeds, c.image_size)[0])
            cache = self._groups_cache if c.scenes else None  # fresh scenes never repeat
            found_parts.append(scene_groups(seeds, scene_flips, c, cache, carried[:len(scene_rows)]))
            flips.append(scene_flips)
        if picture_rows.size:
            indices, picture_flips = (values[picture_rows] for values in batch_pictures(c, step, len(self.dataset)))
            parts_of_batch.append(self.dataset.images(indices))
            found_parts.append(picture_groups(self.dataset, indices, picture_flips, c, self._picture_groups))
            flips.append(picture_flips)
        images, flips = torch.cat(parts_of_batch), np.concatenate(flips)
        found = {term: torch.cat([groups[term] for groups in found_parts]) for term in found_parts[0]}
        images = torch.where(torch.from_numpy(flips)[:, None, None, None], images.flip(-1), images)
        extras = {}
        if carried.any():
            # carried scenes: their second frame is seen, continuing from the columns settled on the first
            before = images.clone()
            for i in np.flatnonzero(carried):
                first, second = scene_frames(int(seeds[i]), bool(scene_flips[i]), c)
                before[i], images[i] = (torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)
                                        for frame in (first, second))
            noise, masked = draw_first_frames(c, step)
            extras["before"] = (corrupt(before, noise[share], masked[share], c.patch_size).to(self.device),
                                torch.from_numpy(carried).to(self.device))
            if c.carry_release > 0:  # the let-go compares the clean frames: the views' noise is no change
                extras["before"] += (before.to(self.device), images.to(self.device))
        views = [(corrupt(images, noise[share], masked[share], c.patch_size), masked[share])
                 for noise, masked in draw_views(c, step)]
        if c.shift_weight > 0:
            shifts = draw_view_shifts(c, step)[share]
            extras["moved"] = (move_view(views[0][0], shifts, c.patch_size).to(self.device), shifts.to(self.device))
        groups = {term: value.to(self.device) for term, value in found.items()}
        return (images.to(self.device), [(noisy.to(self.device), masked.to(self.device)) for noisy, masked in views],
                groups, extras)

    def compute_losses(self, step: int, micro: int | None = None) -> dict[str, torch.Tensor]:
        """The losses of one micro-batch of the step (None: of this process's whole share at once)."""
        images, views, groups, extras = self.shard(step, micro)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self._parallel(images, views, groups, iters=settling_steps(self.config, step),
                                  decoder_only=step < self.config.decoder_warmup, **extras)

    def train_step(self) -> dict[str, float]:
        """One optimisation step; raises FloatingPointError, keeping the weights, if the loss is not finite."""
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(c, self.step, self.clock_share())
        self.optimizer.zero_grad(set_to_none=True)
        threads = torch.get_num_threads()
        # each worker's products on one core; a lone worker takes all of them
        torch.set_num_threads(max(1, self.threads // self.workers))
        try:
            micro_losses = self._accumulate_gradients()
        finally:
            torch.set_num_threads(threads)
        # each loss is a mean over its micro-batch's scenes, so the batch's is the mean of theirs
        summed = {}
        for losses in micro_losses:
            for name, value in losses.items():
                summed[name] = summed.get(name, 0) + value / self.accumulate
        losses = summed
        grad_norm = nn.utils.clip_grad_norm_(self.learner.parameters(), c.grad_clip)
        if not torch.isfinite(grad_norm):
            raise FloatingPointError(
                f"the gradients became non-finite at step {self.step}: lower lr (now {c.lr}); "
                f"the last good checkpoint is kept in {c.out}"
            )
        self.optimizer.step()
        self.step += 1
        values = torch.stack([value.detach().float() for value in losses.values()])
        if self.world > 1:  # report the whole batch's losses, not this process's share
            dist.all_reduce(values)
            values /= self.world
        self.losses = dict(zip(losses, values.tolist()))
        self.losses["lr"] = self.optimizer.param_groups[0]["lr"]
        self.history.append({"step": self.step, **self.losses})
        return self.losses

    def _micro_batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        losses = self.compute_losses(step, micro)
        if not torch.isfinite(losses["total"]):
            raise FloatingPointError(
                f"the loss became {losses['total'].item()} at step {step}: lower lr (now {self.config.lr}) "
                f"or noise_std; the last good checkpoint is kept in {self.config.out}"
            )
        return losses

    def _accumulate_gradients(self) -> list[dict[str, torch.Tensor]]:
        """The step's micro-batches, forward and backward, their gradients added into the parameters' grad
        -> each micro-batch's losses (detached fp32), in order.

        In one process the micro-batches run on ``workers`` threads side by side, and their gradients are
        added up in micro-batch order, so the sum is the same however the threads ran. Data-parallel
        processes run theirs one after another and DDP averages over processes once, at the last.
        """
        step, count = self.step, self.accumulate
        if self.world > 1:
            micro_losses = []
            for micro in range(count):
                losses = self._micro_batch(step, micro)
                with contextlib.nullcontext() if micro == count - 1 else self._parallel.no_sync():
                    (losses["total"] / count).backward()
                micro_losses.append({name: value.detach().float() for name, value in losses.items()})
            return micro_losses
        parameters = [p for p in self.learner.parameters() if p.requires_grad]

        def gradients(micro: int):
            losses = self._micro_batch(step, micro)
            grads = torch.autograd.grad(losses["total"] / count, parameters, allow_unused=True)
            return {name: value.detach().float() for name, value in losses.items()}, grads

        if self.workers == 1:
            results = [gradients(micro) for micro in range(count)]
        else:
            with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
                results = list(pool.map(gradients, range(count)))
        for i, p in enumerate(parameters):
            grads = [grad[i] for _, grad in results if grad[i] is not None]
            if grads:
                total = grads[0]
                for grad in grads[1:]:
                    total = total + grad
                p.grad = total
        return [losses for losses, _ in results]

    def timed_step(self) -> dict[str, float]:
        """train_step, its time added to `elapsed`, then the on_step_end callbacks."""
        started = time.perf_counter()
        losses = self.train_step()
        seconds = time.perf_counter() - started
        self.elapsed += seconds
        self._recent_steps.append(seconds)
        self._fire("on_step_end")
        return losses

    def fit(self, steps: int | None = None) -> list[dict]:
        """Train up to `steps` (default config.steps), checkpointing every checkpoint_every steps; with
        max_minutes, stop before the step that would end past the budget (with a final checkpoint)."""
        c = self.config
        last = c.steps if steps is None else min(c.steps, steps)
        budget = 60 * c.max_minutes
        if c.checkpoint_every and c.keep_checkpoints and self.step == 0:
            self.keep()  # the untrained start, where the run's islands over training time begin
        try:
            while self.step < last:
                if budget and self.wall_seconds() + self._step_seconds() > budget:
                    self.stopped_by_clock = True
                    break
                self.timed_step()
                if c.checkpoint_every and self.step % c.checkpoint_every == 0:
                    self.save()
        except FloatingPointError:
            self._fire("on_train_end")
            raise
        finally:
            self._flush_groups()
        if c.checkpoint_every or budget:
            self.save()
        self._fire("on_train_end")
        return self.history

    def _flush_groups(self) -> None:
        if isinstance(self._groups_cache, GroupsStore):  # every process keeps the groups it found
            self._groups_cache.flush()

    def _step_seconds(self) -> float:
        """What the next step will take, from the last few (0 before the first)."""
        return float(np.mean(self._recent_steps)) if self._recent_steps else 0.0

    # -- checkpoints ------------------------------------------------------------------------------

    def save(self, directory: str | Path | None = None) -> Path:
        """Write model.safetensors (the GLOM alone, config in the metadata) and trainer.pt (the rest)."""
        from glom_viz.checkpoints import save_checkpoint

        directory = Path(directory or self.config.out)
        self._flush_groups()
        if self.rank != 0:
            return directory
        directory.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.model, directory / MODEL_FILE, train_config=json.dumps(self.config.to_dict()),
                        step=str(self.step))
        if self.config.keep_checkpoints:
            self.keep(directory)
        state = {
            "step": self.step,
            "elapsed": self.elapsed,
            "wall": self.wall_seconds(),
            "decoder": self.learner.decoder.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": json.dumps(self.history),
            "config": json.dumps(self.config.to_dict()),
        }
        partial = directory / (TRAINER_FILE + ".partial")
        torch.save(state, partial)
        partial.replace(directory / TRAINER_FILE)
        self._fire("on_checkpoint", directory)
        return directory

    def keep(self, directory: str | Path | None = None) -> Path:
        """Write the GLOM at this step to the run's checkpoints/ folder (rank 0), beside the others."""
        from glom_viz.checkpoints import save_checkpoint

        path = Path(directory or self.config.out) / KEPT_DIR / kept_checkpoint_name(self.step)
        if self.rank == 0:
            save_checkpoint(self.model, path, train_config=json.dumps(self.config.to_dict()), step=str(self.step))
        return path

    @classmethod
    def resume(cls, directory: str | Path, **overrides) -> "Trainer":
        """A trainer continuing the run saved in `directory` (its config, with `overrides` such as steps)."""
        directory = Path(directory)
        if not (directory / TRAINER_FILE).exists() or not (directory / MODEL_FILE).exists():
            raise CheckpointError(f"no run to resume in {directory}: expected {MODEL_FILE} and {TRAINER_FILE} there")
        state = torch.load(directory / TRAINER_FILE, weights_only=True)
        config = TrainConfig.from_dict({**json.loads(state["config"]), **overrides})
        trainer = cls(config)
        trainer._start_from(directory / MODEL_FILE)
        trainer.learner.decoder.load_state_dict(state["decoder"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.step = int(state["step"])
        trainer.elapsed = float(state["elapsed"])
        trainer.prior_seconds = float(state.get("wall", state["elapsed"]))
        trainer.history = json.loads(state["history"])
        return trainer


# -- command line ---------------------------------------------------------------------------------

def _parse_value(text: str, field: dataclasses.Field):
    """A flag's text as its field's type: 'none' for None, 'true'/'false', comma lists for tuples."""
    kind = str(field.type)
    if text.lower() == "none":
        return None
    if kind.startswith("bool"):
        if text.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ConfigError(f"--{field.name.replace('_', '-')} takes true or false, got {text!r}")
        return text.lower() in ("1", "true", "yes", "on")
    if kind.startswith("tuple"):
        items = [x for x in text.replace("(", "").replace(")", "").split(",") if x.strip()]
        return tuple((int if "int" in kind else float)(x) for x in items)
    for name, cast in (("int", int), ("float", float), ("str", str)):
        if kind.startswith(name):
            try:
                return cast(text)
            except ValueError:
                raise ConfigError(f"--{field.name.replace('_', '-')} takes a {name}, got {text!r}") from None
    raise ConfigError(f"cannot read --{field.name} from {text!r}")


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m glom_viz.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="a JSON file of TrainConfig fields; flags override it")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                        help="stop at this step of the schedule, checkpointed as at its end; the learning rate "
                             "still follows --steps, so a later --resume continues the same schedule")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                            help=f"default {getattr(defaults, f.name)!r}")
    args = parser.parse_args(argv)
    values = json.loads(Path(args.config).read_text()) if args.config else {}
    for f in dataclasses.fields(TrainConfig):
        text = getattr(args, f.name)
        if text is not None:
            values[f.name] = _parse_value(text, f)
    args.given = values  # what the command line set, for --resume
    if args.resume:
        return TrainConfig.from_dict(values), args
    return TrainConfig.from_dict({**recipe_defaults(values), **values}), args


def recipe_defaults(given: dict) -> dict:
    """What a run takes for the fields `given` leaves out, where it differs from TrainConfig's defaults.

    With ``init``: the model's shape and options are the checkpoint's (ours, or a glom-pytorch state
    dict's as its tensors tell). With ``data``: ``DATA_RECIPE``, without common fate where the folder
    holds no second frames or videos (a listing, nothing read), with a decoder warm-up after ``init``,
    and with ``max_minutes`` a schedule that follows the clock.
    """
    values = {}
    if given.get("init") is not None and Path(given["init"]).is_file():
        from glom_viz.checkpoints import read_checkpoint

        stored = read_checkpoint(given["init"]).config
        values.update({name: getattr(stored, name) for name in MODEL_FIELDS})
    if given.get("data") is not None and given.get("data_share", 1.0) == 1:  # mixed with scenes: the scenes' recipe
        from glom_viz.data import NEXT, VIDEOS, layout_counts

        recipe = dict(DATA_RECIPE)
        counts = layout_counts(given["data"])
        if not counts[NEXT] and not counts[VIDEOS]:
            recipe["motion_weight"] = 0.0
        if given.get("init") is not None:
            recipe["decoder_warmup"] = DATA_DECODER_WARMUP
        if given.get("max_minutes"):
            recipe["steps"] = UNBOUNDED_STEPS
        values.update(recipe)
    return {name: value for name, value in values.items() if name not in given}


def main(argv: list[str] | None = None) -> int:
    try:
        config, args = parse_args(argv)
    except (ConfigError, CheckpointError) as error:
        print(f"training stopped: {error}", file=sys.stderr)
        return 2
    if args.stop_at is not None and args.stop_at < 1:
        print(f"training stopped: --stop-at must be a step of at least 1, got {args.stop_at}", file=sys.stderr)
        return 2
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
        torch.set_num_threads(max(1, usable_cpus() // dist.get_world_size()))
    try:
        if args.resume:
            trainer = Trainer.resume(config.out, **{k: v for k, v in args.given.items() if k != "out"})
        else:
            trainer = Trainer(config)
        if trainer.rank == 0:
            _attach_cli_reporting(trainer, quiet=args.quiet)
            if trainer.dataset is not None:
                print(trainer.dataset.summary(), file=sys.stderr)
        trainer.fit(args.stop_at)
        if trainer.rank == 0 and trainer.stopped_by_clock:
            print(f"stopped after {trainer.wall_seconds() / 60:.1f} of {config.max_minutes:g} minutes at step "
                  f"{trainer.step}; the model is in {Path(config.out) / MODEL_FILE}", file=sys.stderr)
    except (ConfigError, CheckpointError, FloatingPointError) as error:
        print(f"training stopped: {error}", file=sys.stderr)
        return 2
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


def log_record(trainer: Trainer) -> dict:
    """One line of a run's log.jsonl: the step, the seconds spent in steps so far, and the step's losses."""
    return {"step": trainer.step, "elapsed": round(trainer.elapsed, 2), **trainer.losses}


def _drop_steps_after(path: Path, step: int) -> None:
    """Cut a log back to its checkpoint: a run killed between checkpoints logged steps that a resume redoes."""
    if not path.exists():
        return
    def logged_step(line: str) -> float:
        try:
            return json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):  # a line cut short by the kill
            return float("inf")

    lines = path.read_text().splitlines(keepends=True)
    kept = [line if line.endswith("\n") else line + "\n" for line in lines if logged_step(line) <= step]
    if kept != lines:
        path.write_text("".join(kept))


def _attach_cli_reporting(trainer: Trainer, quiet: bool) -> None:
    """A tqdm bar and a JSON-lines log of every step in the run's folder."""
    from tqdm import tqdm

    out = Path(trainer.config.out)
    out.mkdir(parents=True, exist_ok=True)
    _drop_steps_after(out / LOG_FILE, trainer.step)
    log = open(out / LOG_FILE, "a")
    total = None if trainer.config.max_minutes and trainer.config.steps >= UNBOUNDED_STEPS else trainer.config.steps
    bar = tqdm(total=total, initial=trainer.step, disable=quiet, unit="step")

    def on_step(t: Trainer):
        log.write(json.dumps(log_record(t)) + "\n")
        log.flush()
        bar.update(1)
        bar.set_postfix({k: f"{v:.4f}" for k, v in t.losses.items() if k != "lr"})

    def on_end(t: Trainer):
        bar.close()
        log.close()

    trainer.add_callback("on_step_end", on_step)
    trainer.add_callback("on_train_end", on_end)


if __name__ == "__main__":
    sys.exit(main())
