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
    """A checkpoint that is not data we can load, or does not fit the model.

    Where the model's config would make it load, ``fields`` names the ``GlomConfig`` fields to give,
    ``read`` holds what its tensors told, and ``reason`` is the message without the advice on how to
    pass them (for a page that offers the fields instead).
    """

    def __init__(self, message: str, *, fields: tuple[str, ...] = (), read: dict | None = None,
                 reason: str | None = None):
        super().__init__(message)
        self.fields = tuple(fields)
        self.read = dict(read or {})
        self.reason = reason or message

    def __reduce__(self):
        # pickled (a cache keeps it, a process passes it on) with what the config form needs
        return type(self), self.args, self.__dict__


class RunError(ValueError):
    """A training-run name or folder that cannot be opened (not under the runs folder, or not a run)."""


class ExportError(RuntimeError):
    """An export that cannot be written (for example: no browser for static images)."""
