"""One exception type per kind of failure a user can meet. All are ValueErrors, caught at the edge."""


class GlomInputError(ValueError):
    """An image or state tensor that the model cannot take (wrong size, channels, non-finite)."""


class ConfigError(ValueError):
    """A model or training configuration that cannot work."""


class StatesError(ValueError):
    """States, grids or clustering settings the islands engine cannot use."""


class ImageLoadError(ValueError):
    """An uploaded file that is not a usable image."""


class DataError(ValueError):
    """A dataset folder or zip with nothing usable in it, or a path that is not one."""


class CheckpointError(ValueError):
    """A checkpoint that is not data we can load, or does not fit the model."""


class RunError(ValueError):
    """A training-run name or folder that cannot be opened (not under the runs folder, or not a run)."""


class ExportError(RuntimeError):
    """An export that cannot be written (for example: no browser for static images)."""
