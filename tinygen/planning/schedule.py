"""The schedule of a forward pass and of a training step, and where every buffer lives.

Forward: step 0 writes the input and layer i runs at step i+1. A training step adds the loss
and each layer's backward in reverse (`TrainSchedule`). Buffers are declared with their first
and last step and placed in one arena by `tinygen.planning.arena`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tinygen.errors import TinygenError
from tinygen.ir import model as ir
from tinygen.ir.names import c_ident
from tinygen.planning.arena import Buffer, peak_steps, pin, plan_best
from tinygen.planning.backward import in_place_block, one_pass_sums_bytes
from tinygen.planning.fusion import Fusion, plan_fusions, prune_overlaps
from tinygen.planning.patches import PatchSpec, PatchStage, plan_patch_stage
from tinygen.planning.saved_input import SavedInput, saved_input
from tinygen.planning.weight_store import weight_store
from tinygen.reference.training import Trainer

MASK_BITS = 8  # a clamp mask packs this many outputs' bits in a byte (tg_grad_math.h tg_mask_get)


@dataclass
class ForwardPlan:
    """Where each activation tensor lives: arena offset and size (reshape outputs alias)."""

    buffers: dict[str, Buffer]
    alias: dict[str, str]
    arena_size: int
    fusions: dict = field(default_factory=dict)  # layer index -> Fusion, as planned

    def offset(self, tensor: str) -> int:
        return self.buffers[self.alias.get(tensor, tensor)].offset


@dataclass
class PatchPlan:
    """The patch stage (`planning.patches`) and the forward plan of each of its classes, laid in one buffer."""

    stage: PatchStage
    plans: list[ForwardPlan]


def patch_fusion(model: ir.Model, spec: PatchSpec) -> Fusion:
    """The stage's call: carried by its last layer, its patches' buffers in a plane as large as the largest class's
    arena."""
    stage = plan_patch_stage(model, spec)
    plans = [plan_forward(c.model) for c in stage.classes]
    return Fusion("patch", stage.last, plane=max(p.arena_size for p in plans), stage=PatchPlan(stage, plans))


def with_patches(fusions: dict, model: ir.Model) -> dict:
    """`fusions` with the model's patch stage (`ir.Model.patch_stage`) in place of every fusion touching its layers."""
    if model.patch_stage is None:
        return fusions
    f = patch_fusion(model, PatchSpec(*model.patch_stage))
    kept = {k: g for k, g in fusions.items() if min(g.covers()) > f.layer}
    return {**kept, f.layer: f}


def patch_stage(fusions: dict) -> Fusion | None:
    return next((f for f in fusions.values() if f.kind == "patch"), None)


def forward_ops(model: ir.Model, fusions: dict) -> list[tuple[int, int, Fusion | None]]:
    """The forward schedule as (step, layer index, fusion): layer i runs at step i+1; a pointwise
    conv fused into the following depthwise runs inside that layer's step, the patch stage in its last layer's."""
    covered = {i for f in fusions.values() for i in f.covers() if i != f.layer}
    return [(i + 1, i, fusions.get(i)) for i in range(len(model.layers)) if i not in covered]


def op_inputs(model: ir.Model, i: int, fusion: Fusion | None) -> list[str]:
    """The arena tensors an op reads (the patch stage reads the caller's input, window by window)."""
    if fusion and fusion.kind == "patch":
        return []
    return model.layers[fusion.pointwise].inputs if fusion and fusion.kind == "pw_dw" else model.layers[i].inputs


def place_forward(model: ir.Model, fusions: dict, need, alias: dict[str, str], pin=None) -> None:
    """Declare the forward pass's buffers through `need(name, size, first, last)`; fills `alias`
    (reshape outputs and in-place outputs share their input's buffer); `pin(member, anchor, rel)`
    fixes an overlapped convolution's input buffer relative to its output's."""
    if patch_stage(fusions) is None:
        need(model.input.name, model.input.size, 0, 0)
    for step, i, f in forward_ops(model, fusions):
        layer = model.layers[i]
        for t in op_inputs(model, i, f):
            need(alias.get(t, t), 0, step, step)
        if f and f.kind == "patch":
            need(layer.output.name, layer.output.size, step, step)
            need(f"plane_l{i}", f.plane, step, step)
            continue
        if isinstance(layer, ir.Reshape):
            alias[layer.output.name] = alias.get(layer.inputs[0], layer.inputs[0])
            continue
        if f and f.kind == "inplace_dw":
            root = alias.get(layer.inputs[0], layer.inputs[0])
            alias[layer.output.name] = root
            need(root, layer.output.size, step, step)
        else:
            need(layer.output.name, layer.output.size, step, step)
        if f and f.kind == "overlap":
            pin(alias.get(layer.inputs[0], layer.inputs[0]), layer.output.name, f.offset)
        elif f:
            need(f"plane_l{i}", f.plane, step, step)


def plan_forward(model: ir.Model, align: int = 8, fusions: dict | None = None,
                 keep: frozenset[str] = frozenset()) -> ForwardPlan:
    """Lifetimes: step 0 writes the input; layer i runs at step i+1; the output (and every tensor in
    `keep`, saved for a backward pass) lives to the end."""
    if fusions is None:
        fusions = prune_overlaps(with_patches(plan_fusions(model), model),
                                 lambda fs: plan_forward(model, align, fs).arena_size)
    alias: dict[str, str] = {}
    buffers: dict[str, Buffer] = {}

    def need(name, size, first, last):
        b = buffers.setdefault(name, Buffer(name, size, first, last))
        b.size, b.first, b.last = max(b.size, size), min(b.first, first), max(b.last, last)

    place_forward(model, fusions, need, alias, lambda m, a, rel: pin(buffers, m, a, rel))
    for t in keep | {model.output.name}:
        buffers[alias.get(t, t)].last = len(model.layers) + 1
    size, _ = plan_best(list(buffers.values()), align)
    return ForwardPlan(buffers, alias, size, fusions)



ALIGN = 8


@dataclass
class TrainSchedule:
    """Steps: input written at 0, forward layer i at i+1, loss at L+1, backward of layer i at 2L+1-i."""

    n_layers: int

    def fwd(self, i: int) -> int:
        return i + 1

    @property
    def loss(self) -> int:
        return self.n_layers + 1

    def bwd(self, i: int) -> int:
        return 2 * self.n_layers + 1 - i


@dataclass
class TrainPlan:
    buffers: dict[str, Buffer]
    ctype: dict[str, str]
    arena_size: int
    alias: dict[str, str]  # activation storage: reshape and in-place outputs share their input's buffer
    grad_alias: dict[str, str]  # gradients: only reshape outputs share (an in-place output's gradient differs)
    records: list[str] = field(default_factory=list)
    saved: dict[str, SavedInput] = field(default_factory=dict)  # per trained layer: its input as kept for dW
    contributions: dict[str, list[int]] = field(default_factory=dict)  # grad root -> backward layers adding to it
    fusions: dict = field(default_factory=dict)  # layer index -> Fusion, as planned
    strategy: str = ""  # which arena ordering won
    one_pass: set[int] = field(default_factory=set)  # layers whose input gradient keeps its sums (sums_l<i>)
    overlaid: set[int] = field(default_factory=set)  # of those, the ones whose sums overlay their own gradient
    in_place: dict[int, int] = field(default_factory=dict)  # depthwise input gradients over their output
    # gradient: layer -> channels a block (`backward.in_place_block`)

    def ptr(self, name: str) -> str:
        return f"TG_{c_ident(name).upper()}"


class _Buffers:
    """The step's buffers as they are declared: a second declaration widens size and lifetime."""

    def __init__(self):
        self.bufs: dict[str, Buffer] = {}
        self.ctype: dict[str, str] = {}

    def need(self, name, size, first, last, ct="int8_t"):
        if name in self.bufs:
            b = self.bufs[name]
            b.size, b.first, b.last = max(b.size, int(size)), min(b.first, first), max(b.last, last)
        else:
            self.bufs[name] = Buffer(name, int(size), first, last)
            self.ctype[name] = ct


def _gradient_aliases(model: ir.Model) -> dict[str, str]:
    """Gradients share a buffer only through reshapes (an in-place output's gradient differs)."""
    galias: dict[str, str] = {}
    for layer in model.layers:
        if isinstance(layer, ir.Reshape):
            galias[layer.output.name] = galias.get(layer.inputs[0], layer.inputs[0])
    return galias


def _check_reshapes(model: ir.Model, trainer: Trainer) -> None:
    for layer in model.layers:
        if isinstance(layer, ir.Reshape) and layer.output.name in trainer.needs_grad:
            users = [u for u in model.consumers()[layer.inputs[0]] if u is not layer]
            if any(u.output.name in trainer.needs_grad for u in users):
                raise TinygenError(f"layer {layer.name!r}: a reshaped tensor with other consumers on the gradient "
                                   "path is not supported")


def _place_saved(model: ir.Model, saved: dict[str, SavedInput], alias: dict[str, str], sched: TrainSchedule,
                 b: _Buffers) -> None:
    """Each trained layer's input as its update reads it: the activation kept alive, or a copy."""
    index = {layer.name: i for i, layer in enumerate(model.layers)}
    tensors = model.tensors()
    for name, sv in saved.items():
        i = index[name]
        if sv.mode == "tensor":  # the activation itself, kept from its producer
            t = alias.get(model.layer(name).inputs[0], model.layer(name).inputs[0])
            b.need(f"act_{t}", tensors[t].size, sched.bwd(i), sched.bwd(i))
        else:  # a copy written just before the layer runs forward
            b.need(f"saved_l{i}", sv.nbytes, sched.fwd(i), sched.bwd(i), sv.ctype)


def _place_gradients(model: ir.Model, trainer: Trainer, galias: dict[str, str], sched: TrainSchedule,
                     b: _Buffers) -> dict[str, list[int]]:
    """Masks and gradient buffers of the gradient path; returns, per gradient root, the backward layers
    writing into it in order (the first writes, later ones add through a temporary)."""
    tensors = model.tensors()
    producer = {layer.output.name: i for i, layer in enumerate(model.layers)}
    path = [(i, layer) for i, layer in enumerate(model.layers) if layer.output.name in trainer.needs_grad]
    contributions: dict[str, list[int]] = {}
    for i, layer in reversed(path):
        if isinstance(layer, ir.Reshape):
            continue
        b.need(f"mask_{layer.output.name}", -(-layer.output.size // MASK_BITS), sched.fwd(i), sched.bwd(i), "uint8_t")
        for t in layer.inputs:
            if t in trainer.needs_grad:
                contributions.setdefault(galias.get(t, t), []).append(i)
        # a conv's accumulator gradient (masked, filtered) is written over its output gradient, which
        # nothing reads afterwards: no buffer of its own (conv_grad_output_s16 reads before it writes)
    out = model.output.name
    grad_first = {galias.get(out, out): sched.loss}
    for t, writers in contributions.items():
        grad_first[t] = sched.bwd(writers[0])
        for w in writers[1:]:
            b.need(f"gradtmp_{t}_{w}", 2 * tensors[t].size, sched.bwd(w), sched.bwd(w), "int16_t")
    for t, first in grad_first.items():
        last = sched.bwd(producer[t]) if t in producer else first
        b.need(f"grad_{t}", 2 * tensors[t].size, first, last, "int16_t")
    return contributions


def _place_in_place(model: ir.Model, trainer: Trainer, contributions: dict[str, list[int]], galias: dict[str, str],
                    sched: TrainSchedule, b: _Buffers) -> dict[int, int]:
    """The depthwise input gradients written over their own output gradient (`backward.in_place_block`), where
    that lowers the peak: while the step with the most live bytes is the backward of a layer that can, that
    layer's input gradient buffer is pinned on its output gradient's, and the block of G_acc the kernel copies
    out lives through its backward (the kernel takes two passes: not worth it elsewhere). A layer must be its
    input gradient's only writer. Returns those layers with their blocks' channels."""
    cands = {}
    for t, writers in contributions.items():
        i = writers[0]
        layer = model.layers[i]
        block = in_place_block(layer, trainer) if len(writers) == 1 else None
        y = galias.get(layer.output.name, layer.output.name)
        if block is not None and b.bufs[f"grad_{t}"].anchor is None and f"grad_{y}" in b.bufs:
            cands[sched.bwd(i)] = (i, t, y, block)
    chosen = {}
    while cands:
        _, steps = peak_steps(list(b.bufs.values()))
        at = next((s for s in sorted(steps) if s in cands), None)
        if at is None:
            break
        i, t, y, block = cands.pop(at)
        anchor = b.bufs[f"grad_{y}"]
        pin(b.bufs, f"grad_{t}", anchor.anchor or anchor.name, anchor.rel)
        h, w = model.layers[i].output.shape[:2]
        b.need(f"block_l{i}", 2 * h * w * block, sched.bwd(i), sched.bwd(i), "int16_t")
        chosen[i] = block
    return chosen


def _place_one_pass_sums(model: ir.Model, trainer: Trainer, contributions: dict[str, list[int]],
                         sched: TrainSchedule, b: _Buffers, in_place: dict[int, int], overlay_first: bool = False
                         ) -> tuple[set[int], set[int], int, str]:
    """Give the 1x1 and depthwise input gradients an int32 scratch for their sums (`backward.py`) where it
    costs no arena bytes, the most MACs first: a buffer of its own, or else — where the sums are one per
    gradient element (r = 1) — one laid over the gradient they become, which it then needs only twice the
    bytes of (int16 i is written after int32 i is read, and no later int32 is stored below it). Returns
    (those layers, the overlaid ones, arena size, strategy). `overlay_first` tries the overlay before a
    buffer of its own (tests: so that both layouts are exercised on small models)."""
    size, strategy = plan_best(list(b.bufs.values()), ALIGN)
    tensors = model.tensors()
    dest = {}  # layer -> the gradient buffer its input gradient is written to
    for t, writers in contributions.items():
        for k, w in enumerate(writers):
            dest[w] = f"grad_{t}" if k == 0 else f"gradtmp_{t}_{w}"
    cands = []
    for i in sorted(dest):
        layer = model.layers[i]
        if not isinstance(layer, (ir.Conv2D, ir.FullyConnected)) or i in in_place:  # in place: no scratch
            continue
        tl = trainer.trained.get(layer.name)
        store = weight_store(layer, tl.update.channels) if tl and tl.update.channels else None
        r = trainer.scheme.filter_r(layer.name)
        nbytes = one_pass_sums_bytes(layer, tensors, store.split_k if store else 0, r)
        if nbytes is not None:
            cands.append((-ir.layer_macs(layer), i, nbytes, nbytes == 2 * b.bufs[dest[i]].size))
    chosen, overlaid = set(), set()
    for _, i, nbytes, same_grid in sorted(cands):
        name = f"sums_l{i}"
        b.need(name, nbytes, sched.bwd(i), sched.bwd(i), "int32_t")
        if not (overlay_first and same_grid) and plan_best(list(b.bufs.values()), ALIGN)[0] <= size:
            chosen.add(i)
            continue
        if same_grid and b.bufs[dest[i]].anchor is None:
            pin(b.bufs, name, dest[i], 0)
            if plan_best(list(b.bufs.values()), ALIGN)[0] <= size:
                chosen.add(i)
                overlaid.add(i)
                continue
        del b.bufs[name], b.ctype[name]
    size2, strategy = plan_best(list(b.bufs.values()), ALIGN)  # the offsets of the kept set
    assert size2 <= size
    return chosen, overlaid, size2, strategy


def plan_training(model: ir.Model, trainer: Trainer, fusions: dict | None = None,
                  one_pass: bool | str = False) -> TrainPlan:
    """Every buffer of one training step (forward with the saved inputs, loss, backward) placed in one arena.
    With `one_pass`, 1x1 and depthwise input gradients also get their sums' scratch where it costs no arena
    bytes (the arena's size is the same either way: what estimates need leaves it out); "overlay" lays it
    over the gradient wherever the grid allows, even where a buffer of its own would fit (tests)."""
    _check_reshapes(model, trainer)
    _check_frozen_stage(model, trainer)
    sched = TrainSchedule(len(model.layers))
    b = _Buffers()
    alias: dict[str, str] = {}
    saved = saved_inputs(model, trainer)
    copied = {model.layer(n).inputs[0] for n, s in saved.items() if s.mode != "tensor"}
    keep = {model.output.name} | {model.layer(n).inputs[0] for n, s in saved.items() if s.mode == "tensor"}
    if fusions is None:
        # which overlaps pay is a question about the forward pass (they move forward buffers only):
        # asked of the forward plan with the saved tensors kept, a fraction of the cost of whole steps
        fusions = prune_overlaps(with_patches(plan_fusions(model, keep, trainer.needs_grad, copied), model),
                                 lambda fs: plan_forward(model, ALIGN, fs, frozenset(keep)).arena_size)
    place_forward(model, fusions, lambda n, size, first, last: b.need(f"act_{n}", size, first, last), alias,
                  lambda m, a, rel: pin(b.bufs, f"act_{m}", f"act_{a}", rel))
    out_root = alias.get(model.output.name, model.output.name)
    b.need(f"act_{out_root}", model.output.size, sched.loss, sched.loss)
    _place_saved(model, saved, alias, sched, b)
    galias = _gradient_aliases(model)
    contributions = _place_gradients(model, trainer, galias, sched, b)
    in_place = _place_in_place(model, trainer, contributions, galias, sched, b)
    if one_pass:
        chosen, overlaid, size, strategy = _place_one_pass_sums(model, trainer, contributions, sched, b, in_place,
                                                                overlay_first=one_pass == "overlay")
    else:
        chosen, overlaid, (size, strategy) = set(), set(), plan_best(list(b.bufs.values()), ALIGN)
    return TrainPlan(b.bufs, b.ctype, size, alias, galias, saved=saved, contributions=contributions,
                     fusions=fusions, strategy=strategy, one_pass=chosen, overlaid=overlaid, in_place=in_place)


def _check_frozen_stage(model: ir.Model, trainer: Trainer) -> None:
    """A patch stage holds no tensor whole but its output: none of its layers may train or pass a gradient (the
    published schemes freeze the initial stage; a build that trains there ends the stage before the layer)."""
    if model.patch_stage is None:
        return
    end = model.patch_stage[0]
    names = [layer.name for layer in model.layers]
    for layer in model.layers[:names.index(end) + 1 if end in names else 0]:
        if layer.name in trainer.trained or layer.output.name in trainer.needs_grad:
            raise TinygenError(f"layer {layer.name!r} trains or passes a gradient, so it cannot run patch by patch; "
                               f"end the patch stage before it, not at {end!r}")


def saved_inputs(model: ir.Model, trainer: Trainer) -> dict[str, SavedInput]:
    """Per layer whose weights train: the form its input is kept in for the update."""
    tensors = model.tensors()
    return {n: saved_input(model.layer(n), len(tl.update.channels), tl.update.filter_r, tensors)
            for n, tl in trainer.trained.items() if tl.update.channels}


