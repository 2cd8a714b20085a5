"""The model a page explores: one of the two shipped ones, a seeded random one, or an uploaded checkpoint.

Loaded once per content hash and shared by every visitor (``explorer.cache.model``). What could not be
had falls back to the shipped model (or, without its file, a random stand-in of its shape), with a
sentence saying why.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from explorer import cache
from explorer.limits import CHECKPOINT_LIMITS
from explorer.settings import RANDOM_CONFIG, RANDOM_SEED, SHIPPED_SOURCES, ModelSettings
from glom_viz.checkpoints import check_limits, checkpoint_hash, read_checkpoint, shipped_path
from glom_viz.errors import CheckpointError, ConfigError
from glom_viz.model import Glom, GlomConfig
from glom_viz.text import plain, plain_name
from glom_viz.training_runs import TrainingRun

SHIPPED_TITLE = "trained GLOM (shipped)"
CONTENT_TITLE = "trained GLOM, content only (shipped)"
BALANCED_TITLE = "trained GLOM, balanced (shipped)"
# what each shipped model was trained on and is good for (glom_viz/assets/*-provenance.json), said wherever
# it is used
SHIPPED_KNOWS = ("Trained self-supervised on 64 px synthetic part-whole scenes (glom_viz.scenes) only, told "
                 "each patch's position: it finds their objects, but on photographs its upper levels cut "
                 "even ground into tiles by position. For your own pictures, pick the content-only model.")
CONTENT_KNOWS = ("The shipped model fine-tuned with no position told: its islands follow what the patches show, "
                 "so a sky stays one island and islands move with the picture. On the synthetic scenes it finds "
                 "objects less well (FG-ARI 0.72 against 0.91), and alike objects share an island.")
BALANCED_KNOWS = ("The content-only model fine-tuned with each patch's position told once, at the start of the top "
                  "level, whose consensus spans the picture, so that an island shares one position: alike objects "
                  "part, and islands move with the scenes. Between the other two: the scenes' objects at FG-ARI 0.87 "
                  "(0.91 scenes model, 0.72 content-only), and islands that follow moving objects. On photographs "
                  "its upper levels still cut even ground into a few large regions by position: for your own "
                  "pictures, pick the content-only model.")
KNOWS = {SHIPPED_TITLE: SHIPPED_KNOWS, CONTENT_TITLE: CONTENT_KNOWS, BALANCED_TITLE: BALANCED_KNOWS}
SHIPPED_TITLES = {"scenes": SHIPPED_TITLE, "content": CONTENT_TITLE, "balanced": BALANCED_TITLE}
STAND_IN_TITLE = "random GLOM (stand-in)"
STAND_IN_NOTE = (f"**Stand-in model.** The trained model is not shipped yet, so this is a random GLOM (seed "
                 f"{RANDOM_SEED}) of its shape: its islands come from untrained weights.")


@dataclass(frozen=True, eq=False)
class LoadedModel:
    model: Glom
    key: str  # content hash: the checkpoint's sha256 (and what was assumed), or the random model's seed and config
    title: str
    note: str | None  # what the user should know (a stand-in, what was inferred)
    checkpoint_sha: str | None  # sha256 of the checkpoint's bytes; None for weights drawn from a seed
    seed: int | None = None  # the seed of drawn weights

    @property
    def stand_in(self) -> bool:
        return self.title == STAND_IN_TITLE

    @property
    def shipped_kind(self) -> str | None:
        """Which shipped model this is (a kind of ``SHIPPED_KINDS``), or None."""
        return {title: kind for kind, title in SHIPPED_TITLES.items()}.get(self.title)

    @property
    def knows(self) -> str | None:
        """What a shipped model was trained on and is good for; None for other models."""
        return KNOWS.get(self.title)


def random_model(seed: int, config: GlomConfig, title: str, note: str | None) -> LoadedModel:
    with torch.random.fork_rng(devices=[]):  # other visitors' random state is left alone
        torch.manual_seed(seed)
        model = Glom.from_config(config)
    return LoadedModel(model, cache.content_key("random", seed, config), title, note, None, seed)


def _stand_in() -> LoadedModel:
    return cache.model(cache.content_key("random", RANDOM_SEED, RANDOM_CONFIG),
                       lambda: random_model(RANDOM_SEED, RANDOM_CONFIG, STAND_IN_TITLE, STAND_IN_NOTE))


def shipped_model(kind: str = "scenes") -> LoadedModel:
    """A shipped model (a kind of ``SHIPPED_KINDS``); without its file, the scenes model, or without that a stand-in."""
    path = shipped_path(kind)
    if not path.is_file():
        return _stand_in() if kind == "scenes" else shipped_model("scenes")
    sha = checkpoint_hash(path)

    def load() -> LoadedModel:
        checkpoint = read_checkpoint(path)
        return LoadedModel(checkpoint.model, sha, SHIPPED_TITLES[kind], checkpoint.note, sha)
    return cache.model(sha, load)


@dataclass(frozen=True)
class ModelProblem:
    """Why the model asked for could not be had: a sentence, and for a checkpoint that its config would
    make load, the fields to ask for and what its tensors told (glom_viz's CheckpointError.fields, .read)."""

    message: str
    fields: tuple[str, ...] = ()
    read: tuple[tuple[str, object], ...] = ()


def state_dict_note(checkpoint) -> str | None:
    """What was read or assumed to build a state dict, with how to change an assumption on this page."""
    if checkpoint.note is None:
        return None
    if "consensus_self" in checkpoint.assumed:
        return (f"{checkpoint.note}. If the model was trained with columns attending to themselves, tick "
                "consensus_self under the uploader.")
    return checkpoint.note


def untrained_like(config: GlomConfig, seed: int = RANDOM_SEED) -> LoadedModel:
    """A model of the same shape with weights drawn from a seed: what training started from."""
    return cache.model(cache.content_key("random", seed, config), lambda: random_model(
        seed, config, f"untrained GLOM (seed {seed})", "Untrained weights of the same shape."))


def training_checkpoint(run: TrainingRun, step: int) -> LoadedModel:
    """A training run's checkpoint at a step, loaded once per file (its path, size and time key it).

    Raises:
        CheckpointError, RunError: the checkpoint cannot be loaded (the message says why).
    """
    kept = next((c for c in run.readable if c.step == step), None)
    if kept is None:
        return run.checkpoint(step)  # raises RunError naming the steps there are
    stat = kept.path.stat()
    key = cache.content_key("training run", run.name, step, str(kept.path), stat.st_size, stat.st_mtime_ns)

    def load() -> LoadedModel:
        checkpoint = run.checkpoint(step)
        return LoadedModel(checkpoint.model, cache.content_key(key, checkpoint.sha256),
                           f"run {run.name} at step {step}", None, checkpoint.sha256)
    return cache.model(key, load)


def load_model(settings: ModelSettings) -> tuple[LoadedModel, ModelProblem | None]:
    """The model the settings ask for, and why it could not be had if it could not (then a stand-in)."""
    if settings.source == "random":
        seed, config = settings.seed, settings.config
        try:  # before it is built: a tiny patch size asks for gigabytes of consensus masks
            check_limits(config, CHECKPOINT_LIMITS, "this random GLOM")
        except CheckpointError as error:
            return shipped_model(), ModelProblem(plain(str(error)))
        return cache.model(cache.content_key("random", seed, config), lambda: random_model(
            seed, config, f"random GLOM (seed {seed})",
            "Untrained weights: islands come from the architecture alone.")), None
    if settings.source == "upload":
        if settings.checkpoint is None:
            return shipped_model(), None
        sha = checkpoint_hash(settings.checkpoint)
        name, data, consensus_self = settings.checkpoint_name, settings.checkpoint, settings.consensus_self
        given = dict(settings.checkpoint_config)

        def load() -> LoadedModel:
            checkpoint = read_checkpoint(data, assume={"consensus_self": consensus_self, **given},
                                         limits=CHECKPOINT_LIMITS)
            note = state_dict_note(checkpoint)
            return LoadedModel(checkpoint.model, cache.content_key(sha, checkpoint.config), f"checkpoint {name}",
                               plain(note) if note else None, sha)  # a note is shown as Markdown
        try:
            return cache.model(cache.content_key(sha, consensus_self, settings.checkpoint_config), load), None
        except CheckpointError as error:
            if error.fields:
                return shipped_model(), ModelProblem(
                    f"Could not use the checkpoint **{plain_name(name)}**: {plain(error.reason)}. Give the config "
                    "it was trained with in the sidebar, under the uploader.", error.fields,
                    tuple(sorted({**error.read, **given}.items())))
            return shipped_model(), ModelProblem(f"Could not use the checkpoint **{plain_name(name)}**: {plain(str(error))}")
        except ConfigError as error:
            return shipped_model(), ModelProblem(f"Could not use the checkpoint **{plain_name(name)}**: {plain(str(error))}")
    try:
        return shipped_model(SHIPPED_SOURCES.get(settings.source, "scenes")), None
    except (CheckpointError, ConfigError) as error:
        return _stand_in(), ModelProblem(f"The shipped model could not be loaded: {plain(str(error))}")
