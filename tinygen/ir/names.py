"""Names from a model file, made safe for the C (and build files) generated from them.

A model's names are data: nothing in them may change the compiled program. Identifiers keep
the characters `[a-z0-9_]` of the name and, when anything else was there (including upper case,
which `upper()` would fold), a hash suffix that keeps distinct names distinct. Text reaches C only
through `c_string` (a quoted literal) or `c_comment` (inside `/* */`).
"""

from __future__ import annotations

import re
import zlib

MAX_NAME = 128  # characters in a model, tensor or layer name
MAX_IDENT_BODY = 40  # characters of the name kept in an identifier, before the suffix

_PLAIN = re.compile(r"[a-z0-9_]+")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be used (None if it can): only empty, NUL-bearing or over-long names are refused."""
    if not name:
        return "is empty"
    if len(name) > MAX_NAME:
        return f"is {len(name)} characters long (at most {MAX_NAME})"
    if "\0" in name:
        return "contains a NUL character"
    return None


def c_ident(name: str) -> str:
    """A C identifier body for `name`: the name itself when it is plain, else its safe characters plus
    8 hex digits of the name's CRC-32 (so `a.b`, `a_b` and `A_b` stay three identifiers)."""
    if _PLAIN.fullmatch(name) and not name[0].isdigit() and len(name) <= MAX_IDENT_BODY:
        return name
    body = re.sub(r"[^0-9a-z_]", "_", name.lower())[:MAX_IDENT_BODY].strip("_") or "n"
    if body[0].isdigit():
        body = f"n{body}"
    return f"{body}_{zlib.crc32(name.encode('utf-8', 'surrogatepass')):08x}"


def c_string(text: str) -> str:
    """`text` as a C string literal: quotes, backslashes, `?` (trigraphs) and every byte outside
    printable ASCII escaped in octal."""
    out = []
    for b in str(text).encode("utf-8", "surrogatepass"):
        ch = chr(b)
        if ch in '"\\?':
            out.append("\\" + ch)
        elif 0x20 <= b < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def c_comment(text: str) -> str:
    """`text` safe inside a `/* */` comment (and on one line of any generated file): printable ASCII
    only, no comment delimiters, no line breaks, no backslashes."""
    s = "".join(ch if 0x20 <= ord(ch) < 0x7F else "?" for ch in str(text))
    s = s.replace("\\", "/")
    while "*/" in s or "/*" in s:
        s = s.replace("*/", "* /").replace("/*", "/ *")
    return s


def layer_symbol(index: int, name: str) -> str:
    """The C prefix of everything generated for layer `index` (kernels, weights, constants)."""
    return f"tg_l{index}_{c_ident(name)}"
