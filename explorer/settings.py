"""What the sidebar's panels return: one small frozen dataclass per panel, and the choices they offer.

Computation takes these settings; it never reads widgets. Frozen and hashable, so they key the caches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from glom_viz import islands
from glom_viz.model import PRECISIONS, RELEASE, GlomConfig, run_path
from glom_viz.scenes import EVAL_SEEDS

# the model panel
SOURCES = {"shipped": "Trained (shipped)", "content": "Trained, content only", "balanced": "Trained, balanced",
           "random": "Random weights (seeded)", "upload": "Upload a checkpoint"}
# the sources that are a shipped model, and which (glom_viz.checkpoints.SHIPPED_KINDS)
SHIPPED_SOURCES = {"shipped": "scenes", "content": "content", "balanced": "balanced"}
# the shipped model's shape: a random model of the same shape stands in for it when the file is missing
RANDOM_CONFIG = GlomConfig(dim=64, levels=4, image_size=64, patch_size=4)
RANDOM_SEED = 0
PRECISION_LABELS = {"fast": "fast", "bf16": "bf16", "fp32": "exact fp32"}
# what "fast" runs as (glom_viz.model.run_path): bf16 where it is faster here, else int8 nets where they
# are, else fp32
PATH_NAMES = {"bf16": "bf16", "fp16": "fp16", "int8": "int8 nets", "fp32": "fp32"}


@dataclass(frozen=True)
class PrecisionChoices:
    """The precisions the page offers a model here: the path each runs (glom_viz.model.run_path), and the one
    it opens on."""

    paths: dict
    default: str

    @property
    def offered(self) -> list[str]:
        return [p for p in PRECISIONS if p in self.paths]


def precision_choices(dim: int) -> PrecisionChoices:
    """Fast and exact, and bf16 beside them where fast means the int8 nets and bf16 is faster than fp32. The
    page opens on the fastest path that moves the islands no more than a grey level of noise on the picture
    does: bf16 where it is faster than fp32 (the int8 nets move a trained model's islands further), else
    exact (experiments/precision_islands.py)."""
    fast, bf16 = run_path(dim, "fast"), run_path(dim, "bf16")
    own_bf16 = fast == "int8" and bf16 == "bf16"  # a "bf16" request runs bf16 or fp32
    paths = {"fast": fast, **({"bf16": bf16} if own_bf16 else {}), "fp32": "fp32"}
    return PrecisionChoices(paths, "bf16" if own_bf16 else "fast" if fast in ("bf16", "fp16") else "fp32")


# the images panel
SCENE_SEEDS = tuple(EVAL_SEEDS[i] for i in (0, 1, 2))  # held-out scenes, never seen in training
SCENE_NAMES = tuple(f"scene {i + 1}" for i in range(len(SCENE_SEEDS)))
PHOTOS = ("china", "flower", "astronaut", "coffee", "chelsea")
IMAGE_TYPES = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif")
VIDEO_TYPES = ("mp4", "mov", "m4v", "webm")  # read through PyAV; a clip becomes a sequence of frames
MASK_TYPES = ("png", "bmp", "gif", "tif", "tiff", "webp")
FIT_LABELS = {"crop": "crop the centre", "pad": "pad with white", "stretch": "stretch"}

# the islands panel
COUNT_LABELS = {"davies_bouldin": "Davies-Bouldin (separated islands)", "silhouette": "best silhouette"}
METHOD_LABELS = {"kmeans": "k-means", "agglomerative": "agglomerative (Ward)", "hdbscan": "HDBSCAN",
                 "threshold": "threshold on neighbours' cosine"}
MAX_FIXED_ISLANDS = 24
DEFAULT_FIXED_ISLANDS = 4


@dataclass(frozen=True)
class ModelSettings:
    """Which model to explore."""

    source: str  # a key of SOURCES
    seed: int
    config: GlomConfig  # for random weights
    checkpoint_name: str | None = None
    checkpoint: bytes | None = field(default=None, repr=False)
    consensus_self: bool = False  # asked for glom-pytorch state dicts, which cannot say
    # GlomConfig fields given for a state dict whose tensors do not tell them (the checkpoint config form)
    checkpoint_config: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class ImageSettings:
    """Which pictures, and how they become the model's square input."""

    bundled: tuple[str, ...]
    uploads: tuple[tuple[str, bytes], ...]  # (file name, bytes) in upload order
    fit: str
    animations_as_frames: bool
    sequence: bool  # carry each frame's final state into the next
    dataset: tuple[str, bytes] | None = field(default=None, repr=False)  # a zip of the dataset layout (name, bytes)
    let_go: bool = True  # in a sequence, carried columns let go where the picture changed

    @property
    def release(self) -> float | None:
        """What a sequence's runs let carried columns go from (glom_viz.model.Glom.let_go's RMS pixel
        change); None: no sequence, or every column carried as it is."""
        return RELEASE if self.sequence and self.let_go else None


@dataclass(frozen=True)
class RunSettings:
    """How GLOM runs: for how many iterations, and on which precision path (glom_viz.model.run_path)."""

    iterations: int
    path: str = "fp32"

    @property
    def precision(self) -> str:
        """What glom_viz.runs.run is asked for: "fp32" for the exact path, "bf16" for autocast's dtype (never
        the int8 nets), else "fast"."""
        return {"fp32": "fp32", "bf16": "bf16"}.get(self.path, "fast")


@dataclass(frozen=True)
class IslandSettings:
    """How islands are found: glom_viz.islands.find_islands's method, count and parameters."""

    method: str
    n_islands: int | None
    params: tuple[tuple[str, object], ...] = ()

    def keywords(self) -> dict:
        return {"method": self.method, "n_islands": self.n_islands, **dict(self.params)}

    def describe(self) -> str:
        count = "automatic count" if self.n_islands is None else f"{self.n_islands} islands"
        extra = ", ".join(f"{k}={'picked per map' if v is None else v}" for k, v in self.params)
        return ", ".join(x for x in (METHOD_LABELS[self.method], count if self.method in islands.COUNT_METHODS
                                     else "", extra) if x)
