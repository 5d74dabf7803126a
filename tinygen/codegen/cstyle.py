"""C text for templates: constant folding and clang-format layout.

The one place that knows the committed .clang-format's column limit and how clang-format 14 lays out
what the templates write (definitions, calls, block comments, braced initializers), and the one
implementation of generation-time folding: identity arithmetic (`+ 0`, `* 1`, `% 1`) and one-trip
loops vanish, so the emitted C keeps exactly the reference's arithmetic and nothing more. The
templates write the C; these helpers only fold expressions and lay out text. `register(env)` makes
them Jinja globals (and `expr` a test) for every template.
"""

from __future__ import annotations

import re
import textwrap

import jinja2
import numpy as np

CTYPES = {np.dtype(np.int8): "int8_t", np.dtype(np.int16): "int16_t", np.dtype(np.int32): "int32_t",
          np.dtype(np.uint8): "uint8_t", np.dtype(np.uint32): "uint32_t"}
COLUMN_LIMIT = 100  # .clang-format ColumnLimit: every emitted line fits


class Expr(str):
    """C expression text with its operator precedence (3 atom, 2 multiplicative, 1 additive) and, when
    every operand is a constant, its value."""

    def __new__(cls, text: str, prec: int = 3, value: int | None = None):
        obj = super().__new__(cls, text)
        obj.prec, obj.value = prec, value
        return obj


def _value(x) -> int | None:
    if isinstance(x, Expr):
        return x.value
    return int(x) if isinstance(x, int) and not isinstance(x, bool) else None


def _text(x, prec: int) -> str:
    """`x` as an operand that binds at least as tightly as `prec` (parenthesised if needed)."""
    p = x.prec if isinstance(x, Expr) else (3 if not isinstance(x, int) or x >= 0 else 2)
    return f"({x})" if p < prec else str(x)


def _both(a, b, op) -> int | None:
    va, vb = _value(a), _value(b)
    return None if va is None or vb is None else op(va, vb)


# The folding helpers: operands are C text (a loop variable), ints (a removed loop's index, 0) or named
# constants (their enumerator name, with their value). Identities are applied at generation time, so
# the emitted C has no `+ 0`, `* 1`, `/ 1` or `% 1`; the arithmetic left is exactly the original's.
def _binary(a, sym: str, b, prec: int, op) -> Expr | int:
    """`a sym b` for a left-associative operator of precedence `prec`, with its value when both are known;
    two literals (plain ints, not named constants) fold to their result."""
    if type(a) is int and type(b) is int:
        return op(a, b)
    return Expr(f"{_text(a, prec)} {sym} {_text(b, prec + 1)}", prec, _both(a, b, op))


def add(a, b):
    return a if _value(b) == 0 else b if _value(a) == 0 else _binary(a, "+", b, 1, int.__add__)


def sub(a, b):
    if _value(a) == 0 and _value(b) != 0:
        return Expr(f"-{_text(b, 3)}", 2, None if _value(b) is None else -_value(b))
    return a if _value(b) == 0 else _binary(a, "-", b, 1, int.__sub__)


def mul(a, b):
    va, vb = _value(a), _value(b)
    if 0 in (va, vb):
        return 0
    return b if va == 1 else a if vb == 1 else _binary(a, "*", b, 2, int.__mul__)


def div(a, b):
    """C division of non-negative operands."""
    return a if _value(b) == 1 or _value(a) == 0 else _binary(a, "/", b, 2, int.__floordiv__)


def mod(a, b):
    """C remainder of non-negative operands."""
    return 0 if _value(b) == 1 or _value(a) == 0 else _binary(a, "%", b, 2, int.__mod__)


def at(base: str, index) -> str:
    """`&base[index]`, or `base` itself at index 0."""
    return base if _value(index) == 0 else f"&{base}[{index}]"


class Named(int):
    """A layer constant: an int for folding and Jinja tests, its enumerator name when rendered."""

    def __new__(cls, name: str, value: int, expr: str | None = None):
        obj = super().__new__(cls, value)
        obj.name, obj.expr = name, expr
        return obj

    def __str__(self) -> str:
        return self.name


class Constants(dict):
    """A kernel's named constants, in declaration order; `K.IN_H` is a `Named`."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def plus(self, **values) -> Constants:
        """These constants and more; a value may be an expression of earlier ones (kept as written in
        the enum, e.g. `FILTER_SIZE = KERNEL_H * KERNEL_W * IN_C`)."""
        out = Constants(self)
        for key, v in values.items():
            if isinstance(v, Named):
                out[key] = Named(key, int(v), v.name)
            elif isinstance(v, Expr):
                assert v.value is not None, f"{key}: {v} is not constant"
                out[key] = Named(key, v.value, str(v))
            else:
                out[key] = Named(key, int(v))
        return out


def constants(**values) -> Constants:
    return Constants().plus(**values)


def enum_block(tag: str, K: Constants, indent: int = 4) -> str:
    """The block-scope `enum` declaring a kernel's constants (one per line, as clang-format keeps an
    enum with a trailing comma)."""
    pad = " " * indent
    lines = [f"{pad}enum {tag} {{"]
    lines += [f"{pad}    {k} = {v.expr if v.expr is not None else int(v)}," for k, v in K.items()]
    return "\n".join(lines + [f"{pad}}};"])


def _indent_of(body: str) -> str:
    first = next((ln for ln in body.splitlines() if ln.strip() and not ln.startswith("#")), "")
    return first[:len(first) - len(first.lstrip(" "))]


def _shift(body: str, by: int) -> str:
    """Every non-blank line of `body` moved `by` columns (negative: left); preprocessor lines stay at
    column 0."""
    out = []
    for ln in body.splitlines(True):
        if not ln.strip() or ln.startswith("#"):
            out.append(ln)
        elif by >= 0:
            out.append(" " * by + ln)
        else:
            assert ln.startswith(" " * -by), ln
            out.append(ln[-by:])
    return "".join(out)


def for_loop(var: str, count, body: str) -> str:
    """`for (var = 0; var < count; var++) { body }` one level out from `body`'s indentation, or, when
    `count` is the constant 1, `body` alone (rendered with index 0) one level out."""
    if _value(count) == 1:
        return _shift(body, -4)
    ind = _indent_of(body)[:-4]
    return f"{ind}for (int32_t {var} = 0; {var} < {count}; {var}++) {{\n{body}{ind}}}\n"


def if_block(cond, body: str) -> str:
    """`if (cond) { body }` at `body`'s indentation when `cond` is C text; `body` as is when it is
    falsy."""
    if not cond:
        return body
    ind = _indent_of(body)
    return f"{ind}if ({cond}) {{\n{_shift(body, 4)}{ind}}}\n"


def block_comment(text: str, indent: int = 0, closer_alone: bool = False) -> str:
    """`text` (already made safe with `c_comment`) as a block comment at column `indent`, wrapped to the
    column limit: `*/` after the last word, or on a line of its own."""
    width = COLUMN_LIMIT - indent - (3 if closer_alone else 6)
    lines = textwrap.wrap(" ".join(text.split()), width, break_long_words=False, break_on_hyphens=False) or [""]
    pad = " " * indent
    body = f"\n{pad} * ".join(lines)
    return f"/* {body}\n{pad} */" if closer_alone else f"/* {body} */"


def _pack(items: list[str], col: int) -> list[str] | None:
    """`items` packed greedily on lines starting at column `col`; None if one does not fit."""
    lines, cur = [], ""
    for it in items:
        if cur and col + len(cur) + 1 + len(it) <= COLUMN_LIMIT:
            cur += " " + it
        else:
            if cur:
                lines.append(cur)
            if col + len(it) > COLUMN_LIMIT:
                return None
            cur = it
    return lines + [cur]


def signature(head: str, params: list[str], lead: str = "", tail: str = "") -> str:
    """`head(params)` laid out as clang-format lays out a definition (`head` is `static void fn`) or a
    call (written after `lead`, the text before it on its line, and followed by `tail`, e.g. `;`;
    neither is returned): on one line if it fits (a call after `= ` may also move whole to the next
    line, see `break_assignments`); else the parameters packed after the open parenthesis (for a
    call, unless a break at the parenthesis, then lines indented by 4, takes fewer lines); else the
    break at the parenthesis; else, for a definition, that with the return type on its own line too."""
    one = f"{head}({', '.join(params)})"
    pad = len(lead) - len(lead.lstrip(" "))
    if len(lead + one + tail) <= COLUMN_LIMIT or (lead.endswith("= ") and pad + 4 + len(one + tail) <= COLUMN_LIMIT):
        return one
    items = [p + "," for p in params[:-1]] + [params[-1] + ")" + tail]
    start = lead + head + "("
    aligned = _pack(items, len(start))
    broken = _pack(items, pad + 4)
    definition = not lead and not tail  # clang-format breaks a call, never a definition, to save lines
    if aligned is not None and (definition or broken is None or len(aligned) <= len(broken) + 1):
        text = start + ("\n" + " " * len(start)).join(aligned)
    elif len(start) <= COLUMN_LIMIT:
        text = start + "\n" + "\n".join(" " * (pad + 4) + ln for ln in broken)
    else:
        ret, fn = head.rsplit(" ", 1)
        text = lead + f"{ret}\n{fn}(\n" + "\n".join(" " * (pad + 4) + ln for ln in broken)
    return text[len(lead):len(text) - len(tail)]


def break_assignments(text: str) -> str:
    """`text` with each statement longer than the column limit broken after its `=`, the value indented
    4 more, as clang-format does when the value then fits; where it does not and the value is one call, its
    arguments bin-packed after the open parenthesis instead (clang-format's layout then)."""
    out = []
    for line in text.split("\n"):
        at = line.find(" = ")
        pad = len(line) - len(line.lstrip())
        comment = line.lstrip().startswith(("/*", "*"))
        if len(line) <= COLUMN_LIMIT or at <= 0 or comment:
            out.append(line)
        elif pad + 4 + len(line) - at - 3 <= COLUMN_LIMIT:
            out += [line[:at + 2], " " * (pad + 4) + line[at + 3:]]
        else:
            out += _break_call(line, at + 3) or _break_sum(line, at + 3) or [line]
    return "\n".join(out)


def _break_sum(line: str, start: int) -> list[str] | None:
    """`line`'s value from `start`, `f(...) + x;`, as clang-format lays it out when it does not fit after the
    `=` either: broken after the `+`, `x` aligned with the value's start."""
    m = re.match(r"(.*\)) \+ (\w+);$", line[start:])
    if not m or start + len(m.group(1)) + 2 > COLUMN_LIMIT:
        return None
    return [line[:start] + m.group(1) + " +", " " * start + m.group(2) + ";"]


def _break_call(line: str, start: int) -> list[str] | None:
    """`line`'s value from `start`, a call `f(a, b, ...);` with no nested parentheses, as clang-format lays it
    out when it does not fit: as many arguments a line as fit, each line after the first aligned after `(`."""
    m = re.match(r"[A-Za-z_]\w*\(([^()]*)\);$", line[start:])
    if not m:
        return None
    head = line[:start + line[start:].index("(") + 1]
    args = m.group(1).split(", ")
    lines, cur = [], head
    for k, a in enumerate(args):
        piece = a + ("," if k < len(args) - 1 else ");")
        if cur == head:
            cur += piece
        elif len(cur) + 1 + len(piece) > COLUMN_LIMIT:
            lines.append(cur)
            cur = " " * len(head) + piece
        else:
            cur += " " + piece
    return lines + [cur]


def table(head: str, items: list) -> str:
    """`head = {items...};` as clang-format lays out an initializer without a trailing comma: on one
    line if it fits, else the fewest lines (then the fewest columns), each column as wide as its
    widest item."""
    one = f"{head} = {{{', '.join(map(str, items))}}};"
    if len(one) <= COLUMN_LIMIT:
        return one
    cells = [f"{v}," for v in items]
    best_cols, best_lines = 1, len(cells) + 1
    for cols in range(1, len(cells) + 1):
        widths = [max(map(len, cells[c::cols])) for c in range(cols)]
        lines = -(-len(cells) // cols)
        if 4 + sum(widths) + cols - 1 <= COLUMN_LIMIT and lines < best_lines:
            best_cols, best_lines = cols, lines
    widths = [max(map(len, cells[c::best_cols])) for c in range(best_cols)]
    cells[-1] = cells[-1][:-1] + "};"
    rows = ["    " + " ".join(cell.ljust(widths[c]) for c, cell in enumerate(cells[r:r + best_cols])).rstrip()
            for r in range(0, len(cells), best_cols)]
    return f"{head} = {{\n" + "\n".join(rows)


class LayerDims:
    """A training layer's numbers as template operands: `k(key)` is 0 or 1 as that number (so it folds
    away), any other value as the layer's named constant `<PREFIX>_<KEY>` (train/layer_constants.c.j2);
    `ka(key)`, an additive constant, folds only when 0; `var(name, key)` is the loop variable `name`,
    or 0 when `key`'s loop has one iteration (and so is not written)."""

    def __init__(self, prefix: str, dims: dict):
        self.prefix, self.dims = prefix.upper(), dims

    def k(self, key: str):
        v = self.dims[key]
        return v if v in (0, 1) else Named(f"{self.prefix}_{key.upper()}", v)

    def ka(self, key: str):
        v = self.dims[key]
        return 0 if v == 0 else Named(f"{self.prefix}_{key.upper()}", v)

    def var(self, name: str, key: str):
        return 0 if self.dims[key] == 1 else name


def nest(loops: list, body: str) -> str:
    """`body` (written at column 0) inside `for` loops over (variable, trip count), outermost first, at
    column 0; a loop of one iteration is left out (see `for_loop`)."""
    text = _shift(body.strip("\n") + "\n", 4 * len(loops))
    for var, count in reversed(loops):
        text = for_loop(var, count, text)
    return text.rstrip("\n")


def _column_layout(items: list[str], width: int) -> list[str]:
    """Rows of `items` (each with its trailing comma) as clang-format 14 lays out a braced initializer list
    with a trailing comma (clang/lib/Format/FormatToken.cpp, CommaSeparatedList): fewer than five items go
    one per line; otherwise every column count from 1 to ColumnLimit / 3 whose columns vary by at most 10
    characters (the last column excepted) and whose width fits the limit is a candidate, and the widest
    that fits `width` wins, narrowed while the line count stays the same."""
    n = len(items)
    if n < 5:
        return items
    lengths = np.fromiter((len(t) for t in items), dtype=np.int64, count=n)
    fits = []
    for cols in range(1, COLUMN_LIMIT // 3 + 1):
        if n < cols:
            break
        rows = -(-n // cols)
        grid = np.full(rows * cols, -1, dtype=np.int64)
        grid[:n] = lengths
        grid = grid.reshape(rows, cols)
        sizes = grid.max(axis=0)
        mins = np.where(grid < 0, np.iinfo(np.int64).max, grid).min(axis=0)
        if cols > 1 and np.any(sizes[:-1] - mins[:-1] > 10):
            continue
        total = int(sizes.sum()) + cols - 1
        if (total > COLUMN_LIMIT and cols > 1) or not (total <= width or cols == 1):
            continue
        fits.append((cols, rows, sizes))
    best = None  # from the most columns down, narrowed while the line count does not grow
    for fmt in reversed(fits):
        if best is not None and fmt[1] > best[1]:
            break
        best = fmt
    cols, rows, sizes = best
    pads = [int(v) + 1 for v in sizes]
    out = []
    for r in range(rows):
        row = items[r * cols:(r + 1) * cols]
        out.append("".join(t.ljust(pads[j]) for j, t in enumerate(row[:-1])) + row[-1])
    return out


def c_array(name: str, arr: np.ndarray, const: bool = True) -> str:
    """A C array definition with the array's exact integer values, laid out exactly as clang-format
    (the committed .clang-format) would: a trailing comma, then rows of aligned columns."""
    arr = np.ascontiguousarray(arr).ravel()
    ctype = CTYPES[arr.dtype]
    vals = arr.astype(np.int64).tolist() or [0]
    # INT32_MIN (stdint.h) because -2147483648 is not an int literal
    items = [("INT32_MIN," if v == -(2**31) and ctype == "int32_t" else f"{v},") for v in vals]
    body = "\n    ".join(_column_layout(items, COLUMN_LIMIT - 4))
    # a const table 8-aligned: kernels read some two words at a time (LDRD needs word alignment, tg_read_2x32)
    head = f"const {ctype} {name}[{len(vals)}] __attribute__((aligned(8)))" if const else f"{ctype} {name}[{len(vals)}]"
    return f"{head} = {{\n    {body}\n}};\n"


def register(env: jinja2.Environment) -> None:
    """Make the helpers available to every template of `env`."""
    env.globals.update(add=add, sub=sub, mul=mul, div=div, mod=mod, at=at, constants=constants,
                       enum_block=enum_block, for_loop=for_loop, if_block=if_block, nest=nest, LayerDims=LayerDims,
                       block_comment=block_comment, signature=signature, table=table)
    env.filters["break_assignments"] = break_assignments
    env.tests["expr"] = lambda x: isinstance(x, Expr)  # a compound expression (worth a variable)
    env.tests["one"] = lambda x: _value(x) == 1  # the constant 1, as an int, a named constant or an Expr
