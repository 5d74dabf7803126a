"""A small NumPy float network library: pretraining for the zoo, float reference for gradients.

Layers mirror tinygen's IR ops over batched NHWC tensors `(N, H, W, C)` (or `(N, F)`):
conv2d (stride, padding, dilation, groups incl. depthwise; weights OHWI like the IR),
fully connected, add, average / max pool, reshape, activations. Convolution, fully
connected and add carry an optional fused activation (`act`): "none", "relu", "relu6"
or a float clamp `(lo, hi)` (what an int8 layer's `act_min/act_max` means in float).
A conv may also carry a batch norm (`bn=True`) applied before its activation; it is a
training-time device only: `Net.fold_bn()` merges it into the weights and bias before
quantization, so every layer of a folded net maps onto one IR layer.

    net = Net((8, 8, 1), seed=0)
    x = net.conv2d(net.input, 8, 3, act="relu")
    x = net.global_avgpool(x)
    net.dense(x, 10)
    history = train(net, x_train, y_train, epochs=5)

`forward(x, record=True)` keeps what `backward(dy)` needs; `backward` returns the input
gradient and accumulates parameter gradients in `layer.grads` (clear with `zero_grad`).
Everything is vectorised (im2col over kernel offsets, never over pixels) and
deterministic: one seeded generator for initialisation, one for shuffling.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import numpy as np

from tinygen.errors import ModelError
from tinygen.ir import model as ir
from tinygen.ir.builder import resolve_padding
from tinygen.ir.model import conv_out_size

ACTS = ("none", "relu", "relu6")


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def act_bounds(act) -> tuple[float, float] | None:
    """(lo, hi) of a fused activation, or None for 'none'."""
    if isinstance(act, str):
        if act == "none":
            return None
        if act == "relu":
            return (0.0, math.inf)
        if act == "relu6":
            return (0.0, 6.0)
        raise ModelError(f"unknown activation {act!r}; use one of {', '.join(ACTS)} or a (lo, hi) clamp")
    lo, hi = act
    return (float(lo), float(hi))


def _act_forward(z: np.ndarray, act):
    b = act_bounds(act)
    if b is None:
        return z, None
    lo, hi = b
    mask = z > lo
    if hi != math.inf:
        mask &= z < hi
    return np.clip(z, lo, hi).astype(z.dtype, copy=False), mask


def _act_backward(dy: np.ndarray, mask):
    return dy if mask is None else dy * mask


# ---------------------------------------------------------------------------
# Layers


class Layer:
    op = "layer"

    def __init__(self, name: str, inputs: list[str], shape: tuple[int, ...]):
        self.name = name
        self.inputs = list(inputs)
        self.shape = tuple(int(d) for d in shape)  # per-sample output shape
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    @property
    def output(self) -> str:
        return self.name

    def forward(self, xs: list[np.ndarray], train: bool):
        raise NotImplementedError

    def backward(self, dy: np.ndarray, cache) -> list[np.ndarray]:
        raise NotImplementedError

    def _acc(self, key: str, g: np.ndarray) -> None:
        if key in self.grads:
            self.grads[key] = self.grads[key] + g
        else:
            self.grads[key] = g

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r}, inputs={self.inputs}, shape={self.shape})"


def _slices(kh, kw, stride, dilation, oh, ow):
    """Index tuples selecting, for each kernel offset, the input pixels it meets (padded input)."""
    sh, sw = stride
    dh, dw = dilation
    return [(slice(None), slice(ky * dh, ky * dh + (oh - 1) * sh + 1, sh),
             slice(kx * dw, kx * dw + (ow - 1) * sw + 1, sw))
            for ky in range(kh) for kx in range(kw)]


def _pad(x, pads, value=0.0):
    t, b, l, r = pads
    if not (t or b or l or r):
        return x
    return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=value)


def _unpad(xp, pads, h, w):
    t, _, l, _ = pads
    return xp[:, t:t + h, l:l + w]


class Conv2D(Layer):
    """y = act(bn(conv(x, W) + b)); W is (O, KH, KW, C/groups) like the IR."""

    op = "conv2d"

    def __init__(self, name, inputs, in_shape, weight, bias, stride, padding, dilation, groups, act, bn=False):
        h, w, c = in_shape
        cout, kh, kw, cg = weight.shape
        if c % groups or cout % groups or cg != c // groups:
            raise ModelError(f"conv {name!r}: weight {weight.shape} does not fit {c} input channels, groups={groups}")
        self.stride, self.dilation = _pair(stride), _pair(dilation)
        self.padding = resolve_padding(padding, h, w, kh, kw, self.stride, self.dilation)
        oh = conv_out_size(h, kh, self.stride[0], self.padding[0], self.padding[1], self.dilation[0])
        ow = conv_out_size(w, kw, self.stride[1], self.padding[2], self.padding[3], self.dilation[1])
        if oh <= 0 or ow <= 0:
            raise ModelError(f"conv {name!r}: kernel {kh}x{kw} does not fit the {h}x{w} input")
        super().__init__(name, inputs, (oh, ow, cout))
        self.in_shape = tuple(in_shape)
        self.groups = int(groups)
        self.act = act
        act_bounds(act)
        self.params["weight"] = weight
        if bias is not None:
            self.params["bias"] = bias
        self.bn = bool(bn)
        self.bn_eps = 1e-5
        self.bn_momentum = 0.1
        if bn:
            self.params["gamma"] = np.ones(cout, weight.dtype)
            self.params["beta"] = np.zeros(cout, weight.dtype)
            self.running_mean = np.zeros(cout, weight.dtype)
            self.running_var = np.ones(cout, weight.dtype)

    @property
    def kernel(self):
        return self.params["weight"].shape[1:3]

    @property
    def depthwise(self) -> bool:
        return self.params["weight"].shape[3] == 1 and self.groups == self.in_shape[2] and self.groups > 1

    # -- the linear part -------------------------------------------------
    def _conv(self, x):
        w = self.params["weight"]
        cout, kh, kw, cg = w.shape
        n = x.shape[0]
        oh, ow, _ = self.shape
        sl = _slices(kh, kw, self.stride, self.dilation, oh, ow)
        if self.depthwise:
            mult = cout // self.groups
            xr = np.repeat(x, mult, axis=-1) if mult > 1 else x
            xp = _pad(xr, self.padding)
            z = np.zeros((n, oh, ow, cout), dtype=x.dtype)
            for k, s in enumerate(sl):
                z += xp[s] * w[:, k // kw, k % kw, 0]
            return z, ("dw", xp)
        if (kh, kw) == (1, 1) and self.stride == (1, 1) and not any(self.padding) and self.groups == 1:
            cols = x.reshape(-1, cg)
            z = cols @ w.reshape(cout, cg).T
            return z.reshape(n, oh, ow, cout), ("pw", cols)
        xp = _pad(x, self.padding)
        cols = np.stack([xp[s] for s in sl], axis=3)  # (N, OH, OW, K, C)
        p = n * oh * ow
        if self.groups == 1:
            cols = cols.reshape(p, kh * kw * cg)
            z = cols @ w.reshape(cout, -1).T
            return z.reshape(n, oh, ow, cout), ("mm", cols)
        g = self.groups
        cols = cols.reshape(p, kh * kw, g, cg).transpose(0, 2, 1, 3).reshape(p, g, kh * kw * cg)
        wg = w.reshape(g, cout // g, kh * kw * cg)
        z = np.einsum("pgk,gok->pgo", cols, wg)
        return z.reshape(n, oh, ow, cout), ("grp", cols)

    def _conv_backward(self, dz, cache):
        kind, saved = cache
        w = self.params["weight"]
        cout, kh, kw, cg = w.shape
        n, oh, ow, _ = dz.shape
        h, wd, c = self.in_shape
        sl = _slices(kh, kw, self.stride, self.dilation, oh, ow)
        if kind == "dw":
            xp = saved
            dw = np.empty_like(w)
            dxp = np.zeros_like(xp)
            for k, s in enumerate(sl):
                dw[:, k // kw, k % kw, 0] = np.einsum("nhwc,nhwc->c", dz, xp[s])
                dxp[s] += dz * w[:, k // kw, k % kw, 0]
            self._acc("weight", dw)
            dx = _unpad(dxp, self.padding, h, wd)
            mult = cout // self.groups
            if mult > 1:
                dx = dx.reshape(n, h, wd, c, mult).sum(axis=-1)
            return dx
        p = n * oh * ow
        if kind == "pw":
            d2 = dz.reshape(p, cout)
            self._acc("weight", (d2.T @ saved).reshape(w.shape))
            return (d2 @ w.reshape(cout, cg)).reshape(n, h, wd, c)
        if kind == "mm":
            d2 = dz.reshape(p, cout)
            self._acc("weight", (d2.T @ saved).reshape(w.shape))
            dcols = (d2 @ w.reshape(cout, -1)).reshape(n, oh, ow, kh * kw, cg)
        else:
            g = self.groups
            d3 = dz.reshape(p, g, cout // g)
            wg = w.reshape(g, cout // g, kh * kw * cg)
            self._acc("weight", np.einsum("pgo,pgk->gok", d3, saved).reshape(w.shape))
            dcols = np.einsum("pgo,gok->pgk", d3, wg).reshape(p, g, kh * kw, cg).transpose(0, 2, 1, 3)
            dcols = dcols.reshape(n, oh, ow, kh * kw, c)
        t, b, l, r = self.padding
        dxp = np.zeros((n, h + t + b, wd + l + r, c), dtype=dz.dtype)
        for k, s in enumerate(sl):
            dxp[s] += dcols[:, :, :, k]
        return _unpad(dxp, self.padding, h, wd)

    # -- full layer ------------------------------------------------------
    def forward(self, xs, train):
        z, conv_cache = self._conv(xs[0])
        if "bias" in self.params:
            z = z + self.params["bias"]
        bn_cache = None
        if self.bn:
            z, bn_cache = self._bn_forward(z, train)
        y, mask = _act_forward(z, self.act)
        return y, (conv_cache, bn_cache, mask)

    def backward(self, dy, cache):
        conv_cache, bn_cache, mask = cache
        dz = _act_backward(dy, mask)
        if self.bn:
            dz = self._bn_backward(dz, bn_cache)
        if "bias" in self.params:
            self._acc("bias", dz.sum(axis=(0, 1, 2)))
        return [self._conv_backward(dz, conv_cache)]

    def _bn_forward(self, z, train):
        gamma, beta = self.params["gamma"], self.params["beta"]
        if train:
            m = z.shape[0] * z.shape[1] * z.shape[2]
            mean = z.mean(axis=(0, 1, 2))
            zc = z - mean
            var = np.einsum("nhwc,nhwc->c", zc, zc) / m
            mom = self.bn_momentum
            self.running_mean = ((1 - mom) * self.running_mean + mom * mean).astype(z.dtype)
            unbiased = var * (m / max(m - 1, 1))
            self.running_var = ((1 - mom) * self.running_var + mom * unbiased).astype(z.dtype)
        else:
            mean, var = self.running_mean, self.running_var
            zc = z - mean
        inv = (1.0 / np.sqrt(var + self.bn_eps)).astype(z.dtype)
        zhat = zc * inv
        return (zhat * gamma + beta).astype(z.dtype, copy=False), (train, zhat, inv)

    def _bn_backward(self, dy, cache):
        train, zhat, inv = cache
        gamma = self.params["gamma"]
        self._acc("gamma", (dy * zhat).sum(axis=(0, 1, 2)))
        self._acc("beta", dy.sum(axis=(0, 1, 2)))
        dzhat = dy * gamma
        if not train:
            return dzhat * inv
        return inv * (dzhat - dzhat.mean(axis=(0, 1, 2)) - zhat * (dzhat * zhat).mean(axis=(0, 1, 2)))

    def fold_bn(self) -> None:
        """Merge the batch norm (running statistics) into weight and bias."""
        if not self.bn:
            return
        w = self.params["weight"]
        scale = self.params["gamma"] / np.sqrt(self.running_var + self.bn_eps)
        bias = self.params.get("bias", np.zeros(w.shape[0], w.dtype))
        self.params = {"weight": (w * scale[:, None, None, None]).astype(w.dtype),
                       "bias": ((bias - self.running_mean) * scale + self.params["beta"]).astype(w.dtype)}
        self.grads = {}
        self.bn = False
        del self.running_mean, self.running_var


class Dense(Layer):
    """y = act(flatten(x) @ W.T + b); W is (O, I)."""

    op = "fully_connected"

    def __init__(self, name, inputs, in_shape, weight, bias, act):
        n_in = int(np.prod(in_shape))
        if weight.shape[1] != n_in:
            raise ModelError(f"dense {name!r}: weight {weight.shape} does not fit {n_in} inputs")
        super().__init__(name, inputs, (weight.shape[0],))
        self.in_shape = tuple(in_shape)
        self.act = act
        act_bounds(act)
        self.params["weight"] = weight
        if bias is not None:
            self.params["bias"] = bias

    def forward(self, xs, train):
        x = xs[0].reshape(xs[0].shape[0], -1)
        z = x @ self.params["weight"].T
        if "bias" in self.params:
            z = z + self.params["bias"]
        y, mask = _act_forward(z, self.act)
        return y, (x, mask)

    def backward(self, dy, cache):
        x, mask = cache
        dz = _act_backward(dy, mask)
        self._acc("weight", dz.T @ x)
        if "bias" in self.params:
            self._acc("bias", dz.sum(axis=0))
        return [(dz @ self.params["weight"]).reshape((-1,) + self.in_shape)]


class Add(Layer):
    op = "add"

    def __init__(self, name, inputs, shape, act):
        super().__init__(name, inputs, shape)
        self.act = act
        act_bounds(act)

    def forward(self, xs, train):
        y, mask = _act_forward(xs[0] + xs[1], self.act)
        return y, mask

    def backward(self, dy, cache):
        dz = _act_backward(dy, cache)
        return [dz, dz]


class Activation(Layer):
    op = "activation"

    def __init__(self, name, inputs, shape, act):
        super().__init__(name, inputs, shape)
        self.act = act
        act_bounds(act)

    def forward(self, xs, train):
        return _act_forward(xs[0], self.act)

    def backward(self, dy, cache):
        return [_act_backward(dy, cache)]


class Pool(Layer):
    """Average pool (mean over the valid, unpadded part of each window, as CMSIS-NN) or max pool."""

    def __init__(self, name, inputs, in_shape, kernel, stride, padding):
        h, w, c = in_shape
        self.kernel = _pair(kernel)
        self.stride = _pair(stride if stride is not None else kernel)
        self.padding = resolve_padding(padding, h, w, self.kernel[0], self.kernel[1], self.stride)
        oh = conv_out_size(h, self.kernel[0], self.stride[0], self.padding[0], self.padding[1], 1)
        ow = conv_out_size(w, self.kernel[1], self.stride[1], self.padding[2], self.padding[3], 1)
        if oh <= 0 or ow <= 0:
            raise ModelError(f"pool {name!r}: window {self.kernel} does not fit the {h}x{w} input")
        super().__init__(name, inputs, (oh, ow, c))
        self.in_shape = tuple(in_shape)

    def _global(self) -> bool:
        return self.kernel == tuple(self.in_shape[:2]) and not any(self.padding)

    def _sl(self):
        oh, ow, _ = self.shape
        return _slices(self.kernel[0], self.kernel[1], self.stride, (1, 1), oh, ow)


class AvgPool(Pool):
    op = "avgpool"

    def _count(self):
        h, w, _ = self.in_shape
        ones = _pad(np.ones((1, h, w, 1)), self.padding)
        return sum(ones[s] for s in self._sl())[0]  # (OH, OW, 1)

    def forward(self, xs, train):
        x = xs[0]
        if self._global():
            return x.mean(axis=(1, 2), keepdims=True), None
        xp = _pad(x, self.padding)
        total = sum(xp[s] for s in self._sl())
        return (total / self._count()).astype(x.dtype), None

    def backward(self, dy, cache):
        h, w, c = self.in_shape
        if self._global():
            return [np.broadcast_to(dy / (h * w), (dy.shape[0], h, w, c)).astype(dy.dtype)]
        t, b, l, r = self.padding
        dxp = np.zeros((dy.shape[0], h + t + b, w + l + r, c), dy.dtype)
        g = (dy / self._count()).astype(dy.dtype)
        for s in self._sl():
            dxp[s] += g
        return [_unpad(dxp, self.padding, h, w)]


class MaxPool(Pool):
    op = "maxpool"

    def forward(self, xs, train):
        xp = _pad(xs[0], self.padding, -np.inf)
        win = np.stack([xp[s] for s in self._sl()], axis=3)  # (N, OH, OW, K, C)
        idx = win.argmax(axis=3)
        return np.take_along_axis(win, idx[:, :, :, None], axis=3)[:, :, :, 0], idx

    def backward(self, dy, idx):
        h, w, c = self.in_shape
        t, b, l, r = self.padding
        dxp = np.zeros((dy.shape[0], h + t + b, w + l + r, c), dy.dtype)
        for k, s in enumerate(self._sl()):
            dxp[s] += dy * (idx == k)
        return [_unpad(dxp, self.padding, h, w)]


class Reshape(Layer):
    op = "reshape"

    def __init__(self, name, inputs, in_shape, shape):
        if int(np.prod(in_shape)) != int(np.prod(shape)):
            raise ModelError(f"reshape {name!r}: {tuple(in_shape)} -> {tuple(shape)} changes the element count")
        super().__init__(name, inputs, shape)
        self.in_shape = tuple(in_shape)

    def forward(self, xs, train):
        return xs[0].reshape((-1,) + self.shape), None

    def backward(self, dy, cache):
        return [dy.reshape((-1,) + self.in_shape)]


# ---------------------------------------------------------------------------
# The network


class Net:
    """A DAG of layers in execution order; the last layer's output is the network output."""

    def __init__(self, input_shape, name: str = "net", seed: int = 0, dtype=np.float32, input_name: str = "input"):
        self.name = name
        self.input = input_name
        self.input_shape = tuple(int(d) for d in input_shape)
        self.dtype = np.dtype(dtype)
        self.rng = np.random.default_rng(seed)
        self.layers: list[Layer] = []
        self._shapes = {input_name: self.input_shape}
        self._caches: dict[str, object] = {}

    # -- construction ------------------------------------------------------
    def shape(self, tensor: str) -> tuple[int, ...]:
        return self._shapes[tensor]

    def _name(self, prefix, name):
        name = name or f"{prefix}{len(self.layers)}"
        if name in self._shapes:
            raise ModelError(f"tensor name {name!r} is used twice")
        return name

    def _add(self, layer: Layer) -> str:
        for t in layer.inputs:
            if t not in self._shapes:
                raise ModelError(f"layer {layer.name!r}: input {t!r} is not defined yet")
        self.layers.append(layer)
        self._shapes[layer.output] = layer.shape
        return layer.output

    def _init(self, shape, fan_in, act, gain=None):
        if gain is None:
            gain = 1.0 if act == "none" else 2.0
        return (self.rng.standard_normal(shape) * math.sqrt(gain / fan_in)).astype(self.dtype)

    def conv2d(self, x, out_channels, kernel=3, stride=1, padding="same", dilation=1, groups=1, act="none",
               bias=True, bn=False, weight=None, bias_value=None, name=None) -> str:
        c = self.shape(x)[-1]
        kh, kw = _pair(kernel)
        if weight is None:
            weight = self._init((out_channels, kh, kw, c // groups), kh * kw * (c // groups), act)
        b = None
        if bias:
            b = np.zeros(out_channels, self.dtype) if bias_value is None else np.asarray(bias_value, self.dtype)
        name = self._name("conv", name)
        return self._add(Conv2D(name, [x], self.shape(x), np.asarray(weight, self.dtype), b, stride, padding,
                                dilation, groups, act, bn))

    def depthwise_conv2d(self, x, kernel=3, multiplier=1, **kw) -> str:
        c = self.shape(x)[-1]
        return self.conv2d(x, c * multiplier, kernel, groups=c, **kw)

    def dense(self, x, out_features, act="none", bias=True, weight=None, bias_value=None, name=None) -> str:
        n_in = int(np.prod(self.shape(x)))
        if weight is None:
            weight = self._init((out_features, n_in), n_in, act)
        b = None
        if bias:
            b = np.zeros(out_features, self.dtype) if bias_value is None else np.asarray(bias_value, self.dtype)
        name = self._name("fc", name)
        return self._add(Dense(name, [x], self.shape(x), np.asarray(weight, self.dtype), b, act))

    fully_connected = dense

    def add(self, a, b, act="none", name=None) -> str:
        if self.shape(a) != self.shape(b):
            raise ModelError(f"add: shapes {self.shape(a)} and {self.shape(b)} differ")
        return self._add(Add(self._name("add", name), [a, b], self.shape(a), act))

    def activation(self, x, act, name=None) -> str:
        return self._add(Activation(self._name("act", name), [x], self.shape(x), act))

    def relu(self, x, name=None) -> str:
        return self.activation(x, "relu", name)

    def relu6(self, x, name=None) -> str:
        return self.activation(x, "relu6", name)

    def avgpool(self, x, kernel, stride=None, padding="valid", name=None) -> str:
        return self._add(AvgPool(self._name("avgpool", name), [x], self.shape(x), kernel, stride, padding))

    def maxpool(self, x, kernel, stride=None, padding="valid", name=None) -> str:
        return self._add(MaxPool(self._name("maxpool", name), [x], self.shape(x), kernel, stride, padding))

    def global_avgpool(self, x, name=None) -> str:
        h, w, _ = self.shape(x)
        return self._add(AvgPool(self._name("gap", name), [x], self.shape(x), (h, w), (h, w), "valid"))

    def reshape(self, x, shape, name=None) -> str:
        return self._add(Reshape(self._name("reshape", name), [x], self.shape(x), tuple(shape)))

    def flatten(self, x, name=None) -> str:
        return self.reshape(x, (int(np.prod(self.shape(x))),), name=name or self._name("flatten", None))

    # -- running ---------------------------------------------------------------
    @property
    def output(self) -> str:
        return self.layers[-1].output

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layers[-1].shape

    def forward(self, x, train: bool = False, keep: bool = False, record: bool | None = None):
        """Batched forward. train: batch-norm batch statistics; record: keep caches for backward
        (default: = train); keep: return every tensor by name instead of the output."""
        x = np.asarray(x, dtype=self.dtype)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"input must be (N, {', '.join(map(str, self.input_shape))}), got {x.shape}")
        record = train if record is None else record
        values = {self.input: x}
        self._caches = {}
        for layer in self.layers:
            y, cache = layer.forward([values[t] for t in layer.inputs], train)
            values[layer.output] = y
            if record:
                self._caches[layer.name] = cache
        return values if keep else values[self.output]

    __call__ = forward

    def backward(self, dy) -> np.ndarray:
        """Back-propagate dL/d(output) through the last recorded forward; returns dL/d(input)."""
        if not self._caches:
            raise RuntimeError("call forward(..., record=True) (or train=True) before backward")
        grads = {self.output: np.asarray(dy, dtype=self.dtype)}
        for layer in reversed(self.layers):
            g = grads.pop(layer.output, None)
            if g is None:
                continue
            for t, dx in zip(layer.inputs, layer.backward(g, self._caches[layer.name]), strict=True):
                grads[t] = grads[t] + dx if t in grads else dx
        dx = grads.get(self.input)
        return np.zeros((dy.shape[0],) + self.input_shape, self.dtype) if dx is None else dx

    def zero_grad(self) -> None:
        for layer in self.layers:
            layer.grads = {}

    def parameters(self):
        """(layer, key, array) for every trainable array."""
        return [(layer, k, v) for layer in self.layers for k, v in layer.params.items()]

    def param_count(self) -> int:
        return sum(v.size for _, _, v in self.parameters())

    def has_bn(self) -> bool:
        return any(getattr(layer, "bn", False) for layer in self.layers)

    def fold_bn(self) -> Net:
        """A copy with every batch norm merged into its convolution."""
        net = self.copy()
        for layer in net.layers:
            if isinstance(layer, Conv2D):
                layer.fold_bn()
        return net

    def copy(self) -> Net:
        net = copy.copy(self)
        net.layers = copy.deepcopy(self.layers)
        net._shapes = dict(self._shapes)
        net._caches = {}
        net.rng = copy.deepcopy(self.rng)
        return net

    def astype(self, dtype) -> Net:
        net = self.copy()
        net.dtype = np.dtype(dtype)
        for layer in net.layers:
            layer.params = {k: v.astype(dtype) for k, v in layer.params.items()}
            layer.grads = {}
            if getattr(layer, "bn", False):
                layer.running_mean = layer.running_mean.astype(dtype)
                layer.running_var = layer.running_var.astype(dtype)
        return net

    def summary(self) -> str:
        rows = [f"{self.name}: input {self.input} {self.input_shape}"]
        for layer in self.layers:
            extra = ""
            if isinstance(layer, Conv2D):
                extra = (f" k={layer.kernel} s={layer.stride} g={layer.groups} act={layer.act}"
                         + (" bn" if layer.bn else ""))
            elif isinstance(layer, (Dense, Add, Activation)):
                extra = f" act={layer.act}"
            rows.append(f"  {layer.name:<16} {layer.op:<16} {str(layer.shape):<16} <- {', '.join(layer.inputs)}{extra}")
        rows.append(f"  params: {self.param_count()}")
        return "\n".join(rows)


# ---------------------------------------------------------------------------
# Loss, optimiser, training


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy over the batch and its gradient w.r.t. the logits."""
    n = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -float(logp[np.arange(n), labels].mean())
    d = np.exp(logp)
    d[np.arange(n), labels] -= 1.0
    return loss, (d / n).astype(logits.dtype)


class SGD:
    """SGD with (optionally Nesterov) momentum; weight decay on conv/dense weights only."""

    def __init__(self, net: Net, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 0.0,
                 nesterov: bool = False):
        self.net = net
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.nesterov = nesterov
        self.velocity: dict[tuple[str, str], np.ndarray] = {}

    def step(self, lr: float | None = None) -> None:
        lr = self.lr if lr is None else lr
        for layer, key, p in self.net.parameters():
            g = layer.grads.get(key)
            if g is None:
                continue
            if self.weight_decay and key == "weight":
                g = g + self.weight_decay * p
            v = self.velocity.get((layer.name, key))
            v = g if v is None else self.momentum * v + g
            self.velocity[(layer.name, key)] = v
            upd = g + self.momentum * v if self.nesterov else v
            p -= (lr * upd).astype(p.dtype)


def predict(net: Net, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits for every sample (eval mode), batched."""
    return np.concatenate([net.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def accuracy(net: Net, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    return float((predict(net, x, batch_size).argmax(axis=1) == y).mean())


def shift_augment(max_shift: int = 2) -> Callable:
    """Random integer translations (zero fill) of a batch of NHWC images."""

    def aug(xb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, h, w, _ = xb.shape
        m = max_shift
        xp = np.pad(xb, ((0, 0), (m, m), (m, m), (0, 0)))
        dy = rng.integers(0, 2 * m + 1, n)
        dx = rng.integers(0, 2 * m + 1, n)
        rows = dy[:, None] + np.arange(h)[None, :]
        cols = dx[:, None] + np.arange(w)[None, :]
        return xp[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]

    return aug


def train(net: Net, x: np.ndarray, y: np.ndarray, epochs: int = 5, batch_size: int = 64, lr: float = 0.05,
          momentum: float = 0.9, weight_decay: float = 5e-4, seed: int = 0, schedule: str = "cosine",
          augment: Callable | None = None, eval_data: tuple[np.ndarray, np.ndarray] | None = None,
          warmup: float = 0.0, log: Callable[[str], None] | None = None) -> list[dict]:
    """Mini-batch SGD on softmax cross-entropy; returns one dict per epoch.

    The shuffle order and augmentation draw from `np.random.default_rng(seed)`; the
    learning rate rises linearly over the first `warmup` epochs, then follows a per-step
    cosine decay to 0 ("cosine") or stays ("constant").
    """
    rng = np.random.default_rng(seed)
    opt = SGD(net, lr, momentum, weight_decay)
    n = len(x)
    steps = epochs * (-(-n // batch_size))
    step = 0
    warm_steps = int(round(warmup * (-(-n // batch_size))))
    history = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = rng.permutation(n)
        total, correct = 0.0, 0
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            xb, yb = x[idx], y[idx]
            if augment is not None:
                xb = augment(xb, rng)
            cur = lr * 0.5 * (1 + math.cos(math.pi * step / steps)) if schedule == "cosine" else lr
            if step < warm_steps:
                cur *= (step + 1) / warm_steps
            logits = net.forward(xb, train=True)
            loss, dlogits = softmax_cross_entropy(logits, yb)
            net.zero_grad()
            net.backward(dlogits)
            opt.step(cur)
            total += loss * len(idx)
            correct += int((logits.argmax(axis=1) == yb).sum())
            step += 1
        rec = {"epoch": epoch, "loss": total / n, "train_acc": correct / n, "seconds": time.perf_counter() - t0}
        if eval_data is not None:
            rec["eval_acc"] = accuracy(net, *eval_data)
        history.append(rec)
        if log:
            msg = f"  epoch {epoch}/{epochs}  loss {rec['loss']:.4f}  train acc {100 * rec['train_acc']:.2f}%"
            if "eval_acc" in rec:
                msg += f"  float test acc {100 * rec['eval_acc']:.2f}%"
            log(msg + f"  ({rec['seconds']:.1f} s)")
    return history


# ---------------------------------------------------------------------------
# From an int8 model: the float network it approximates


def from_ir(model, dtype=np.float64) -> Net:
    """The float network of an int8 `ir.Model`: dequantized weights and biases, and every
    layer's int8 clamp `[act_min, act_max]` as a float clamp. Tensor names match the IR's."""

    tensors = model.tensors()
    net = Net(model.input.shape, name=model.name, dtype=dtype, input_name=model.input.name)

    def clamp(layer):
        o = layer.output
        return (o.scale * (layer.act_min - o.zero_point), o.scale * (layer.act_max - o.zero_point))

    for layer in model.layers:
        xi = tensors[layer.inputs[0]]
        if isinstance(layer, (ir.Conv2D, ir.FullyConnected)):
            s_w = layer.w_scales.astype(np.float64)
            shp = (-1,) + (1,) * (layer.weight.ndim - 1)
            w = layer.weight.astype(np.float64) * s_w.reshape(shp)
            b = layer.bias.astype(np.float64) * xi.scale * s_w
            if isinstance(layer, ir.Conv2D):
                net.conv2d(layer.inputs[0], w.shape[0], w.shape[1:3], layer.stride, layer.padding, layer.dilation,
                           layer.groups, clamp(layer), weight=w, bias_value=b, name=layer.name)
            else:
                net.dense(layer.inputs[0], w.shape[0], clamp(layer), weight=w, bias_value=b, name=layer.name)
        elif isinstance(layer, ir.Add):
            net.add(layer.inputs[0], layer.inputs[1], clamp(layer), name=layer.name)
        elif isinstance(layer, ir.AvgPool):
            net.avgpool(layer.inputs[0], layer.kernel, layer.stride, layer.padding, name=layer.name)
        elif isinstance(layer, ir.MaxPool):
            net.maxpool(layer.inputs[0], layer.kernel, layer.stride, layer.padding, name=layer.name)
        elif isinstance(layer, ir.Reshape):
            net.reshape(layer.inputs[0], layer.output.shape, name=layer.name)
        else:
            raise ModelError(f"layer {layer.name!r}: op {layer.op!r} has no float counterpart")
    return net
