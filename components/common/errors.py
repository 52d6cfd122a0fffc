"""User-facing errors: re-exported from ``common.errors``, where they live so that configs/ and
model/ can raise them without importing components/. See that module for the contract."""

from common.errors import ConfigError, DeployError, InputDataError, UserError, find_user_error

__all__ = ["UserError", "ConfigError", "InputDataError", "DeployError", "find_user_error"]
