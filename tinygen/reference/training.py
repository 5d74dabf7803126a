"""Bit-exact NumPy reference of the integer training step (docs/numerics.md).

`Trainer(model, scheme, config)` holds the trainable state (master weights, their
int8 views, int32 biases, momentum) and runs `step(x, label)`: forward with clamp masks,
fixed-point loss, backward through the gradient path with each trained layer's weights
and bias updated as soon as its gradient exists. Every intermediate is an integer; the
only floats are build-time constants turned into (multiplier, shift) pairs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from tinygen.errors import ModelError, TinygenError
from tinygen.ir import model as ir
from tinygen.ir.gradmath import (
    SR_BITS,
    align_add,
    bitlen,
    fnv1a32,
    mul_q31,
    normalize16,
    round_stochastic,
    rshift_round,
    sat,
    split_multiplier,
    sr_key,
    sr_noise,
)
from tinygen.ir.quant import round_half_away
from tinygen.ir.scheme import LR_GUARD_MAX_HALVINGS, LayerUpdate, Scheme, TrainConfig
from tinygen.reference import forward as reference
from tinygen.reference.forward import im2col, pool_counts

LN2_Q16 = 45426  # round(ln 2 * 2^16)
LOG2_TABLE = np.array([round_half_away(65536 * math.log2(1 + i / 256)) for i in range(256)], dtype=np.int64)
PROB_BITS = 30  # the CE exponential table and the probabilities are Q30
WEIGHT_LIMIT = 127  # int8 views are symmetric: [-127, 127]
LR_SHIFT_MAX = 62  # cap on the learning-rate halvings: keeps every update exponent far inside int32


def exp_table(scale: float) -> np.ndarray:
    """E[j] = max(1, round(2^30 * exp(-scale * j))) for logit-code differences j = 0..255 (Q30)."""
    one = 1 << PROB_BITS
    return np.array([max(1, round_half_away(one * math.exp(-scale * j))) for j in range(256)], dtype=np.int64)


def ln_q16(n) -> np.ndarray:
    """Natural log in Q16 of a positive integer < 2^48: log2 from the bit length and an 8-bit table."""
    n = np.asarray(n, dtype=np.int64)
    k = bitlen(n) - 1
    frac = ((n << 8) >> k) & 255
    log2 = k * 65536 + LOG2_TABLE[frac]
    return rshift_round(log2 * LN2_Q16, 16)


def view_of(master, frac_bits: int):
    """The int8 view of a master weight: round half up, floor((W + 2^(F-1)) / 2^F) (W itself for F = 0).
    Its remainder W - view * 2^F lies in [-2^(F-1), 2^(F-1)), so the device stores it in F bits
    (`planning.weight_store.FracStore`)."""
    return (np.asarray(master, dtype=np.int64) + ((1 << frac_bits) >> 1)) >> frac_bits


def fraction_of(master, frac_bits: int) -> np.ndarray:
    return np.asarray(master, dtype=np.int64) - (view_of(master, frac_bits) << frac_bits)


def bias_limit(layer) -> int:
    """Largest |bias| a trained layer may reach: the forward accumulator (bias plus K products of
    at most 255 * 128) must stay inside int32. Where every bias starts within the smaller bound that
    keeps it under ir.SMALL_ACC, the bias is held there, so the layer's C goes on requantizing in
    32 bits (tg_requantize29, docs/numerics.md §1.1, §6); a layer that starts beyond it (the MIT
    models' saturated channels, near 2^30) keeps the int32 bound."""
    products = ir.acc_bound(int(np.prod(layer.weight.shape[1:])))
    small = ir.SMALL_ACC - 1 - products
    start = int(np.abs(layer.bias.astype(np.int64)).max()) if layer.bias is not None and layer.bias.size else 0
    return small if start <= small else 2**31 - 1 - products


@dataclass
class Grad:
    """A gradient tensor w.r.t. integer activation codes: real dL/dq = G * 2^e; |G| <= 2^14."""

    g: np.ndarray
    e: int


@dataclass
class TrainedLayer:
    """Build-time constants of one trained layer (numerics.md §5)."""

    update: LayerUpdate
    w_mult: np.ndarray  # q31 of lr / s_w[c]^2 (weight update, in units of 2^-F weight codes)
    w_shift: np.ndarray
    b_mult: np.ndarray  # q31 of lr / (s_x s_w[c])^2 (bias update, in bias codes)
    b_shift: np.ndarray
    wmask: np.ndarray  # bool, weight elements that train (selected input channels)


def _split(values) -> tuple[np.ndarray, np.ndarray]:
    pairs = [split_multiplier(float(v)) for v in values]
    return np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64)


def patch_mean(g: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Gradient filter: mean of each r x r patch (aligned at 0, edge patches partial), rounded half away.
    Returns (means (PH, PW, C), counts (PH, PW, 1))."""
    if r == 1:
        return g, np.ones(g.shape[:2] + (1,), dtype=np.int64)
    sums, counts = patch_sum(g, r), patch_sum(np.ones(g.shape[:2] + (1,), dtype=np.int64), r)
    half = counts // 2
    num = np.where(sums > 0, sums + half, sums - half)
    return np.sign(num) * (np.abs(num) // counts), counts


def patch_sum(a: np.ndarray, r: int) -> np.ndarray:
    """Sum over r x r patches of the first two axes (zero-padded at the far edges)."""
    h, w = a.shape[:2]
    ph, pw = -(-h // r), -(-w // r)
    pad = [(0, ph * r - h), (0, pw * r - w)] + [(0, 0)] * (a.ndim - 2)
    a = np.pad(a.astype(np.int64), pad)
    return a.reshape((ph, r, pw, r) + a.shape[2:]).sum(axis=(1, 3))


def upsample(a: np.ndarray, r: int, h: int, w: int) -> np.ndarray:
    if r == 1:
        return a
    return np.repeat(np.repeat(a, r, axis=0), r, axis=1)[:h, :w]


def output_range(model: ir.Model) -> tuple[int, int]:
    """The clamp range [act_min, act_max] of the model's output (through reshapes to the layer that clamps)."""
    producer = {layer.output.name: layer for layer in model.layers}
    layer = model.layers[-1]
    while isinstance(layer, ir.Reshape) and layer.inputs[0] in producer:
        layer = producer[layer.inputs[0]]
    return getattr(layer, "act_min", -128), getattr(layer, "act_max", 127)


@dataclass
class LrGuard:
    """The learning-rate guard's constants and state (numerics.md §6.1)."""

    steps: int  # saturated steps in a row that halve the rate (0: off)
    act_min: int
    act_max: int
    pinned_min: int  # a step is saturated when at least this many outputs sit at act_min or act_max ...
    loss_ceiling: int | None  # ... or its loss (Q16) reaches this (cross-entropy only)
    run: int = 0  # saturated steps in a row so far
    halvings: int = 0
    halved_at: list[int] = field(default_factory=list)  # the steps whose update first used each halving

    def saturated(self, outputs: np.ndarray, loss_q16: int) -> bool:
        pinned = int(np.count_nonzero((outputs == self.act_min) | (outputs == self.act_max)))
        return pinned >= self.pinned_min or (self.loss_ceiling is not None and loss_q16 >= self.loss_ceiling)

    def observe(self, saturated: bool, step: int) -> None:
        """Count a step; the run's `steps`-th saturated step halves the rate (up to the cap) and restarts the run."""
        if not self.steps:
            return
        self.run = self.run + 1 if saturated else 0
        if self.run == self.steps:
            self.run = 0
            if self.halvings < LR_GUARD_MAX_HALVINGS:
                self.halvings += 1
                self.halved_at.append(step)


class Trainer:
    def __init__(self, model: ir.Model, scheme: Scheme, config: TrainConfig | None = None):
        if isinstance(model.layers[-1], ir.Softmax):  # the loss takes logits; callers train `ir.logits(model)`
            raise ModelError(f"{model.name} ends in a softmax; training works on its logits (ir.logits)")
        self.model = model
        self.scheme = scheme
        self.config = (config or TrainConfig()).check()
        self.tensors = model.tensors()
        self.step_count = 0
        names = {layer.name: layer for layer in model.layers}
        for name, u in scheme.layers.items():
            layer = names.get(name)
            if not isinstance(layer, (ir.Conv2D, ir.FullyConnected)):
                raise TinygenError(f"scheme trains {name!r}, which is not a conv or fully connected layer")
            if u.filter_r < 1:
                raise TinygenError(f"layer {name!r}: filter r must be >= 1")
        self.trained: dict[str, TrainedLayer] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.master: dict[str, np.ndarray] = {}
        self.bias: dict[str, np.ndarray] = {}
        self.w_velocity: dict[str, np.ndarray] = {}
        self.b_velocity: dict[str, np.ndarray] = {}
        self.w_accum: dict[str, np.ndarray] = {}
        self.b_accum: dict[str, np.ndarray] = {}
        F = self.config.frac_bits
        for name, u in scheme.layers.items():
            if not (u.channels or u.bias):
                continue
            layer = names[name]
            x = self.tensors[layer.inputs[0]]
            s_w = layer.w_scales.astype(np.float64)
            lr = self.config.lr / self.config.accumulate  # the mean over the accumulated samples
            wm, ws = _split(lr / s_w**2)
            bm, bs = _split(lr / (x.scale * s_w) ** 2)
            self.trained[name] = TrainedLayer(u, wm, ws, bm, bs, _wmask(layer, u.channels))
            self.weights[name] = layer.weight.copy()
            self.master[name] = layer.weight.astype(np.int64) << F
            self.bias[name] = layer.bias.astype(np.int64)
            self.w_velocity[name] = np.zeros(layer.weight.shape, dtype=np.int64)
            self.b_velocity[name] = np.zeros(layer.bias.shape, dtype=np.int64)
            self.w_accum[name] = np.zeros(layer.weight.shape, dtype=np.int64)
            self.b_accum[name] = np.zeros(layer.bias.shape, dtype=np.int64)
        if not self.trained:
            raise TinygenError("the update scheme trains no layer; give at least one layer weights or bias")
        self.active: set[str] | None = None  # `restrict`: the layers a run-time selection trains (None: all)
        self._potential: dict | None = None  # `potential`: filled instead of updating
        self.needs_grad = self._gradient_path()
        for layer in model.layers:
            if layer.output.name in self.needs_grad and isinstance(layer, ir.MaxPool):
                raise TinygenError(f"layer {layer.name!r}: gradients through max pooling are not supported; "
                                   "train only layers after it")
        out = model.output
        if self.config.loss == "ce":
            self.exp = exp_table(out.scale)
            self.loss_mult = split_multiplier(out.scale)
        else:
            self.loss_mult = split_multiplier(2 * out.scale**2 / out.size)
            self.mse_value_mult = split_multiplier(out.scale**2 / out.size)
        lo, hi = output_range(model)
        ceiling = None
        if self.config.loss == "ce" and out.size > 1:  # the loss of a wrong class pinned high, the label low
            pinned = np.full(out.size, lo, dtype=np.int64)
            pinned[1] = hi
            ceiling = self.loss(pinned, 0)[0]
        self.guard = LrGuard(self.config.lr_guard, lo, hi, out.size // 2 + 1, ceiling)

    # -- structure ---------------------------------------------------------------------------

    def _gradient_path(self) -> set[str]:
        """Tensors whose gradient is needed: outputs of trained layers and of everything downstream."""
        need: set[str] = set()
        for layer in self.model.layers:
            if layer.name in self.trained or any(t in need for t in layer.inputs):
                need.add(layer.output.name)
        return need

    def layer_params(self, layer: ir.Layer) -> ir.Layer:
        if layer.name in self.trained:
            return dataclasses.replace(layer, weight=self.weights[layer.name],
                                       bias=self.bias[layer.name].astype(np.int32))
        return layer

    # -- forward -----------------------------------------------------------------------------

    def forward(self, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """int8 values of every tensor, and 1-bit clamp masks (as bool) of tensors on the gradient path."""
        values = {self.model.input.name: x}
        masks = {}
        for layer in self.model.layers:
            ins = [values[t] for t in layer.inputs]
            lp = self.layer_params(layer)
            if layer.output.name in self.needs_grad and not isinstance(layer, ir.Reshape):
                pre = reference.run_layer(lp, ins, self.tensors, clamp=False)
                masks[layer.output.name] = (pre >= layer.act_min) & (pre <= layer.act_max)
                values[layer.output.name] = np.clip(pre, layer.act_min, layer.act_max).astype(np.int8)
            else:
                values[layer.output.name] = reference.run_layer(lp, ins, self.tensors)
        return values, masks

    # -- loss --------------------------------------------------------------------------------

    def loss(self, logits: np.ndarray, label) -> tuple[int, Grad]:
        """(loss in Q16, gradient w.r.t. the logit codes)."""
        q = logits.astype(np.int64).ravel()
        m, s = self.loss_mult
        if self.config.loss == "ce":
            e = self.exp[q.max() - q]
            total = int(e.sum())
            p = (e * (1 << PROB_BITS) + total // 2) // total  # e <= 2^30: the product fits int64
            onehot = np.zeros_like(p)
            onehot[int(label)] = 1 << PROB_BITS
            loss_q16 = int(ln_q16(total) - ln_q16(e[int(label)]))
            g, k_e = normalize16(mul_q31(p - onehot, m, s + 16), -PROB_BITS - 16)
        else:
            diff = q - np.asarray(label, dtype=np.int64).ravel()
            vm, vs = self.mse_value_mult
            loss_q16 = int(mul_q31(int((diff * diff).sum()), vm, vs + 16))
            g, k_e = normalize16(mul_q31(diff, m, s + 16), -16)
        return loss_q16, Grad(g.reshape(logits.shape), k_e)

    # -- backward ----------------------------------------------------------------------------

    def restrict(self, selection: dict[str, int]) -> None:
        """Train only the layers of `selection`, each its first k channels' weights (0: none) and its bias, on the
        storage of every layer this trainer was built for: a selection made at run time (training/ondevice.py).
        The same integers as a trainer built for the selection alone: the other layers' gradients are computed as
        before but nothing reads them."""
        for name, k in selection.items():
            tl = self.trained[name]
            if k > len(tl.update.channels):
                raise TinygenError(f"layer {name!r}: a selection of {k} channels exceeds the {len(tl.update.channels)} "
                                   "its storage holds")
            self.trained[name] = dataclasses.replace(tl, wmask=_wmask(self.model.layer(name), list(range(k))))
        self.active = set(selection)

    def potential(self, x: np.ndarray, label) -> dict[str, tuple[np.ndarray, int]]:
        """One forward and backward pass without any update (the step counter and the guard untouched): per
        layer with trained channels, `S_c = sum over its weights of channel c of W * dW` (int64; dW the weight
        gradient in code units, as the update computes it) and the exponent of its G_acc, so that
        `S_c * 2^e = sum_spatial a * g` at r = 1 (docs/numerics.md §8)."""
        self._potential = {}
        try:
            self.step(x, label)
            return self._potential
        finally:
            self._potential = None

    def step(self, x: np.ndarray, label, record: dict | None = None) -> int:
        """One training step (batch 1, immediate update). Returns the loss in Q16."""
        values, masks = self.forward(x)
        out = self.model.output.name
        loss_q16, g_out = self.loss(values[out], label)
        grads: dict[str, list[Grad]] = {out: [g_out]}
        if self._potential is None:
            self.guard.observe(self.guard.saturated(values[out], loss_q16), self.step_count)  # before this update
        lr_shift = self.step_count // self.config.lr_halve_every if self.config.lr_halve_every else 0
        lr_shift = min(lr_shift + self.guard.halvings, LR_SHIFT_MAX)
        for layer in reversed(self.model.layers):
            name = layer.output.name
            if name not in self.needs_grad:
                continue
            parts = grads.pop(name)
            gy = parts[0]
            for p in parts[1:]:  # pairwise, in the order the contributions arrive (as the C does)
                gy = Grad(*align_add([(gy.g, gy.e), (p.g, p.e)]))
            if record is not None:
                record[f"grad:{name}"] = gy
            if name in masks:
                gy = Grad(np.where(masks[name], gy.g, 0), gy.e)
            for t, g in self._backward_layer(layer, values, gy, lr_shift, record):
                grads.setdefault(t, []).append(g)
        if self._potential is None:
            self.step_count += 1
        return loss_q16

    def _backward_layer(self, layer, values, gy: Grad, lr_shift: int, record):
        """Yield (input tensor, its gradient contribution); update the layer's parameters if trained."""
        want = [t for t in layer.inputs if t in self.needs_grad]
        if isinstance(layer, ir.Reshape):
            for t in want:
                yield t, Grad(gy.g.reshape(self.tensors[t].shape), gy.e)
        elif isinstance(layer, ir.Add):
            for t in want:
                m, s = split_multiplier(self.tensors[t].scale / layer.output.scale)
                g, e = normalize16(mul_q31(gy.g, m, s + 16), gy.e - 16)
                yield t, Grad(g, e)
        elif isinstance(layer, ir.AvgPool):
            yield from ((t, self._avgpool_backward(layer, gy)) for t in want)
        elif isinstance(layer, ir.Mean):
            yield from ((t, self._mean_backward(layer, gy)) for t in want)
        elif isinstance(layer, (ir.Conv2D, ir.FullyConnected)):
            yield from self._weighted_backward(layer, values, gy, want, lr_shift, record)
        else:
            raise TinygenError(f"layer {layer.name!r}: no backward for op {layer.op}")

    def _avgpool_backward(self, layer: ir.AvgPool, gy: Grad) -> Grad:
        x = self.tensors[layer.inputs[0]]
        oh, ow = layer.output.shape[:2]
        pt, pl = layer.padding[0], layer.padding[2]
        counts = pool_counts(x.shape[:2], layer.kernel, layer.stride, pt, pl, oh, ow)
        recip = ((1 << 15) + counts // 2) // counts  # round(2^15 / count), integer division
        v = gy.g * recip
        dx = _scatter_windows(v[:, :, None, :].repeat(layer.kernel[0] * layer.kernel[1], axis=2), x.shape,
                              layer.kernel, layer.stride, (pt, pl), (1, 1))
        g, e = normalize16(dx, gy.e - 15)
        return Grad(g, e)

    def _mean_backward(self, layer: ir.Mean, gy: Grad) -> Grad:
        """Every pixel gets its channel's gradient times the forward's multiplier (`ir.mean_requant`, s_x / (s_y N)):
        requantization in reverse, as for a conv."""
        x = self.tensors[layer.inputs[0]]
        m, s = ir.mean_requant(x, layer.output)
        g, e = normalize16(mul_q31(gy.g.reshape(-1), m, s + 16), gy.e - 16)
        return Grad(np.broadcast_to(g, x.shape).copy(), e)

    def _weighted_backward(self, layer, values, gy: Grad, want, lr_shift, record):
        x_info = self.tensors[layer.inputs[0]]
        fc = isinstance(layer, ir.FullyConnected)
        if fc:
            w = self.layer_params(layer).weight.reshape(layer.weight.shape[0], 1, 1, -1)
            geom = dict(stride=(1, 1), pad=(0, 0), dil=(1, 1), groups=1)
            x = values[layer.inputs[0]].reshape(1, 1, -1)
            g_out = gy.g.reshape(1, 1, -1)
        else:
            w = self.layer_params(layer).weight
            geom = dict(stride=layer.stride, pad=(layer.padding[0], layer.padding[2]), dil=layer.dilation,
                        groups=layer.groups)
            x = values[layer.inputs[0]]
            g_out = gy.g
        cout, kh, kw, cg = w.shape
        groups = geom["groups"]
        tl = self.trained.get(layer.name)
        r = self.scheme.filter_r(layer.name)
        oh, ow = g_out.shape[:2]
        # 1. gradient filter, 2. per-channel rescale by the forward multiplier (requantization in reverse)
        gbar, counts = patch_mean(g_out, r)
        mult, shift = ir.conv_requant(layer, x_info)
        gacc, e_acc = normalize16(mul_q31(gbar, mult, shift + 16), gy.e - 16)
        if record is not None:
            record[f"gacc:{layer.name}"] = Grad(gacc, e_acc)
        # 3. input gradient, with the weights before this step's update
        if want:
            full = upsample(gacc, r, oh, ow).reshape(oh * ow, groups, cout // groups)
            wg = w.astype(np.int64).reshape(groups, cout // groups, kh * kw * cg)
            cols = np.einsum("pgo,gok->pgk", full, wg).reshape(oh, ow, groups, kh * kw, cg)
            cols = cols.transpose(0, 1, 3, 2, 4).reshape(oh, ow, kh * kw, groups * cg)
            dx = _scatter_windows(cols, x.shape, (kh, kw), geom["stride"], geom["pad"], geom["dil"])
            g, e = normalize16(dx, e_acc)
            yield layer.inputs[0], Grad(g.reshape(self.tensors[layer.inputs[0]].shape), e)
        # 4. weight and bias update, applied now (the gradient is never stored)
        if tl and (self.active is None or layer.name in self.active or self._potential is not None):
            self._update(layer, tl, x, x_info, gacc, counts, e_acc, geom, r, lr_shift, (kh, kw), record)

    def _update(self, layer, tl, x, x_info, gacc, counts, e_acc, geom, r, lr_shift, k, record):
        F = self.config.frac_bits
        name = layer.name
        cout = layer.weight.shape[0]
        groups = geom["groups"]
        kh, kw = k
        key = sr_key(self.step_count, fnv1a32(name.encode()))  # this step's rounding noise (§6.2)
        if tl.update.channels:
            out_h, out_w = (1, 1) if isinstance(layer, ir.FullyConnected) else layer.output.shape[:2]
            xs = x.astype(np.int64) - x_info.zero_point
            cols = im2col(xs, kh, kw, geom["stride"], geom["pad"][0], geom["pad"][1], geom["dil"], out_h, out_w)
            xp = patch_sum(cols, r)  # (PH, PW, K, Cin): exact sums of the inputs each patch's outputs read
            ph, pw = xp.shape[:2]
            cg = layer.weight.shape[-1]
            xp = xp.reshape(ph * pw, kh * kw, groups, cg).transpose(0, 2, 1, 3).reshape(ph * pw, groups, -1)
            ga = gacc.reshape(ph * pw, groups, cout // groups)
            d = np.einsum("pgo,pgk->gok", ga, xp).reshape(cout, kh, kw, cg)
            if record is not None:
                record[f"dw:{name}"] = d
            if self._potential is not None:
                s = (self.weights[name].astype(np.int64).reshape(d.shape) * d)
                s = s.reshape(groups, -1).sum(axis=1) if ir.is_depthwise(layer) else s.reshape(-1, cg).sum(axis=0)
                self._potential[name] = (s[:len(tl.update.channels)], e_acc)
                return
            shift = tl.w_shift[:, None, None, None] + e_acc + F - lr_shift
            if self.config.rounding == "stochastic":  # SR_BITS more bits, then floor with noise (§6.2)
                fine = mul_q31(d, tl.w_mult[:, None, None, None], shift + SR_BITS)
                delta = round_stochastic(fine, sr_noise(key, np.arange(d.size).reshape(d.shape)))
            else:
                delta = mul_q31(d, tl.w_mult[:, None, None, None], shift)
            delta = np.where(tl.wmask.reshape(d.shape), delta, 0).reshape(self.master[name].shape)
            delta = self._accumulate(self.w_accum, name, delta)
            if delta is not None:
                v = self._momentum(self.w_velocity, name, delta)
                limit = WEIGHT_LIMIT << F
                self.master[name] = np.clip(self.master[name] - v, -limit, limit)
                self.weights[name] = view_of(self.master[name], F).astype(np.int8)
        if self._potential is not None:
            return
        if tl.update.bias:
            total = (gacc * counts).reshape(-1, cout).sum(axis=0)
            if record is not None:
                record[f"db:{name}"] = total
            # always rounded stochastically: a step moves a bias by a few codes, less after halvings (§6.2)
            fine = mul_q31(total, tl.b_mult, tl.b_shift + e_acc - lr_shift + SR_BITS)
            delta = round_stochastic(fine, sr_noise(key, layer.weight.size))  # one noise for the layer's biases
            delta = self._accumulate(self.b_accum, name, delta)
            if delta is not None:
                v = self._momentum(self.b_velocity, name, delta)
                lim = bias_limit(layer)
                self.bias[name] = np.clip(self.bias[name] - v, -lim, lim)

    def _accumulate(self, store, name, delta):
        """Gradient accumulation: sum deltas (saturated to int32); the sum is due every B-th step."""
        B = self.config.accumulate
        if B == 1:
            return delta
        store[name] = sat(store[name] + delta, 32)
        if self.step_count % B != B - 1:
            return None
        due, store[name] = store[name], np.zeros_like(store[name])
        return due

    def _momentum(self, store, name, delta):
        """v = mu * v + delta (mu in Q15, rounded), saturated to int32; with mu = 0 just delta."""
        if self.config.momentum == 0.0:
            return sat(delta, 32)
        mu = round_half_away(self.config.momentum * (1 << 15))
        store[name] = sat(rshift_round(store[name] * mu, 15) + delta, 32)
        return store[name]

    # -- views -------------------------------------------------------------------------------

    def trained_model(self) -> ir.Model:
        """The model with the current int8 views and biases (for inference / export)."""
        layers = [self.layer_params(layer) for layer in self.model.layers]
        return dataclasses.replace(self.model, layers=layers)


def _wmask(layer, channels: list[int]) -> np.ndarray:
    """The weight elements a layer trains when `channels` (input channels, or a depthwise conv's) do."""
    wmask = np.zeros(layer.weight.shape, dtype=bool)
    if channels and ir.is_depthwise(layer):
        mult = layer.weight.shape[0] // layer.groups
        for c in channels:
            wmask[c * mult:(c + 1) * mult] = True
    elif channels:
        wmask[..., channels] = True
    return wmask


def _scatter_windows(cols, in_shape, kernel, stride, pad, dil) -> np.ndarray:
    """Adjoint of im2col: add (OH, OW, KH*KW, C) window values back onto an (H, W, C) int64 array."""
    h, w, c = in_shape
    oh, ow = cols.shape[:2]
    kh, kw = kernel
    sh, sw = stride
    dh, dw = dil
    pt, pl = pad
    need_h = max(h + pt, (oh - 1) * sh + dh * (kh - 1) + 1)
    need_w = max(w + pl, (ow - 1) * sw + dw * (kw - 1) + 1)
    acc = np.zeros((need_h, need_w, c), dtype=np.int64)
    for ky in range(kh):
        for kx in range(kw):
            acc[ky * dh: ky * dh + (oh - 1) * sh + 1: sh, kx * dw: kx * dw + (ow - 1) * sw + 1: sw] += \
                cols[:, :, ky * kw + kx]
    return acc[pt:pt + h, pl:pl + w]
