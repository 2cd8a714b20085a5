"""The model a page explores: the shipped one, a seeded random one, or an uploaded checkpoint.

Loaded once per content hash and shared by every visitor (``explorer.cache.model``). What could not be
had falls back to the shipped model (or, without its file, a random stand-in of its shape), with a
sentence saying why.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from explorer import cache
from explorer.limits import CHECKPOINT_LIMITS
from explorer.settings import RANDOM_CONFIG, RANDOM_SEED, ModelSettings
from glom_viz.checkpoints import SHIPPED_CHECKPOINT, check_limits, checkpoint_hash, read_checkpoint
from glom_viz.errors import CheckpointError, ConfigError
from glom_viz.model import Glom, GlomConfig
from glom_viz.text import plain, plain_name

STAND_IN_TITLE = "random GLOM (stand-in)"
STAND_IN_NOTE = (f"**Stand-in model.** The trained model is not shipped yet, so this is a random GLOM (seed "
                 f"{RANDOM_SEED}) of its shape: its islands come from untrained weights.")


@dataclass(frozen=True, eq=False)
class LoadedModel:
    model: Glom
    key: str  # content hash: the checkpoint's sha256 (and what was assumed), or the random model's seed and config
    title: str
    note: str | None  # what the user should know (a stand-in, what was inferred)
    checkpoint_sha: str

    @property
    def stand_in(self) -> bool:
        return self.title == STAND_IN_TITLE


def random_model(seed: int, config: GlomConfig, title: str, note: str | None) -> LoadedModel:
    with torch.random.fork_rng(devices=[]):  # other visitors' random state is left alone
        torch.manual_seed(seed)
        model = Glom.from_config(config)
    return LoadedModel(model, cache.content_key("random", seed, config), title, note, f"random:{seed}")


def _stand_in() -> LoadedModel:
    return cache.model(cache.content_key("random", RANDOM_SEED, RANDOM_CONFIG),
                       lambda: random_model(RANDOM_SEED, RANDOM_CONFIG, STAND_IN_TITLE, STAND_IN_NOTE))


def _shipped() -> LoadedModel:
    if not SHIPPED_CHECKPOINT.is_file():
        return _stand_in()
    sha = checkpoint_hash(SHIPPED_CHECKPOINT)

    def load() -> LoadedModel:
        checkpoint = read_checkpoint(SHIPPED_CHECKPOINT)
        return LoadedModel(checkpoint.model, sha, "trained GLOM (shipped)", checkpoint.note, sha)
    return cache.model(sha, load)


def load_model(settings: ModelSettings) -> tuple[LoadedModel, str | None]:
    """The model the settings ask for, and an error to show if it could not be had (then a stand-in)."""
    if settings.source == "random":
        seed, config = settings.seed, settings.config
        try:  # before it is built: a tiny patch size asks for gigabytes of consensus masks
            check_limits(config, CHECKPOINT_LIMITS, "this random GLOM")
        except CheckpointError as error:
            return _shipped(), plain(str(error))
        return cache.model(cache.content_key("random", seed, config), lambda: random_model(
            seed, config, f"random GLOM (seed {seed})",
            "Untrained weights: islands come from the architecture alone.")), None
    if settings.source == "upload":
        if settings.checkpoint is None:
            return _shipped(), None
        sha = checkpoint_hash(settings.checkpoint)
        name, data, consensus_self = settings.checkpoint_name, settings.checkpoint, settings.consensus_self

        def load() -> LoadedModel:
            checkpoint = read_checkpoint(data, assume={"consensus_self": consensus_self}, limits=CHECKPOINT_LIMITS)
            note = plain(checkpoint.note) if checkpoint.note else None  # a note is shown as Markdown
            return LoadedModel(checkpoint.model, cache.content_key(sha, checkpoint.config), f"checkpoint {name}",
                               note, sha)
        try:
            return cache.model(cache.content_key(sha, consensus_self), load), None
        except (CheckpointError, ConfigError) as error:
            return _shipped(), f"Could not use the checkpoint **{plain_name(name)}**: {plain(str(error))}"
    try:
        return _shipped(), None
    except (CheckpointError, ConfigError) as error:
        return _stand_in(), f"The shipped model could not be loaded: {plain(str(error))}"
