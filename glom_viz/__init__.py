"""glom-viz: an explorer for the islands of agreement in Hinton's GLOM.

``from glom_viz import Glom`` is a drop-in for ``glom_pytorch.Glom``. The islands engine, projections,
trainer, evaluator and checkpoints are here too; the heavier of them (scikit-learn, umap) load on first
use, so importing the model stays quick. Projections and evaluation live in ``glom_viz.project`` and
``glom_viz.evaluate`` (their modules share the functions' names, so they are not re-exported here).
"""

import importlib

from glom_viz.errors import (
    CheckpointError,
    ConfigError,
    ExportError,
    GlomInputError,
    ImageLoadError,
    RunError,
    StatesError,
)
from glom_viz.model import Glom, GlomConfig, GlomStep, default_device

__version__ = "0.1.0"

# name -> module: resolved on first access (PEP 562)
_LAZY = {
    "find_islands": "glom_viz.islands",
    "find_islands_all_levels": "glom_viz.islands",
    "align_islands": "glom_viz.islands",
    "island_measures": "glom_viz.islands",
    "parse_tree": "glom_viz.islands",
    "load_checkpoint": "glom_viz.checkpoints",
    "save_checkpoint": "glom_viz.checkpoints",
    "load_shipped": "glom_viz.checkpoints",
    "Trainer": "glom_viz.train",
    "TrainConfig": "glom_viz.train",
    "make_scene": "glom_viz.scenes",
    "open_run": "glom_viz.training_runs",
    "find_runs": "glom_viz.training_runs",
}

__all__ = [
    "CheckpointError", "ConfigError", "ExportError", "GlomInputError", "ImageLoadError", "RunError", "StatesError",
    "Glom", "GlomConfig", "GlomStep", "default_device", "__version__", *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glom_viz' has no attribute {name!r}")
