"""The one exception type the CLI turns into a single sentence and a non-zero exit."""

import re

# NumPy 2 scalars print as `np.int64(0)`; a user's message shows the number, whichever type carried it.
_NUMPY_REPR = re.compile(r"np\.(?:u?int\d+|float\d+|longdouble|str_|bytes_)\(([^()]*)\)|np\.(True|False)_")


class TinygenError(Exception):
    """A user-facing problem: the message names the problem and the fix."""

    exit_code = 2

    def __str__(self) -> str:
        return _NUMPY_REPR.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(2), super().__str__())


class ModelError(TinygenError):
    """A model that is malformed, unsupported or inconsistent."""


class BuildError(TinygenError):
    """Generated code failed to compile or run."""

    exit_code = 3


class MismatchError(TinygenError):
    """Generated code ran but disagreed with the reference."""

    exit_code = 1
