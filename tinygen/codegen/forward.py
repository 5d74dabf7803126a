"""Jinja C emitter for the int8 forward pass.

Every kernel is a template under `templates/kernels/` named after its op
(CMSIS-NN style: `convolve_s8`, `depthwise_conv_s8`, ...) rendered once per layer. A layer's
shapes, strides, padding, zero points and clamp range are enumerators of a block-scope enum
named after its symbol (`names.layer_symbol`); identity arithmetic (`+ 0`, `* 1`, `% 1`) and
one-iteration loops are folded away at generation time by the helpers below, so the C keeps
exactly the reference's arithmetic and nothing more. Emitted text is laid out as the committed
.clang-format would (lines <= 100). Activations live in one static arena whose offsets come from
`tinygen.planning.arena`; weights are `const` so they stay in flash.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np

from tinygen.ir import model as ir
from tinygen.ir.names import c_comment, c_ident, c_string, layer_symbol
from tinygen.paths import data_dir
from tinygen.planning.schedule import forward_ops, plan_forward

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
def add(a, b):
    if _value(b) == 0:
        return a
    if _value(a) == 0:
        return b
    return Expr(f"{_text(a, 1)} + {_text(b, 2)}", 1, _both(a, b, int.__add__))


def sub(a, b):
    if _value(b) == 0:
        return a
    if _value(a) == 0:
        return Expr(f"-{_text(b, 3)}", 2, None if _value(b) is None else -_value(b))
    return Expr(f"{_text(a, 1)} - {_text(b, 2)}", 1, _both(a, b, int.__sub__))


def mul(a, b):
    if _value(a) == 0 or _value(b) == 0:
        return 0
    if _value(a) == 1:
        return b
    if _value(b) == 1:
        return a
    return Expr(f"{_text(a, 2)} * {_text(b, 3)}", 2, _both(a, b, int.__mul__))


def div(a, b):
    """C division of non-negative operands."""
    if _value(b) == 1 or _value(a) == 0:
        return a
    return Expr(f"{_text(a, 2)} / {_text(b, 3)}", 2, _both(a, b, int.__floordiv__))


def mod(a, b):
    """C remainder of non-negative operands."""
    if _value(b) == 1 or _value(a) == 0:
        return 0
    return Expr(f"{_text(a, 2)} % {_text(b, 3)}", 2, _both(a, b, int.__mod__))


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
    first = next((ln for ln in body.splitlines() if ln.strip()), "")
    return first[:len(first) - len(first.lstrip(" "))]


def _shift(body: str, by: int) -> str:
    """Every non-blank line of `body` moved `by` columns (negative: left)."""
    out = []
    for ln in body.splitlines(True):
        if not ln.strip():
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


def comment_lines(text: str, width: int = COLUMN_LIMIT - 3) -> list[str]:
    """`text` (already made safe with `c_comment`) wrapped for the lines of a block comment."""
    return textwrap.wrap(text, width, break_on_hyphens=False) or [""]


def signature(fn: str, params: list[str]) -> str:
    """`static void fn(params)` laid out as clang-format lays out a definition: on one line if it fits;
    else the parameters packed after the open parenthesis; else packed on lines indented by 4 after
    a break at the parenthesis; else that with the return type on its own line too."""
    head = f"static void {fn}("
    one = head + ", ".join(params) + ")"
    if len(one) <= COLUMN_LIMIT:
        return one
    items = [p + "," for p in params[:-1]] + [params[-1] + ")"]

    def pack(col: int) -> list[str] | None:
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

    aligned = pack(len(head))
    if aligned is not None:
        return head + ("\n" + " " * len(head)).join(aligned)
    broken = "\n    ".join(pack(4))
    if len(head) <= COLUMN_LIMIT:
        return f"{head}\n    {broken}"
    return f"static void\n{fn}(\n    {broken}"


def environment() -> jinja2.Environment:
    """The template environment. Names from a model reach a template's text only through its filters:
    `c_ident` (identifiers, build files), `c_string` (a quoted C literal), `c_comment` (comment text)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(data_dir("templates"))),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters.update(c_ident=c_ident, c_string=c_string, c_comment=c_comment)
    env.globals.update(add=add, sub=sub, mul=mul, div=div, mod=mod, at=at, constants=constants,
                       enum_block=enum_block, for_loop=for_loop, if_block=if_block,
                       comment_lines=comment_lines, signature=signature)
    env.tests["expr"] = lambda x: isinstance(x, Expr)  # a compound expression (worth a variable)
    return env


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
    return f"{'const ' if const else ''}{ctype} {name}[{len(vals)}] = {{\n    {body}\n}};\n"


@dataclass
class LayerCode:
    index: int
    layer: ir.Layer
    fn: str
    template: str
    context: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    kernel_c: str = ""


def _conv_context(layer: ir.Conv2D, x: ir.TensorInfo, prefix: str) -> tuple[str, dict, dict]:
    mult, shift = ir.conv_requant(layer, x)
    h, w, cin = x.shape
    oh, ow, cout = layer.output.shape
    kh, kw = layer.kernel
    pt, pb, pl, pr = layer.padding
    depthwise = layer.groups == cin and layer.weight.shape[3] == 1 and layer.groups > 1
    arrays = {f"{prefix}_weight": layer.weight, f"{prefix}_bias": layer.bias,
              f"{prefix}_mult": mult.astype(np.int32), f"{prefix}_shift": shift.astype(np.int32)}
    ctx = dict(in_h=h, in_w=w, in_c=cin, out_h=oh, out_w=ow, out_c=cout, kh=kh, kw=kw, cg=cin // layer.groups,
               groups=layer.groups, ch_mult=cout // cin, stride_h=layer.stride[0], stride_w=layer.stride[1],
               pad_top=pt, pad_left=pl, dil_h=layer.dilation[0], dil_w=layer.dilation[1],
               padded=bool(pt or pb or pl or pr) or _reads_past_end(h, w, oh, ow, kh, kw, layer),
               input_offset=-x.zero_point, output_offset=layer.output.zero_point,
               act_min=layer.act_min, act_max=layer.act_max)
    return ("depthwise_conv_s8" if depthwise else "convolve_s8"), ctx, arrays


def _reads_past_end(h, w, oh, ow, kh, kw, layer) -> bool:
    return ((oh - 1) * layer.stride[0] + layer.dilation[0] * (kh - 1) >= h + layer.padding[0]
            or (ow - 1) * layer.stride[1] + layer.dilation[1] * (kw - 1) >= w + layer.padding[2])


def layer_code(index: int, layer: ir.Layer, tensors: dict[str, ir.TensorInfo]) -> LayerCode | None:
    """Template name, context and constant arrays for one layer (None for a reshape: it aliases)."""
    prefix = layer_symbol(index, layer.name)
    x = tensors[layer.inputs[0]]
    out = layer.output
    desc = f"layer {index} '{layer.name}': {layer.op} {'x'.join(map(str, x.shape))} -> {'x'.join(map(str, out.shape))}"
    arrays: dict[str, np.ndarray] = {}
    if isinstance(layer, ir.Conv2D):
        template, ctx, arrays = _conv_context(layer, x, prefix)
        desc += f", {layer.kind(x.shape[-1])} {layer.kernel[0]}x{layer.kernel[1]} stride {layer.stride[0]}"
    elif isinstance(layer, ir.FullyConnected):
        mult, shift = ir.conv_requant(layer, x)
        arrays = {f"{prefix}_weight": layer.weight, f"{prefix}_bias": layer.bias,
                  f"{prefix}_mult": mult.astype(np.int32), f"{prefix}_shift": shift.astype(np.int32)}
        template = "fully_connected_s8"
        ctx = dict(in_size=x.size, out_c=out.size, input_offset=-x.zero_point, output_offset=out.zero_point,
                   act_min=layer.act_min, act_max=layer.act_max)
    elif isinstance(layer, ir.Add):
        b = tensors[layer.inputs[1]]
        template = "elementwise_add_s8"
        p = ir.add_requant(x, b, out)
        ctx = dict(size=out.size, in1_offset=-x.zero_point, in2_offset=-b.zero_point, output_offset=out.zero_point,
                   act_min=layer.act_min, act_max=layer.act_max, **p)
    elif isinstance(layer, ir.Pool):
        template = "avgpool_s8" if isinstance(layer, ir.AvgPool) else "maxpool_s8"
        h, w, c = x.shape
        ctx = dict(in_h=h, in_w=w, in_c=c, out_h=out.shape[0], out_w=out.shape[1], kh=layer.kernel[0],
                   kw=layer.kernel[1], stride_h=layer.stride[0], stride_w=layer.stride[1],
                   pad_top=layer.padding[0], pad_left=layer.padding[2], act_min=layer.act_min, act_max=layer.act_max)
    elif isinstance(layer, ir.Reshape):
        return None
    else:
        raise TypeError(layer.op)
    fn = f"{prefix}_{template}"
    ctx.update(fn=fn, symbol=prefix, comment=desc, mask=False, split_k=0, overlap=False)
    for key in ("weight", "bias", "mult", "shift"):
        if f"{prefix}_{key}" in arrays:
            ctx[key] = f"{prefix}_{key}"
    return LayerCode(index, layer, fn, template, ctx, arrays)


def render_forward(model: ir.Model, fusions: dict, env: jinja2.Environment, buf, masked=frozenset(),
                   customize=None):
    """Kernels, calls and constant arrays of the forward schedule. `buf(kind, name)` names a buffer
    (kind "act" for a tensor, "plane" for a fused kernel's plane, "mask" for a clamp mask); layers whose
    output is in `masked` also write their 1-bit clamp mask. `customize(code)` may adjust a layer's
    context and arrays before it is rendered (trained layers move weights to SRAM)."""
    tensors = model.tensors()
    kernels, calls, codes = [], [], []
    for _, i, f in forward_ops(model, fusions):
        layer = model.layers[i]
        code = layer_code(i, layer, tensors)
        if code is None:
            continue
        mask = layer.output.name in masked
        code.context["mask"] = mask
        if customize is not None:
            customize(code)
        args = [buf("act", t) for t in layer.inputs] + [buf("act", layer.output.name)]
        if f and f.kind == "inplace_dw":
            code.template = "depthwise_conv_inplace_s8"
            args = [buf("act", layer.inputs[0]), buf("plane", f"plane_l{i}")]
        elif f and f.kind == "overlap":
            code.context.update(overlap=True, overlap_offset=f.offset)  # input and output share bytes
        elif f and f.kind == "pw_dw":
            pw = layer_code(f.pointwise, model.layers[f.pointwise], tensors)
            code.template = "pointwise_depthwise_fused_s8"
            code.context["pw"] = pw.context
            code.arrays.update(pw.arrays)
            code.context["comment"] = pw.context["comment"] + "; " + code.context["comment"]
            args = [buf("act", pw.layer.inputs[0]), buf("plane", f"plane_l{i}"), buf("act", layer.output.name)]
        code.fn = code.context["fn"] = f"{layer_symbol(i, layer.name)}_{code.template}"
        if mask:
            args.append(buf("mask", layer.output.name))
        code.kernel_c = env.get_template(f"kernels/{code.template}.c.j2").render(**code.context)
        kernels.append(code.kernel_c)
        calls.append(dict(fn=code.fn, args=args, comment=code.context["comment"]))
        codes.append(code)
    return kernels, calls, codes


def write_sources(env: jinja2.Environment, src_dir: Path, ctx: dict, const_arrays: dict, mutable=None) -> None:
    """tg_model.[ch] and tg_weights.[ch]: `const` arrays go to flash, `mutable` ones (trained) to SRAM."""
    mutable = mutable or {}
    const_decls = [f"extern const {CTYPES[a.dtype]} {n}[{max(1, a.size)}];" for n, a in const_arrays.items()]
    mutable_decls = [f"extern {CTYPES[a.dtype]} {n}[{max(1, a.size)}];" for n, a in mutable.items()]
    ctx = dict(ctx, array_decls=const_decls + mutable_decls, const_decls=const_decls, mutable_decls=mutable_decls,
               has_mutable=bool(mutable))
    for name in ("tg_model.h", "tg_model.c", "tg_weights.h"):
        (src_dir / name).write_text(env.get_template(f"{name}.j2").render(**ctx))
    with open(src_dir / "tg_weights.c", "w") as f:
        f.write(env.get_template("tg_weights.c.j2").render(**ctx))
        for name, arr in const_arrays.items():
            f.write(c_array(name, arr))
        if mutable:
            f.write("\n/* Trained parameters: in SRAM, updated by tg_train_step. */\n")
        for name, arr in mutable.items():
            f.write(c_array(name, arr, const=False))


def generate_forward(model: ir.Model, src_dir: Path) -> dict:
    """Write tg_model.h/.c and tg_weights.h/.c into `src_dir`; return facts for the manifest."""
    env = environment()
    src_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_forward(model)
    tensors = model.tensors()

    def buf(kind: str, t: str) -> str:
        return f"TG_BUF_{c_ident(plan.alias.get(t, t))}"

    buffers = [dict(macro=f"TG_BUF_{c_ident(name)}", offset=b.offset, size=b.size, first=b.first, last=b.last,
                    name=name) for name, b in sorted(plan.buffers.items(), key=lambda kv: kv[1].offset)]
    kernels, calls, codes = render_forward(model, plan.fusions, env, buf)
    arrays = {name: arr for code in codes for name, arr in code.arrays.items()}
    ctx = dict(model=model, input_size=model.input.size, output_size=model.output.size,
               input_shape=model.input.shape, output_shape=model.output.shape, arena_size=plan.arena_size,
               buffers=buffers, kernels=kernels, calls=calls,
               input_buf=buf("act", model.input.name), output_buf=buf("act", model.output.name),
               input_zero_point=tensors[model.input.name].zero_point)
    write_sources(env, src_dir, ctx, arrays)
    weight_bytes = int(sum(a.nbytes for a in arrays.values()))
    return {"arena_bytes": plan.arena_size, "weight_bytes": weight_bytes,
            "buffers": {b["name"]: {"offset": b["offset"], "size": b["size"]} for b in buffers}}
