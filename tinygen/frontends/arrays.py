"""Rules every loader applies to the arrays in a model file, before trusting them."""

from __future__ import annotations

import zipfile

import numpy as np

from tinygen.errors import ModelError

MAX_MODEL_BYTES = 256 << 20  # a model file's arrays (or pickle) may declare at most this much


def native(v: np.ndarray, want: np.dtype) -> np.ndarray:
    """`v` in native byte order when it is `want` in the other order (either byte order is accepted)."""
    if v.dtype != want and v.dtype.newbyteorder("=") == np.dtype(want):
        return v.astype(want)
    return v


def check_npz_sizes(path, zf: zipfile.ZipFile) -> None:
    """Refuse an .npz whose members declare more than MAX_MODEL_BYTES, reading only their headers
    (a small file must not make the loader allocate gigabytes)."""
    total = 0
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            continue
        try:
            f = zf.open(info)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError, OSError) as exc:
            raise ModelError(f"{path}: member {info.filename} cannot be opened ({exc})") from None
        with f:
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            except (ValueError, EOFError, OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
                raise ModelError(f"{path}: member {info.filename} has no readable array header ({exc})") from None
        count = 1
        for d in shape:
            count *= int(d)
        total += count * dtype.itemsize
        if total > MAX_MODEL_BYTES:
            raise ModelError(f"{path}: its arrays declare more than the {MAX_MODEL_BYTES >> 20} MiB a model file "
                             f"may have (member {info.filename}: shape {list(shape)}, {dtype})")


def check_file(path, what: str, limit: int = MAX_MODEL_BYTES, hint: str = "") -> None:
    """`path` is a file of at most `limit` bytes, else one ModelError sentence naming it (`what` it is for)."""
    if not path.is_file():
        raise ModelError(f"{what} {path} does not exist{hint}")
    size = path.stat().st_size
    if size > limit:
        raise ModelError(f"{path} is {size:,} bytes; {what} may have at most {limit >> 20} MiB")
