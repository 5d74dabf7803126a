"""Names from a model file, made safe for the C (and build files) generated from them.

A model's names are data: nothing in them may change the compiled program. Identifiers keep
the characters `[a-z0-9_]` of the name and, when anything else was there (including upper case,
which `upper()` would fold), a hash suffix that keeps distinct names distinct. Text reaches C only
through `c_string` (a quoted literal) or `c_comment` (inside `/* */`), a Renode .robot only through
`robot_arg`.
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


_ROBOT_SPECIAL = "\\$@&%#|"  # Robot Framework's escape, variable, comment and pipe-separator characters


def robot_arg(text: str) -> str:
    """`text` as one Robot Framework argument meaning its UTF-8 bytes as the firmware prints them (Renode's UART
    tester sees one character per byte): printable ASCII as itself, Robot's special characters and every other
    byte as `\\xhh`, a space that Robot would drop or take for a separator (at either end, or beside another
    space) as `${SPACE}`."""
    raw = str(text).encode("utf-8", "surrogatepass")
    out = []
    for i, b in enumerate(raw):
        if b == 0x20 and (i in (0, len(raw) - 1) or raw[i - 1] == 0x20 or raw[i + 1] == 0x20):
            out.append("${SPACE}")
        elif 0x20 <= b < 0x7F and chr(b) not in _ROBOT_SPECIAL:
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)


def layer_symbol(index: int, name: str) -> str:
    """The C prefix of everything generated for layer `index` (kernels, weights, constants)."""
    return f"tg_l{index}_{c_ident(name)}"
