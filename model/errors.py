"""Exception classes for bad model input.

Both subclass ValueError so callers that only know "bad value" still catch them; the message
always names the offending key / field / file so the user can fix the input without a debugger.
"""


class ConfigError(ValueError):
    """A model config (preset, HF config.json, override) is invalid or unsupported."""


class CheckpointError(ValueError):
    """A checkpoint is missing a tensor, has an extra one, or one with the wrong shape/dtype."""


class GenerationError(ValueError):
    """A generation request cannot be served (e.g. prompt longer than the model's context)."""
