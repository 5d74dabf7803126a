"""Where the non-Python parts of the project live (source checkout or installed wheel)."""

from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """`templates`, `cmsis_glue`, `firmware` or `boards`."""
    for base in (_PKG.parent, _PKG / "_data"):
        if (base / name).is_dir():
            return base / name
    raise FileNotFoundError(f"tinygen's {name}/ directory is missing from the installation")


def shared_dir() -> Path | None:
    """`../shared` beside the checkout (the project's test data), if present."""
    env = os.environ.get("TINYGEN_SHARED")
    for cand in ([Path(env)] if env else []) + [_PKG.parent.parent / "shared", Path.cwd().parent / "shared"]:
        if cand.is_dir():
            return cand
    return None
