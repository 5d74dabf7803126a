"""Jinja C emitter for the integer training step.

Emits, beside the forward kernels, one backward kernel per layer on the gradient path
(templates under `templates/train/`, one op each), the loss, and the schedule
`tg_train_step(input, label)`: forward with 1-bit clamp masks, loss, then each layer's
backward in reverse with its weights and bias updated as soon as their gradient exists.
Every buffer (activations kept for backward, masks, gradients, planes) is placed in
one static arena by `tinygen.planning.arena` over the step's schedule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinygen.codegen.forward import (
    c_ident,
    environment,
    render_forward,
    write_sources,
)
from tinygen.errors import TinygenError
from tinygen.ir import model as ir
from tinygen.ir.quant import round_half_away, split_multiplier
from tinygen.planning.memory import trained_state_bytes
from tinygen.planning.schedule import TrainPlan, plan_training
from tinygen.planning.weight_store import frac_ctype, weight_store
from tinygen.reference.training import LN2_Q16, LOG2_TABLE, WEIGHT_LIMIT, Trainer, bias_limit


def _geometry(layer, tensors):
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


def _emit_saves(model, plan: TrainPlan, env, kernels: list, calls: list, codes: list, act) -> None:
    """Before each layer whose input is kept as a copy (not the activation itself), a call writing
    that copy (templates/train/save_input_s8.c.j2). The copy is written by inference too: it lives in
    its own arena slot, so this costs cycles, never values."""
    tensors = model.tensors()
    index = {layer.name: i for i, layer in enumerate(model.layers)}
    position = {code.index: k for k, code in enumerate(codes)}  # a trained layer is never a fused pointwise
    for name, sv in sorted(plan.saved.items(), key=lambda kv: -index[kv[0]]):  # last first: positions hold
        if sv.mode == "tensor":
            continue
        i = index[name]
        layer = model.layers[i]
        prefix = f"tg_l{i}_{c_ident(name)}"
        x = tensors[layer.inputs[0]]
        geo = _geometry(layer, tensors)
        fn = f"{prefix}_save_input_s8"
        kernels.append(env.get_template("train/save_input_s8.c.j2").render(
            fn=fn, comment=f"layer {i} '{name}': saved input", mode=sv.mode, n_sel=sv.channels,
            channels=f"{prefix}_channels", input_zero_point=x.zero_point, ph=sv.h, pw=sv.w, r=sv.r, **{
                k: geo[k] for k in ("in_h", "in_w", "in_c", "out_h", "out_w", "stride_h", "stride_w")}))
        calls.insert(position[i], dict(fn=fn, args=[act(layer.inputs[0]), plan.ptr(f"saved_l{i}")],
                                       comment=f"keep what layer {i}'s weight update reads ({sv.mode}, "
                                               f"{sv.nbytes:,} B)"))


def _emit_grad(calls: list[str], plan: TrainPlan, tensors, t: str, i: int, call: str, exps: set) -> None:
    """Append the C that stores layer i's gradient for tensor t (`call` has a {dest} slot): written
    straight into the gradient buffer by its first contributor, added (aligned) by later ones."""
    r = plan.grad_alias.get(t, t)
    writers = plan.contributions[r]
    grad = plan.ptr(f"grad_{r}")
    et = f"e_{c_ident(r)}"
    exps.add(et)
    if writers[0] == i:
        calls.append(f"{et} = {call.format(dest=grad)};")
        return
    tmp = plan.ptr(f"gradtmp_{r}_{i}")
    calls.append(f"{{ const int32_t e_part = {call.format(dest=tmp)};")
    calls.append(f"  tg_grad_align_add({grad}, {et}, {tmp}, e_part, {grad}, &{et}, {tensors[r].size}); }}")


def generate_training(model: ir.Model, trainer: Trainer, src_dir: Path) -> dict:
    """Write the training firmware sources (tg_model.[ch], tg_weights.[ch]); return facts for the manifest."""
    env = environment()
    src_dir.mkdir(parents=True, exist_ok=True)
    tensors = model.tensors()
    plan = plan_training(model, trainer)
    cfg = trainer.config
    F = cfg.frac_bits
    mu = round_half_away(cfg.momentum * (1 << 15))

    def act(t):
        return plan.ptr(f"act_{plan.alias.get(t, t)}")

    const_arrays: dict[str, np.ndarray] = {}
    mutable: dict[str, np.ndarray] = {}  # trained parameters (SRAM), initial values
    state: dict[str, tuple[str, int]] = {}  # zero-initialised state: name -> (ctype, count)
    params: list[tuple[str, str]] = []  # (C name, what) for the checksum and the host dump
    kernels, fwd_calls, bwd_calls = [], [], []
    records = []

    def record(key: str) -> int:
        records.append(key)
        return len(records) - 1

    names = {"act": act, "plane": lambda t: plan.ptr(f"act_{t}"), "mask": lambda t: plan.ptr(f"mask_{t}")}
    stores = {n: weight_store(model.layer(n), tl.update.channels) for n, tl in trainer.trained.items()
              if tl.update.channels}

    def sram_weights(code):
        """A layer whose weights train keeps its trained part in SRAM (`_weight_t`), the rest in flash."""
        st = stores.get(code.layer.name)
        if st is None:
            return
        prefix = code.fn.rsplit("_" + code.template, 1)[0]
        w = code.arrays.pop(f"{prefix}_weight")
        code.arrays[f"{prefix}_weight_t"] = np.ascontiguousarray(st.trained_part(w))
        if st.split_k:
            code.arrays[f"{prefix}_weight_f"] = np.ascontiguousarray(st.frozen_part(w))
        code.context.update(split_k=st.split_k, weight=f"{prefix}_weight_t", weight_t=f"{prefix}_weight_t",
                            weight_f=f"{prefix}_weight_f")

    fwd_kernels, fwd_calls, codes = render_forward(model, plan.fusions, env, lambda kind, t: names[kind](t),
                                                   trainer.needs_grad, customize=sram_weights)
    kernels.extend(fwd_kernels)
    _emit_saves(model, plan, env, kernels, fwd_calls, codes, act)
    for code in codes:
        tl = trainer.trained.get(code.layer.name)
        for name, arr in code.arrays.items():
            if tl and (name.endswith("_weight_t") or name.endswith("_bias")):
                mutable[name] = arr
            else:
                const_arrays[name] = arr

    # loss
    out = model.output
    lm, ls = trainer.loss_mult
    if cfg.loss == "ce":
        loss_fn = "tg_loss_softmax_ce_s8"
        kernels.append(env.get_template("train/loss_softmax_ce_s8.c.j2").render(
            fn=loss_fn, comment=f"loss: softmax cross-entropy over {out.size} classes", scale=out.scale,
            exp_table=[int(v) for v in trainer.exp], log2_table=[int(v) for v in LOG2_TABLE], ln2_q16=LN2_Q16,
            classes=out.size, m=lm, s=ls))
    else:
        loss_fn = "tg_loss_mse_s8"
        vm, vs = trainer.mse_value_mult
        kernels.append(env.get_template("train/loss_mse_s8.c.j2").render(
            fn=loss_fn, comment=f"loss: mean squared error over {out.size} outputs", scale=out.scale, size=out.size,
            m=lm, s=ls, vm=vm, vs=vs))
    out_root = plan.alias.get(out.name, out.name)
    out_groot = plan.grad_alias.get(out.name, out.name)

    # backward, in reverse
    exps: set[str] = set()

    for i in reversed(range(len(model.layers))):
        layer = model.layers[i]
        if layer.output.name not in trainer.needs_grad or isinstance(layer, ir.Reshape):
            continue
        prefix = f"tg_l{i}_{c_ident(layer.name)}"
        yroot = plan.grad_alias.get(layer.output.name, layer.output.name)
        gy, ey, mask = plan.ptr(f"grad_{yroot}"), f"e_{c_ident(yroot)}", plan.ptr(f"mask_{layer.output.name}")
        exps.add(ey)
        calls = [f"TG_RECORD_GRAD({record('grad:' + layer.output.name)}, {gy}, {layer.output.size}, {ey});"]
        want = [t for t in layer.inputs if t in trainer.needs_grad]
        desc = f"layer {i} '{layer.name}' backward"

        if isinstance(layer, (ir.Conv2D, ir.FullyConnected)):
            geo = _geometry(layer, tensors)
            x_info = tensors[layer.inputs[0]]
            tl = trainer.trained.get(layer.name)
            r = tl.update.filter_r if tl else 1
            ph, pw = -(-geo["out_h"] // r), -(-geo["out_w"] // r)
            mult, shift = ir.conv_requant(layer, x_info)
            const_arrays[f"{prefix}_mult"] = mult.astype(np.int32)
            const_arrays[f"{prefix}_shift"] = shift.astype(np.int32)
            st = stores.get(layer.name)
            weight = f"{prefix}_weight_t" if st else f"{prefix}_weight"
            ctx = dict(geo, r=r, ph=ph, pw=pw, mult=f"{prefix}_mult", shift=f"{prefix}_shift", weight=weight,
                       split_k=st.split_k if st else 0, weight_t=f"{prefix}_weight_t", weight_f=f"{prefix}_weight_f",
                       depthwise=ir.is_depthwise(layer), ch_mult=geo["out_c"] // max(1, geo["groups"]))
            gacc = gy  # in place (see plan_training)
            fn_go = f"{prefix}_grad_output_s16"
            kernels.append(env.get_template("train/conv_grad_output_s16.c.j2").render(
                fn=fn_go, comment=f"{desc}: grad output", **ctx))
            calls.append(f"const int32_t e_acc_{i} = {fn_go}({gy}, {ey}, {mask}, {gacc});")
            calls.append(f"TG_RECORD_GRAD({record('gacc:' + layer.name)}, {gacc}, {ph * pw * geo['out_c']}, "
                         f"e_acc_{i});")
            if want:
                fn_dx = f"{prefix}_backward_input_s16"
                kernels.append(env.get_template("train/conv_backward_input_s16.c.j2").render(
                    fn=fn_dx, comment=f"{desc}: input gradient", **ctx))
                _emit_grad(calls, plan, tensors, want[0], i, f"{fn_dx}({gacc}, e_acc_{i}, {{dest}})", exps)
            if tl:
                fn_up = f"{prefix}_update_s8"
                sv = plan.saved.get(layer.name)
                u = tl.update
                chan_name = f"{prefix}_channels"
                part = st.trained_part(layer.weight).size if st else 0
                if u.channels:
                    const_arrays[chan_name] = np.asarray(u.channels, dtype=np.int32)
                    state[f"{prefix}_frac"] = (frac_ctype(F), part)
                for key, arr in (("w_mult", tl.w_mult), ("w_shift", tl.w_shift), ("b_mult", tl.b_mult),
                                 ("b_shift", tl.b_shift)):
                    const_arrays[f"{prefix}_{key}"] = arr.astype(np.int32)
                for kind, wanted in (("velocity", bool(mu)), ("accum", cfg.accumulate > 1)):
                    if wanted and u.channels:
                        state[f"{prefix}_w_{kind}"] = ("int32_t", part)
                    if wanted and u.bias:
                        state[f"{prefix}_b_{kind}"] = ("int32_t", layer.bias.size)
                kernels.append(env.get_template("train/conv_weight_update_s8.c.j2").render(
                    fn=fn_up, comment=f"{desc}: update", **ctx, bias=u.bias, n_sel=len(u.channels),
                    n_chan=(layer.groups if ir.is_depthwise(layer) else geo["cg"]), channels=chan_name,
                    frac=f"{prefix}_frac", frac_type=frac_ctype(F), input_zero_point=x_info.zero_point,
                    frac_bits=F, limit=WEIGHT_LIMIT << F,
                    bias_limit=bias_limit(layer),
                    w_mult=f"{prefix}_w_mult", w_shift=f"{prefix}_w_shift", b_mult=f"{prefix}_b_mult",
                    b_shift=f"{prefix}_b_shift", momentum=mu, w_velocity=f"{prefix}_w_velocity",
                    b_velocity=f"{prefix}_b_velocity", bias_name=f"{prefix}_bias",
                    accumulate=cfg.accumulate, w_accum=f"{prefix}_w_accum", b_accum=f"{prefix}_b_accum",
                    record_id=record("dw:" + layer.name) if u.channels else -1,
                    saved=sv.mode if sv else "tensor", saved_ctype=sv.ctype if sv else "int8_t"))
                if sv is None:  # bias-only: the input is not kept
                    x_saved = "NULL"
                else:
                    x_saved = act(layer.inputs[0]) if sv.mode == "tensor" else plan.ptr(f"saved_l{i}")
                calls.append(f"{fn_up}({x_saved}, {gacc}, e_acc_{i}, lr_shift, apply);")
        elif isinstance(layer, ir.Add):
            for k, t in enumerate(layer.inputs):
                if t not in want:
                    continue
                m, s = split_multiplier(tensors[t].scale / layer.output.scale)
                fn = f"{prefix}_backward_input{k + 1}_s16"
                kernels.append(env.get_template("train/add_backward_s16.c.j2").render(
                    fn=fn, comment=desc, which=k + 1, m=m, s=s, size=layer.output.size))
                _emit_grad(calls, plan, tensors, t, i, f"{fn}({gy}, {ey}, {mask}, {{dest}})", exps)
        elif isinstance(layer, ir.AvgPool):
            x = tensors[layer.inputs[0]]
            fn = f"{prefix}_backward_s16"
            kernels.append(env.get_template("train/avgpool_backward_s16.c.j2").render(
                fn=fn, comment=desc, in_h=x.shape[0], in_w=x.shape[1], in_c=x.shape[2], out_h=layer.output.shape[0],
                out_w=layer.output.shape[1], kh=layer.kernel[0], kw=layer.kernel[1], stride_h=layer.stride[0],
                stride_w=layer.stride[1], pad_top=layer.padding[0], pad_left=layer.padding[2]))
            for t in want:
                _emit_grad(calls, plan, tensors, t, i, f"{fn}({gy}, {ey}, {mask}, {{dest}})", exps)
        else:
            raise TinygenError(f"layer {layer.name!r}: no C backward for op {layer.op}")
        bwd_calls.append(dict(comment=desc, lines=calls))

    for name in trainer.trained:
        i = [k for k, layer in enumerate(model.layers) if layer.name == name][0]
        prefix = f"tg_l{i}_{c_ident(name)}"
        params.extend(([(f"{prefix}_weight_t", "weight"), (f"{prefix}_frac", "frac")]
                       if trainer.trained[name].update.channels else []) + [(f"{prefix}_bias", "bias")])
    buffers = [dict(macro=plan.ptr(n), ctype=plan.ctype[n], offset=b.offset, size=b.size, first=b.first,
                    last=b.last, name=n) for n, b in sorted(plan.buffers.items(), key=lambda kv: kv[1].offset)]
    ctx = dict(model=model, input_size=model.input.size, output_size=model.output.size,
               input_shape=model.input.shape, output_shape=model.output.shape, arena_size=plan.arena_size,
               buffers=buffers, kernels=kernels, calls=fwd_calls, input_buf=act(model.input.name),
               output_buf=act(out_root), train=True, loss_fn=loss_fn, grad_out=plan.ptr(f"grad_{out_groot}"),
               e_out=f"e_{c_ident(out_groot)}", exps=sorted(exps | {f"e_{c_ident(out_groot)}"}), bwd_calls=bwd_calls,
               lr_halve_every=cfg.lr_halve_every, frac_bits=F, accumulate=cfg.accumulate, loss=cfg.loss,
               params=params, state=state)
    write_sources(env, src_dir, ctx, const_arrays, mutable)
    return {"arena_bytes": plan.arena_size, "records": records, "params": [p[0] for p in params],
            "const_bytes": int(sum(a.nbytes for a in const_arrays.values())),
            "trained_bytes": trained_state_bytes(trainer)}
