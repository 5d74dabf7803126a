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

from tinygen.ir import model as ir
from tinygen.reference.forward import im2col
from tinygen.reference.training import Trainer


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
            w_real = trainer.layer_params(layer).weight.astype(np.float64) * _channel_scale(layer)
            dx, dw, db = _weighted_back(layer, w_real, real(layer.inputs[0]), gy)
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
    """Each window's gradient divided by its in-bounds count, spread over its inputs."""
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


def _channel_scale(layer) -> np.ndarray:
    return layer.w_scales.astype(np.float64).reshape((-1,) + (1,) * (layer.weight.ndim - 1))


def _weighted_back(layer, w, x_real, gy):
    """Float dL/dx_real, dL/dw_real, dL/db_real of a conv or FC layer with real weights w."""
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


class FloatTrainer:
    """Float64 SGD of the same layers of the same network (the baseline integer training is judged
    against): real weights w_q s_w and biases b_q s_x s_w, real clamps, no quantization anywhere."""

    def __init__(self, model: ir.Model, scheme, lr: float, momentum: float = 0.0):
        self.model, self.lr, self.momentum = model, lr, momentum
        self.tensors = model.tensors()
        self.w, self.b, self.vw, self.vb, self.wmask, self.train_bias = {}, {}, {}, {}, {}, {}
        ref = Trainer(model, scheme)
        self.needs_grad = ref.needs_grad
        for layer in model.layers:
            if isinstance(layer, (ir.Conv2D, ir.FullyConnected)):
                s_x = self.tensors[layer.inputs[0]].scale
                self.w[layer.name] = layer.weight.astype(np.float64) * _channel_scale(layer)
                self.b[layer.name] = layer.bias.astype(np.float64) * s_x * layer.w_scales.astype(np.float64)
        for name, tl in ref.trained.items():
            self.wmask[name] = tl.wmask
            self.train_bias[name] = tl.update.bias
            self.vw[name] = np.zeros_like(self.w[name])
            self.vb[name] = np.zeros_like(self.b[name])

    def _bounds(self, layer):
        o = layer.output
        return (layer.act_min - o.zero_point) * o.scale, (layer.act_max - o.zero_point) * o.scale

    def forward(self, x_real: np.ndarray):
        vals = {self.model.input.name: np.asarray(x_real, dtype=np.float64)}
        masks = {}
        for layer in self.model.layers:
            xs = [vals[t] for t in layer.inputs]
            if isinstance(layer, ir.Conv2D):
                cout, kh, kw, cg = layer.weight.shape
                oh, ow = layer.output.shape[:2]
                cols = im2col(xs[0], kh, kw, layer.stride, layer.padding[0], layer.padding[2], layer.dilation,
                              oh, ow).reshape(oh * ow, kh * kw, layer.groups, cg)
                wg = self.w[layer.name].reshape(layer.groups, cout // layer.groups, kh * kw, cg)
                pre = np.einsum("pkgc,gokc->pgo", cols, wg).reshape(oh, ow, cout) + self.b[layer.name]
            elif isinstance(layer, ir.FullyConnected):
                pre = self.w[layer.name] @ xs[0].ravel() + self.b[layer.name]
            elif isinstance(layer, ir.Add):
                pre = xs[0] + xs[1]
            elif isinstance(layer, ir.AvgPool):
                h, w, _ = xs[0].shape
                oh, ow = layer.output.shape[:2]
                cols = im2col(xs[0], layer.kernel[0], layer.kernel[1], layer.stride, layer.padding[0],
                              layer.padding[2], (1, 1), oh, ow)
                ones = im2col(np.ones((h, w, 1)), layer.kernel[0], layer.kernel[1], layer.stride, layer.padding[0],
                              layer.padding[2], (1, 1), oh, ow)
                pre = cols.sum(axis=2) / ones.sum(axis=2)
            elif isinstance(layer, ir.MaxPool):
                oh, ow = layer.output.shape[:2]
                pre = im2col(xs[0], layer.kernel[0], layer.kernel[1], layer.stride, layer.padding[0],
                             layer.padding[2], (1, 1), oh, ow, value=-np.inf).max(axis=2)
            else:
                vals[layer.output.name] = xs[0].reshape(layer.output.shape)
                continue
            lo, hi = self._bounds(layer)
            masks[layer.output.name] = (pre >= lo) & (pre <= hi)
            vals[layer.output.name] = np.clip(pre, lo, hi)
        return vals, masks

    def predict(self, x_real: np.ndarray) -> int:
        return int(np.argmax(self.forward(x_real)[0][self.model.output.name]))

    def step(self, x_real: np.ndarray, label: int) -> float:
        vals, masks = self.forward(x_real)
        out = self.model.output.name
        logits = vals[out].ravel()
        z = logits - logits.max()
        loss = float(np.log(np.exp(z).sum()) - z[int(label)])
        g = {out: _softmax_ce_grad(logits, int(label)).reshape(vals[out].shape)}
        for layer in reversed(self.model.layers):
            name = layer.output.name
            if name not in self.needs_grad:
                continue
            gy = g.pop(name)
            if name in masks:
                gy = gy * masks[name]
            contrib = {}
            if isinstance(layer, ir.Reshape):
                contrib[layer.inputs[0]] = gy.reshape(self.tensors[layer.inputs[0]].shape)
            elif isinstance(layer, ir.Add):
                contrib = {t: gy for t in layer.inputs}
            elif isinstance(layer, ir.AvgPool):
                contrib[layer.inputs[0]] = _avgpool_back(layer, self.tensors, gy)
            else:
                dx, dw, db = _weighted_back(layer, self.w[layer.name], vals[layer.inputs[0]], gy)
                contrib[layer.inputs[0]] = dx
                if layer.name in self.wmask:
                    self._sgd(layer.name, dw.reshape(self.w[layer.name].shape), db)
            for t, v in contrib.items():
                if t in self.needs_grad:
                    g[t] = g.get(t, 0) + v
        return loss

    def _sgd(self, name, dw, db):
        self.vw[name] = self.momentum * self.vw[name] + np.where(self.wmask[name], dw, 0.0)
        self.w[name] -= self.lr * self.vw[name]
        if self.train_bias[name]:
            self.vb[name] = self.momentum * self.vb[name] + db
            self.b[name] -= self.lr * self.vb[name]
