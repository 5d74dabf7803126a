"""Exact float64 gradients of the same int8 network, for judging the integer backward.

Forward values and clamp masks come from the integer forward (straight-through
quantizers: an activation's gradient passes where its clamp did not bite); every
backward product here is float64 on dequantized tensors, with no gradient filter. The
results are expressed in integer-code units (dL/dq = s * dL/dreal) so they compare
directly with `train_ref` records.
"""

from __future__ import annotations

import math

import numpy as np

from . import ir
from .reference import im2col
from .train_ref import Trainer


def _softmax_ce_grad(logits_real: np.ndarray, label: int) -> np.ndarray:
    z = logits_real - logits_real.max()
    p = np.exp(z) / np.exp(z).sum()
    p[label] -= 1.0
    return p


def float_backward(trainer: Trainer, x: np.ndarray, label: int) -> dict[str, np.ndarray]:
    """{'grad:<tensor>': dL/dq, 'dw:<layer>': dL/dw_q, 'db:<layer>': dL/db_q} in float64."""
    model = trainer.model
    tensors = model.tensors()
    values, masks = trainer.forward(x)

    def real(t):
        info = tensors[t]
        return (values[t].astype(np.float64) - info.zero_point) * info.scale

    out = model.output
    g = {out.name: _softmax_ce_grad(real(out.name).ravel(), int(label)).reshape(out.shape)}  # dL/dreal
    res: dict[str, np.ndarray] = {}
    for layer in reversed(model.layers):
        name = layer.output.name
        if name not in trainer.needs_grad:
            continue
        gy = g.pop(name)
        res[f"grad:{name}"] = gy * tensors[name].scale
        if name in masks:
            gy = gy * masks[name]
        contrib = {}
        if isinstance(layer, ir.Reshape):
            contrib[layer.inputs[0]] = gy.reshape(tensors[layer.inputs[0]].shape)
        elif isinstance(layer, ir.Add):
            for t in layer.inputs:
                contrib[t] = gy
        elif isinstance(layer, ir.AvgPool):
            contrib[layer.inputs[0]] = _avgpool_back(layer, tensors, gy)
        else:
            dx, dw, db = _weighted_back(trainer, layer, tensors, real(layer.inputs[0]), gy)
            contrib[layer.inputs[0]] = dx
            if layer.name in trainer.trained:
                s_w = layer.w_scales.astype(np.float64)
                s_x = tensors[layer.inputs[0]].scale
                res[f"dw:{layer.name}"] = dw * s_w.reshape((-1,) + (1,) * (dw.ndim - 1))
                res[f"db:{layer.name}"] = db * s_x * s_w
        for t, v in contrib.items():
            if t in trainer.needs_grad:
                g[t] = g.get(t, 0) + v
    return res


def _avgpool_back(layer, tensors, gy):
    x = tensors[layer.inputs[0]]
    h, w, c = x.shape
    oh, ow = layer.output.shape[:2]
    dx = np.zeros(x.shape)
    for oy in range(oh):
        for ox in range(ow):
            y0, x0 = oy * layer.stride[0] - layer.padding[0], ox * layer.stride[1] - layer.padding[2]
            ys = slice(max(0, y0), min(h, y0 + layer.kernel[0]))
            xs = slice(max(0, x0), min(w, x0 + layer.kernel[1]))
            count = (ys.stop - ys.start) * (xs.stop - xs.start)
            dx[ys, xs] += gy[oy, ox] / count
    return dx


def _weighted_back(trainer, layer, tensors, x_real, gy):
    """Float dL/dx_real, dL/dw_real, dL/db_real of a conv or FC layer (weights before the update)."""
    w = trainer.layer_params(layer).weight.astype(np.float64) * layer.w_scales.astype(np.float64).reshape(
        (-1,) + (1,) * (layer.weight.ndim - 1))
    if isinstance(layer, ir.FullyConnected):
        xf = x_real.ravel()
        gf = gy.ravel()
        return (w.T @ gf).reshape(x_real.shape), np.outer(gf, xf), gf
    cout, kh, kw, cg = w.shape
    groups = layer.groups
    oh, ow = layer.output.shape[:2]
    cols = im2col(x_real, kh, kw, layer.stride, layer.padding[0], layer.padding[2], layer.dilation, oh, ow)
    cols = cols.reshape(oh * ow, kh * kw, groups, cg)
    gf = gy.reshape(oh * ow, groups, cout // groups)
    dw = np.einsum("pkgc,pgo->gokc", cols, gf).reshape(cout, kh, kw, cg)
    db = gf.reshape(oh * ow, cout).sum(axis=0)
    dcols = np.einsum("pgo,gokc->pkgc", gf, w.reshape(groups, cout // groups, kh * kw, cg))
    h, wd, cin = x_real.shape
    dx = np.zeros((h, wd, cin))
    dcols = dcols.reshape(oh, ow, kh, kw, cin)
    for ky in range(kh):
        for kx in range(kw):
            for oy in range(oh):
                iy = oy * layer.stride[0] - layer.padding[0] + ky * layer.dilation[0]
                if not 0 <= iy < h:
                    continue
                ixs = np.arange(ow) * layer.stride[1] - layer.padding[2] + kx * layer.dilation[1]
                ok = (ixs >= 0) & (ixs < wd)
                np.add.at(dx[iy], ixs[ok], dcols[oy, ok, ky, kx])
    return dx, dw, db


def integer_gradients(trainer: Trainer, x: np.ndarray, label: int) -> dict[str, np.ndarray]:
    """The reference's step-1 gradients in the same units (the trainer is stepped once)."""
    rec: dict = {}
    trainer.step(x, label, record=rec)
    res = {}
    for key, v in rec.items():
        kind, name = key.split(":", 1)
        if kind == "grad":
            res[key] = v.g.astype(np.float64) * 2.0**v.e
        elif kind in ("dw", "db"):
            e = rec[f"gacc:{name}"].e
            arr = v.astype(np.float64) * 2.0**e
            if kind == "dw":
                arr = arr.reshape(trainer.weights[name].shape)
            res[key] = arr
    return res


def cosine(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if mask is not None:
        a, b = a[mask.ravel()], b[mask.ravel()]
    na, nb = math.sqrt(float(a @ a)), math.sqrt(float(b @ b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(a @ b) / (na * nb)
