"""Exception classes for bad model input.

Each is a ``common.errors`` user error, so the CLI (and anything that looks through a wrapped
failure's cause chain with ``find_user_error``, as TFX / Beam runs need) prints it as one line
and exits 2 instead of showing a traceback; and each is also a ValueError, so callers that only
know "bad value" still catch it. The message always names the offending key / field / file so
the user can fix the input without a debugger.
"""

from common.errors import ConfigError as _UserConfigError
from common.errors import UserError


class ConfigError(_UserConfigError, ValueError):
    """A model config (preset, HF config.json, override) is invalid or unsupported."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file is damaged, or is missing a tensor, has an extra one, or one with the
    wrong shape/dtype."""


class GenerationError(UserError, ValueError):
    """A generation request cannot be served (e.g. prompt longer than the model's context)."""
