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

from dataclasses import dataclass

import numpy as np

from tinygen.ir import model as ir
from tinygen.ir.gradmath import GRAD_BITS
from tinygen.planning.weight_store import weight_store

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


GROUP_R_MAX = 11  # a patch-summed weight adds at most r^2 int8 weights: |sum| <= 128 r^2 < 2^15 for r <= 11


def tap_groups(k: int, stride: int, r: int) -> list[list[tuple[int, tuple[int, ...]]]]:
    """On one axis of a conv whose output gradient is constant over r x r patches: for each phase f of an input
    position i (f = (i + pad) mod stride r), the patches its taps reach, as (d, taps) with d ascending and
    contiguous. Tap k reads output (i + pad - k) / stride where that divides, in patch (i + pad) // (stride r) + d
    with d = floor((f - k) / (stride r)); so the phase alone decides which taps share a patch (docs/numerics.md
    §5). Successive taps of a phase move d by at most one, so the patches a phase reaches are contiguous."""
    sr = stride * r
    out = []
    for f in range(sr):
        groups: dict[int, list[int]] = {}
        for tap in range(k):
            if (f - tap) % stride == 0:
                groups.setdefault((f - tap) // sr, []).append(tap)
        out.append([(d, tuple(taps)) for d, taps in sorted(groups.items())])
    return out


def clean_inputs(n_in: int, n_out: int, k: int, stride: int, pad: int, r: int) -> int:
    """The first input position on an axis whose taps may read an output beyond the map inside the last, partial
    patch (n_out not a multiple of r): there the patch's gradient is not the tap's, and the input gradient takes
    the taps one by one. n_in where every position is clean."""
    edge = -(-n_out // r) * r
    for i in range(n_in):
        if any((i + pad - tap) % stride == 0 and n_out <= (i + pad - tap) // stride < edge for tap in range(k)):
            return i
    return n_in


def structured_channels(layer, trainer) -> int:
    """Channels of a depthwise conv (one output each, dilation 1) whose input gradient of a filtered (r > 1) output
    gradient takes per patch the sum of the filter's taps that land in it, from build-time sums in flash
    (`patch_sums`): the frozen ones, whose weights do not change; 0 where none, or where the build left the
    layer's sums out to fit the flash (`TrainConfig.taps_only`, `taps_only_to_free`)."""
    r = trainer.scheme.filter_r(layer.name)
    if r == 1 or r > GROUP_R_MAX or not ir.is_depthwise(layer, 1) or layer.dilation != (1, 1):
        return 0
    if layer.name in trainer.config.taps_only:
        return 0
    if not any(t in trainer.needs_grad for t in layer.inputs) or not sums_fit_int32(layer.kernel[0] * layer.kernel[1]):
        return 0
    tl = trainer.trained.get(layer.name)
    if tl is None or not tl.update.channels:
        return layer.groups
    split = weight_store(layer, tl.update.channels).split_k
    return layer.groups - split if split else 0


@dataclass(frozen=True)
class PatchSums:
    """A layer's patch-summed weights as the kernel reads them: per phase on each axis the patches it reaches
    (`tap_groups`), and the sums (int16) by phase row, phase column, each (patch row, patch column) the phase pair
    reaches, then channel (the last `channels` of the layer)."""

    rows: list  # tap_groups of the height axis
    cols: list  # tap_groups of the width axis
    channels: int
    weights: np.ndarray

    def starts(self) -> np.ndarray:
        """Per phase pair (row-major) the index of its first (patch row, patch column) entry."""
        counts = [len(gy) * len(gx) for gy in self.rows for gx in self.cols]
        return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)


def patch_sums(layer, trainer) -> PatchSums | None:
    """The patch-summed weights of a layer's frozen channels (`structured_channels`); None where it has none."""
    frozen = structured_channels(layer, trainer)
    if not frozen:
        return None
    r = trainer.scheme.filter_r(layer.name)
    w = layer.weight[layer.groups - frozen:, :, :, 0].astype(np.int32)  # (C, kh, kw)
    gy, gx = tap_groups(layer.kernel[0], layer.stride[0], r), tap_groups(layer.kernel[1], layer.stride[1], r)
    rows = [w[:, list(ty), :][:, :, list(tx)].sum(axis=(1, 2))
            for fy in gy for fx in gx for _, ty in fy for _, tx in fx]
    return PatchSums(gy, gx, frozen, np.stack(rows).astype(np.int16).ravel())


def structured_bytes(layer, trainer) -> int:
    """Flash bytes of a layer's patch-summed weights (0 where its input gradient takes the taps one by one)."""
    ps = patch_sums(layer, trainer)
    return 0 if ps is None else ps.weights.nbytes


def _axis_counts(n_in: int, n_out: int, k: int, stride: int, pad: int, r: int) -> tuple[int, list, list]:
    """On one axis: the first unclean position (`clean_inputs`), and per input position the patches in the map
    its taps reach and the taps that land in the map."""
    sr, patches = stride * r, -(-n_out // r)
    groups = tap_groups(k, stride, r)
    reach = [sum(0 <= (i + pad) // sr + d < patches for d, _ in groups[(i + pad) % sr]) for i in range(n_in)]
    taps = [sum((i + pad - t) % stride == 0 and 0 <= (i + pad - t) // stride < n_out for t in range(k))
            for i in range(n_in)]
    return clean_inputs(n_in, n_out, k, stride, pad, r), reach, taps


def depthwise_input_products(layer, in_shape, r: int, channels: int) -> tuple[int, int]:
    """Products of a depthwise input gradient over `channels` channels (`in_shape` its input's): (patch-summed,
    tap by tap). Patch-summed: per input pixel one a patch in the map its taps reach, or, where a tap may read past
    the map inside the last partial patch, one a tap that lands in the map, as the kernel takes them."""
    (cy, ry, ty), (cx, rx, tx) = (
        _axis_counts(in_shape[a], layer.output.shape[a], layer.kernel[a], layer.stride[a], layer.padding[2 * a], r)
        for a in (0, 1))
    pixels = [(i, j) for i in range(len(ry)) for j in range(len(rx))]
    summed = sum(ry[i] * rx[j] if i < cy and j < cx else ty[i] * tx[j] for i, j in pixels)
    return channels * summed, channels * sum(ty[i] * tx[j] for i, j in pixels)


def taps_only_to_free(model, trainer, nbytes: int) -> tuple[str, ...]:
    """The layers whose patch-summed weights a build leaves out to free at least `nbytes` of flash: those that save
    the fewest products per byte first (`TrainConfig.taps_only` extended); all of them where that is not enough."""
    tensors = model.tensors()
    candidates = []
    for layer in model.layers:
        size = structured_bytes(layer, trainer)
        if size:
            summed, taps = depthwise_input_products(layer, tensors[layer.inputs[0]].shape,
                                                    trainer.scheme.filter_r(layer.name),
                                                    structured_channels(layer, trainer))
            candidates.append(((taps - summed) / size, layer.name, size))
    dropped, freed = list(trainer.config.taps_only), 0
    for _, name, size in sorted(candidates):
        if freed >= nbytes:
            break
        dropped.append(name)
        freed += size
    return tuple(dropped)
