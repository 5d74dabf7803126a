"""Exact float64 gradients of the same int8 network, for judging the integer backward.

Forward values and clamp masks come from the integer forward (straight-through
quantizers: an activation's gradient passes where its clamp did not bite); every
backward product here is float64 on dequantized tensors, with no gradient filter. The
results are expressed in integer-code units (dL/dq = s * dL/dreal) so they compare
directly with `train_ref` records. `FloatTrainer` is float SGD of the same layers, the baseline the
integer training is compared with (`bench.transfer`).
"""

from __future__ import annotations

import math

import numpy as np

from tinygen.frontends.inputs import quantize
from tinygen.ir import model as ir
from tinygen.reference.forward import im2col
from tinygen.reference.training import WEIGHT_LIMIT, Trainer, bias_limit


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
        elif isinstance(layer, ir.Mean):
            contrib[layer.inputs[0]] = _mean_back(layer, tensors, gy)
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


def _mean_back(layer, tensors, gy):
    """The mean's gradient divided by the H W pixels it averages, on every pixel of its channel."""
    h, w, c = tensors[layer.inputs[0]].shape
    return np.broadcast_to(gy.reshape(c) / (h * w), (h, w, c))


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


def round_away(v: np.ndarray) -> np.ndarray:
    """Round half away from zero: the final rounding of `arm_nn_requantize` and of CMSIS average pooling."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def requantize_round(v: np.ndarray, right: np.ndarray) -> np.ndarray:
    """`arm_nn_requantize`'s double rounding of a real value v (in output codes) whose multiplier has a
    right shift of log2(right): half up to 1/right of a code (the doubling high multiply), then half away
    (the shift). Plain half-away rounding would differ by one code where v is within 1/(2 right) of a tie."""
    return round_away(np.floor(v * right + 0.5) / right)


class FloatTrainer:
    """Float64 SGD of the same layers of the same network from the same start (the baseline integer
    training is judged against), on float master weights w_q s_w and biases b_q s_x s_w.

    fake_quant=True (like for like): the forward pass sees what the int8 network would see — the input
    as its int8 codes dequantized; weights as the masters rounded to the per-channel int8 grid (half up,
    the integer master's view) in [-127, 127]; biases rounded to the int32 grid s_x s_w (half away, the
    integer update's rounding; it is far finer than any activation grid, so this only keeps the two exact
    at the start); every activation rounded to its tensor's int8 grid as the integer kernel rounds
    (`requantize_round`, TFLite's add in `_add`, the average pool on codes) and clamped to the layer's
    range — untrained, its codes are `run_model`'s (tests/test_fake_quant.py). Backward is the straight-
    through estimator: rounding passes gradients unchanged, clamps mask them where they bit (on the
    rounded value, as the integer masks), and dL/dw of the rounded view is applied to the master; the
    masters are clamped to +-127 codes as the integer master is. fake_quant=False: real weights and
    clamps, no quantization anywhere.
    """

    def __init__(self, model: ir.Model, scheme, lr: float, momentum: float = 0.0, fake_quant: bool = True):
        self.model, self.lr, self.momentum, self.fake_quant = model, lr, momentum, fake_quant
        self.tensors = model.tensors()
        self.w, self.b, self.vw, self.vb, self.wmask, self.train_bias = {}, {}, {}, {}, {}, {}
        self.s_w, self.s_b, self.b_limit, self.right = {}, {}, {}, {}
        ref = Trainer(model, scheme)
        self.needs_grad = ref.needs_grad
        for layer in model.layers:
            if isinstance(layer, (ir.Conv2D, ir.FullyConnected)):
                self.s_w[layer.name] = _channel_scale(layer)
                self.s_b[layer.name] = self.tensors[layer.inputs[0]].scale * layer.w_scales.astype(np.float64)
                self.w[layer.name] = layer.weight.astype(np.float64) * self.s_w[layer.name]
                self.b[layer.name] = layer.bias.astype(np.float64) * self.s_b[layer.name]
                self.b_limit[layer.name] = bias_limit(layer)
                self.right[layer.name] = 2.0 ** np.maximum(0, -ir.conv_requant(layer, self.tensors[layer.inputs[0]])[1])
        for name, tl in ref.trained.items():
            self.wmask[name] = tl.wmask
            self.train_bias[name] = tl.update.bias
            self.vw[name] = np.zeros_like(self.w[name])
            self.vb[name] = np.zeros_like(self.b[name])

    def weight_codes(self, name: str) -> np.ndarray:
        """The int8 view of a layer's master weights (what the fake-quant forward multiplies by)."""
        return np.clip(np.floor(self.w[name] / self.s_w[name] + 0.5), -WEIGHT_LIMIT, WEIGHT_LIMIT)

    def _weight(self, name: str) -> np.ndarray:
        return self.weight_codes(name) * self.s_w[name] if self.fake_quant else self.w[name]

    def _bias(self, name: str) -> np.ndarray:
        if not self.fake_quant:
            return self.b[name]
        lim = self.b_limit[name]
        return np.clip(round_away(self.b[name] / self.s_b[name]), -lim, lim) * self.s_b[name]

    def _activation(self, layer, pre):
        """(value, mask) of a layer output: the clamp, after rounding to the output's grid if fake_quant."""
        o = layer.output
        if not self.fake_quant:
            lo, hi = (layer.act_min - o.zero_point) * o.scale, (layer.act_max - o.zero_point) * o.scale
            return np.clip(pre, lo, hi), (pre >= lo) & (pre <= hi)
        if layer.name in self.right:
            code = requantize_round(pre / o.scale, self.right[layer.name]) + o.zero_point
        else:  # pools and adds: on the output grid already
            code = np.rint(pre / o.scale + o.zero_point)
        mask = (code >= layer.act_min) & (code <= layer.act_max)
        return (np.clip(code, layer.act_min, layer.act_max) - o.zero_point) * o.scale, mask

    def _add(self, layer, xs):
        """TFLite's int8 add in float: each input rounded to 2^-20 of twice the larger input scale, the
        sum rounded to the output grid (each rounding as its requantize rounds)."""
        p = ir.add_requant(self.tensors[layer.inputs[0]], self.tensors[layer.inputs[1]], layer.output)
        unit = 2.0 * max(self.tensors[t].scale for t in layer.inputs) / (1 << p["left_shift"])
        total = sum(requantize_round(x / unit, 2.0 ** max(0, -p[f"in{i}_shift"])) for i, x in enumerate(xs, 1))
        return requantize_round(total * unit / layer.output.scale, 2.0 ** max(0, -p["out_shift"])) * layer.output.scale

    def _avgpool(self, layer, x):
        """Mean over each window's in-bounds inputs; fake_quant: the mean of the codes (input and output
        share a grid) rounded half away, as CMSIS rounds — in reals an exact tie can miss by an ulp."""
        t = self.tensors[layer.inputs[0]]
        if self.fake_quant:
            x = np.rint(x / t.scale + t.zero_point)
        oh, ow = layer.output.shape[:2]
        k, st, pad = layer.kernel, layer.stride, layer.padding
        total = im2col(x, k[0], k[1], st, pad[0], pad[2], (1, 1), oh, ow).sum(axis=2)
        mean = total / im2col(np.ones(x.shape[:2] + (1,)), k[0], k[1], st, pad[0], pad[2], (1, 1), oh, ow).sum(axis=2)
        return (round_away(mean) - t.zero_point) * t.scale if self.fake_quant else mean

    def forward(self, x_real: np.ndarray):
        x = np.asarray(x_real, dtype=np.float64)
        if self.fake_quant:
            t = self.model.input
            x = (quantize(x, t).astype(np.float64) - t.zero_point) * t.scale
        vals = {self.model.input.name: x}
        masks = {}
        for layer in self.model.layers:
            xs = [vals[t] for t in layer.inputs]
            if isinstance(layer, ir.Conv2D):
                cout, kh, kw, cg = layer.weight.shape
                oh, ow = layer.output.shape[:2]
                cols = im2col(xs[0], kh, kw, layer.stride, layer.padding[0], layer.padding[2], layer.dilation,
                              oh, ow).reshape(oh * ow, kh * kw, layer.groups, cg)
                wg = self._weight(layer.name).reshape(layer.groups, cout // layer.groups, kh * kw, cg)
                pre = np.einsum("pkgc,gokc->pgo", cols, wg).reshape(oh, ow, cout) + self._bias(layer.name)
            elif isinstance(layer, ir.FullyConnected):
                pre = self._weight(layer.name) @ xs[0].ravel() + self._bias(layer.name)
            elif isinstance(layer, ir.Add):
                pre = self._add(layer, xs) if self.fake_quant else xs[0] + xs[1]
            elif isinstance(layer, ir.AvgPool):
                pre = self._avgpool(layer, xs[0])
            elif isinstance(layer, ir.Mean):  # fake_quant: rounded to the output's grid by _activation
                pre = xs[0].mean(axis=(0, 1)).reshape(layer.output.shape)
            elif isinstance(layer, ir.MaxPool):
                oh, ow = layer.output.shape[:2]
                pre = im2col(xs[0], layer.kernel[0], layer.kernel[1], layer.stride, layer.padding[0],
                             layer.padding[2], (1, 1), oh, ow, value=-np.inf).max(axis=2)
            else:
                vals[layer.output.name] = xs[0].reshape(layer.output.shape)
                continue
            vals[layer.output.name], masks[layer.output.name] = self._activation(layer, pre)
        return vals, masks

    def predict(self, x_real: np.ndarray) -> int:
        return int(np.argmax(self.forward(x_real)[0][self.model.output.name]))

    def gradients(self, x_real: np.ndarray, label: int) -> tuple[float, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """(loss, {trained layer: (dL/dw, dL/db)}) in real units, every layer's with this step's weights."""
        vals, masks = self.forward(x_real)
        out = self.model.output.name
        logits = vals[out].ravel()
        z = logits - logits.max()
        loss = float(np.log(np.exp(z).sum()) - z[int(label)])
        g = {out: _softmax_ce_grad(logits, int(label)).reshape(vals[out].shape)}
        res = {}
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
            elif isinstance(layer, ir.Mean):
                contrib[layer.inputs[0]] = _mean_back(layer, self.tensors, gy)
            else:
                dx, dw, db = _weighted_back(layer, self._weight(layer.name), vals[layer.inputs[0]], gy)
                contrib[layer.inputs[0]] = dx
                if layer.name in self.wmask:
                    res[layer.name] = (dw.reshape(self.w[layer.name].shape), db)
            for t, v in contrib.items():
                if t in self.needs_grad:
                    g[t] = g.get(t, 0) + v
        return loss, res

    def step(self, x_real: np.ndarray, label: int) -> float:
        """One SGD step (batch 1). The input gradients above read the weights before it, as the integer
        step's do, so updating after the whole backward is the same as updating layer by layer."""
        loss, grads = self.gradients(x_real, label)
        for name, (dw, db) in grads.items():
            self._sgd(name, dw, db)
        return loss

    def _sgd(self, name, dw, db):
        self.vw[name] = self.momentum * self.vw[name] + np.where(self.wmask[name], dw, 0.0)
        self.w[name] -= self.lr * self.vw[name]
        if self.train_bias[name]:
            self.vb[name] = self.momentum * self.vb[name] + db
            self.b[name] -= self.lr * self.vb[name]
        if self.fake_quant:  # the integer master's clamps
            lim = WEIGHT_LIMIT * self.s_w[name]
            self.w[name] = np.clip(self.w[name], -lim, lim)
            blim = self.b_limit[name] * self.s_b[name]
            self.b[name] = np.clip(self.b[name], -blim, blim)
