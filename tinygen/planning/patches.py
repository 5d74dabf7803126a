"""Patch-based execution of the initial stage (MCUNetV2, Lin et al. 2021).

The first layers of a CNN at full resolution hold the largest maps; run patch by patch, they never exist whole.
The stage's output is split into n x n windows; for each, every tensor of the stage is computed over the window
its consumers read (their receptive field, clipped to the map), the halo recomputed by neighbouring patches. A
patch runs the stage's own layers on small tensors: each conv padded only where the map ends (so a patch's
convs are ordinary padded convs and every kernel and fusion applies), a `Crop` where one consumer reads less
of a tensor than another (a residual add beside a 3x3 conv). Patches whose windows have the same geometry form
a class, generated once (3 x 3 classes, first, middle and last row and column, where the halo is smaller than a
patch). The model input is
read window by window from the caller's buffer, as MCUNetV2 reads (or decodes) its image, so it needs no arena
bytes; the stage output is whole. The values are those of whole-tensor execution: the same sums over the same
inputs, the padding skipped as before; the tests compare with the reference as usual.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tinygen.errors import TinygenError
from tinygen.ir import model as ir

Box = tuple[int, int, int, int]  # rows y0..y1 and columns x0..x1 of a map, half-open


@dataclass(frozen=True)
class PatchSpec:
    """The stage ends with layer `end` (its output exists whole); its output is split into n x n windows."""

    end: str
    n: int


@dataclass
class PatchClass:
    model: ir.Model  # the stage over one patch of this geometry: its input is the patch's input window
    patches: list[int]  # indices into PatchStage.windows


@dataclass
class PatchStage:
    spec: PatchSpec
    last: int  # index of the stage's last layer (layers 0..last run patch by patch)
    windows: list[tuple[Box, Box, int]]  # per patch: its input window, its output window, its class
    classes: list[PatchClass]
    macs: int  # forward MACs of the stage run patch by patch (halos recomputed)
    whole_macs: int  # ... and run whole


def _splits(size: int, n: int) -> list[tuple[int, int]]:
    bounds = [i * size // n for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _reads(layer: ir.Layer, out: Box, tensors: dict[str, ir.TensorInfo]) -> list[tuple[str, Box]]:
    """The window of each input that `layer` reads to compute its output window `out`, clipped to the map."""
    if isinstance(layer, ir.Add):
        return [(t, out) for t in layer.inputs]
    t = layer.inputs[0]
    h, w = tensors[t].shape[:2]
    (sy, sx), (dy, dx), (kh, kw) = layer.stride, layer.dilation, layer.kernel
    pt, _, pl, _ = layer.padding
    y0, y1 = out[0] * sy - pt, (out[1] - 1) * sy - pt + (kh - 1) * dy + 1
    x0, x1 = out[2] * sx - pl, (out[3] - 1) * sx - pl + (kw - 1) * dx + 1
    box = (max(y0, 0), min(y1, h), max(x0, 0), min(x1, w))
    if box[0] >= box[1] or box[2] >= box[3]:
        raise TinygenError(f"layer {layer.name!r}: a patch of its output reads only padding; use fewer patches")
    return [(t, box)]


def _union(a: Box | None, b: Box) -> Box:
    return b if a is None else (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _shape(box: Box, channels: int) -> tuple[int, int, int]:
    return (box[1] - box[0], box[3] - box[2], channels)


def check_stage(model: ir.Model, last: int) -> None:
    """Refuse a stage that cannot run patch by patch, in one sentence naming the layer."""
    stage = model.layers[:last + 1]
    end = model.layers[last].name
    for layer in stage:
        ok = isinstance(layer, ir.Add) or (isinstance(layer, ir.Conv2D) and len(layer.output.shape) == 3)
        if not ok:
            raise TinygenError(f"layer {layer.name!r} ({layer.op}) cannot run patch by patch (convolutions and adds "
                               f"can); end the patch stage before it, not at {end!r}")
    made = {layer.output.name for layer in stage} | {model.input.name}
    for layer in model.layers[last + 1:]:
        early = [t for t in layer.inputs if t in made and t != model.layers[last].output.name]
        if early:
            raise TinygenError(f"layer {layer.name!r} reads {early[0]!r}, which the patch stage ending at {end!r} "
                               "never holds whole; end the stage after it or before that tensor")
    if model.layers[last].output.name == model.output.name:
        raise TinygenError(f"the patch stage cannot end at the model's output layer {end!r}; end it earlier")


def _patch_model(model: ir.Model, last: int, out: Box) -> tuple[ir.Model, Box]:
    """The stage over one output window: each layer over the window its consumers read, padded where the map
    ends, with a crop where it reads less of a tensor than the tensor's window. Returns it and its input window."""
    tensors = model.tensors()
    stage = model.layers[:last + 1]
    need: dict[str, Box] = {stage[-1].output.name: out}
    for layer in reversed(stage):
        if layer.output.name not in need:
            raise TinygenError(f"layer {layer.name!r} in the patch stage feeds nothing after it; remove it")
        for t, box in _reads(layer, need[layer.output.name], tensors):
            need[t] = _union(need.get(t), box)
    info = {t: dataclasses.replace(tensors[t], shape=_shape(box, tensors[t].shape[-1])) for t, box in need.items()}
    layers: list[ir.Layer] = []
    for layer in stage:
        ob = need[layer.output.name]
        ins = []
        for k, (t, box) in enumerate(_reads(layer, ob, tensors)):
            if box == need[t]:
                ins.append(t)
                continue
            crop_out = dataclasses.replace(tensors[t], name=f"{t}.window{k}.{layer.name}",
                                           shape=_shape(box, tensors[t].shape[-1]))
            origin = (box[0] - need[t][0], box[2] - need[t][2])
            layers.append(ir.Crop(f"{layer.name}.window{k}", [t], crop_out, origin=origin))
            ins.append(crop_out.name)
        changes = dict(inputs=ins, output=info[layer.output.name])
        if isinstance(layer, ir.Conv2D):
            box = _reads(layer, ob, tensors)[0][1]
            (sy, sx), (dy, dx), (kh, kw) = layer.stride, layer.dilation, layer.kernel
            pt, pl = layer.padding[0], layer.padding[2]
            y0, y1 = ob[0] * sy - pt, (ob[1] - 1) * sy - pt + (kh - 1) * dy + 1  # the window the taps span
            x0, x1 = ob[2] * sx - pl, (ob[3] - 1) * sx - pl + (kw - 1) * dx + 1
            changes["padding"] = (box[0] - y0, y1 - box[1], box[2] - x0, x1 - box[3])
        layers.append(dataclasses.replace(layer, **changes))
    return ir.Model(f"{model.name}.patch", info[model.input.name], layers), need[model.input.name]


def _geometry(m: ir.Model) -> tuple:
    """What makes two patches' programs the same: every layer's inputs, output shape, padding and crop origin."""
    return (m.input.shape,) + tuple((type(la).__name__, tuple(la.inputs), la.output.shape,
                                    getattr(la, "padding", None), getattr(la, "origin", None)) for la in m.layers)


def plan_patch_stage(model: ir.Model, spec: PatchSpec) -> PatchStage:
    """Windows and classes of the stage ending at `spec.end`, its output split n x n."""
    names = [layer.name for layer in model.layers]
    if spec.end not in names:
        raise TinygenError(f"--patch-stage {spec.end!r} is not a layer of the model; `tinygen plan` lists them")
    last = names.index(spec.end)
    check_stage(model, last)
    oh, ow = model.layers[last].output.shape[:2]
    if not 1 <= spec.n <= min(oh, ow):
        raise TinygenError(f"--patches {spec.n}: the stage output is {oh}x{ow}; use 1..{min(oh, ow)} patches a side")
    windows, classes, keys = [], [], {}
    for ys in _splits(oh, spec.n):
        for xs in _splits(ow, spec.n):
            out = ys + xs
            m, inbox = _patch_model(model, last, out)
            key = _geometry(m)
            if key not in keys:
                keys[key] = len(classes)
                classes.append(PatchClass(m, []))
            classes[keys[key]].patches.append(len(windows))
            windows.append((inbox, out, keys[key]))
    macs = sum(ir.layer_macs(la) for _, _, c in windows for la in classes[c].model.layers)
    whole = sum(ir.layer_macs(la) for la in model.layers[:last + 1])
    return PatchStage(spec, last, windows, classes, macs, whole)


STAGE_REDUCTION_MAX = 8  # a stage ends at most where its maps are this many times smaller a side than the input


def stage_ends(model: ir.Model, frozen_before: int | None = None) -> list[int]:
    """Indices of the layers a patch stage may end with: every layer before it a conv or an add read by nothing
    after the stage, its output not the model's and (with `frozen_before`) before that layer index, and no more
    than STAGE_REDUCTION_MAX times smaller a side than the input (the halos grow with the depth, the maps'
    bytes no longer fall: MCUNetV2's stages end at 1/8 to 1/16)."""
    ends = []
    stop = len(model.layers) - 1 if frozen_before is None else min(frozen_before, len(model.layers) - 1)
    for last in range(stop):
        shape = model.layers[last].output.shape
        if len(shape) != 3 or shape[0] * STAGE_REDUCTION_MAX < model.input.shape[0]:
            break
        try:
            check_stage(model, last)
        except TinygenError:
            continue
        ends.append(last)
    return ends
