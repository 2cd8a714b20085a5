"""glom-viz: an explorer for the islands of agreement in Hinton's GLOM.

``from glom_viz import Glom`` is a drop-in for ``glom_pytorch.Glom``.
"""

from glom_viz.errors import (
    CheckpointError,
    ConfigError,
    ExportError,
    GlomInputError,
    ImageLoadError,
    StatesError,
)
from glom_viz.model import Glom, GlomConfig, GlomStep, default_device

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ConfigError", "ExportError", "GlomInputError", "ImageLoadError", "StatesError",
    "Glom", "GlomConfig", "GlomStep", "default_device", "__version__",
]
