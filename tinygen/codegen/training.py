"""Jinja C emitter for the integer training step.

Emits, beside the forward kernels, one backward kernel per layer on the gradient path
(templates under `templates/train/`, one op each), the loss, and the schedule
`tg_train_step(input, label)`: forward with 1-bit clamp masks, loss, then each layer's
backward in reverse with its weights and bias updated as soon as their gradient exists.
Every buffer (activations kept for backward, masks, gradients, planes) is placed in
one static arena by `tinygen.planning.arena` over the step's schedule.

Python passes data only: the shapes and numbers of a layer (`dims`, written once per layer as
named constants by templates/train/layer_constants.c.j2, folded where they are 0 or 1 by
`cstyle.LayerDims`) and the step's operations as records; the templates write all C.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tinygen.codegen.forward import environment, render_forward, requantize_fn, write_sources
from tinygen.errors import TinygenError
from tinygen.ir import model as ir
from tinygen.ir.gradmath import fnv1a32
from tinygen.ir.names import c_ident, layer_symbol
from tinygen.ir.quant import round_half_away, split_multiplier
from tinygen.ir.scheme import LR_GUARD_MAX_HALVINGS
from tinygen.planning.backward import clean_inputs, geometry, input_gradient_blocks, patch_sums, sums_fit_int32
from tinygen.planning.memory import trained_state_bytes
from tinygen.planning.schedule import TrainPlan, patch_stage, plan_training
from tinygen.planning.weight_store import FracStore, weight_store
from tinygen.reference.training import LN2_Q16, LOG2_TABLE, LR_SHIFT_MAX, WEIGHT_LIMIT, Trainer, bias_limit
from tinygen.training.ondevice import Envelope


@dataclass
class _Layer:
    """What one layer contributes to the training C: its named constants and its kernels."""
    index: int
    name: str
    dims: dict = field(default_factory=dict)  # key -> int, written as <PREFIX>_<KEY> (0 and 1 folded)
    named: set = field(default_factory=set)  # keys always referred to by name
    kernels: list = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return layer_symbol(self.index, self.name)


@dataclass
class _Emit:
    """The training sources being built: kernels per layer, arrays, state and the step's operations."""
    model: ir.Model
    trainer: Trainer
    plan: TrainPlan
    env: object
    layers: dict = field(default_factory=dict)  # layer index -> _Layer
    const_arrays: dict = field(default_factory=dict)
    mutable: dict = field(default_factory=dict)  # trained parameters (SRAM), initial values
    state: dict = field(default_factory=dict)  # zero-initialised state: name -> (ctype, count)
    records: list = field(default_factory=list)
    exps: set = field(default_factory=set)
    stores: dict = field(default_factory=dict)
    envelope: Envelope | None = None  # `--update on-device`: the candidates the device selects from

    def candidate(self, name: str) -> int | None:
        if self.envelope is None:
            return None
        return next((j for j, c in enumerate(self.envelope.candidates) if c.name == name), None)

    def act(self, t: str) -> str:
        return self.plan.ptr(f"act_{self.plan.alias.get(t, t)}")

    def layer(self, i: int) -> _Layer:
        if i not in self.layers:
            self.layers[i] = _Layer(i, self.model.layers[i].name)
        return self.layers[i]

    def record(self, lay: _Layer, key: str, what: str) -> None:
        """Number the next recorded gradient (the host harness reads them in this order)."""
        lay.dims[key] = len(self.records)
        lay.named.add(key)
        self.records.append(what)

    def render(self, lay: _Layer, template: str, **ctx) -> None:
        lay.kernels.append(self.env.get_template(f"train/{template}.c.j2").render(
            prefix=lay.prefix, dims=lay.dims, **ctx))


def _emit_saves(em: _Emit, calls: list, codes: list) -> None:
    """Before each layer whose input is kept as a copy (not the activation itself), a call writing
    that copy (templates/train/save_input_s8.c.j2). The copy is written by inference too: it lives in
    its own arena slot, so this costs cycles, never values."""
    model, plan = em.model, em.plan
    index = {layer.name: i for i, layer in enumerate(model.layers)}
    position = {code.index: k for k, code in enumerate(codes)}  # a trained layer is never a fused pointwise
    for name, sv in sorted(plan.saved.items(), key=lambda kv: -index[kv[0]]):  # last first: positions hold
        if sv.mode == "tensor":
            continue
        i = index[name]
        layer = model.layers[i]
        lay = em.layer(i)
        _conv_dims(em, i, layer)
        fn = f"{lay.prefix}_save_input_s8"
        em.render(lay, "save_input_s8", fn=fn, comment=f"layer {i} '{name}': saved input", mode=sv.mode,
                  n_sel=sv.channels, channels=f"{lay.prefix}_channels", r=sv.r)
        calls.insert(position[i], dict(fn=fn, args=[em.act(layer.inputs[0]), plan.ptr(f"saved_l{i}")],
                                       comment=f"keep what layer {i}'s weight update reads ({sv.mode}, "
                                               f"{sv.nbytes:,} B)"))


def _conv_dims(em: _Emit, i: int, layer) -> None:
    """The named shapes of a conv or FC layer on the gradient path (set before any of its kernels)."""
    tensors = em.model.tensors()
    geo = geometry(layer, tensors)
    tl = em.trainer.trained.get(layer.name)
    st = em.stores.get(layer.name)
    r = em.trainer.scheme.filter_r(layer.name)
    out_cg = geo["out_c"] // max(1, geo["groups"])
    dims = em.layer(i).dims
    ph, pw = -(-geo["out_h"] // r), -(-geo["out_w"] // r)
    dims.update(geo, out_cg=out_cg, r=r, ph=ph, pw=pw, patches=ph * pw,
                in_hw=geo["in_h"] * geo["in_w"], out_hw=geo["out_h"] * geo["out_w"],
                in_size=tensors[layer.inputs[0]].size, x_zp=tensors[layer.inputs[0]].zero_point)
    if tl:
        dims["n_sel"] = len(tl.update.channels)  # 0: bias only
    if st and st.split_k:
        if ir.is_depthwise(layer):  # split by channel: the first train_oc filters are in SRAM
            dims.update(train_oc=st.split_k * out_cg, train_taps=st.split_k * out_cg * geo["kh"] * geo["kw"])
        else:  # split by input channel within every filter
            dims.update(train_c=st.split_k, frozen_c=geo["cg"] - st.split_k)


def _grad_op(em: _Emit, t: str, i: int, fn: str, args: list) -> dict:
    """The step's record for layer i's gradient to tensor t: written straight into the gradient
    buffer by its first contributor, added (aligned) by later ones (templates/tg_model.c.j2)."""
    plan = em.plan
    r = plan.grad_alias.get(t, t)
    exp = f"e_{c_ident(r)}"
    first = plan.contributions[r][0] == i
    if first:
        em.exps.add(exp)
    return dict(kind="grad", fn=fn, args=args, exp=exp, first=first, grad=plan.ptr(f"grad_{r}"),
                tmp=None if first else plan.ptr(f"gradtmp_{r}_{i}"))


def _conv_backward(em: _Emit, i: int, layer, desc: str, want: list, gy: str, ey: str, mask: str) -> list:
    """Kernels and step operations of a conv or FC layer: grad output, input gradient, update."""
    trainer = em.trainer
    lay = em.layer(i)
    p = lay.prefix
    x_info = em.model.tensors()[layer.inputs[0]]
    tl = trainer.trained.get(layer.name)
    st = em.stores.get(layer.name)
    _conv_dims(em, i, layer)
    dims = lay.dims
    mult, shift = ir.conv_requant(layer, x_info)
    em.const_arrays[f"{p}_mult"] = mult.astype(np.int32)
    em.const_arrays[f"{p}_shift"] = shift.astype(np.int32)
    ctx = dict(r=dims["r"], mult=f"{p}_mult", shift=f"{p}_shift", weight=f"{p}_weight_t" if st else f"{p}_weight",
               split_k=st.split_k if st else 0, weight_t=f"{p}_weight_t", weight_f=f"{p}_weight_f",
               depthwise=ir.is_depthwise(layer))
    dims["gacc_size"] = dims["ph"] * dims["pw"] * dims["out_c"]
    lay.named.add("gacc_size")
    em.record(lay, "rec_gacc", "gacc:" + layer.name)
    e_acc = f"e_acc_l{i}"
    ops = [dict(kind="acc", fn=f"{p}_grad_output_s16", args=[gy, ey, mask, gy], exp=e_acc),
           dict(kind="record", id=f"{p.upper()}_REC_GACC", buf=gy, size=f"{p.upper()}_GACC_SIZE", exp=e_acc)]
    channel_major = dims["r"] == 1 and dims["out_c"] % 8 == 0  # whole mask bytes per pixel
    if channel_major:
        dims["mask_row"] = dims["out_c"] // 8
        lay.named.add("mask_row")
    em.render(lay, "conv_grad_output_s16", fn=ops[0]["fn"], comment=f"{desc}: grad output", **ctx,
              channel_major=channel_major, **narrow_multiply(mult, shift))
    update_first = i in em.plan.in_place  # the input gradient overwrites G_acc: a bias update reads it first
    if tl and update_first:
        ops.append(_conv_update(em, i, layer, desc, ctx, gy, e_acc))
    if want and update_first:
        fn = f"{p}_backward_input_s16"
        dims["ip_blk"] = em.plan.in_place[i]
        dims["ip_blks"] = dims["in_c"] // dims["ip_blk"]
        dims["taps"] = dims["kh"] * dims["kw"]
        lay.named.update(("ip_blk", "ip_blks"))
        em.render(lay, "conv_backward_input_dw_inplace_s16", fn=fn, comment=f"{desc}: input gradient, in place",
                  **ctx)
        ops.append(_grad_op(em, want[0], i, fn, [gy, e_acc, em.plan.ptr(f"block_l{i}")]))
        ops[-1]["size"] = f"{p.upper()}_IN_SIZE"
        lay.named.add("in_size")
    elif want:
        fn = f"{p}_backward_input_s16"
        extra = []  # the one-pass kernel's scratch for its sums
        found = input_gradient_blocks(layer, dims, ctx["split_k"])
        if found is None or (found[0] == "depthwise" and not sums_fit_int32(dims["kh"] * dims["kw"])):
            em.render(lay, "conv_backward_input_s16", fn=fn, comment=f"{desc}: input gradient", **ctx)
        else:
            kind, blocks = found
            dims.update(blocks)
            one_pass = i in em.plan.one_pass
            overlaid = i in em.plan.overlaid  # the sums sit over grad_in itself: no pointer of their own
            max_block = max(v for key, v in blocks.items() if not key.endswith("s"))
            if kind == "1x1":
                fits32 = sums_fit_int32(dims["out_c"])
                # pixel pairs share each unpacked weight pair; worth it where G_acc is dense: no ReLU floor
                # (act_min at the output zero point) zeroes about half of it, which one pixel skips pairwise.
                # Filtered (r > 1), the pairs are of patches, whose sums one_pass keeps a row each
                pixels = dims["ph"] * dims["pw"]
                paired = (fits32 and (dims["r"] == 1 or one_pass) and not ctx["split_k"] and pixels % 2 == 0
                          and layer.act_min < layer.output.zero_point)
                if paired:
                    dims["pixel_pairs"] = pixels // 2
                    lay.named.add("pixel_pairs")
                em.render(lay, "conv_backward_input_1x1_s16", fn=fn, comment=f"{desc}: input gradient",
                          fits32=fits32, one_pass=one_pass, overlaid=overlaid, max_block=max_block,
                          paired=paired, **ctx)
            else:
                dims["taps"] = dims["kh"] * dims["kw"]
                patched = _patch_sums(em, lay, layer)
                # two channels a word: every block, its first channel and each patch's G_acc row even
                pairs = patched and all(dims[k] % 2 == 0 for k in ("out_c", "sum_c", "blk_f" if ctx["split_k"]
                                                                    else "blk")) and dims["in_c"] % 2 == 0
                em.render(lay, "conv_backward_input_dw_s16", fn=fn, comment=f"{desc}: input gradient",
                          one_pass=one_pass, overlaid=overlaid, max_block=max_block, patched=patched,
                          pairs=pairs, **ctx)
            if one_pass and not overlaid:
                extra = [em.plan.ptr(f"sums_l{i}")]
        ops.append(_grad_op(em, want[0], i, fn, [gy, e_acc] + extra))
        ops[-1]["size"] = f"{p.upper()}_IN_SIZE"
        lay.named.add("in_size")
    if tl and not update_first:
        ops.append(_conv_update(em, i, layer, desc, ctx, gy, e_acc))
    return ops


def _patch_sums(em: _Emit, lay: _Layer, layer) -> bool:
    """The tables of a depthwise input gradient that sums each frozen filter's taps per gradient patch
    (planning.backward.patch_sums): per phase on each axis the first patch offset and the patch count, per phase
    pair where its summed weights start, and the summed weights; False where it takes the taps one by one."""
    ps = patch_sums(layer, em.trainer)
    if ps is None:
        return False
    p, dims = lay.prefix, lay.dims
    for key, groups in (("y", ps.rows), ("x", ps.cols)):
        em.const_arrays[f"{p}_patch_d{key}"] = np.asarray([g[0][0] for g in groups], dtype=np.int8)
        em.const_arrays[f"{p}_patch_n{key}"] = np.asarray([len(g) for g in groups], dtype=np.int8)
    em.const_arrays[f"{p}_wsum_at"] = ps.starts()
    em.const_arrays[f"{p}_wsum"] = ps.weights
    dims.update(sr_h=dims["stride_h"] * dims["r"], sr_w=dims["stride_w"] * dims["r"], sum_c=ps.channels,
                max_patches=max(map(len, ps.rows)) * max(map(len, ps.cols)),
                clean_h=clean_inputs(dims["in_h"], dims["out_h"], dims["kh"], dims["stride_h"], dims["pad_top"],
                                     dims["r"]),
                clean_w=clean_inputs(dims["in_w"], dims["out_w"], dims["kw"], dims["stride_w"], dims["pad_left"],
                                     dims["r"]))
    return True


def _quad_oc_update(dims: dict, weights: bool, depthwise: bool, saved: str) -> bool:
    """Whether a trained conv's weight gradient takes four output channels a step with int32 sums
    (conv_weight_update_s8): 1x1, stride 1, unpadded, ungrouped, a multiple of four output channels, and its
    products within int32: OUT_HW of |x - z_x| <= 255 and |G_acc| <= 2^14 at r = 1, or, filtered, one a patch
    of its saved patch sum (|sum| <= 255 r^2) and the patch's G_acc."""
    geometry = (dims["kh"], dims["kw"], dims["stride_h"], dims["stride_w"], dims["pad_top"], dims["pad_left"],
                dims["groups"])
    r = dims["r"]
    fits = (sums_fit_int32(dims["out_hw"], 255) and saved in ("channels", "tensor") if r == 1
            else sums_fit_int32(dims["patches"], 255 * r * r) and saved == "patches")
    return (weights and not depthwise and geometry == (1, 1, 1, 1, 0, 0, 1) and fits and dims["out_c"] % 4 == 0
            and (dims["in_h"], dims["in_w"]) == (dims["out_h"], dims["out_w"]))


def _conv_update(em: _Emit, i: int, layer, desc: str, ctx: dict, gacc: str, e_acc: str) -> dict:
    """The weight and bias update kernel of a trained layer, its state, and its step operation."""
    plan, trainer = em.plan, em.trainer
    cfg = trainer.config
    lay = em.layer(i)
    p = lay.prefix
    tl = trainer.trained[layer.name]
    st = em.stores.get(layer.name)
    sv = plan.saved.get(layer.name)
    u = tl.update
    part = st.trained_part(layer.weight).size if st else 0
    mu = round_half_away(cfg.momentum * (1 << 15))
    stochastic = bool(u.channels) and cfg.rounding == "stochastic"
    if u.channels:
        em.const_arrays[f"{p}_channels"] = np.asarray(u.channels, dtype=np.int32)
        frac = FracStore(cfg.frac_bits)
        if frac.bits:
            em.state[f"{p}_frac"] = (frac.ctype, frac.count(part))
        em.record(lay, "rec_dw", "dw:" + layer.name)
    if stochastic or u.bias:  # the bias update always rounds stochastically (numerics §6.2)
        lay.dims["sr_salt"] = f"0x{fnv1a32(layer.name.encode()):08X}U"
    for key, arr in (("w_mult", tl.w_mult), ("w_shift", tl.w_shift), ("b_mult", tl.b_mult), ("b_shift", tl.b_shift)):
        em.const_arrays[f"{p}_{key}"] = arr.astype(np.int32)
    for kind, wanted in (("velocity", bool(mu)), ("accum", cfg.accumulate > 1)):
        if wanted and u.channels:
            em.state[f"{p}_w_{kind}"] = ("int32_t", part)
        if wanted and u.bias:
            em.state[f"{p}_b_{kind}"] = ("int32_t", layer.bias.size)
    if u.bias:
        lay.dims["b_limit"] = bias_limit(layer)
        lay.dims["b_sr_index"] = layer.weight.size  # the biases' noise index: after every weight's
        lay.named.update(("b_limit", "b_sr_index"))
    fn = f"{p}_update_s8"
    j = em.candidate(layer.name)
    kernel = dict(ctx, n_sel=len(u.channels), n_chan=ir.selectable_channels(layer), channels=f"{p}_channels",
                  saved=sv.mode if sv else "tensor", saved_ctype=sv.ctype if sv else "int8_t",
                  quad_oc=_quad_oc_update(lay.dims, bool(u.channels), ir.is_depthwise(layer),
                                          sv.mode if sv else "tensor"))
    kernel.update(frac=f"{p}_frac" if cfg.frac_bits else None, w_mult=f"{p}_w_mult", w_shift=f"{p}_w_shift",
                  b_mult=f"{p}_b_mult", b_shift=f"{p}_b_shift", w_velocity=f"{p}_w_velocity",
                  b_velocity=f"{p}_b_velocity", bias_name=f"{p}_bias", w_accum=f"{p}_w_accum", b_accum=f"{p}_b_accum")
    em.render(lay, "conv_weight_update_s8", fn=fn, comment=f"{desc}: update", **kernel, bias=u.bias, momentum=mu,
              accumulate=cfg.accumulate, lr_shift=cfg.lr_varies, stochastic=stochastic, potential=False,
              runtime=j is not None)
    args = [gacc, e_acc] + (["(uint32_t)tg_step"] if stochastic or u.bias else [])
    x_saved = None
    if u.channels:  # a bias-only update does not read the input
        x_saved = em.act(layer.inputs[0]) if sv.mode == "tensor" else plan.ptr(f"saved_l{i}")
        args.insert(0, x_saved)
    op = dict(kind="update", fn=fn, args=args)
    if j is not None:  # the device chose this layer's width: trained only where it chose some
        first = em.envelope.potential_starts()[j]
        pot = f"&tg_sel_potentials[{first}]" if first else "tg_sel_potentials"
        op.update(select=f"tg_sel_channels[{j}]", potential=dict(fn=f"{p}_potential_s8",
                                                                 args=[x_saved, gacc, e_acc, pot]))
        em.render(lay, "conv_weight_update_s8", fn=f"{p}_potential_s8", comment=desc, **kernel, bias=False,
                  momentum=0, accumulate=1, lr_shift=False, stochastic=False, potential=True, runtime=False)
    return op


def _add_backward(em: _Emit, i: int, layer, desc: str, want: list, gy: str, ey: str, mask: str) -> list:
    tensors = em.model.tensors()
    lay = em.layer(i)
    lay.dims["size"] = layer.output.size
    lay.named.add("size")
    ops = []
    for k, t in enumerate(layer.inputs):
        if t not in want:
            continue
        m, s = split_multiplier(tensors[t].scale / layer.output.scale)
        lay.dims.update({f"in{k + 1}_mult": m, f"in{k + 1}_shift": s})
        lay.named.update({f"in{k + 1}_mult", f"in{k + 1}_shift"})
        fn = f"{lay.prefix}_backward_input{k + 1}_s16"
        em.render(lay, "add_backward_s16", fn=fn, comment=desc, which=k + 1, **narrow_multiply(m, s))
        ops.append(_grad_op(em, t, i, fn, [gy, ey, mask]))
        ops[-1]["size"] = f"{lay.prefix.upper()}_SIZE"
    return ops


def _avgpool_backward(em: _Emit, i: int, layer, desc: str, want: list, gy: str, ey: str, mask: str) -> list:
    x = em.model.tensors()[layer.inputs[0]]
    lay = em.layer(i)
    (in_h, in_w, in_c), (out_h, out_w, _) = x.shape, layer.output.shape
    lay.dims.update(in_h=in_h, in_w=in_w, in_c=in_c, out_h=out_h, out_w=out_w, kh=layer.kernel[0],
                    kw=layer.kernel[1], stride_h=layer.stride[0], stride_w=layer.stride[1],
                    pad_top=layer.padding[0], pad_left=layer.padding[2], in_hw=in_h * in_w, in_size=x.size)
    count = min(layer.kernel[0], in_h) * min(layer.kernel[1], in_w)
    lay.dims["inv_count"] = ((1 << 15) + count // 2) // count  # a global pool's round(2^15 / count)
    lay.named.add("in_size")
    return _input_gradient_ops(em, lay, i, "avgpool_backward_s16", desc, want, [gy, ey, mask])


def _mean_backward(em: _Emit, i: int, layer, desc: str, want: list, gy: str, ey: str, mask: str) -> list:
    x = em.model.tensors()[layer.inputs[0]]
    lay = em.layer(i)
    mult, shift = ir.mean_requant(x, layer.output)  # the forward's multiplier, in reverse
    lay.dims.update(in_c=x.shape[-1], in_size=x.size, mult=mult, shift=shift)
    lay.named.update({"in_size", "mult", "shift"})
    return _input_gradient_ops(em, lay, i, "mean_backward_s16", desc, want, [gy, ey, mask])


def _input_gradient_ops(em: _Emit, lay, i: int, template: str, desc: str, want: list, args: list) -> list:
    """A one-input layer's backward kernel (`template`, whose dims name IN_SIZE) rendered, and one call of it per
    wanted gradient."""
    fn = f"{lay.prefix}_backward_s16"
    em.render(lay, template, fn=fn, comment=desc)
    ops = [_grad_op(em, t, i, fn, args) for t in want]
    for op in ops:
        op["size"] = f"{lay.prefix.upper()}_IN_SIZE"
    return ops


_BACKWARD = ((ir.Conv2D, _conv_backward), (ir.FullyConnected, _conv_backward), (ir.Add, _add_backward),
             (ir.AvgPool, _avgpool_backward), (ir.Mean, _mean_backward))


def _backward(em: _Emit) -> list:
    """Each layer's backward kernels and step operations, last layer first."""
    model, plan, trainer = em.model, em.plan, em.trainer
    steps = []
    for i in reversed(range(len(model.layers))):
        layer = model.layers[i]
        if layer.output.name not in trainer.needs_grad or isinstance(layer, ir.Reshape):
            continue
        emit = next((f for cls, f in _BACKWARD if isinstance(layer, cls)), None)
        if emit is None:
            raise TinygenError(f"layer {layer.name!r}: no C backward for op {layer.op}")
        lay = em.layer(i)
        yroot = plan.grad_alias.get(layer.output.name, layer.output.name)
        gy, ey, mask = plan.ptr(f"grad_{yroot}"), f"e_{c_ident(yroot)}", plan.ptr(f"mask_{layer.output.name}")
        lay.dims["grad_size"] = layer.output.size
        lay.named.add("grad_size")
        em.record(lay, "rec_grad", "grad:" + layer.output.name)
        p = lay.prefix.upper()
        ops = [dict(kind="record", id=f"{p}_REC_GRAD", buf=gy, size=f"{p}_GRAD_SIZE", exp=ey)]
        want = [t for t in layer.inputs if t in trainer.needs_grad]
        desc = f"layer {i} '{layer.name}' backward"
        ops += emit(em, i, layer, desc, want, gy, ey, mask)
        steps.append(dict(comment=desc, ops=ops))
        j = em.candidate(layer.name)
        if j:  # a candidate after the earliest: where the device chose none before it, the path ends here
            steps[-1]["stop"] = f"tg_sel_top == {j}"
    return steps


def _loss(em: _Emit) -> tuple[str, str]:
    """The loss kernel (softmax cross-entropy or mean squared error); returns (function, C text)."""
    trainer, out = em.trainer, em.model.output
    lm, ls = trainer.loss_mult
    if trainer.config.loss == "ce":
        fn = "tg_loss_softmax_ce_s8"
        return fn, em.env.get_template("train/loss_softmax_ce_s8.c.j2").render(
            fn=fn, comment=f"loss: softmax cross-entropy over {out.size} classes", scale=out.scale,
            exp_table=[int(v) for v in trainer.exp], log2_table=[int(v) for v in LOG2_TABLE], ln2_q16=LN2_Q16,
            m=lm, s=ls)
    fn = "tg_loss_mse_s8"
    vm, vs = trainer.mse_value_mult
    return fn, em.env.get_template("train/loss_mse_s8.c.j2").render(
        fn=fn, comment=f"loss: mean squared error over {out.size} outputs", scale=out.scale, m=lm, s=ls, vm=vm,
        vs=vs)


def narrow_multiply(mult: np.ndarray, shift: np.ndarray) -> dict:
    """How an int16 gradient g is multiplied by per-channel (or one) q31 multipliers, v = mul(g, m, shift + 16),
    which shifts right by 31 - (shift + 16): `narrow` "high" where that is 16 to 32 on every channel (v the high
    word of one 32-bit product, tg_mul_q31_s16_high), True where it is >= 15 (v an int32, tg_mul_q31_s16), else
    False (int64); `small_v` where |v| < 2^29 for every g (the three-operation normalizing divide)."""
    mult, shift = np.atleast_1d(mult), np.atleast_1d(shift)
    narrow = "high" if ((shift <= -1) & (shift >= -17) & (mult >= 0)).all() else bool((shift <= 0).all())
    return {"narrow": narrow, "small_v": bool(narrow) and grad_output_bound(mult, shift) < ir.SMALL_ACC}


def grad_output_bound(mult: np.ndarray, shift: np.ndarray) -> int:
    """An upper bound on |v| = |mul(g, m, shift + 16)| over |g| <= 2^15 and every channel: the rounded
    2^15 m 2^(shift + 16) / 2^31 (a shift below -1 counted as -1, which only raises it)."""
    m = np.abs(mult.astype(object))
    up = np.maximum(shift.astype(np.int64) + 17, 0)
    return int(max(((32768 * mi << int(u)) + 2**31) >> 32 for mi, u in zip(m, up, strict=True))) + 1


def _forward(em: _Emit) -> tuple[list, list]:
    """Forward kernels and calls (trained weights in SRAM, clamp masks where gradients flow)."""
    plan, trainer = em.plan, em.trainer
    names = {"act": em.act, "plane": lambda t: plan.ptr(f"act_{t}"), "mask": lambda t: plan.ptr(f"mask_{t}")}

    def for_training(code):
        """A layer whose weights train keeps its trained part in SRAM (`_weight_t`), the rest in flash; a
        layer with any trained parameter starts from its own bias (not `saturated_bias`) and requantizes in
        32 bits only if its bias can grow no further than that allows (`bias_limit`, `requantize_fn`)."""
        prefix = layer_symbol(code.index, code.layer.name)
        if code.layer.name in trainer.trained:
            # its own multipliers too: a channel constant for the frozen weights (`constant_channels`) need not be
            mult, shift = ir.conv_requant(code.layer, em.model.tensors()[code.layer.inputs[0]])
            for key, arr in (("mult", mult), ("shift", shift)):
                code.arrays.pop(f"{prefix}_fwd_{key}", None)
                code.arrays[f"{prefix}_{key}"] = arr.astype(np.int32)
                code.context[key] = f"{prefix}_{key}"
            grown = np.array([bias_limit(code.layer)], dtype=np.int64)
            code.context.update(requantize=requantize_fn(code.layer, shift, grown), bias_trained=True)
            code.arrays[f"{prefix}_bias"] = code.layer.bias
        st = em.stores.get(code.layer.name)
        if st is None:
            return
        w = code.arrays.pop(f"{prefix}_weight")
        code.arrays[f"{prefix}_weight_t"] = np.ascontiguousarray(st.trained_part(w))
        if st.split_k:
            code.arrays[f"{prefix}_weight_f"] = np.ascontiguousarray(st.frozen_part(w))
        code.context.update(split_k=st.split_k, weight=f"{prefix}_weight_t", weight_t=f"{prefix}_weight_t",
                            weight_f=f"{prefix}_weight_f")

    kernels, calls, codes = render_forward(em.model, plan.fusions, em.env, lambda kind, t: names[kind](t),
                                           trainer.needs_grad, customize=for_training)
    _emit_saves(em, calls, codes)
    for code in codes:
        tl = trainer.trained.get(code.layer.name)
        for name, arr in code.arrays.items():
            if tl and (name.endswith("_weight_t") or name.endswith("_bias")):
                em.mutable[name] = arr
            else:
                em.const_arrays[name] = arr
    return kernels, calls


def _params(em: _Emit) -> list[tuple[str, str]]:
    """(C name, what) of every trained parameter, for the checksum and the host dump."""
    index = {layer.name: i for i, layer in enumerate(em.model.layers)}
    params = []
    for name, tl in em.trainer.trained.items():
        prefix = layer_symbol(index[name], name)
        if tl.update.channels:
            params.append((f"{prefix}_weight_t", "weight"))
            if em.trainer.config.frac_bits:
                params.append((f"{prefix}_frac", "frac"))
        params.append((f"{prefix}_bias", "bias"))
    return params


def _ondevice(em: _Emit) -> dict | None:
    """The selection pass's tables (train/select_ondevice.c.j2): per candidate its layer, options and their
    bytes and MACs, the MACs a path to each other candidate adds, and where its potentials start."""
    env = em.envelope
    if env is None:
        return None
    cands = env.candidates
    width = max(len(c.options) for c in cands)

    def rows(key: str) -> list[list[int]]:
        return [getattr(c, key) + [0] * (width - len(c.options)) for c in cands]
    tables = {"options": rows("options"), "option_bytes": rows("option_bytes"), "option_macs": rows("option_macs"),
              "path_macs": [c.path_macs for c in cands]}
    if max(max(max(r) for r in t) for t in tables.values()) >= 1 << 32 or env.macs_budget >= 1 << 32:
        raise TinygenError("the on-device selection's MACs exceed 2^32; choose a fixed --update for this model")
    firsts = env.potential_starts()
    return dict(candidates=[dict(name=c.name, position=c.position, count=len(c.options), first=firsts[j],
                                 widest=c.widest)
                            for j, c in enumerate(cands)],
                potentials=firsts[-1], width=width, samples=env.samples, macs_budget=env.macs_budget,
                total_macs=env.total_macs, **tables)


def _state_bytes(em: _Emit, names: list[str]) -> int:
    """Bytes of the training state a checkpoint saves (tg_train_state): parameters, optimizer arrays, counters."""
    def size(name: str) -> int:
        if name in em.mutable:
            return int(em.mutable[name].nbytes)
        if name in em.state:
            ctype, count = em.state[name]
            return np.dtype(ctype.removesuffix("_t")).itemsize * count
        return 4  # an int32_t counter
    return sum(size(n) for n in names)


def generate_training(model: ir.Model, trainer: Trainer, src_dir: Path) -> dict:
    """Write the training firmware sources (tg_model.[ch], tg_weights.[ch]); return facts for the manifest."""
    src_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_training(model, trainer, one_pass=True)
    stores = {n: weight_store(model.layer(n), tl.update.channels) for n, tl in trainer.trained.items()
              if tl.update.channels}
    envelope = Envelope.from_json(trainer.scheme.ondevice) if trainer.scheme.ondevice is not None else None
    em = _Emit(model, trainer, plan, environment(), stores=stores, envelope=envelope)
    cfg = trainer.config
    fwd_kernels, fwd_calls = _forward(em)
    loss_fn, loss_kernel = _loss(em)
    steps = _backward(em)
    env = em.env
    layer_blocks = [env.get_template("train/layer_constants.c.j2").render(
        prefix=lay.prefix, dims=lay.dims, named=lay.named, comment=f"layer {i} '{lay.name}'")
        + "\n" + "\n".join(lay.kernels) for i, lay in sorted(em.layers.items(), reverse=True)]
    out_root = plan.alias.get(model.output.name, model.output.name)
    out_groot = plan.grad_alias.get(model.output.name, model.output.name)
    params = _params(em)
    counters = ["tg_step"] + (["tg_lr_run", "tg_lr_guard_halvings"] if cfg.lr_guard else [])
    train_state = [p[0] for p in params] + [n for n in em.state if n not in dict(params)] + counters
    buffers = [dict(macro=plan.ptr(n), ctype=plan.ctype[n], offset=b.offset, size=b.size, first=b.first,
                    last=b.last, name=n) for n, b in sorted(plan.buffers.items(), key=lambda kv: kv[1].offset)]
    ctx = dict(model=model, input_size=model.input.size, output_size=model.output.size,
               input_shape=model.input.shape, output_shape=model.output.shape, arena_size=plan.arena_size,
               buffers=buffers, kernels=fwd_kernels, train_kernels=[loss_kernel] + layer_blocks, calls=fwd_calls,
               input_buf=None if patch_stage(plan.fusions) else em.act(model.input.name),
               output_buf=em.act(out_root), train=True, loss_fn=loss_fn,
               grad_out=plan.ptr(f"grad_{out_groot}"), e_out=f"e_{c_ident(out_groot)}", steps=steps,
               lr_halve_every=cfg.lr_halve_every, lr_shift=cfg.lr_varies, lr_shift_max=LR_SHIFT_MAX,
               guard=trainer.guard if cfg.lr_guard else None, guard_max=LR_GUARD_MAX_HALVINGS,
               lr_guard=cfg.lr_guard, lr_text=f"{cfg.lr:g}", frac_bits=cfg.frac_bits,
               w_limit=WEIGHT_LIMIT << cfg.frac_bits,
               momentum=round_half_away(cfg.momentum * (1 << 15)), accumulate=cfg.accumulate, loss=cfg.loss,
               params=params, state=em.state, train_state=train_state, scalar_state=counters,
               frac=FracStore(cfg.frac_bits), master=any(tl.update.channels for tl in trainer.trained.values()),
               ondevice=_ondevice(em))
    write_sources(env, src_dir, ctx, em.const_arrays, em.mutable)
    return {"arena_bytes": plan.arena_size, "records": em.records, "params": [p[0] for p in params],
            "const_bytes": int(sum(a.nbytes for a in em.const_arrays.values())),
            "trained_bytes": trained_state_bytes(trainer),
            "state_bytes": _state_bytes(em, train_state), "ondevice": envelope is not None}
