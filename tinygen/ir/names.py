"""C names derived from model names."""

from __future__ import annotations

import re


def c_ident(name: str) -> str:
    s = re.sub(r"[^0-9A-Za-z_]", "_", name)
    return s if s and not s[0].isdigit() else f"t_{s}"
