"""Jinja C emitter for the int8 forward pass.

Every kernel is a template under `templates/kernels/` named after its op
(CMSIS-NN style: `convolve_s8`, `depthwise_conv_s8`, ...) rendered once per layer. A layer's
shapes, strides, padding, zero points and clamp range are enumerators of a block-scope enum
named after its symbol (`names.layer_symbol`); identity arithmetic (`+ 0`, `* 1`, `% 1`) and
one-iteration loops are folded away at generation time by the helpers of `cstyle`, so the C keeps
exactly the reference's arithmetic and nothing more, laid out as the committed .clang-format would.
Activations live in one static arena whose offsets come from `tinygen.planning.arena`;
weights are `const` so they stay in flash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np

from tinygen.codegen import cstyle
from tinygen.codegen.cstyle import CTYPES, break_assignments, c_array
from tinygen.errors import TinygenError
from tinygen.ir import model as ir
from tinygen.ir import quant
from tinygen.ir.names import c_comment, c_ident, c_string, layer_symbol, robot_arg
from tinygen.paths import data_dir
from tinygen.planning.fusion import pixel_pairs, ring_columns, taps_in_fours
from tinygen.planning.schedule import ALIGN, forward_ops, patch_stage, plan_forward


def environment() -> jinja2.Environment:
    """The template environment. Names from a model reach a template's text only through its filters:
    `c_ident` (identifiers, build files), `c_string` (a quoted C literal), `c_comment` (comment text),
    `robot_arg` (an argument in a Renode .robot)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(data_dir("templates"))),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters.update(c_ident=c_ident, c_string=c_string, c_comment=c_comment, robot_arg=robot_arg)
    cstyle.register(env)
    return env


@dataclass
class LayerCode:
    index: int
    layer: ir.Layer
    fn: str
    template: str
    context: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    kernel_c: str = ""


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
SMALL_ACC = ir.SMALL_ACC  # tg_requantize29's bound on |acc|
SMALL_SHIFT_MIN = -30  # ... and on the right shift e = -shift (2^e itself an int32)
FOLD_LIMIT = 2**30 - 2  # tg_requantize29_offset: (1 + 2|offset|) 2^e within it keeps its numerator in int32


def requantize_for(bound: int, shift, offset: int = 0) -> str:
    """The requantization for accumulators below `bound` in magnitude with these shifts (one per channel, or
    one), whose result gets `offset` added: `tg_requantize29` (one SMMULR for the doubling high multiply, a
    three-operation rounding divide) where bound < SMALL_ACC and every shift is in [SMALL_SHIFT_MIN, 0] — as
    `tg_requantize29_offset`, the offset folded into the divide, where the offset is not 0 and every channel
    has (1 + 2|offset|) 2^-shift <= 2^30 - 2 — else `tg_requantize_r` where no shift is positive, else the
    general `tg_requantize`; each gives `tg_requantize`'s bits plus the offset (docs/numerics.md §1.1).
    Templates call it through `kernels/common.j2`'s `requantized`."""
    shift = np.atleast_1d(shift)
    if bound < SMALL_ACC and bool(((shift <= 0) & (shift >= SMALL_SHIFT_MIN)).all()):
        folds = offset and (1 + 2 * abs(int(offset))) << int(-shift.min()) <= FOLD_LIMIT
        return "tg_requantize29_offset" if folds else "tg_requantize29"
    return "tg_requantize_r" if bool((shift <= 0).all()) else "tg_requantize"


def small_requantize(fn: str) -> bool:
    """Whether `requantize_for` chose a 32-bit form (tg_requantize29, _offset): the accumulators are under
    2^29, so a kernel may form 2 acc (tg_requantize29_x2) or read the constants from a table."""
    return fn.startswith("tg_requantize29")


def requantize_fn(layer, shift: np.ndarray, bias: np.ndarray | None = None) -> str:
    """A conv's or FC's requantization: its accumulators are K products of at most 255 * 128 plus its largest
    |bias| (`bias`, default the layer's; for a layer whose bias trains, the largest it may grow to,
    `reference.training.bias_limit`), plus its output zero point."""
    bias = layer.bias if bias is None else bias
    return requantize_for(ir.acc_bound(int(np.prod(layer.weight.shape[1:])), bias), shift, layer.output.zero_point)


def saturated_bias(layer, mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The layer's bias, except where a channel's output lies beyond one end of its clamp for every input
    (its |bias| dwarfs any K products: MIT's models carry |bias| near 2^30 on such channels): there, the bias
    nearest zero that still puts every output beyond the same end. The outputs and clamp masks are the same
    for every input (the requantization is monotone where the shift is not positive, the only channels
    changed), and the accumulators' bound shrinks, so `requantize_fn` can choose the 32-bit form
    (docs/numerics.md §1.1)."""
    b = layer.bias.astype(np.int64)
    reach = ir.acc_bound(int(np.prod(layer.weight.shape[1:])))

    def out(acc):
        return quant.requantize(acc, mult, shift) + layer.output.zero_point
    monotone = shift <= 0
    above = monotone & (out(np.clip(b - reach, INT32_MIN, INT32_MAX)) > layer.act_max)
    below = monotone & (out(np.clip(b + reach, INT32_MIN, INT32_MAX)) < layer.act_min)
    # the least accumulator still above the clamp (the greatest still below), by bisection per channel
    lo, hi = np.full(b.shape, INT32_MIN), np.clip(b - reach, INT32_MIN, INT32_MAX)  # out(hi) > act_max
    lo2, hi2 = np.clip(b + reach, INT32_MIN, INT32_MAX), np.full(b.shape, INT32_MAX)  # out(lo2) < act_min
    for _ in range(33):
        mid = (lo + hi) // 2
        up = out(mid) > layer.act_max
        hi, lo = np.where(up, mid, hi), np.where(up, lo, mid)
        mid2 = (lo2 + hi2 + 1) // 2
        down = out(mid2) < layer.act_min
        lo2, hi2 = np.where(down, mid2, lo2), np.where(down, hi2, mid2)
    new = np.where(above, hi + reach, np.where(below, lo2 - reach, b))
    return np.where(np.abs(new) < np.abs(b), new, b).astype(layer.bias.dtype)


def constant_channels(layer, x: ir.TensorInfo, bias: np.ndarray, mult: np.ndarray, shift: np.ndarray):
    """The forward's (bias, mult, shift) with every channel whose output is the same for every input
    re-expressed in small numbers: MIT's models carry channels with |bias| near 2^30 (zero or tiny weights),
    whose accumulators need the 64-bit-safe requantization and whose shifts keep the output zero point out of
    the rounding divide. Over the accumulators a channel can reach (its bias plus the sums its weights make of
    inputs x + INPUT_OFFSET in [-128 - z_x, 127 - z_x], padding's 0 included; |s| <= R) the requantization is
    monotone, so its output plus z clipped to one past each end of the clamp (what decides the output and the
    clamp mask) is one value c + z where the two ends agree. Such a channel gets multiplier 2^30, shift -e and
    bias c 2^(e+1), e the least exponent with ceil(R / 2) < 2^(e-1): the doubling high multiply by 2^30 rounds
    (bias + s) / 2 to c 2^e + s2 with |s2| <= ceil(R / 2), and the divide by 2^e rounds that to c
    (docs/numerics.md §1.1). Returns the three arrays and whether any channel changed; only the forward reads
    them (the backward keeps the layer's own multipliers), and only for weights and a bias that do not train."""
    w = layer.weight.reshape(layer.weight.shape[0], -1).astype(np.int64)
    lo, hi = -128 - x.zero_point, 127 - x.zero_point
    s_min = np.where(w > 0, w * lo, w * hi).sum(axis=1)
    s_max = np.where(w > 0, w * hi, w * lo).sum(axis=1)
    b = bias.astype(np.int64)
    ends = np.stack([np.clip(b + s_min, INT32_MIN, INT32_MAX), np.clip(b + s_max, INT32_MIN, INT32_MAX)])
    z = layer.output.zero_point
    # the output plus z, clipped to one past each end of the clamp: what decides the output and the mask
    c = np.clip(quant.requantize(ends, np.stack([mult, mult]), np.stack([shift, shift])) + z,
                layer.act_min - 1, layer.act_max + 1)
    reach = np.maximum(-s_min, s_max)
    new_b, new_m, new_s = b.copy(), mult.astype(np.int64).copy(), shift.astype(np.int64).copy()
    for ch in np.flatnonzero(c[0] == c[1]):
        e = (-(-int(reach[ch]) // 2)).bit_length() + 1  # the least e with ceil(R / 2) < 2^(e-1)
        cc = int(c[0, ch]) - z
        small = (cc * 2 ** (e + 1), 2**30, -e)
        if e <= -SMALL_SHIFT_MIN and abs(small[0]) + int(reach[ch]) < SMALL_ACC:
            new_b[ch], new_m[ch], new_s[ch] = small
    changed = not (np.array_equal(new_b, b) and np.array_equal(new_s, shift) and np.array_equal(new_m, mult))
    return new_b.astype(bias.dtype), new_m, new_s, changed


def _requant_arrays(layer, x: ir.TensorInfo, prefix: str, mult: np.ndarray, shift: np.ndarray):
    """A conv's or FC's constant tables for its forward kernel, with the bias and shift the kernel uses: the
    saturated channels' bias (`saturated_bias`), then the constant channels re-expressed (`constant_channels`)
    in tables of the forward's own (`_fwd_mult`, `_fwd_shift`) where any changed: the layer's `_mult` and
    `_shift` stay its own, for the backward. A layer that trains takes back its own (codegen/training.py)."""
    bias = saturated_bias(layer, mult, shift)
    bias, fmult, fshift, changed = constant_channels(layer, x, bias, mult, shift)
    key = "_fwd" if changed else ""
    arrays = {f"{prefix}_weight": layer.weight, f"{prefix}_bias": bias,
              f"{prefix}{key}_mult": fmult.astype(np.int32), f"{prefix}{key}_shift": fshift.astype(np.int32)}
    return arrays, bias, fshift


def _conv_context(layer: ir.Conv2D, x: ir.TensorInfo, prefix: str) -> tuple[str, dict, dict]:
    mult, shift = ir.conv_requant(layer, x)
    h, w, cin = x.shape
    oh, ow, cout = layer.output.shape
    kh, kw = layer.kernel
    pt, pb, pl, pr = layer.padding
    depthwise = ir.is_depthwise(layer)
    arrays, bias, shift = _requant_arrays(layer, x, prefix, mult, shift)
    ctx = dict(in_h=h, in_w=w, in_c=cin, out_h=oh, out_w=ow, out_c=cout, kh=kh, kw=kw, cg=cin // layer.groups,
               groups=layer.groups, ch_mult=cout // cin, stride_h=layer.stride[0], stride_w=layer.stride[1],
               pad_top=pt, pad_left=pl, dil_h=layer.dilation[0], dil_w=layer.dilation[1],
               padded=bool(pt or pb or pl or pr) or _reads_past_end(h, w, oh, ow, kh, kw, layer),
               input_offset=-x.zero_point, output_offset=layer.output.zero_point,
               act_min=layer.act_min, act_max=layer.act_max, requantize=requantize_fn(layer, shift, bias))
    return ("depthwise_conv_s8" if depthwise else "convolve_s8"), ctx, arrays


def add_requantize_fns(p: dict, out_offset: int) -> tuple[str, str, str]:
    """The requantization of each input and of the sum of an ADD (`ir.add_requant`'s parameters): an input
    is (x + offset) * 2^LEFT_SHIFT with |x + offset| <= 255, and each rescaled input is no larger where its
    multiplier is below one and its shift at most 0 (the 32-bit cases), so their sum is below
    2 * 255 * 2^LEFT_SHIFT; the sum's result gets the output zero point `out_offset` added."""
    scaled = 255 << p["left_shift"]
    first, second = requantize_for(scaled, p["in1_shift"]), requantize_for(scaled, p["in2_shift"])
    small_in = first == second == "tg_requantize29"
    return first, second, requantize_for(2 * scaled if small_in else SMALL_ACC, p["out_shift"], out_offset)


def offset_sums(weight: np.ndarray, input_offset: int) -> np.ndarray:
    """INPUT_OFFSET * sum(w) of each output channel (OHWI weights): what a kernel adds to the bias to fold the
    input offset in, computed at build time for constant weights (int32: the validator bounds every sum)."""
    return (weight.reshape(weight.shape[0], -1).astype(np.int64).sum(axis=1) * input_offset).astype(np.int32)


def im2col_filter(weight: np.ndarray) -> np.ndarray:
    """A filter (O, KH, KW, I) as int16 rows in the im2col column's order, each zero-padded to a multiple of
    four: the operand pairs SMLAD reads, two words (one LDRD) at a time (kernels/convolve_im2col_s8)."""
    rows = weight.reshape(weight.shape[0], -1)
    out = np.zeros((rows.shape[0], -(-rows.shape[1] // 4) * 4), np.int16)
    out[:, :rows.shape[1]] = rows
    return out.reshape(-1)


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
        arrays, bias, shift = _requant_arrays(layer, x, prefix, *ir.conv_requant(layer, x))
        template = "fully_connected_s8"
        ctx = dict(in_size=x.size, out_c=out.size, input_offset=-x.zero_point, output_offset=out.zero_point,
                   act_min=layer.act_min, act_max=layer.act_max, requantize=requantize_fn(layer, shift, bias))
    elif isinstance(layer, ir.Add):
        b = tensors[layer.inputs[1]]
        template = "elementwise_add_s8"
        p = ir.add_requant(x, b, out)
        ctx = dict(size=out.size, in1_offset=-x.zero_point, in2_offset=-b.zero_point, output_offset=out.zero_point,
                   act_min=layer.act_min, act_max=layer.act_max, **p)
        ctx["requantize1"], ctx["requantize2"], ctx["requantize"] = add_requantize_fns(p, out.zero_point)
    elif isinstance(layer, ir.Pool):
        template = "avgpool_s8" if isinstance(layer, ir.AvgPool) else "maxpool_s8"
        h, w, c = x.shape
        ctx = dict(in_h=h, in_w=w, in_c=c, out_h=out.shape[0], out_w=out.shape[1], kh=layer.kernel[0],
                   kw=layer.kernel[1], stride_h=layer.stride[0], stride_w=layer.stride[1],
                   pad_top=layer.padding[0], pad_left=layer.padding[2], act_min=layer.act_min, act_max=layer.act_max)
    elif isinstance(layer, ir.Mean):
        template = "mean_s8"
        mult, shift = ir.mean_requant(x, out)
        h, w, c = x.shape
        ctx = dict(in_hw=h * w, in_c=c, input_offset=-x.zero_point, output_offset=out.zero_point, out_mult=mult,
                   out_shift=shift, act_min=layer.act_min, act_max=layer.act_max,
                   requantize=requantize_for(255 * h * w, shift, out.zero_point))  # |sum of (x - z_x)| <= 255 H W
    elif isinstance(layer, ir.Softmax):
        template = "softmax_s8"
        mult, left_shift, diff_min = quant.softmax_params(layer.beta, x.scale)
        ctx = dict(classes=out.size, input_mult=mult, input_left_shift=left_shift, diff_min=diff_min,
                   sum_bits=quant.SOFTMAX_SUM_BITS, prob_shift=31 - 8, output_offset=out.zero_point)
    elif isinstance(layer, ir.Crop):
        template = "crop_s8"
        ctx = dict(in_w=x.shape[1], channels=x.shape[2], origin_y=layer.origin[0], origin_x=layer.origin[1],
                   out_h=out.shape[0], out_w=out.shape[1])
    elif isinstance(layer, ir.Reshape):
        return None
    else:
        raise TypeError(layer.op)
    fn = f"{prefix}_{template}"
    ctx.update(fn=fn, symbol=prefix, comment=desc, mask=False, split_k=0, overlap=False, offset_sums=None,
               offset_folded=False, requant=None, requant_folded=False)
    for key in ("weight", "bias", "mult", "shift"):
        for name in (f"{prefix}_{key}", f"{prefix}_fwd_{key}"):
            if name in arrays:
                ctx[key] = name
    return LayerCode(index, layer, fn, template, ctx, arrays)


# an overlapped 1x1 conv stages two pixels' outputs (2 * out_c bytes) on the stack: at most 512 B
STAGED_CHANNELS_MAX = 256


def _tiled_1x1(ctx: dict) -> bool:
    """A 1x1, stride-1, unpadded, ungrouped conv of at least two pixels and two output channels:
    kernels/convolve_1x1_s8 (2x2 tiles) computes it; where its output overlaps its input, pixel pair by
    pixel pair through a stack buffer of 2 * out_c bytes (at most STAGED_CHANNELS_MAX channels)."""
    geometry = (ctx["kh"], ctx["kw"], ctx["stride_h"], ctx["stride_w"], ctx["groups"], ctx["padded"])
    return (geometry == (1, 1, 1, 1, 1, False) and ctx["out_c"] >= 2
            and (not ctx["overlap"] or ctx["out_c"] <= STAGED_CHANNELS_MAX)
            and ctx["out_h"] * ctx["out_w"] >= 2 and (ctx["out_h"], ctx["out_w"]) == (ctx["in_h"], ctx["in_w"]))


# a 1x1 conv's weight rows widened to int16 on the stack (tg_widen_s8x4_pair) take at most this many bytes
WIDENED_BYTES_MAX = 2560
# ... and are widened only where at least this many pixel pairs read each row: widening a row costs about
# 1.25 instructions a weight, every pixel pair reading it widened saves one (two SXTB16 a word, two words)
WIDENED_PIXEL_PAIRS_MIN = 3


def widened_rows(ctx: dict) -> str | None:
    """How kernels/convolve_1x1_s8's DSP path widens its weights: "rows" (channels outer: each channel pair's
    two rows, once for every pixel), "all" (pixels outer, the overlapped kernel: every row once, where they fit
    WIDENED_BYTES_MAX) or None (each pixel pair widens the weight words it reads, as before)."""
    quads = ctx["in_c"] // 4 if not ctx["split_k"] else ctx["split_k"] // 4 + (ctx["in_c"] - ctx["split_k"]) // 4
    pairs = ctx["out_h"] * ctx["out_w"] // 2
    if not quads or pairs < WIDENED_PIXEL_PAIRS_MIN:
        return None
    if not ctx["overlap"]:
        return "rows" if 16 * quads <= WIDENED_BYTES_MAX else None  # two rows of 4 int16 a quad
    fits = 16 * quads * ((ctx["out_c"] + 1) // 2) <= WIDENED_BYTES_MAX  # channel pairs, the odd last one too
    return "all" if fits and not ctx["split_k"] else None


def requant_table(mult: np.ndarray, shift: np.ndarray, offset: int) -> np.ndarray:
    """(mult, round, rshift) of each output channel, flat int32, for tg_requantize29_channel: the rounding
    divide's addend (1 + 2 offset) 2^e and shift e + 1 (e = -shift) that tg_requantize29_offset derives at run
    time; offset 0 where the requantization does not fold it (tg_requantize29). Every value fits int32: e <= 30
    and, folded, (1 + 2 |offset|) 2^e <= FOLD_LIMIT (`requantize_for`)."""
    e = -np.atleast_1d(shift).astype(np.int64)
    table = np.stack([np.atleast_1d(mult).astype(np.int64), (1 + 2 * offset) << e, e + 1], axis=1)
    return table.astype(np.int32).reshape(-1)


# the requantization table costs 12 B of flash a channel and saves about one instruction an output: kept to 1x1
# convs of at least this many pixels (MCUNet-5fps 49kb: 1 KB of tables, 0.13 of the 0.17 M instructions per
# inference a table for every 1x1 conv saves; that one, 32 KB, pushed the 1000-class --update fisher build 13.5 KB
# past the F746's 1 MB of flash)
REQUANT_TABLE_PIXELS_MIN = 256


def _channel_inner_requant(code: LayerCode) -> None:
    """A 1x1 kernel requantizes channel after channel for each pixel: it reads its channels' constants from one
    table (`requant_table`) where its requantization is tg_requantize29(_offset) and it has at least
    REQUANT_TABLE_PIXELS_MIN pixels. (Measured: the im2col stem the same way takes 0.13 M instructions more on
    MCUNet-5fps, its registers spill.)"""
    ctx = code.context
    if not small_requantize(ctx["requantize"]) or ctx["out_h"] * ctx["out_w"] < REQUANT_TABLE_PIXELS_MIN:
        return
    folded = ctx["requantize"] == "tg_requantize29_offset"
    name = f"{ctx['symbol']}_requant"
    code.arrays[name] = requant_table(code.arrays[ctx["mult"]], code.arrays[ctx["shift"]],
                                      ctx["output_offset"] if folded else 0)
    ctx.update(requant=name, requant_folded=folded)


def _im2col(code: LayerCode) -> bool:
    """An ungrouped k x k conv whose input channels do not fill words (the 3-channel stem) and whose
    weights are build-time constants: kernels/convolve_im2col_s8 computes it from int16 columns."""
    ctx = code.context
    return (ctx["groups"] == 1 and ctx["kh"] * ctx["kw"] > 1 and ctx["in_c"] % 4 != 0
            and not ctx["split_k"] and f"{ctx['symbol']}_weight" in code.arrays)


def aligned_rows(model: ir.Model, layer: ir.Layer, row_bytes: int) -> bool:
    """Whether a kernel may read `layer`'s input rows of `row_bytes` with word-aligned reads (tg_read_2x32): the
    input is an arena tensor (every one starts at a multiple of `schedule.ALIGN`, an overlapped input a multiple
    of 8 after its output: `fusion.overlap_offset`), not the caller's model input, and rows are whole words."""
    return layer.inputs[0] != model.input.name and row_bytes % 4 == 0 and ALIGN % 4 == 0


def render_forward(model: ir.Model, fusions: dict, env: jinja2.Environment, buf, masked=frozenset(),
                   customize=None, symbols: dict[str, int] | None = None, suffix: str = ""):
    """Kernels, calls and constant arrays of the forward schedule, one of each per call. `buf(kind, name)` names
    a buffer (kind "act" for a tensor, "plane" for a fused kernel's plane, "mask" for a clamp mask); layers whose
    output is in `masked` also write their 1-bit clamp mask. `customize(code)` may adjust a layer's
    context and arrays before it is rendered (trained layers move weights to SRAM). `symbols` (a layer's name ->
    the index its C names carry) and `suffix` (after each kernel's name) serve a patch class, whose kernels share
    the whole model's tables."""
    tensors = model.tensors()
    kernels, calls, codes = [], [], []
    for _, i, f in forward_ops(model, fusions):
        layer = model.layers[i]
        if f and f.kind == "patch":
            code = patch_stage_code(model, f, env, buf)
            kernels.append(code.kernel_c)
            calls.append(dict(fn=code.fn, args=["input", buf("act", layer.output.name)],
                              comment=code.context["comment"]))
            codes.append(code)
            continue
        sym = i if symbols is None else symbols[layer.name]
        code = layer_code(sym, layer, tensors)
        if code is None:
            continue
        mask = layer.output.name in masked
        code.context["mask"] = mask
        if customize is not None:
            customize(code)
        args = [buf("act", t) for t in layer.inputs] + [buf("act", layer.output.name)]
        if f and f.kind == "inplace_dw":
            code.template = "depthwise_conv_inplace_s8"
            in_w = tensors[layer.inputs[0]].shape[1]
            code.context["ring_left"], _, code.context["ring_right"] = ring_columns(layer, in_w)
            args = [buf("act", layer.inputs[0]), buf("plane", f"plane_l{i}")]
        elif f and f.kind == "overlap":
            code.context.update(overlap=True, overlap_offset=f.offset)  # input and output share bytes
        elif f and f.kind == "pw_dw":
            pw_layer = model.layers[f.pointwise]
            pw = layer_code(f.pointwise if symbols is None else symbols[pw_layer.name], pw_layer, tensors)
            code.template = "pointwise_depthwise_fused_s8"
            code.context["pw"] = pw.context
            # the 1x1 part reads its input pixels two words at a time where they are whole, aligned words
            code.context["aligned_reads"] = aligned_rows(model, pw.layer, pw.context["in_c"])
            code.context["ring_left"], _, code.context["ring_right"] = ring_columns(layer, pw.layer.output.shape[1])
            code.arrays.update(pw.arrays)
            code.context["comment"] = pw.context["comment"] + "; " + code.context["comment"]
            args = [buf("act", pw.layer.inputs[0]), buf("plane", f"plane_l{i}"), buf("act", layer.output.name)]
        # the depthwise taps read four at a time (the DSP path): planning.fusion.taps_in_fours
        code.context["dw_taps_in_fours"] = bool(f and f.kind in ("inplace_dw", "pw_dw") and taps_in_fours(layer))
        code.context["dw_pixel_pairs"] = code.context["dw_taps_in_fours"] and pixel_pairs(layer)
        # ... as doubled halfwords where the requantization's doubling can take 2 acc (tg_requantize29_x2)
        code.context["dw_doubled"] = (code.context["dw_taps_in_fours"]
                                      and small_requantize(code.context.get("requantize", "")))
        if code.template == "convolve_s8" and _tiled_1x1(code.context):
            code.template = "convolve_1x1_s8"
            code.context["widened"] = widened_rows(code.context)
            _channel_inner_requant(code)
            if code.context["input_offset"] and f"{code.context['symbol']}_weight" in code.arrays:
                # the weights are constant (none train): INPUT_OFFSET * sum(w) of each channel at build time, in
                # the bias itself where that is constant too (in its place: no flash for it; named apart, as a
                # patch class whose window is one pixel keeps the plain bias), else in a table of its own
                sums = offset_sums(layer.weight, code.context["input_offset"])
                if code.context.get("bias_trained"):
                    code.context["offset_sums"] = f"{code.context['symbol']}_offset_sum"
                    code.arrays[code.context["offset_sums"]] = sums
                else:
                    bias = code.arrays.pop(f"{code.context['symbol']}_bias")
                    code.context["bias"] = f"{code.context['symbol']}_folded_bias"
                    code.arrays[code.context["bias"]] = (bias.astype(np.int64) + sums).astype(np.int32)
                    code.context["offset_folded"] = True
        elif code.template == "convolve_s8" and _im2col(code):
            code.template = "convolve_im2col_s8"
            code.context["weight16"] = f"{code.context['symbol']}_weight16"
            code.arrays[code.context["weight16"]] = im2col_filter(layer.weight)
        code.fn = code.context["fn"] = f"{layer_symbol(sym, layer.name)}_{code.template}{suffix}"
        if mask:
            args.append(buf("mask", layer.output.name))
        code.kernel_c = break_assignments(env.get_template(f"kernels/{code.template}.c.j2").render(**code.context))
        kernels.append(code.kernel_c)
        calls.append(dict(fn=code.fn, args=args, comment=code.context["comment"]))
        codes.append(code)
    return kernels, calls, codes


def patch_stage_code(model: ir.Model, f, env: jinja2.Environment, buf) -> LayerCode:
    """The patch stage's C (templates/patch_stage.c.j2): each class's kernels (named `_p<class>`, reading the
    whole model's tables) and a function running them on its buffers, laid in the stage's plane by the class's
    own plan; a table of the patches' windows; the function copying each patch's input window out of the
    caller's input, running its class and copying its output window into the stage output."""
    stage, plans = f.stage.stage, f.stage.plans
    base = buf("plane", f"plane_l{f.layer}")
    index = {layer.name: i for i, layer in enumerate(model.layers)}
    classes, arrays = [], {}
    for c, (cls, plan) in enumerate(zip(stage.classes, plans, strict=True)):
        # a crop's C names carry the index of the layer reading it
        symbols, following = {}, None
        for layer in reversed(cls.model.layers):
            following = index.get(layer.name, following)
            symbols[layer.name] = following

        def cbuf(kind, t, c=c, plan=plan, cls=cls, symbols=symbols):
            t = plan.alias.get(t, t)
            if t.startswith("plane_l"):  # a fused kernel's plane, named for the whole model's layer index
                t = f"plane_l{symbols[cls.model.layers[int(t.removeprefix('plane_l'))].name]}"
            return f"TG_P{c}_{c_ident(t)}"
        kernels, calls, codes = render_forward(cls.model, plan.fusions, env, cbuf, symbols=symbols, suffix=f"_p{c}")
        for code in codes:
            for name, arr in code.arrays.items():
                if name in arrays and not np.array_equal(arrays[name], arr):
                    raise TinygenError(f"patch class {c} of the stage ending at {stage.spec.end!r} needs its own "
                                       f"{name}; use fewer patches")
                arrays[name] = arr
        macros = [(cbuf("act", name), b.offset, b.size) for name, b in sorted(plan.buffers.items(),
                                                                                key=lambda kv: kv[1].offset)]
        first, last = cls.model.input, cls.model.output
        classes.append(dict(kernels=kernels, calls=calls, macros=macros, patches=cls.patches,
                            input=cbuf("act", first.name), output=cbuf("act", last.name),
                            in_h=first.shape[0], in_w=first.shape[1], out_h=last.shape[0], out_w=last.shape[1]))
    out = model.layers[stage.last].output
    n = stage.spec.n
    comment = (f"layers 0..{stage.last} ('{model.layers[0].name}'..'{stage.spec.end}'), patch by patch: {n}x{n} "
               f"windows of the {'x'.join(map(str, out.shape))} output, {len(classes)} classes; "
               f"{stage.macs:,} MACs ({stage.whole_macs:,} whole)")
    ctx = dict(fn="tg_patch_stage", comment=comment, base=base, classes=classes, windows=stage.windows,
               in_w=model.input.shape[1], in_c=model.input.shape[2], out_w=out.shape[1], out_c=out.shape[2])
    text = break_assignments(env.get_template("patch_stage.c.j2").render(**ctx))
    return LayerCode(stage.last, model.layers[stage.last], "tg_patch_stage", "patch_stage", ctx, arrays, text)


def directives_at_column_0(text: str) -> str:
    """Preprocessor lines (a kernel's `#if TG_DSP_KERNELS` paths) at column 0, wherever a template nested them."""
    return re.sub(r"^[ \t]+#", "#", text, flags=re.MULTILINE)


def write_sources(env: jinja2.Environment, src_dir: Path, ctx: dict, const_arrays: dict, mutable=None) -> None:
    """tg_model.[ch] and tg_weights.[ch]: `const` arrays go to flash, `mutable` ones (trained) to SRAM."""
    mutable = mutable or {}
    const_decls = [f"extern const {CTYPES[a.dtype]} {n}[{max(1, a.size)}];" for n, a in const_arrays.items()]
    mutable_decls = [f"extern {CTYPES[a.dtype]} {n}[{max(1, a.size)}];" for n, a in mutable.items()]
    ctx = dict(ctx, array_decls=const_decls + mutable_decls, const_decls=const_decls, mutable_decls=mutable_decls,
               has_mutable=bool(mutable))
    for name in ("tg_model.h", "tg_model.c", "tg_weights.h"):
        (src_dir / name).write_text(directives_at_column_0(env.get_template(f"{name}.j2").render(**ctx)))
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
               input_buf=None if patch_stage(plan.fusions) else buf("act", model.input.name),
               output_buf=buf("act", model.output.name),
               input_zero_point=tensors[model.input.name].zero_point)
    write_sources(env, src_dir, ctx, arrays)
    weight_bytes = int(sum(a.nbytes for a in arrays.values()))
    return {"arena_bytes": plan.arena_size, "weight_bytes": weight_bytes,
            "buffers": {b["name"]: {"offset": b["offset"], "size": b["size"]} for b in buffers}}
