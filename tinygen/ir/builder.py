"""Python builder API: add int8 layers one by one, shapes computed for you.

    b = ModelBuilder("tiny", input_shape=(8, 8, 1), scale=1/16, zero_point=-128)
    x = b.conv2d(b.input, w, bias, w_scales, out_scale=0.05, out_zero_point=-128,
                 stride=1, padding="same", act="relu")
    x = b.global_avgpool(x)
    x = b.fully_connected(x, w2, b2, s2, out_scale=0.1, out_zero_point=0)
    model = b.build()   # validated ir.Model
"""

from __future__ import annotations

import numpy as np

from tinygen.errors import ModelError
from tinygen.ir import model as ir


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def same_padding(size: int, k: int, stride: int, dil: int = 1) -> tuple[int, int]:
    """TFLite SAME padding: output ceil(size/stride), extra padding at the end."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + dil * (k - 1) + 1 - size)
    return total // 2, total - total // 2


def resolve_padding(padding, h, w, kh, kw, stride, dilation=(1, 1)) -> tuple[int, int, int, int]:
    """'same' | 'valid' | int | (top, bottom, left, right) -> explicit (t, b, l, r)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            return same_padding(h, kh, stride[0], dilation[0]) + same_padding(w, kw, stride[1], dilation[1])
        raise ModelError(f"padding {padding!r} is not 'same', 'valid' or numbers")
    if np.isscalar(padding):
        p = int(padding)
        return (p, p, p, p)
    if len(padding) == 2:
        return (int(padding[0]), int(padding[0]), int(padding[1]), int(padding[1]))
    return tuple(int(p) for p in padding)


class ModelBuilder:
    def __init__(self, name: str, input_shape, scale: float, zero_point: int, input_name: str = "input"):
        self.name = name
        self.input = input_name
        self.model = ir.Model(name, ir.TensorInfo(input_name, tuple(int(d) for d in input_shape),
                                                  float(scale), int(zero_point)))
        self._tensors = {input_name: self.model.input}

    def _name(self, prefix: str, name: str | None) -> str:
        if name:
            return name
        return f"{prefix}{len(self.model.layers)}"

    def _add(self, layer: ir.Layer, act: str | None = None) -> str:
        if act is not None:
            layer.act_min, layer.act_max = ir.activation_range(act, layer.output)
        self.model.layers.append(layer)
        self._tensors[layer.output.name] = layer.output
        return layer.output.name

    def shape(self, tensor: str) -> tuple[int, ...]:
        return self._tensors[tensor].shape

    def info(self, tensor: str) -> ir.TensorInfo:
        return self._tensors[tensor]

    def conv2d(self, x: str, weight, bias, w_scales, out_scale, out_zero_point, stride=1, padding="same",
               dilation=1, groups=1, act="none", name=None) -> str:
        h, w, _ = self.shape(x)
        weight = np.asarray(weight)
        stride, dilation = _pair(stride), _pair(dilation)
        pads = resolve_padding(padding, h, w, weight.shape[1], weight.shape[2], stride, dilation)
        oh = ir.conv_out_size(h, weight.shape[1], stride[0], pads[0], pads[1], dilation[0])
        ow = ir.conv_out_size(w, weight.shape[2], stride[1], pads[2], pads[3], dilation[1])
        name = self._name("conv", name)
        out = ir.TensorInfo(name, (oh, ow, weight.shape[0]), float(out_scale), int(out_zero_point))
        layer = ir.Conv2D(name, [x], out, weight=weight, bias=np.asarray(bias), w_scales=np.asarray(w_scales),
                          stride=stride, padding=pads, dilation=dilation, groups=int(groups))
        return self._add(layer, act)

    def depthwise_conv2d(self, x: str, weight, bias, w_scales, out_scale, out_zero_point, **kw) -> str:
        """weight (C*mult, KH, KW, 1); groups = input channels."""
        return self.conv2d(x, weight, bias, w_scales, out_scale, out_zero_point, groups=self.shape(x)[-1], **kw)

    def fully_connected(self, x: str, weight, bias, w_scales, out_scale, out_zero_point, act="none",
                        name=None) -> str:
        name = self._name("fc", name)
        out = ir.TensorInfo(name, (int(np.asarray(weight).shape[0]),), float(out_scale), int(out_zero_point))
        layer = ir.FullyConnected(name, [x], out, weight=np.asarray(weight), bias=np.asarray(bias),
                                  w_scales=np.asarray(w_scales))
        return self._add(layer, act)

    def add(self, a: str, b: str, out_scale, out_zero_point, act="none", name=None) -> str:
        name = self._name("add", name)
        out = ir.TensorInfo(name, self.shape(a), float(out_scale), int(out_zero_point))
        return self._add(ir.Add(name, [a, b], out), act)

    def _pool(self, cls, x, kernel, stride, padding, name, prefix):
        h, w, c = self.shape(x)
        kernel = _pair(kernel)
        stride = _pair(stride if stride is not None else kernel)
        pads = resolve_padding(padding, h, w, kernel[0], kernel[1], stride)
        oh = ir.conv_out_size(h, kernel[0], stride[0], pads[0], pads[1], 1)
        ow = ir.conv_out_size(w, kernel[1], stride[1], pads[2], pads[3], 1)
        name = self._name(prefix, name)
        src = self.info(x)
        out = ir.TensorInfo(name, (oh, ow, c), src.scale, src.zero_point)
        return self._add(cls(name, [x], out, kernel=kernel, stride=stride, padding=pads))

    def avgpool(self, x, kernel, stride=None, padding="valid", name=None) -> str:
        return self._pool(ir.AvgPool, x, kernel, stride, padding, name, "avgpool")

    def maxpool(self, x, kernel, stride=None, padding="valid", name=None) -> str:
        return self._pool(ir.MaxPool, x, kernel, stride, padding, name, "maxpool")

    def global_avgpool(self, x, name=None) -> str:
        h, w, _ = self.shape(x)
        return self.avgpool(x, (h, w), (h, w), name=name or self._name("gap", None))

    def mean(self, x, out_scale, out_zero_point, keep_dims=False, name=None) -> str:
        """TFLite's MEAN over height and width, to (C,) or with `keep_dims` (1, 1, C), requantized to the output."""
        c = self.shape(x)[-1]
        name = self._name("mean", name)
        out = ir.TensorInfo(name, (1, 1, c) if keep_dims else (c,), float(out_scale), int(out_zero_point))
        return self._add(ir.Mean(name, [x], out))

    def softmax(self, x, beta=1.0, name=None) -> str:
        """TFLite's int8 softmax of a logits vector (output scale 1/256, zero point -128)."""
        return self._add(ir.softmax_of(self.info(x), self._name("softmax", name), beta))

    def reshape(self, x, shape, name=None) -> str:
        name = self._name("reshape", name)
        src = self.info(x)
        out = ir.TensorInfo(name, tuple(int(d) for d in shape), src.scale, src.zero_point)
        return self._add(ir.Reshape(name, [x], out))

    def flatten(self, x, name=None) -> str:
        return self.reshape(x, (int(np.prod(self.shape(x))),), name=name or self._name("flatten", None))

    def build(self) -> ir.Model:
        return self.model.validate()
