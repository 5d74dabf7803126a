"""The one exception type the CLI turns into a single sentence and a non-zero exit."""


class TinygenError(Exception):
    """A user-facing problem: the message names the problem and the fix."""

    exit_code = 2


class ModelError(TinygenError):
    """A model that is malformed, unsupported or inconsistent."""


class BuildError(TinygenError):
    """Generated code failed to compile or run."""

    exit_code = 3


class MismatchError(TinygenError):
    """Generated code ran but disagreed with the reference."""

    exit_code = 1
