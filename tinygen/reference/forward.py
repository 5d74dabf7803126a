"""NumPy reference of the int8 forward kernels (TFLite Micro / CMSIS-NN semantics).

The low-level kernels take CMSIS-NN's arguments (offsets, per-channel multiplier and
shift, top/left padding plus output size) so that the CMSIS-NN golden vectors drive
them directly; `run_model` feeds them from the IR. Integer sums are computed in
float64 BLAS, which is exact because every accumulator is bounded below 2^31 (the IR
validator checks that) and float64 holds integers up to 2^53 exactly.
"""

from __future__ import annotations

import numpy as np

from tinygen.ir import model as ir
from tinygen.ir.quant import requantize, rounded_average, saturate, softmax_params, softmax_s8


def _pad_hw(x: np.ndarray, pad_top: int, pad_left: int, need_h: int, need_w: int, value=0) -> np.ndarray:
    """Pad an (H, W, C) array so rows [-pad_top, need_h - pad_top) exist (and likewise columns)."""
    h, w, _ = x.shape
    bottom = max(0, need_h - pad_top - h)
    right = max(0, need_w - pad_left - w)
    xp = np.pad(x, ((pad_top, bottom), (pad_left, right), (0, 0)), constant_values=value)
    return xp[:need_h, :need_w]


def im2col(x, kh, kw, stride, pad_top, pad_left, dilation, out_h, out_w, value=0):
    """(OH, OW, KH*KW, C) windows of an (H, W, C) array; the padding reads `value`."""
    sh, sw = stride
    dh, dw = dilation
    need_h = (out_h - 1) * sh + dh * (kh - 1) + 1
    need_w = (out_w - 1) * sw + dw * (kw - 1) + 1
    xp = _pad_hw(x, pad_top, pad_left, need_h, need_w, value)
    cols = [
        xp[ky * dh: ky * dh + (out_h - 1) * sh + 1: sh, kx * dw: kx * dw + (out_w - 1) * sw + 1: sw]
        for ky in range(kh) for kx in range(kw)
    ]
    return np.stack(cols, axis=2)


def conv_accumulate(x, weight, input_offset, stride, pad_top, pad_left, dilation, out_h, out_w, groups):
    """Σ (x + input_offset) * w over each window: int64 (OH, OW, O)."""
    cout, kh, kw, cg = weight.shape
    xs = x.astype(np.float64) + input_offset  # padding contributes (x + offset) = 0
    cols = im2col(xs, kh, kw, stride, pad_top, pad_left, dilation, out_h, out_w)
    cols = cols.reshape(out_h * out_w, kh * kw, groups, cg).transpose(0, 2, 1, 3)
    cols = cols.reshape(out_h * out_w, groups, kh * kw * cg)
    w = weight.astype(np.float64).reshape(groups, cout // groups, kh * kw * cg)
    acc = np.einsum("pgk,gok->pgo", cols, w, optimize=True) if groups > 1 else (cols[:, 0] @ w[0].T)[:, None]
    return np.rint(acc).astype(np.int64).reshape(out_h, out_w, cout)


def convolve_s8(x, weight, bias, input_offset, output_offset, mult, shift, stride=(1, 1),
                pad_top=0, pad_left=0, dilation=(1, 1), out_h=None, out_w=None, groups=1,
                act_min=-128, act_max=127, clamp=True):
    """arm_convolve_s8 / arm_depthwise_conv_s8 for one image: (H, W, C) -> (OH, OW, O) int8.

    With clamp=False, the int64 value before the activation clamp (training saves masks of it).
    """
    acc = conv_accumulate(x, weight, input_offset, stride, pad_top, pad_left, dilation, out_h, out_w, groups)
    if bias is not None:
        acc = acc + bias.astype(np.int64)
    y = requantize(acc, mult, shift) + output_offset
    return saturate(y, act_min, act_max).astype(np.int8) if clamp else y


def fully_connected_s8(x, weight, bias, input_offset, output_offset, mult, shift,
                       act_min=-128, act_max=127, filter_offset=0, clamp=True):
    """arm_fully_connected_s8 for a batch: x (N, I), weight (O, I) -> (N, O) int8."""
    xs = x.astype(np.float64) + input_offset
    w = weight.astype(np.float64) + filter_offset
    acc = np.rint(xs @ w.T).astype(np.int64)
    if bias is not None:
        acc = acc + bias.astype(np.int64)
    y = requantize(acc, mult, shift) + output_offset
    return saturate(y, act_min, act_max).astype(np.int8) if clamp else y


def elementwise_add_s8(a, b, in1_offset, in2_offset, in1_mult, in1_shift, in2_mult, in2_shift,
                       left_shift, out_mult, out_shift, out_offset, act_min=-128, act_max=127, clamp=True):
    """arm_elementwise_add_s8."""
    a1 = requantize((a.astype(np.int64) + in1_offset) << left_shift, in1_mult, in1_shift)
    b1 = requantize((b.astype(np.int64) + in2_offset) << left_shift, in2_mult, in2_shift)
    y = requantize(a1 + b1, out_mult, out_shift) + out_offset
    return saturate(y, act_min, act_max).astype(np.int8) if clamp else y


def _pool_windows(x, kernel, stride, pad_top, pad_left, out_h, out_w, value):
    return im2col(x.astype(np.int64), kernel[0], kernel[1], stride, pad_top, pad_left, (1, 1), out_h, out_w, value)


def pool_counts(in_hw, kernel, stride, pad_top, pad_left, out_h, out_w):
    """(OH, OW, 1) number of in-bounds elements of each pooling window."""
    ones = np.ones(tuple(in_hw) + (1,), dtype=np.int64)
    return _pool_windows(ones, kernel, stride, pad_top, pad_left, out_h, out_w, 0).sum(axis=2)


def avgpool_s8(x, kernel, stride, pad_top, pad_left, out_h, out_w, act_min=-128, act_max=127, clamp=True):
    """arm_avgpool_s8: mean over the valid (unpadded) part of each window, rounded half away."""
    total = _pool_windows(x, kernel, stride, pad_top, pad_left, out_h, out_w, 0).sum(axis=2)
    count = pool_counts(x.shape[:2], kernel, stride, pad_top, pad_left, out_h, out_w)
    y = rounded_average(total, count)
    return saturate(y, act_min, act_max).astype(np.int8) if clamp else y


def maxpool_s8(x, kernel, stride, pad_top, pad_left, out_h, out_w, act_min=-128, act_max=127, clamp=True):
    """arm_max_pool_s8: max over the valid part of each window, then the clamp."""
    y = _pool_windows(x, kernel, stride, pad_top, pad_left, out_h, out_w, -(1 << 20)).max(axis=2)
    return saturate(y, act_min, act_max).astype(np.int8) if clamp else y


def mean_s8(x, input_offset, output_offset, mult, shift, act_min=-128, act_max=127, clamp=True):
    """TFLite's int8 MEAN over height and width (reference_ops::QuantizedMeanOrSum): per channel the int32 sum
    of (x + input_offset) over the H W pixels, one requantization by (mult, shift) (`ir.mean_requant`), plus
    output_offset, clamped: (H, W, C) -> (C,)."""
    h, w, _ = x.shape
    total = x.astype(np.int64).sum(axis=(0, 1)) + input_offset * h * w
    y = requantize(total, mult, shift) + output_offset
    return saturate(y, act_min, act_max).astype(np.int8) if clamp else y


# ---------------------------------------------------------------------------


def run_layer(layer: ir.Layer, ins: list[np.ndarray], tensors: dict[str, ir.TensorInfo],
              clamp: bool = True) -> np.ndarray:
    """One IR layer on int8 arrays (single image); clamp=False gives the int64 value before the clamp."""
    out = layer.output
    xi = tensors[layer.inputs[0]]
    if isinstance(layer, ir.Conv2D):
        mult, shift = ir.conv_requant(layer, xi)
        return convolve_s8(ins[0], layer.weight, layer.bias, -xi.zero_point, out.zero_point, mult, shift,
                           layer.stride, layer.padding[0], layer.padding[2], layer.dilation,
                           out.shape[0], out.shape[1], layer.groups, layer.act_min, layer.act_max, clamp)
    if isinstance(layer, ir.FullyConnected):
        mult, shift = ir.conv_requant(layer, xi)
        return fully_connected_s8(ins[0].reshape(1, -1), layer.weight, layer.bias, -xi.zero_point,
                                  out.zero_point, mult, shift, layer.act_min, layer.act_max, clamp=clamp)[0]
    if isinstance(layer, ir.Add):
        p = ir.add_requant(xi, tensors[layer.inputs[1]], out)
        return elementwise_add_s8(ins[0], ins[1], -xi.zero_point, -tensors[layer.inputs[1]].zero_point,
                                  p["in1_mult"], p["in1_shift"], p["in2_mult"], p["in2_shift"],
                                  p["left_shift"], p["out_mult"], p["out_shift"], out.zero_point,
                                  layer.act_min, layer.act_max, clamp)
    if isinstance(layer, ir.Pool):
        fn = avgpool_s8 if isinstance(layer, ir.AvgPool) else maxpool_s8
        return fn(ins[0], layer.kernel, layer.stride, layer.padding[0], layer.padding[2],
                  out.shape[0], out.shape[1], layer.act_min, layer.act_max, clamp)
    if isinstance(layer, ir.Mean):
        mult, shift = ir.mean_requant(xi, out)
        return mean_s8(ins[0], -xi.zero_point, out.zero_point, mult, shift, layer.act_min, layer.act_max,
                       clamp).reshape(out.shape)
    if isinstance(layer, ir.Softmax):
        return softmax_s8(ins[0], *softmax_params(layer.beta, xi.scale)).astype(np.int8)
    if isinstance(layer, ir.Reshape):
        return ins[0].reshape(out.shape)
    if isinstance(layer, ir.Crop):
        (y, x), (h, w) = layer.origin, out.shape[:2]
        return ins[0][y:y + h, x:x + w]
    raise TypeError(layer.op)


def run_model(model: ir.Model, x: np.ndarray, keep: bool = False):
    """Forward one int8 input; returns the output (or every tensor when keep=True)."""
    x = np.asarray(x)
    if x.dtype != np.int8 or x.shape != tuple(model.input.shape):
        raise ValueError(f"input must be int8 {list(model.input.shape)}, got {x.dtype} {list(x.shape)}")
    tensors = model.tensors()
    values = {model.input.name: x}
    for layer in model.layers:
        values[layer.output.name] = run_layer(layer, [values[t] for t in layer.inputs], tensors)
    return values if keep else values[model.output.name]


def run_batch(model: ir.Model, xs: np.ndarray) -> np.ndarray:
    return np.stack([run_model(model, x) for x in xs])
