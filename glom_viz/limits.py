"""What a server allows: limit dataclasses whose fields a server raises with ``GLOM_VIZ_<FIELD>``.

``glom_viz.images.ImageLimits`` (uploads) and ``glom_viz.checkpoints.CheckpointLimits`` (checkpoints)
are both ``Limits``: every field a positive number, each read from the environment when glom-viz is
imported (``GLOM_VIZ_MAX_PIXELS=100000000``), or passed per call in Python. ``usable_cpus`` says how many
cores this process may use.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import ClassVar

from glom_viz.errors import ConfigError

ENV_PREFIX = "GLOM_VIZ_"  # a server raises a limit with GLOM_VIZ_<FIELD>, e.g. GLOM_VIZ_MAX_PIXELS


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity where the OS tells it, else the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Positive numbers, each replaceable from the environment (see ``from_env``)."""

    KIND: ClassVar[str] = "limit"  # how messages name a field: "image limit max_pixels=0 ..."

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{self.KIND} {field.name}={value!r} must be a positive number")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ):
        """The defaults, each replaced by ``GLOM_VIZ_<FIELD>`` where set (``GLOM_VIZ_MAX_PIXELS=100000000``)."""
        values = {}
        for field in dataclasses.fields(cls):
            variable = ENV_PREFIX + field.name.upper()
            text = environ.get(variable)
            if text is None:
                continue
            kind = float if field.type in (float, "float") else int
            example = f"{variable}={getattr(cls, field.name)}"
            try:
                value = kind(text.replace("_", ""))
            except ValueError:
                raise ConfigError(f"{variable}={text!r} is not a{'' if kind is int else ' real'} number: set it "
                                  f"like {example}") from None
            if not value > 0:
                raise ConfigError(f"{variable}={text!r} must be a positive number: set it like {example}")
            values[field.name] = value
        return cls(**values)
