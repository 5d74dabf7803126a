"""Memory-saving forward schedules that compute exactly the same values.

* **In-place depthwise**: a depthwise conv (channel multiplier 1) whose input dies with it
  computes each output channel into a one-channel plane, then writes the plane over the
  input's slots of that channel (already consumed); output and input share one buffer of
  max(input, output) bytes, plus the plane.
* **Fused pointwise -> depthwise** (the inverted-residual expansion): when a 1x1 conv's output
  feeds only a depthwise conv (multiplier 1) and is needed by nothing else (not saved for
  backward, no gradient), each expansion channel is computed into a plane and immediately
  convolved; the plane is a ring of the kernel-height rows one output row reads, and the
  expanded tensor never exists (TinyEngine-style). For MobileNetV2 at 128x128 this removes
  the 64x64x48 tensor (196 KB) with a ring of three 64-pixel rows. Each ring row carries the depthwise conv's
  left and right padding as columns holding the input zero point (`ring_columns`), so the taps
  of a row need no bounds checks; those columns add nothing to a sum, as a skipped tap does.

* **Overlapped convolution**: a regular convolution whose input dies with it writes its output
  (in raster order) over the part of the input it has already consumed. The input sits
  `overlap_offset` bytes after the output's start, the smallest distance at which no write
  reaches an input byte that is still to be read; the pair needs max(output, offset + input)
  bytes instead of their sum (MobileNetV2's 128x128 stem: 66.7 KB instead of 112 KB).

Every kernel involved does the same integer operations as the unfused one, so the results
are bit-identical; the tests compare them with the reference as usual.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tinygen.ir import model as ir


def taps_in_fours(layer: ir.Conv2D) -> bool:
    """Whether the ring kernels' DSP path (kernels/ring.j2) reads this depthwise conv's row taps four at a
    time (they are contiguous only with dilation 1)."""
    return layer.dilation[1] == 1


def pixel_pairs(layer: ir.Conv2D) -> bool:
    """Whether the ring kernels' DSP path computes two output pixels of a row at a time, taps in fours: at
    stride 1 from each word of taps read (KERNEL_W not a multiple of four, so the pair's one more column falls
    inside the words a single pixel reads already), at stride 2 with at most three taps a row from the word at
    the first pixel's column and the one two columns on (the second pixel's own word: `ring_columns` is the
    same either way)."""
    kw, stride = layer.kernel[1], layer.stride[1]
    return (taps_in_fours(layer) and ((stride == 1 and kw % 4 != 0) or (stride == 2 and kw <= 3))
            and layer.output.shape[1] >= 2)


def ring_columns(layer: ir.Conv2D, w: int) -> tuple[int, int, int]:
    """A ring row (kernels/ring.j2) over an input `w` wide: (padding columns on the left, w, padding columns on
    the right), every column a tap of the depthwise conv reads; with dilation 1, taps are read four at a
    time (the DSP path), so a row's reads end at the next multiple of four taps."""
    left, kw = layer.padding[2], layer.kernel[1]
    reach = (kw + 3) // 4 * 4 - 1 if taps_in_fours(layer) else (kw - 1) * layer.dilation[1]
    last = (layer.output.shape[1] - 1) * layer.stride[1] - left + reach
    return left, w, max(0, last - (w - 1))


def ring_bytes(layer: ir.Conv2D, w: int) -> int:
    """The ring a depthwise conv reads its input rows from (kernels/ring.j2): the rows one output row
    reads, each `ring_columns` wide."""
    return ((layer.kernel[0] - 1) * layer.dilation[0] + 1) * sum(ring_columns(layer, w))


def writes_behind_ring(layer: ir.Conv2D, in_shape: tuple) -> bool:
    """Whether a depthwise conv (multiplier 1) can run in place over a ring: output row oy of a channel
    lands on that channel's slots of input pixels oy * OUT_W .. (oy + 1) * OUT_W - 1, which must lie in
    rows the ring has already copied (up to the last row output row oy reads) — then no row is
    overwritten before it is copied. True for every stride and padding of a conv whose output is no wider
    than its input and whose padding does not exceed its kernel's reach."""
    h, w = in_shape[:2]
    oh, ow = layer.output.shape[:2]
    span = (layer.kernel[0] - 1) * layer.dilation[0]
    return all(((oy + 1) * ow - 1) // w <= min(h - 1, oy * layer.stride[0] - layer.padding[0] + span)
               for oy in range(oh))


@dataclass(frozen=True)
class Fusion:
    kind: str  # "inplace_dw" | "pw_dw" | "overlap" | "patch"
    layer: int  # the index of the layer carrying the call (the depthwise, the overlapped conv, the stage's last)
    pointwise: int = -1  # for pw_dw: the 1x1 conv's index
    plane: int = 0  # bytes of the one-channel plane buffer (for patch: of the patches' own arena)
    offset: int = 0  # for overlap: the input's position after the output's start, in bytes
    stage: object = field(default=None, compare=False, repr=False)  # for patch: schedule.PatchPlan

    def covers(self) -> range:
        """The layers whose work this call does."""
        first = {"pw_dw": self.pointwise, "patch": 0}.get(self.kind, self.layer)
        return range(first, self.layer + 1)


def _is_dw1(layer) -> bool:
    return ir.is_depthwise(layer, multiplier=1)


def _is_pw(layer) -> bool:
    return (isinstance(layer, ir.Conv2D) and layer.groups == 1 and layer.kernel == (1, 1)
            and layer.stride == (1, 1) and sum(layer.padding) == 0)


def overlap_offset(layer, in_shape: tuple, align: int = 8) -> int:
    """Where a convolution's input may start, relative to its output, so that the kernel (output
    pixels in raster order, channels in order, each byte written after its window is read) never
    overwrites an input byte a later write still needs. Window starts are taken at their first
    in-bounds row and column, which can only over-estimate the distance."""
    h, w, cin = in_shape
    oh, ow, cout = layer.output.shape
    rows = np.clip(np.arange(oh) * layer.stride[0] - layer.padding[0], 0, h - 1)
    cols = np.clip(np.arange(ow) * layer.stride[1] - layer.padding[2], 0, w - 1)
    start = ((rows[:, None] * w + cols[None, :]) * cin).ravel().astype(np.int64)
    still_needed = np.minimum.accumulate(start[::-1])[::-1]  # lowest input byte pixel p or a later one reads
    written = (np.arange(oh * ow, dtype=np.int64) + 1) * cout  # output bytes once pixel p is written
    need = int(max(0, (written - still_needed).max()))
    return (need + align - 1) // align * align


def plan_fusions(model: ir.Model, keep: set[str] | None = None, grad_path: set[str] | None = None,
                 materialise: set[str] | None = None) -> dict[int, Fusion]:
    """Fusions keyed by the index of the layer that carries the call. `keep`: tensors that must survive their last
    forward consumer (saved for backward); `grad_path`: tensors that get gradients; `materialise`: tensors that
    must exist whole when their consumer runs (a copy of them is saved for backward)."""
    keep, grad_path, materialise = keep or set(), grad_path or set(), materialise or set()
    users = model.consumers()
    tensors = model.tensors()
    out = {}
    for j, layer in enumerate(model.layers):
        if not _is_dw1(layer):
            continue
        t = layer.inputs[0]
        sole = len(users[t]) == 1 and t not in keep and t != model.output.name
        if not sole:
            continue
        oh, ow = layer.output.shape[:2]
        prev = model.layers[j - 1] if j > 0 else None
        if (prev is not None and prev.output.name == t and _is_pw(prev) and t not in grad_path
                and t not in materialise):
            out[j] = Fusion("pw_dw", j, j - 1, plane=ring_bytes(layer, prev.output.shape[1]))
        elif t != model.input.name and writes_behind_ring(layer, tensors[t].shape):
            out[j] = Fusion("inplace_dw", j, plane=ring_bytes(layer, tensors[t].shape[1]))
    fused_pw = {f.pointwise for f in out.values() if f.kind == "pw_dw"}
    for j, layer in enumerate(model.layers):
        if not isinstance(layer, ir.Conv2D) or layer.groups != 1 or j in fused_pw or j in out:
            continue
        t = layer.inputs[0]
        if len(users[t]) != 1 or t in keep or t == model.output.name:
            continue
        a = overlap_offset(layer, tensors[t].shape)
        if a < layer.output.size:  # it saves bytes
            out[j] = Fusion("overlap", j, offset=a)
    return out


def prune_overlaps(fusions: dict[int, Fusion], arena_size) -> dict[int, Fusion]:
    """Keep an overlapped convolution only where it pays: its pinned buffers move as one, so a chain
    of them can push a group further than it saves. One pass, each dropped if the planned arena
    (`arena_size(fusions)`) does not grow without it; never worse than no overlap at all."""
    plain = {k: f for k, f in fusions.items() if f.kind != "overlap"}
    if len(plain) == len(fusions):
        return fusions
    best = arena_size(fusions)
    for j in [k for k, f in fusions.items() if f.kind == "overlap"]:
        trial = {k: f for k, f in fusions.items() if k != j}
        size = arena_size(trial)
        if size <= best:
            fusions, best = trial, size
    return plain if arena_size(plain) < best else fusions
