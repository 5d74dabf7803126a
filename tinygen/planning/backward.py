"""Layout facts of the backward kernels that the plan depends on: a conv's geometry, the channel blocks of
a 1x1 or depthwise input gradient, and the int32 sums a one-pass input gradient keeps.

A 1x1 or depthwise input gradient (templates/train/conv_backward_input_{1x1,dw}_s16.c.j2) sums a row of
input channels at a time and normalises the sums to int16 by their largest magnitude. With an int32 scratch
it keeps the sums there and normalises the scratch; without one it keeps them in the int16 gradient,
truncated at a running shift, and rounds once at the end (docs/numerics.md §2.1) — the same values, the
scratch a few percent fewer instructions. The scratch is planned only where it costs no peak SRAM
(`schedule.plan_training(one_pass=True)`).
"""

from __future__ import annotations

from tinygen.ir import model as ir
from tinygen.ir.gradmath import GRAD_BITS

ROW_BLOCK = 256  # most input-channel sums a 1x1 input gradient keeps at once (on the stack: 1 KB of int32)


def geometry(layer, tensors) -> dict:
    """Conv geometry of a conv or FC layer (an FC is a 1x1 conv over a 1x1xN input)."""
    x = tensors[layer.inputs[0]]
    if isinstance(layer, ir.FullyConnected):
        return dict(in_h=1, in_w=1, in_c=x.size, out_h=1, out_w=1, out_c=layer.weight.shape[0], kh=1, kw=1,
                    cg=x.size, groups=1, stride_h=1, stride_w=1, pad_top=0, pad_left=0, dil_h=1, dil_w=1)
    h, w, cin = x.shape
    oh, ow, cout = layer.output.shape
    return dict(in_h=h, in_w=w, in_c=cin, out_h=oh, out_w=ow, out_c=cout, kh=layer.kernel[0], kw=layer.kernel[1],
                cg=layer.weight.shape[3], groups=layer.groups, stride_h=layer.stride[0], stride_w=layer.stride[1],
                pad_top=layer.padding[0], pad_left=layer.padding[2], dil_h=layer.dilation[0], dil_w=layer.dilation[1])


def row_block(count: int) -> int | None:
    """The block a row of `count` channel sums is cut into: the largest divisor of `count` that is at
    most ROW_BLOCK and no smaller than a quarter of it (None: no such divisor)."""
    for nblocks in range(-(-count // ROW_BLOCK), count + 1):
        if count % nblocks == 0:
            block = count // nblocks
            return block if block >= min(count, ROW_BLOCK // 4) else None
    return None


def pointwise_blocks(geo: dict, split_k: int) -> dict | None:
    """For a 1x1, stride-1, unpadded, ungrouped conv (or an FC), the channel blocks of its input-gradient
    rows: `blk` and `blks` (block size and count) over the input channels, or `blk_t`/`blk_ts` and
    `blk_f`/`blk_fs` over the trained and the frozen part of every weight row (`split_k` trained input
    channels); None for any other conv (the general template)."""
    if (geo["kh"], geo["kw"], geo["stride_h"], geo["stride_w"], geo["pad_top"], geo["pad_left"],
            geo["groups"]) != (1, 1, 1, 1, 0, 0, 1) or (geo["out_h"], geo["out_w"]) != (geo["in_h"], geo["in_w"]):
        return None
    return _blocks({"blk_t": split_k, "blk_f": geo["in_c"] - split_k} if split_k else {"blk": geo["in_c"]})


def depthwise_blocks(layer, geo: dict, split_k: int) -> dict | None:
    """For a depthwise conv with one output per channel, the channel blocks of its input-gradient rows
    (templates/train/conv_backward_input_dw_s16.c.j2), keyed as `pointwise_blocks`' (a split tensor: the
    first `split_k` channels' filters in SRAM); None for any other conv."""
    if not ir.is_depthwise(layer, 1):
        return None
    return _blocks({"blk_t": split_k, "blk_f": geo["in_c"] - split_k} if split_k else {"blk": geo["in_c"]})


def _blocks(parts: dict[str, int]) -> dict | None:
    out = {}
    for key, count in parts.items():
        block = row_block(count)
        if block is None:
            return None
        out.update({key: block, f"{key}s": count // block})
    return out


def input_gradient_blocks(layer, geo: dict, split_k: int) -> tuple[str, dict] | None:
    """(kind, channel blocks) of a layer whose input gradient is summed a row of channels at a time: "1x1"
    or "depthwise"; None for the general kernel."""
    for kind, found in (("1x1", pointwise_blocks(geo, split_k)), ("depthwise", depthwise_blocks(layer, geo, split_k))):
        if found is not None:
            return kind, found
    return None


def sums_fit_int32(terms: int, other: int = 128) -> bool:
    """Whether a sum of `terms` products |G_acc| <= 2^GRAD_BITS times at most `other` fits int32: |w| <= 128 over
    the output channels of a 1x1 input gradient or the taps of a depthwise one; |x - z_x| <= 255 over the pixels
    of a weight gradient."""
    return terms * other * (1 << GRAD_BITS) < 1 << 31


def one_pass_sums_bytes(layer, tensors, split_k: int, r: int) -> int | None:
    """Bytes of the int32 scratch a one-pass input gradient needs — a 1x1 one keeps one row of input-channel
    sums per r x r gradient patch, a depthwise one a row per input pixel — or None where the layer's input
    gradient is the general kernel's or its sums need int64."""
    geo = geometry(layer, tensors)
    found = input_gradient_blocks(layer, geo, split_k)
    if found is None:
        return None
    if found[0] == "depthwise":
        return 4 * geo["in_h"] * geo["in_w"] * geo["in_c"] if sums_fit_int32(geo["kh"] * geo["kw"]) else None
    return 4 * -(-geo["in_h"] // r) * -(-geo["in_w"] // r) * geo["in_c"] if sums_fit_int32(geo["out_c"]) else None


IN_PLACE_BLOCK_BYTES = 1024  # most bytes of G_acc an in-place depthwise input gradient copies out at a time


def in_place_block(layer, trainer) -> int | None:
    """Channels a block of the depthwise input gradient written over its own output gradient
    (templates/train/conv_backward_input_dw_inplace_s16.c.j2): the most that divide the channels and whose G_acc
    fits IN_PLACE_BLOCK_BYTES; None where it cannot run in place: not a depthwise conv with one output per
    channel and stride 1 whose output is as large as its input, weights that train (their update, after the
    input gradient, reads G_acc; a bias update goes first), a filtered gradient, sums that may not fit int32, or
    one block holding every channel (no bytes saved)."""
    if not (ir.is_depthwise(layer, 1) and layer.stride == (1, 1)):
        return None
    tl = trainer.trained.get(layer.name)
    if (tl is not None and tl.update.channels) or trainer.scheme.filter_r(layer.name) != 1:
        return None
    x = trainer.model.tensors()[layer.inputs[0]]
    if tuple(x.shape) != tuple(layer.output.shape) or not sums_fit_int32(layer.kernel[0] * layer.kernel[1]):
        return None
    h, w, c = layer.output.shape
    block = max((b for b in range(1, c + 1) if c % b == 0 and 2 * h * w * b <= IN_PLACE_BLOCK_BYTES), default=1)
    return block if block < c else None
