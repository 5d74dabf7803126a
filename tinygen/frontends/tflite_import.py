"""Import fully int8-quantized TFLite flatbuffers (what the TFLite converter writes with
`inference_input_type = inference_output_type = tf.int8` and an int8-only op set).

The file is parsed with the `tflite` package (flatbuffer accessors generated from TFLite's schema;
no TensorFlow). A flatbuffer has no verifier in Python and the file is untrusted: every access is
bounds-checked by the accessors, and anything they raise becomes one ModelError sentence naming
the file (truncated or corrupted). Nothing in the file is executed; names only become IR names,
which the code generator turns into sanitised C identifiers.

How the graph maps onto the IR, and where the numbers come from (TFLite Micro's kernels):

* One subgraph; its one input is int8 NHWC with batch 1 (or a float input feeding a QUANTIZE,
  whose output then is the model's input); its one output is int8 (or feeds a DEQUANTIZE, dropped).
* CONV_2D (weights OHWI, per-channel scales on axis 0), DEPTHWISE_CONV_2D (weights 1 x KH x KW x
  C*M, scales on axis 3; output channel o reads input channel o // M, as the IR's groups), and
  FULLY_CONNECTED: weight zero points must be 0; a missing bias is zeros. SAME padding is TFLite's
  (`ir.builder.same_padding`: the odd pixel at the end). Multipliers: `s_x * s_w[c] / s_y` in
  double (TFLite's PopulateConvolutionQuantizationParams); a per-tensor FULLY_CONNECTED rounds
  `s_x * s_w` to float32 first (GetQuantizedConvolutionMultipler), `FullyConnected.f32_scale_product`.
* Fused activations: the clamp is TFLite's CalculateActivationRangeQuantized: `z + round(v / s)`
  with the division in float32 and ties away from zero (`ir.activation_range(..., float32=True)`).
* ADD: TFLite's int8 parameters (`ir.add_requant`); AVERAGE_POOL_2D and MAX_POOL_2D need equal
  input and output quantization (TFLite's int8 kernels do not requantize).
* MEAN over height and width (axes 1 and 2; a Keras GlobalAveragePooling2D), with or without
  keep_dims: `ir.Mean`, its own output scale and zero point, TFLite Micro's multiplier (`ir.mean_requant`).
* RESHAPE and SQUEEZE take the output tensor's static shape (batch dropped); the int32 shape
  arithmetic a dynamic-batch Flatten adds before a RESHAPE (SHAPE, STRIDED_SLICE, PACK, ...) is
  dropped with it.
* PAD of the spatial axes with the zero point, read only by a VALID convolution, becomes that
  convolution's padding (the converter's form of asymmetric SAME padding).
* SOFTMAX as the last op: `ir.Softmax` (TFLite Micro's int8 softmax, its beta); a build that trains
  drops it and trains on the logits (`ir.logits`).
* Anything else (other ops, a MEAN over other axes, float or int16 tensors, several subgraphs) is refused
  with one sentence naming the operator and the tensor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinygen.errors import ModelError
from tinygen.frontends.arrays import check_file
from tinygen.ir import model as ir
from tinygen.ir.builder import ModelBuilder, same_padding

TFLITE_IDENTIFIER = b"TFL3"
INT8, INT32, FLOAT32 = 9, 2, 0  # tflite.TensorType values
TYPE_NAMES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8", 10: "float64"}
ACTIVATIONS = {0: "none", 1: "relu", 3: "relu6"}  # tflite.ActivationFunctionType: NONE, RELU, RELU6
SHAPE_OPS = {"SHAPE", "STRIDED_SLICE", "PACK", "CONCATENATION", "GATHER", "SLICE", "CAST", "MUL", "REDUCE_PROD"}


class _File:
    """The parsed flatbuffer with the accessors the importer needs; every failure names the file."""

    def __init__(self, path: Path):
        import tflite

        self.path, self.tflite = path, tflite
        check_file(path, "model file")
        data = path.read_bytes()
        if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
            raise ModelError(f"{path} is not a TFLite flatbuffer (no 'TFL3' identifier); is the file truncated?")
        self.model = tflite.Model.GetRootAsModel(data, 0)
        self.names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
        if self.model.SubgraphsLength() != 1:
            self.fail(f"has {self.model.SubgraphsLength()} subgraphs; tinygen imports single-graph models "
                      "(no control flow)")
        self.graph = self.model.Subgraphs(0)

    def fail(self, what: str):
        raise ModelError(f"{self.path} {what}")

    def op_name(self, op) -> str:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        n = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        return self.names.get(n, f"builtin operator {n}")

    def tensor(self, i: int):
        return self.graph.Tensors(int(i))

    def tensor_name(self, i: int) -> str:
        return self.tensor(i).Name().decode("utf-8", "replace")

    def shape(self, i: int) -> tuple[int, ...]:
        t = self.tensor(i)
        return tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()

    def type(self, i: int) -> int:
        return self.tensor(i).Type()

    def quant(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        q = self.tensor(i).Quantization()
        if q is None or q.ScaleLength() == 0:
            self.fail(f"tensor {self.tensor_name(i)!r} has no quantization; tinygen imports fully int8-quantized "
                      "models (convert with an int8 representative dataset)")
        zp = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(q.ScaleLength(), np.int64)
        return q.ScaleAsNumpy().astype(np.float32), np.asarray(zp, np.int64), q.QuantizedDimension()

    def activation_quant(self, i: int) -> tuple[float, int]:
        scale, zp, _ = self.quant(i)
        if scale.size != 1 or not np.isfinite(scale[0]) or scale[0] <= 0 or not -128 <= zp[0] <= 127:
            self.fail(f"tensor {self.tensor_name(i)!r} needs one positive scale and an int8 zero point")
        return float(scale[0]), int(zp[0])

    def data(self, i: int, dtype) -> np.ndarray:
        """A constant tensor's values in its static shape."""
        t = self.tensor(i)
        buf = self.model.Buffers(t.Buffer())
        raw = buf.DataAsNumpy() if buf is not None and buf.DataLength() else None
        shape = self.shape(i)
        if raw is None or raw.size != int(np.prod(shape)) * np.dtype(dtype).itemsize:
            self.fail(f"tensor {self.tensor_name(i)!r} should hold constant data of shape {shape} "
                      "(it has none, or another size; weights in an external buffer are not supported)")
        return np.frombuffer(raw.tobytes(), dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)

    def options(self, op, cls):
        table = op.BuiltinOptions()
        if table is None:
            return None
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        return opts


def _shape_only(f: _File, ops: list) -> set[int]:
    """Operators that only compute a RESHAPE's target shape (int32 arithmetic on static shapes)."""
    needed = {int(op.Inputs(1)) for _, name, op in ops if name == "RESHAPE" and op.InputsLength() > 1}
    dropped = set()
    for k, name, op in reversed(ops):
        outs = [int(t) for t in op.OutputsAsNumpy()]
        if name in SHAPE_OPS and outs and all(t in needed for t in outs):
            dropped.add(k)
            needed |= {int(t) for t in op.InputsAsNumpy() if t >= 0 and f.type(t) == INT32}
    return dropped


class TfliteModel:
    """The IR model of a .tflite file; `tensors` maps each weighted layer's name to its operator's index and the
    file's weight and bias tensor indices (bias -1 where the file has none): where `write_trained` writes."""

    def __init__(self, model: ir.Model, tensors: dict[str, tuple[int, int, int]]):
        self.model, self.tensors = model, tensors

    @property
    def softmax(self) -> bool:
        return isinstance(self.model.layers[-1], ir.Softmax)


def _padding(code: int, h: int, w: int, kh: int, kw: int, stride, dilation) -> tuple[int, ...]:
    if code == 1:  # VALID
        return (0, 0, 0, 0)
    return same_padding(h, kh, stride[0], dilation[0]) + same_padding(w, kw, stride[1], dilation[1])


def load_tflite(path: str | Path, name: str | None = None) -> TfliteModel:
    """The IR model of an int8 .tflite file; every problem is one ModelError sentence."""
    path = Path(path)
    try:
        return _load(path, name)
    except ModelError:
        raise
    except Exception as exc:  # an accessor reading past a corrupted or truncated buffer
        raise ModelError(f"{path} is not a readable TFLite flatbuffer ({type(exc).__name__}: {exc}); "
                         "is the file truncated or corrupted?") from None


SUPPORTED = ("CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, AVERAGE_POOL_2D, MAX_POOL_2D, MEAN (over height and "
             "width), RESHAPE, SQUEEZE, PAD (folded into a convolution), SOFTMAX (last), QUANTIZE/DEQUANTIZE at the "
             "ends")


def _ends(f: _File, ops: list, dropped: set[int]) -> tuple[int, int]:
    """(input tensor, output tensor): a QUANTIZE after the input and a DEQUANTIZE before the output are
    dropped."""
    g = f.graph
    if g.InputsLength() != 1 or g.OutputsLength() != 1:
        f.fail(f"has {g.InputsLength()} inputs and {g.OutputsLength()} outputs; tinygen imports one of each")
    first, last = int(g.Inputs(0)), int(g.Outputs(0))
    if ops and ops[0][1] == "QUANTIZE" and int(ops[0][2].Inputs(0)) == first:
        dropped.add(0)
        first = int(ops[0][2].Outputs(0))
    for k, opname, op in reversed(ops):
        if k in dropped:
            continue
        if opname == "DEQUANTIZE" and int(op.Outputs(0)) == last:
            dropped.add(k)
            last = int(op.Inputs(0))
            continue
        break
    return first, last


class _Importer:
    """Builds the IR operator by operator; `names` maps a file tensor index to its IR tensor name."""

    def __init__(self, f: _File, b: ModelBuilder, first: int, users: dict[int, int]):
        self.f, self.b, self.users = f, b, users
        self.names = {first: b.input}
        self.pads: dict[int, tuple[int, tuple[int, int, int, int]]] = {}  # PAD output -> (its input, pads)
        self.tensors: dict[str, tuple[int, int, int]] = {}  # weighted layer -> (operator, weight, bias or -1)

    def src(self, t: int, what: str) -> str:
        if t not in self.names:
            self.f.fail(f"{what} reads tensor {self.f.tensor_name(t)!r}, which no supported operator computes")
        return self.names[t]

    def op(self, k: int, opname: str, op) -> None:
        f = self.f
        out = int(op.Outputs(0)) if op.OutputsLength() else -1
        what = f"operator {k} ({opname})"
        for t in [*op.InputsAsNumpy(), *op.OutputsAsNumpy()]:
            if t >= 0 and f.type(t) not in (INT8, INT32):
                f.fail(f"{what}: tensor {f.tensor_name(t)!r} is {TYPE_NAMES.get(f.type(t), 'another type')}; "
                       "tinygen imports fully int8-quantized models")
        handler = {"CONV_2D": self.weighted, "DEPTHWISE_CONV_2D": self.weighted, "FULLY_CONNECTED": self.weighted,
                   "ADD": self.add, "AVERAGE_POOL_2D": self.pool, "MAX_POOL_2D": self.pool, "MEAN": self.mean,
                   "RESHAPE": self.reshape, "SQUEEZE": self.reshape, "PAD": self.pad,
                   "SOFTMAX": self.softmax}.get(opname)
        if handler is None:
            f.fail(f"uses operator {k} {opname} (output {f.tensor_name(out) if out >= 0 else '?'!r}), which tinygen "
                   f"does not import; supported: {SUPPORTED}")
        name = handler(k, opname, op, what, out)
        if name is not None:
            self.names[out] = name

    def add(self, k, opname, op, what, out) -> str:
        f, b = self.f, self.b
        opts = f.options(op, f.tflite.AddOptions)
        a, c = self.src(int(op.Inputs(0)), what), self.src(int(op.Inputs(1)), what)
        if b.shape(a) != b.shape(c):
            f.fail(f"{what} adds tensors of shapes {b.shape(a)} and {b.shape(c)}; tinygen adds equal shapes only")
        name = b.add(a, c, *f.activation_quant(out), name=f"add_{k}")
        _clamp(f, b, what, ACTIVATIONS.get(opts.FusedActivationFunction() if opts else 0))
        return name

    def pool(self, k, opname, op, what, out) -> str:
        f, b = self.f, self.b
        opts = f.options(op, f.tflite.Pool2DOptions)
        x = self.src(int(op.Inputs(0)), what)
        if f.activation_quant(int(op.Inputs(0))) != f.activation_quant(out):
            f.fail(f"{what}: input and output quantization differ; TFLite's int8 pooling keeps it")
        h, w, _ = b.shape(x)
        kernel, stride = (opts.FilterHeight(), opts.FilterWidth()), (opts.StrideH(), opts.StrideW())
        padding = _padding(opts.Padding(), h, w, *kernel, stride, (1, 1))
        if opname == "AVERAGE_POOL_2D":
            name = b.avgpool(x, kernel, stride, padding, name=f"avgpool_{k}")
        else:
            name = b.maxpool(x, kernel, stride, padding, name=f"maxpool_{k}")
        _clamp(f, b, what, ACTIVATIONS.get(opts.FusedActivationFunction()))
        return name

    def mean(self, k, opname, op, what, out) -> str:
        f, b = self.f, self.b
        x = self.src(int(op.Inputs(0)), what)
        axes = sorted({int(a) % 4 for a in f.data(int(op.Inputs(1)), np.int32).reshape(-1)})
        if len(b.shape(x)) != 3 or axes != [1, 2]:
            f.fail(f"{what} averages axes {axes} of a tensor of shape {[1, *b.shape(x)]}; tinygen imports a MEAN over "
                   "height and width (axes 1 and 2) of an NHWC tensor")
        opts = f.options(op, f.tflite.ReducerOptions)
        name = b.mean(x, *f.activation_quant(out), keep_dims=bool(opts and opts.KeepDims()), name=f"mean_{k}")
        if (1, *b.shape(name)) != f.shape(out):
            f.fail(f"{what}: output shape {list(f.shape(out))} differs from the computed {[1, *b.shape(name)]}")
        return name

    def softmax(self, k, opname, op, what, out) -> str:
        f, b = self.f, self.b
        x = self.src(int(op.Inputs(0)), what)
        opts = f.options(op, f.tflite.SoftmaxOptions)
        if len(b.shape(x)) != 1 or f.activation_quant(out) != (ir.SOFTMAX_SCALE, ir.SOFTMAX_ZERO_POINT):
            f.fail(f"{what}: tinygen imports an int8 SOFTMAX of a vector of logits to scale 1/256 and zero point "
                   f"{ir.SOFTMAX_ZERO_POINT}, as the converter writes it")
        return b.softmax(x, float(np.float32(opts.Beta())) if opts else 1.0, name=f"softmax_{k}")

    def reshape(self, k, opname, op, what, out) -> str:
        shape = self.f.shape(out)
        if not shape or shape[0] != 1:
            self.f.fail(f"{what}: output {self.f.tensor_name(out)!r} has shape {list(shape)}; tinygen needs batch 1")
        return self.b.reshape(self.src(int(op.Inputs(0)), what), shape[1:], name=f"reshape_{k}")

    def pad(self, k, opname, op, what, out) -> None:
        f = self.f
        x = int(op.Inputs(0))
        amounts = f.data(int(op.Inputs(1)), np.int32)
        if (amounts.shape != (4, 2) or amounts[0].any() or amounts[3].any() or (amounts < 0).any()
                or f.activation_quant(x) != f.activation_quant(out) or self.users.get(out, 0) != 1):
            f.fail(f"{what}: tinygen folds a PAD only of height and width, with the zero point, read by one "
                   "VALID convolution")
        self.src(x, what)
        self.pads[out] = (x, (int(amounts[1, 0]), int(amounts[1, 1]), int(amounts[2, 0]), int(amounts[2, 1])))

    def weighted(self, k: int, opname: str, op, what: str, out: int) -> str:
        """CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED (a PAD before a convolution folded into it)."""
        f, b = self.f, self.b
        tfl = f.tflite
        x_index = int(op.Inputs(0))
        padded = self.pads.pop(x_index, None)
        x = self.src(padded[0] if padded else x_index, what)
        w_index = int(op.Inputs(1))
        scales, zps, axis = f.quant(w_index)
        weight = f.data(w_index, np.int8)
        if zps.any():
            f.fail(f"{what}: weights {f.tensor_name(w_index)!r} have nonzero zero points; TFLite int8 weights are "
                   "symmetric")
        n_out = weight.shape[3] if opname == "DEPTHWISE_CONV_2D" else weight.shape[0]
        want_axis = 3 if opname == "DEPTHWISE_CONV_2D" else 0
        if scales.size not in (1, n_out) or (scales.size > 1 and axis != want_axis):
            f.fail(f"{what}: weights {f.tensor_name(w_index)!r} are quantized per axis {axis} with {scales.size} "
                   f"scales; tinygen expects per-tensor or per-output-channel (axis {want_axis})")
        if not (np.isfinite(scales).all() and (scales > 0).all()):
            f.fail(f"{what}: weights {f.tensor_name(w_index)!r} need positive finite scales")
        w_scales = np.broadcast_to(scales, (n_out,)).astype(np.float32)
        has_bias = op.InputsLength() > 2 and int(op.Inputs(2)) >= 0
        bias = f.data(int(op.Inputs(2)), np.int32).reshape(-1) if has_bias else np.zeros(n_out, np.int32)
        if bias.size != n_out:
            f.fail(f"{what}: bias has {bias.size} values for {n_out} output channels")
        y_scale, y_zp = f.activation_quant(out)
        if opname == "FULLY_CONNECTED":
            if padded is not None:
                f.fail(f"{what} reads a PAD; tinygen folds a PAD only into a VALID convolution")
            opts = f.options(op, tfl.FullyConnectedOptions)
            act = ACTIVATIONS.get(opts.FusedActivationFunction() if opts else 0)
            if weight.ndim != 2 or int(np.prod(b.shape(x))) != weight.shape[1]:
                f.fail(f"{what}: weights of shape {list(weight.shape)} do not match the input of shape "
                       f"{list(b.shape(x))}")
            name = b.fully_connected(x, weight, bias, w_scales, y_scale, y_zp, name=f"fc_{k}")
            b.model.layers[-1].f32_scale_product = scales.size == 1  # TFLM's per-tensor multiplier
            shape = f.shape(out)
            if len(shape) != 2:
                f.fail(f"{what}: output of shape {list(shape)}; tinygen imports FULLY_CONNECTED with a 2-D output")
        else:
            if opname == "CONV_2D":
                opts = f.options(op, tfl.Conv2DOptions)
                groups, ohwi = 1, weight
            else:
                opts = f.options(op, tfl.DepthwiseConv2DOptions)
                c_in = b.shape(x)[-1]
                if weight.shape[0] != 1 or n_out % c_in:
                    f.fail(f"{what}: depthwise weights of shape {list(weight.shape)} for {c_in} input channels")
                groups, ohwi = c_in, weight.transpose(3, 1, 2, 0)
            act = ACTIVATIONS.get(opts.FusedActivationFunction())
            stride, dilation = (opts.StrideH(), opts.StrideW()), (opts.DilationHFactor(), opts.DilationWFactor())
            h, w, _ = b.shape(x)
            if padded is not None:
                if opts.Padding() != 1:
                    f.fail(f"{what} is SAME-padded after a PAD; tinygen folds a PAD only into a VALID convolution")
                padding = padded[1]
            else:
                padding = _padding(opts.Padding(), h, w, ohwi.shape[1], ohwi.shape[2], stride, dilation)
            name = b.conv2d(x, ohwi, bias, w_scales, y_scale, y_zp, stride=stride, padding=padding, dilation=dilation,
                            groups=groups, name=f"{'conv' if groups == 1 else 'dwconv'}_{k}")
            if b.shape(name) != f.shape(out)[1:]:
                f.fail(f"{what}: output shape {list(f.shape(out))} differs from the computed {list(b.shape(name))}")
        _clamp(f, b, what, act)
        self.tensors[name] = (k, w_index, int(op.Inputs(2)) if has_bias else -1)
        return name


def _load(path: Path, name: str | None) -> TfliteModel:
    f = _File(path)
    g = f.graph
    ops = [(k, f.op_name(g.Operators(k)), g.Operators(k)) for k in range(g.OperatorsLength())]
    dropped = _shape_only(f, ops)
    first, last = _ends(f, ops, dropped)
    shape = f.shape(first)
    if f.type(first) != INT8 or len(shape) not in (2, 4) or shape[0] != 1:
        f.fail(f"input {f.tensor_name(first)!r} is {TYPE_NAMES.get(f.type(first), 'of another type')} of shape "
               f"{list(shape)}; tinygen imports an int8 input of shape [1, H, W, C] or [1, N]")
    b = ModelBuilder(name or path.stem, shape[1:], *f.activation_quant(first), input_name=f.tensor_name(first))
    users: dict[int, int] = {}
    for k, _, op in ops:
        if k not in dropped:
            for t in op.InputsAsNumpy():
                users[int(t)] = users.get(int(t), 0) + 1
    imp = _Importer(f, b, first, users)
    for k, opname, op in ops:
        if k not in dropped:
            imp.op(k, opname, op)
    if last not in imp.names:
        f.fail(f"output {f.tensor_name(last)!r} is not computed by a supported operator")
    if not b.model.layers or imp.names[last] != b.model.layers[-1].output.name:
        f.fail(f"output {f.tensor_name(last)!r} is not the last operator's; tinygen imports one chain to one output")
    return TfliteModel(b.build(), imp.tensors)


def _clamp(f: _File, b: ModelBuilder, what: str, act: str | None) -> None:
    """The last layer's clamp from its fused activation, as TFLite computes it."""
    if act is None:
        f.fail(f"{what} has a fused activation tinygen does not import (it folds NONE, RELU and RELU6)")
    layer = b.model.layers[-1]
    layer.act_min, layer.act_max = ir.activation_range(act, layer.output, float32=True)



TFLITE_ALIGN = 16  # the converter's alignment of constant buffers (the schema's force_align)


def _schema():
    """TFLite's schema with FlatBuffers' object API (unpack, edit, pack), as the tflite-micro package ships it."""
    try:
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema
    except ImportError:
        raise ModelError("writing a .tflite needs the tflite-micro package (pip install 'tinygen[tflite]'); or "
                         "export to a model file (.json)") from None
    return schema


def _aligned_buffer(schema, data: bytes):
    """A BufferT whose bytes pack 16-byte aligned, as the converter writes them (TFLite Micro reads int32 biases
    in place)."""
    class Aligned(schema.BufferT):
        def Pack(self, builder):
            builder.StartVector(1, len(data), TFLITE_ALIGN)
            builder.head = builder.head - len(data)
            builder.Bytes[builder.head:builder.head + len(data)] = data
            vector = builder.EndVector()
            schema.BufferStart(builder)
            schema.BufferAddData(builder, vector)
            return schema.BufferEnd(builder)
    return Aligned()


def write_trained(source: str | Path, out: str | Path, values: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """The .tflite `source` with the weights and biases of the layers in `values` (IR layer name -> (IR-layout int8
    weight, int32 bias), as `load_tflite` named and laid them out) in place of its own: the same graph, tensors
    and quantization, new numbers (each written tensor gets a buffer of its own: the converter shares one among
    equal constants). A layer without a bias tensor gets one (int32, scale s_x s_w[c], zero point 0). A layer
    the file does not have, or of another shape (a replaced head), is one ModelError sentence."""
    import flatbuffers

    source = Path(source)
    imported = load_tflite(source)
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(source.read_bytes()), 0)
    graph = model.subgraphs[0]

    def constant(index: int, arr: np.ndarray) -> None:
        model.buffers.append(_aligned_buffer(schema, np.ascontiguousarray(arr).tobytes()))
        graph.tensors[index].buffer = len(model.buffers) - 1

    tensors = imported.model.tensors()
    for name, (weight, bias) in values.items():
        if name not in imported.tensors or imported.model.layer(name).weight.shape != weight.shape:
            raise ModelError(f"{source} has no layer {name!r} of weight shape {list(weight.shape)} (the build "
                             "replaced it, e.g. a fresh --classes head); export to a model file (.json) instead")
        k, w_index, b_index = imported.tensors[name]
        layer, op = imported.model.layer(name), graph.operators[k]
        code = model.operatorCodes[op.opcodeIndex]
        depthwise = max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.DEPTHWISE_CONV_2D
        constant(w_index, weight.transpose(3, 1, 2, 0) if depthwise else weight)  # back to the file's layout
        if b_index < 0:
            q = schema.QuantizationParametersT()
            q.scale = (np.float32(tensors[layer.inputs[0]].scale) * layer.w_scales).astype(np.float32)
            q.zeroPoint = np.zeros(bias.size, np.int64)
            t = schema.TensorT()
            t.shape, t.type, t.name, t.quantization = np.array([bias.size], np.int32), INT32, f"{name}/bias", q
            graph.tensors.append(t)
            b_index = len(graph.tensors) - 1
            op.inputs = np.array([*op.inputs[:2], b_index], np.int32)
        constant(b_index, bias.astype("<i4"))
    used = {t.buffer for t in graph.tensors} | {m.buffer for m in model.metadata or ()}
    for i, buf in enumerate(model.buffers):
        if i not in used:  # a buffer only the written tensors read: its old numbers go
            buf.data = None
    builder = flatbuffers.Builder(source.stat().st_size + 1024)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    Path(out).write_bytes(bytes(builder.Output()))
