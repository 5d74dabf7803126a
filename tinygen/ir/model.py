"""Model IR: a list of int8 layers over NHWC tensors (batch 1).

Quantization follows TFLite Micro: activations int8 with a per-tensor scale and
zero point; weights int8 symmetric per output channel; bias int32 at
`s_x * s_w[c]`. Weights are stored in CMSIS-NN's OHWI layout; a depthwise conv is
a conv with `groups == in_channels` whose weights are (C*mult, KH, KW, 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tinygen.errors import ModelError
from tinygen.ir.names import name_problem
from tinygen.ir.quant import SOFTMAX_SUM_BITS, quantize_multiplier, softmax_params

ACT_NAMES = ("none", "relu", "relu6")


@dataclass
class TensorInfo:
    """An int8 activation tensor: shape (H, W, C) and its quantization."""

    name: str
    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass(frozen=True)
class InputTransform:
    """How an image's pixel in [0, 1] becomes the model's real input: `real = pixel * scale[c] + offset[c]`.

    A model trained on normalised images keeps its normalisation here, so every image path feeds
    pixels in [0, 1] and the input's scale and zero point then quantize `real`. `scale` and `offset` hold
    one value per channel (the input's last axis) or a single value for all of them. Identity (scale 1,
    offset 0) is the default."""

    scale: tuple[float, ...] = (1.0,)
    offset: tuple[float, ...] = (0.0,)

    def __post_init__(self):
        for key in ("scale", "offset"):
            try:
                object.__setattr__(self, key, tuple(float(v) for v in getattr(self, key)))
            except (TypeError, ValueError, OverflowError):
                raise ModelError(f"the input transform's {key} must be a list of finite numbers") from None

    @classmethod
    def from_mean_std(cls, mean, std) -> InputTransform:
        """torchvision's `Normalize(mean, std)`: `(pixel - mean) / std`."""
        mean, std = np.atleast_1d(np.asarray(mean, np.float64)), np.atleast_1d(np.asarray(std, np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):  # std 0 gives inf, which validation refuses
            return cls(tuple(1.0 / std), tuple(-mean / std))

    @property
    def is_identity(self) -> bool:
        return set(self.scale) == {1.0} and set(self.offset) == {0.0}

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The real values of images `x` (..., C) in [0, 1], in x's float precision (identity returns x's values)."""
        x = np.asarray(x)
        dt = np.result_type(x.dtype, np.float32)
        return x.astype(dt, copy=False) * np.asarray(self.scale, dt) + np.asarray(self.offset, dt)


def activation_range(act: str, out: TensorInfo, float32: bool = False) -> tuple[int, int]:
    """Fold ReLU/ReLU6 into a clamp (TFLite's CalculateActivationRangeQuantized): ReLU6's bound is
    `z + round(6 / s)`, in double with ties to even, or with `float32` as TFLite computes it (the division in
    float32, ties away from zero; the .tflite frontend)."""
    if act == "none":
        return -128, 127
    lo = max(-128, out.zero_point)
    if act == "relu":
        return lo, 127
    if act == "relu6":
        if float32:
            q = float(np.float32(6.0) / np.float32(out.scale))
            steps = int(np.floor(q + 0.5))  # q > 0: half away from zero
        else:
            steps = int(round(6.0 / out.scale))
        return lo, min(127, out.zero_point + steps)
    raise ModelError(f"unknown activation {act!r}; use one of {', '.join(ACT_NAMES)}")


@dataclass
class Layer:
    name: str
    inputs: list[str]
    output: TensorInfo
    op = "layer"

    def params(self) -> dict[str, np.ndarray]:
        """Named constant arrays (weights, bias, scales) this layer owns."""
        return {}


@dataclass
class Conv2D(Layer):
    weight: np.ndarray = None  # int8 (O, KH, KW, I/groups)
    bias: np.ndarray = None  # int32 (O,)
    w_scales: np.ndarray = None  # float32 (O,)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    act_min: int = -128
    act_max: int = 127
    op = "conv2d"

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weight.shape[1]), int(self.weight.shape[2])

    def kind(self, in_channels: int) -> str:
        """'depthwise', 'pointwise', 'grouped' or 'conv' (for names and reports)."""
        if self.groups == in_channels and in_channels > 1:
            return "depthwise"
        if self.groups > 1:
            return "grouped"
        if self.kernel == (1, 1) and self.stride == (1, 1) and sum(self.padding) == 0:
            return "pointwise"
        return "conv"

    def params(self):
        return {"weight": self.weight, "bias": self.bias, "w_scales": self.w_scales}



def is_depthwise(layer: Layer, multiplier: int | None = None) -> bool:
    """A grouped conv with one input channel per group; with `multiplier`, also that many outputs per group."""
    if not (isinstance(layer, Conv2D) and layer.groups > 1 and layer.weight.shape[3] == 1):
        return False
    return multiplier is None or layer.weight.shape[0] == multiplier * layer.groups


def selectable_channels(layer: Layer) -> int:
    """Size of the channel axis a training scheme selects from: the weights' input channels, or for a
    depthwise conv its channels."""
    if isinstance(layer, Conv2D):
        return layer.groups if is_depthwise(layer) else layer.weight.shape[3]
    return layer.weight.shape[1]


@dataclass
class FullyConnected(Layer):
    weight: np.ndarray = None  # int8 (O, I)
    bias: np.ndarray = None  # int32 (O,)
    w_scales: np.ndarray = None  # float32 (O,)
    act_min: int = -128
    act_max: int = 127
    # TFLite Micro's per-tensor FULLY_CONNECTED rounds s_x * s_w to float32 before dividing by s_y
    # (GetQuantizedConvolutionMultipler); set by the .tflite importer for such layers
    f32_scale_product: bool = False
    op = "fully_connected"

    def params(self):
        return {"weight": self.weight, "bias": self.bias, "w_scales": self.w_scales}


@dataclass
class Add(Layer):
    act_min: int = -128
    act_max: int = 127
    op = "add"


@dataclass
class Pool(Layer):
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    act_min: int = -128
    act_max: int = 127


@dataclass
class AvgPool(Pool):
    op = "avgpool"


@dataclass
class MaxPool(Pool):
    op = "maxpool"


@dataclass
class Mean(Layer):
    """TFLite's MEAN over height and width (what the converter emits for a Keras GlobalAveragePooling2D): an
    (H, W, C) input to (C,) or (1, 1, C), requantized to the output's own scale and zero point (`mean_requant`)."""

    act_min: int = -128
    act_max: int = 127
    op = "mean"


@dataclass
class Softmax(Layer):
    """TFLite's int8 SOFTMAX of a vector of logits (`quant.softmax_s8`): output scale 1/256, zero point -128. A
    model may end in one; training works on its input, the logits (`logits`)."""

    beta: float = 1.0
    op = "softmax"


@dataclass
class Reshape(Layer):
    op = "reshape"


@dataclass
class Crop(Layer):
    """The window of its input whose top-left pixel is `origin` (row, column), as large as its output: what one
    consumer reads of a tensor that a patch of the initial stage computes wider for another
    (`planning.patches`). Made by the planner, never read from a model file."""

    origin: tuple[int, int] = (0, 0)
    op = "crop"


LAYER_TYPES = {cls.op: cls for cls in (Conv2D, FullyConnected, Add, AvgPool, MaxPool, Mean, Softmax, Reshape)}


SOFTMAX_SCALE, SOFTMAX_ZERO_POINT = 1.0 / 256, -128  # TFLite's int8 softmax output
# TFLite's last step divides by 2^(b + 23), b the sum of exponentials' bits above 2^19 (one, in Q12): at most
# 31 only while the sum stays below 2^28, which n classes of up to 2^19 each guarantee for n <= 511; beyond,
# TFLite's shift is undefined in C (docs/numerics.md §1.4)
SOFTMAX_MAX_CLASSES = (1 << (28 - (31 - SOFTMAX_SUM_BITS))) - 1
MAX_DIM = 1 << 15  # any shape, kernel, stride, padding or dilation value
MAX_ELEMENTS = 1 << 24  # elements of one tensor


def conv_out_size(size: int, k: int, stride: int, pad0: int, pad1: int, dil: int) -> int:
    return (size + pad0 + pad1 - dil * (k - 1) - 1) // stride + 1


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ModelError(msg)


@dataclass
class Model:
    """A validated graph: `layers` in execution order, each consuming earlier tensors."""

    name: str
    input: TensorInfo
    layers: list[Layer] = field(default_factory=list)
    input_transform: InputTransform = field(default_factory=InputTransform)
    # how the model runs, carried with it so that every plan of it agrees: (the last layer of the initial stage
    # that runs patch by patch, patches a side) or None (planning/patches.py); not part of the model file
    patch_stage: tuple[str, int] | None = None

    @property
    def output(self) -> TensorInfo:
        return self.layers[-1].output

    def tensors(self) -> dict[str, TensorInfo]:
        out = {self.input.name: self.input}
        for layer in self.layers:
            out[layer.output.name] = layer.output
        return out

    def consumers(self) -> dict[str, list[Layer]]:
        users: dict[str, list[Layer]] = {t: [] for t in self.tensors()}
        for layer in self.layers:
            for t in layer.inputs:
                users[t].append(layer)
        return users

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def param_count(self) -> int:
        n = 0
        for layer in self.layers:
            for key in ("weight", "bias"):
                arr = layer.params().get(key)
                if arr is not None:
                    n += arr.size
        return n

    def macs(self) -> int:
        total = 0
        tensors = self.tensors()
        for layer in self.layers:
            if isinstance(layer, (Conv2D, FullyConnected)):
                total += layer_macs(layer)
            elif isinstance(layer, Pool):
                total += layer.output.size * layer.kernel[0] * layer.kernel[1]
            elif isinstance(layer, (Add, Mean, Softmax)):
                total += tensors[layer.inputs[0]].size
        return total

    def validate(self) -> Model:
        """Check shapes, dtypes and quantization; raise ModelError with the first problem."""
        _check_name(self.name, "the model's name")
        _check_tensor(self.input, "model input")
        _check_transform(self.input_transform, self.input.shape[-1])
        seen = {self.input.name: self.input}
        names = set()
        _need(len(self.layers) > 0, f"model {self.name!r} has no layers; add at least one")
        for layer in self.layers:
            _check_name(layer.name, f"layer {len(names)}'s name")
            where = f"layer {layer.name!r} ({layer.op})"
            _need(layer.name not in names, f"{where}: the layer name is used twice; names must be unique")
            names.add(layer.name)
            for t in layer.inputs:
                _need(t in seen, f"{where}: input tensor {t!r} is not produced by an earlier layer")
            _need(layer.output.name not in seen, f"{where}: output tensor {layer.output.name!r} is already defined")
            _check_tensor(layer.output, where)
            ins = [seen[t] for t in layer.inputs]
            _validate_layer(layer, ins, where)
            _need(not isinstance(layer, Softmax) or layer is self.layers[-1],
                  f"{where}: a softmax must be the model's last layer")
            seen[layer.output.name] = layer.output
        return self


def tail(model: Model, keep: set[str]) -> Model:
    """The latest suffix of `model` that contains every layer named in `keep` and reads one tensor of
    what precedes it: the same function of that tensor. Caching the tensor per image lets the layers
    before it (frozen, untouched by training) run once per image instead of once per step."""

    first = min(i for i, layer in enumerate(model.layers) if layer.name in keep)
    for start in range(first, -1, -1):
        made = {layer.output.name for layer in model.layers[start:]}
        reads = {t for layer in model.layers[start:] for t in layer.inputs if t not in made}
        if len(reads) == 1:
            (t,) = reads
            info = model.tensors()[t]
            return Model(f"{model.name}-from-{t}", info, list(model.layers[start:]))
    raise AssertionError("unreachable: the whole model reads only its input")


def softmax_of(logits: TensorInfo, name: str, beta: float = 1.0) -> Softmax:
    """TFLite's int8 softmax of `logits`: layer and output `name`, scale 1/256, zero point -128."""
    probs = TensorInfo(name, tuple(logits.shape), SOFTMAX_SCALE, SOFTMAX_ZERO_POINT)
    return Softmax(name, [logits.name], probs, beta=float(beta))


def logits(model: Model) -> Model:
    """The model without a final softmax (training's loss reads the logits); the model itself otherwise."""
    if not isinstance(model.layers[-1], Softmax):
        return model
    return Model(model.name, model.input, list(model.layers[:-1]), model.input_transform, model.patch_stage)


def _check_name(name, what: str) -> None:
    _need(isinstance(name, str), f"{what} must be a string")
    problem = name_problem(name)
    _need(problem is None, f"{what} {problem}; rename it")


def _check_tensor(t: TensorInfo, where: str) -> None:
    _check_name(t.name, f"{where}: a tensor name")
    _need(len(t.shape) in (1, 3) and all(0 < int(d) <= MAX_DIM for d in t.shape),
          f"{where}: tensor {t.name!r} has shape {list(t.shape)}; use (H, W, C) or (N,) with sizes 1..{MAX_DIM}")
    _need(math.prod(int(d) for d in t.shape) <= MAX_ELEMENTS,
          f"{where}: tensor {t.name!r} has {math.prod(int(d) for d in t.shape)} elements; at most {MAX_ELEMENTS} fit "
          "the generated code's int32 indexing and any microcontroller")
    _need(isinstance(t.scale, float) and math.isfinite(t.scale) and t.scale > 0,
          f"{where}: tensor {t.name!r} has scale {t.scale!r}; it must be a finite number > 0")
    _need(-128 <= int(t.zero_point) <= 127,
          f"{where}: tensor {t.name!r} has zero point {t.zero_point}; int8 needs -128..127")


def _check_transform(tf, channels: int) -> None:
    _need(isinstance(tf, InputTransform), f"the model's input transform must be an InputTransform, got {tf!r}")
    for key, vals in (("scale", tf.scale), ("offset", tf.offset)):
        _need(len(vals) in (1, channels), f"the input transform's {key} has {len(vals)} values; give 1 or one "
              f"per input channel ({channels})")
        _need(all(math.isfinite(v) for v in vals), f"the input transform's {key} {list(vals)} must be finite")
    _need(0.0 not in tf.scale, f"the input transform's scale {list(tf.scale)} must be nonzero (it would erase "
          "the image)")


def _check_array(arr, dtype, shape, what: str) -> None:
    _need(isinstance(arr, np.ndarray), f"{what} is missing")
    _need(arr.dtype == dtype, f"{what} has dtype {arr.dtype}; it must be {np.dtype(dtype).name}")
    _need(tuple(arr.shape) == tuple(shape), f"{what} has shape {list(arr.shape)}; expected {list(shape)}")


def _check_act(layer, where):
    _need(-128 <= layer.act_min <= layer.act_max <= 127,
          f"{where}: activation range [{layer.act_min}, {layer.act_max}] is not inside int8 [-128, 127]")


# Accumulators provably below this in magnitude requantize in 32 bits (tg_requantize29, docs/numerics.md §1.1):
# 2 acc + 2^e of its rounding divide fits int32.
SMALL_ACC = 2**29


def acc_bound(k: int, bias=None) -> int:
    """The largest |accumulator| of a dot product of `k` terms (|x - z_x| <= 255, |w| <= 128) plus the
    largest |bias| (none: 0): the int32 accumulator must stay below 2^31 (C UB otherwise)."""
    return k * 255 * 128 + (int(np.abs(bias.astype(np.int64)).max()) if bias is not None and bias.size else 0)


def _check_acc(k: int, bias, where: str) -> None:
    worst = acc_bound(k, bias)
    _need(worst < 2**31, f"{where}: a dot product of {k} terms can overflow the int32 accumulator; split the layer")


def _check_multipliers(eff: np.ndarray, where: str) -> None:
    for e in np.atleast_1d(eff):
        try:
            quantize_multiplier(float(e))
        except ValueError as exc:
            raise ModelError(f"{where}: {exc}; check the tensor and weight scales") from None


def _validate_layer(layer: Layer, ins: list[TensorInfo], where: str) -> None:
    out = layer.output
    if isinstance(layer, Conv2D):
        _need(len(ins) == 1, f"{where}: conv2d takes exactly one input")
        x = ins[0]
        _need(len(x.shape) == 3, f"{where}: conv2d needs an (H, W, C) input, got {list(x.shape)}")
        h, w, cin = x.shape
        _need(isinstance(layer.weight, np.ndarray) and layer.weight.ndim == 4,
              f"{where}: weight must be a 4-D int8 array (O, KH, KW, I/groups)")
        cout, kh, kw, cg = layer.weight.shape
        _need(layer.groups >= 1 and cin % layer.groups == 0 and cout % layer.groups == 0,
              f"{where}: groups={layer.groups} must divide input channels {cin} and output channels {cout}")
        _check_array(layer.weight, np.int8, (cout, kh, kw, cin // layer.groups), f"{where}: weight")
        _check_array(layer.bias, np.int32, (cout,), f"{where}: bias")
        _check_array(layer.w_scales, np.float32, (cout,), f"{where}: w_scales")
        _need(all(1 <= s <= MAX_DIM for s in layer.stride) and all(1 <= d <= MAX_DIM for d in layer.dilation)
              and all(0 <= p <= MAX_DIM for p in layer.padding),
              f"{where}: stride and dilation must be 1..{MAX_DIM}, padding 0..{MAX_DIM}")
        pt, pb, pl, pr = layer.padding
        oh = conv_out_size(h, kh, layer.stride[0], pt, pb, layer.dilation[0])
        ow = conv_out_size(w, kw, layer.stride[1], pl, pr, layer.dilation[1])
        _need(oh > 0 and ow > 0, f"{where}: kernel {kh}x{kw} does not fit the {h}x{w} input")
        _need(tuple(out.shape) == (oh, ow, cout),
              f"{where}: output shape {list(out.shape)} does not match the computed {[oh, ow, cout]}")
        _need(bool(np.all(layer.w_scales > 0)) and bool(np.all(np.isfinite(layer.w_scales))),
              f"{where}: weight scales must be finite and > 0")
        _check_act(layer, where)
        _check_acc(kh * kw * cg, layer.bias, where)
        _check_multipliers(x.scale * layer.w_scales.astype(np.float64) / out.scale, where)
    elif isinstance(layer, FullyConnected):
        _need(len(ins) == 1, f"{where}: fully_connected takes exactly one input")
        n = ins[0].size
        _need(isinstance(layer.weight, np.ndarray) and layer.weight.ndim == 2,
              f"{where}: weight must be a 2-D int8 array (O, I)")
        cout = layer.weight.shape[0]
        _check_array(layer.weight, np.int8, (cout, n), f"{where}: weight")
        _check_array(layer.bias, np.int32, (cout,), f"{where}: bias")
        _check_array(layer.w_scales, np.float32, (cout,), f"{where}: w_scales")
        _need(tuple(out.shape) == (cout,), f"{where}: output shape {list(out.shape)} must be [{cout}]")
        _need(bool(np.all(layer.w_scales > 0)) and bool(np.all(np.isfinite(layer.w_scales))),
              f"{where}: weight scales must be finite and > 0")
        _check_act(layer, where)
        _check_acc(n, layer.bias, where)
        _check_multipliers(ins[0].scale * layer.w_scales.astype(np.float64) / out.scale, where)
    elif isinstance(layer, Add):
        _need(len(ins) == 2, f"{where}: add takes exactly two inputs")
        _need(ins[0].shape == ins[1].shape == out.shape,
              f"{where}: add needs equal shapes, got {list(ins[0].shape)}, {list(ins[1].shape)} -> {list(out.shape)}")
        _check_act(layer, where)
    elif isinstance(layer, Pool):
        _need(len(ins) == 1 and len(ins[0].shape) == 3, f"{where}: pooling takes one (H, W, C) input")
        x = ins[0]
        h, w, c = x.shape
        _need(all(1 <= k <= MAX_DIM for k in layer.kernel) and all(1 <= s <= MAX_DIM for s in layer.stride)
              and all(0 <= q <= MAX_DIM for q in layer.padding),
              f"{where}: kernel {list(layer.kernel)}, stride {list(layer.stride)}, padding {list(layer.padding)} "
              f"out of range; a pool's kernel and stride must be 1..{MAX_DIM}, its padding 0..{MAX_DIM}")
        pt, pb, pl, pr = layer.padding
        _need(pt < layer.kernel[0] and pb < layer.kernel[0] and pl < layer.kernel[1] and pr < layer.kernel[1],
              f"{where}: padding must be smaller than the pool window")
        oh = conv_out_size(h, layer.kernel[0], layer.stride[0], pt, pb, 1)
        ow = conv_out_size(w, layer.kernel[1], layer.stride[1], pl, pr, 1)
        _need(oh > 0 and ow > 0 and tuple(out.shape) == (oh, ow, c),
              f"{where}: output shape {list(out.shape)} does not match the computed {[oh, ow, c]}")
        _need(out.scale == x.scale and out.zero_point == x.zero_point,
              f"{where}: pooling keeps the input's scale and zero point; requantize in a neighbouring layer")
        _check_act(layer, where)
    elif isinstance(layer, Mean):
        _need(len(ins) == 1 and len(ins[0].shape) == 3, f"{where}: mean takes one (H, W, C) input")
        h, w, c = ins[0].shape
        _need(tuple(out.shape) in ((c,), (1, 1, c)),
              f"{where}: output shape {list(out.shape)} must be [{c}] or [1, 1, {c}] (the mean over height and width)")
        _check_act(layer, where)
        try:
            _, shift = mean_requant(ins[0], out)
        except ValueError as exc:
            raise ModelError(f"{where}: {exc}; check the input and output scales") from None
        _need(h * w * 255 << max(shift, 0) < 2**31,
              f"{where}: the sum of {h * w} inputs, shifted left by {max(shift, 0)}, can overflow int32; use a "
              "smaller map or a smaller ratio of input to output scale")
    elif isinstance(layer, Softmax):
        _need(len(ins) == 1 and len(ins[0].shape) == 1 and tuple(out.shape) == tuple(ins[0].shape),
              f"{where}: softmax takes a vector of logits to a vector of the same length")
        _need(out.size <= SOFTMAX_MAX_CLASSES, f"{where}: a softmax of {out.size} classes; TFLite's int8 sum of "
              f"exponentials holds at most {SOFTMAX_MAX_CLASSES}")
        _need((out.scale, out.zero_point) == (SOFTMAX_SCALE, SOFTMAX_ZERO_POINT),
              f"{where}: output scale {out.scale!r} and zero point {out.zero_point}; TFLite's int8 softmax writes "
              f"scale 1/256 and zero point {SOFTMAX_ZERO_POINT}")
        _need(isinstance(layer.beta, float) and math.isfinite(layer.beta) and layer.beta > 0,
              f"{where}: beta {layer.beta!r} must be a finite number > 0")
        try:
            softmax_params(layer.beta, ins[0].scale)
        except ValueError as exc:
            raise ModelError(f"{where}: {exc}; check the logits' scale") from None
    elif isinstance(layer, Reshape):
        _need(len(ins) == 1 and ins[0].size == out.size,
              f"{where}: reshape must keep the element count ({ins[0].size} -> {out.size})")
        _need(out.scale == ins[0].scale and out.zero_point == ins[0].zero_point,
              f"{where}: reshape keeps the input's scale and zero point")
    else:
        raise ModelError(f"{where}: unsupported op; tinygen supports {', '.join(LAYER_TYPES)}")


# ---------------------------------------------------------------------------
# Requantization constants: computed from float scales in exactly one place.


def conv_requant(layer: Conv2D | FullyConnected, x: TensorInfo) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (multiplier, shift) for `s_x * s_w[c] / s_y` in double (`s_x * s_w` in float32 first for a
    `FullyConnected.f32_scale_product` layer)."""
    if getattr(layer, "f32_scale_product", False):
        product = (np.float32(x.scale) * layer.w_scales.astype(np.float32)).astype(np.float64)
    else:
        product = float(x.scale) * layer.w_scales.astype(np.float64)
    eff = product / float(layer.output.scale)
    pairs = [quantize_multiplier(float(e)) for e in eff]
    return (np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64))


def mean_requant(x: TensorInfo, out: TensorInfo) -> tuple[int, int]:
    """(multiplier, shift) of a MEAN as TFLite Micro derives them (reference_ops::QuantizedMeanOrSum): `(m, e)` of
    `s_x / s_y` in double (`quantize_multiplier`), then the division by the N = H W pixels folded into the
    multiplier in integers: `k = min(floor(log2 N), 32, 31 + e)`, `m' = floor(m 2^k / N)`, shift `e - k`. `m'` may
    lie below 2^30 (fewer significant bits than `quantize_multiplier(s_x / (s_y N))`): that is TFLite's number."""
    n = int(x.shape[0]) * int(x.shape[1])
    m, e = quantize_multiplier(float(x.scale) / float(out.scale))
    k = min(n.bit_length() - 1, 32, 31 + e)
    return (m << k) // n, e - k


ADD_LEFT_SHIFT = 20


def add_requant(a: TensorInfo, b: TensorInfo, out: TensorInfo) -> dict[str, int]:
    """TFLite's int8 ADD parameters (left shift 20, both inputs at twice the max scale)."""
    twice_max = 2.0 * max(a.scale, b.scale)
    m1, s1 = quantize_multiplier(a.scale / twice_max)
    m2, s2 = quantize_multiplier(b.scale / twice_max)
    mo, so = quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * out.scale))
    return {"left_shift": ADD_LEFT_SHIFT, "in1_mult": m1, "in1_shift": s1, "in2_mult": m2,
            "in2_shift": s2, "out_mult": mo, "out_shift": so}


def layer_macs(layer: Layer) -> int:
    """Forward MACs of a weighted layer (0 for the others)."""
    if isinstance(layer, Conv2D):
        return layer.output.size * int(np.prod(layer.weight.shape[1:]))
    if isinstance(layer, FullyConnected):
        return int(layer.weight.size)
    return 0
