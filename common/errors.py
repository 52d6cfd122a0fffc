"""User-facing errors.

A ``UserError`` is a problem with what the user gave us (a config, a path, a corpus file, a
checkpoint). The CLI prints its message on one line and exits non-zero without a traceback;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user. The message must name the file / key / field at fault."""


class ConfigError(UserError):
    """Invalid configuration: unknown key, wrong type, invalid value, unknown preset."""


class InputDataError(UserError):
    """Corpus or other input data that cannot be read or parsed."""


class DeployError(UserError):
    """Kubeflow Pipelines endpoint missing, unreachable or refusing a request."""


def find_user_error(exc: BaseException) -> UserError | None:
    """Return the first UserError in an exception's cause/context chain.

    Orchestrators (TFX's LocalDagRunner, Beam) re-raise component failures wrapped in their
    own exception types; the original UserError is still reachable through the chain.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UserError):
            return e
        todo.extend([e.__cause__, e.__context__])
    return None
