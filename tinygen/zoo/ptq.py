"""Post-training quantization: a float `floatnn.Net` plus calibration data -> a validated `ir.Model`.

* Weights: int8 symmetric per output channel, `s_w[c] = max|w[c]| / 127` (stored as
  float32; the weights are divided by that float32 value), clipped to [-127, 127].
* Bias: int32 at `s_x * s_w[c]`, rounded half away from zero. `s_w[c]` is raised where
  needed so the bias fits the IR's accumulator bound (`k*255*128 + |bias| < 2^31`);
  an all-zero channel gets a tiny scale instead of 0.
* Activations: asymmetric int8 from the calibration min/max of each tensor, with the
  range widened to include 0: `scale = (hi - lo) / 255`, `zero_point = -128 - lo/scale`
  (rounded). After ReLU/ReLU6 `lo = 0`, so the zero point is exactly -128.
* ReLU/ReLU6 (fused `act=` or a standalone activation layer right after its only
  producer) fold into the producer's clamp; a float clamp `(lo, hi)` becomes
  `[act_min, act_max]` directly.
* Pooling and reshape keep their input's quantization (the IR requires it).
* The input: `input_range=(lo, hi)` (e.g. (0, 1) -> scale 1/255, zero point -128), or
  the calibration data's own range.

NumPy only and deterministic: the same net and calibration data give the same bytes.
Batch norms are folded first (`Net.fold_bn`).
"""

from __future__ import annotations

import numpy as np

from tinygen.errors import ModelError
from tinygen.ir import model as ir
from tinygen.ir.builder import ModelBuilder
from tinygen.zoo import floatnn as F

_ACC_BOUND = 2**31 - 1


def round_half_away(x):
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def choose_qparams(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero_point) of an asymmetric int8 tensor covering [min(lo, 0), max(hi, 0)]."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-6:  # a (nearly) constant-zero tensor: any positive scale represents it
        hi = lo + 1.0
    scale = (hi - lo) / 255.0
    zp = int(np.clip(round_half_away(-128.0 - lo / scale), -128, 127))
    return float(scale), zp


def quantize_weights(w: np.ndarray, b: np.ndarray | None, s_x: float, headroom: float = 1.0):
    """Per-output-channel symmetric int8 weights and int32 bias: (w_q, b_q, w_scales float32).
    With headroom h > 1 each channel's largest weight maps to 127/h, leaving room to grow in training."""
    w = np.asarray(w, dtype=np.float64)
    cout = w.shape[0]
    flat = w.reshape(cout, -1)
    k = flat.shape[1]
    b = np.zeros(cout) if b is None else np.asarray(b, dtype=np.float64)
    limit = _ACC_BOUND - ir.acc_bound(k) - 1
    if limit <= 0:
        raise ModelError(f"a dot product of {k} terms can overflow the int32 accumulator; split the layer")
    amax = np.abs(flat).max(axis=1)
    s = np.maximum.reduce([amax * headroom / 127.0, np.abs(b) / (s_x * limit), np.full(cout, 1e-12)])
    s32 = s.astype(np.float32)
    w_q = np.clip(round_half_away(flat / s32.astype(np.float64)[:, None]), -127, 127).astype(np.int8)
    b_q = np.clip(round_half_away(b / (s_x * s32.astype(np.float64))), -limit, limit).astype(np.int32)
    return w_q.reshape(w.shape), b_q, s32.astype(np.float32)


def quantize_input(model: ir.Model, x_float) -> np.ndarray:
    """Images in [0, 1] in the model's input layout -> int8: the model's input transform, then round half away
    from zero in float64 and saturate (this module's rounding; `frontends.inputs.quantize_images` rounds ties in
    the images' own precision, so the zoo's calibration and accuracy figures keep their bytes)."""
    t = model.input
    real = model.input_transform.apply(x_float)
    q = round_half_away(np.asarray(real, dtype=np.float64) / t.scale) + t.zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def dequantize(t: ir.TensorInfo, q) -> np.ndarray:
    return (np.asarray(q, dtype=np.float64) - t.zero_point) * t.scale


def _fusion(net: F.Net) -> dict[str, F.Activation]:
    """Producer name -> the standalone activation layer folded into it."""
    users: dict[str, list[F.Layer]] = {}
    for layer in net.layers:
        for t in layer.inputs:
            users.setdefault(t, []).append(layer)
    producers = {layer.output: layer for layer in net.layers}
    fused = {}
    for layer in net.layers:
        if not isinstance(layer, F.Activation):
            continue
        src = producers.get(layer.inputs[0])
        if (isinstance(src, (F.Conv2D, F.Dense, F.Add)) and F.act_bounds(src.act) is None
                and len(users[src.output]) == 1 and src.output != net.output):
            fused[src.name] = layer
        else:
            raise ModelError(f"activation {layer.name!r} cannot fold into its producer {layer.inputs[0]!r}; "
                             "fuse it (act=...) into the conv, dense or add before it")
    return fused


def calibrate(net: F.Net, x: np.ndarray, batch_size: int = 256) -> dict[str, tuple[float, float]]:
    """(min, max) of every tensor over the calibration set (eval mode)."""
    ranges: dict[str, tuple[float, float]] = {}
    for i in range(0, len(x), batch_size):
        vals = net.forward(x[i:i + batch_size], keep=True)
        for k, v in vals.items():
            lo, hi = float(v.min()), float(v.max())
            if k in ranges:
                lo, hi = min(lo, ranges[k][0]), max(hi, ranges[k][1])
            ranges[k] = (lo, hi)
    return ranges


def _clamp(act, scale: float, zp: int) -> tuple[int, int]:
    lo, hi = F.act_bounds(act)
    qlo = -128 if lo == -np.inf else int(np.clip(zp + round_half_away(lo / scale), -128, 127))
    qhi = 127 if hi == np.inf else int(np.clip(zp + round_half_away(hi / scale), -128, 127))
    return qlo, max(qlo, qhi)


def quantize(net: F.Net, calib_x: np.ndarray, name: str | None = None, input_range=None,
             batch_size: int = 256) -> ir.Model:
    """Post-training quantization of `net` with calibration images `calib_x` (N, H, W, C)."""
    if net.has_bn():
        net = net.fold_bn()
    fused = _fusion(net)
    skip = {a.name for a in fused.values()}
    ranges = calibrate(net, np.asarray(calib_x), batch_size)
    lo, hi = input_range if input_range is not None else ranges[net.input]
    s_in, z_in = choose_qparams(lo, hi)
    b = ModelBuilder(name or net.name, net.input_shape, s_in, z_in, input_name=net.input)
    alias = {net.input: net.input}  # float tensor -> IR tensor

    for layer in net.layers:
        if layer.name in skip:
            continue
        out_layer = fused.get(layer.name, layer)  # whose output (and range) this IR layer produces
        act = out_layer.act if out_layer is not layer else getattr(layer, "act", None)
        oname = out_layer.output
        ins = [alias[t] for t in layer.inputs]
        if isinstance(layer, (F.Conv2D, F.Dense, F.Add)):
            s_y, z_y = choose_qparams(*ranges[oname])
            named_act = act if isinstance(act, str) else None
            if isinstance(layer, F.Add):
                t = b.add(ins[0], ins[1], s_y, z_y, act=named_act, name=oname)
            else:
                s_x = b.info(ins[0]).scale
                w_q, b_q, s_w = quantize_weights(layer.params["weight"], layer.params.get("bias"), s_x)
                if isinstance(layer, F.Conv2D):
                    t = b.conv2d(ins[0], w_q, b_q, s_w, s_y, z_y, stride=layer.stride, padding=layer.padding,
                                 dilation=layer.dilation, groups=layer.groups, act=named_act, name=oname)
                else:
                    t = b.fully_connected(ins[0], w_q, b_q, s_w, s_y, z_y, act=named_act, name=oname)
            if not isinstance(act, str):
                ir_layer = b.model.layers[-1]
                ir_layer.act_min, ir_layer.act_max = _clamp(act, s_y, z_y)
        elif isinstance(layer, F.AvgPool):
            t = b.avgpool(ins[0], layer.kernel, layer.stride, layer.padding, name=oname)
        elif isinstance(layer, F.MaxPool):
            t = b.maxpool(ins[0], layer.kernel, layer.stride, layer.padding, name=oname)
        elif isinstance(layer, F.Reshape):
            t = b.reshape(ins[0], layer.shape, name=oname)
        else:
            raise ModelError(f"layer {layer.name!r} ({layer.op}) has no int8 counterpart")
        alias[oname] = t
    return b.build()
