"""Import a float ONNX model (what `torch.onnx.export` writes) and quantize it with tinygen's PTQ.

The graph is read with the `onnx` package (protobuf; nothing in the file runs, external data files are
refused) into a float `floatnn.Net` in NHWC, which `zoo.ptq.quantize` turns into an int8 `ir.Model` calibrated
on the given images (a `--dataset`'s, else bundled images of the input's shape). It lives in `zoo` because it
builds a float net and quantizes it, as the zoo's own models are made.

Ops (their float forms; batch 1, NCHW in the file): Conv (any group; a group per input channel is a depthwise
conv), BatchNormalization after a Conv (folded into it), Gemm / MatMul (+ Add of a constant: its bias), Relu,
Clip to [0, 6] or any constant range (a fused clamp), Add of two tensors, MaxPool / AveragePool (no ceil mode;
AveragePool without count_include_pad: the mean over the window's valid part, as CMSIS-NN's), GlobalAveragePool,
ReduceMean over height and width, Flatten / Reshape (a Flatten of a map larger than 1x1 permutes the next
Gemm's columns from NCHW to NHWC order), Pad of the spatial axes with zeros before a Conv (its padding),
Identity and Dropout (dropped), and a final Softmax (tinygen's int8 softmax over the quantized logits). Anything
else is one ModelError sentence naming the node.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinygen.errors import ModelError
from tinygen.frontends.arrays import check_file
from tinygen.frontends.inputs import real_float_inputs
from tinygen.ir import model as ir
from tinygen.zoo import floatnn as F
from tinygen.zoo import ptq

SUPPORTED = ("Conv, BatchNormalization (after a Conv), Gemm, MatMul (+ Add of a constant), Relu, Clip, Add, MaxPool, "
             "AveragePool, GlobalAveragePool, ReduceMean (over height and width), Flatten, Reshape, Pad (before a "
             "Conv), Identity, Dropout, a final Softmax")
PASS_THROUGH = {"Identity", "Dropout"}
CALIBRATION_SAMPLES = 256  # bundled images the PTQ calibrates on where no --dataset is given


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ModelError("reading an .onnx model needs the onnx package (pip install 'tinygen[onnx]')") from None
    return onnx, numpy_helper


class _Graph:
    """The ONNX graph's constants, attributes and value shapes, every failure one sentence naming the file."""

    def __init__(self, path: Path):
        onnx, self.numpy_helper = _onnx()
        self.helper = onnx.helper
        self.path = path
        check_file(path, "model file")
        try:
            self.proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and its relatives
            raise ModelError(f"{path} is not a readable ONNX model ({type(exc).__name__}); is the file truncated?"
                             ) from None
        g = self.proto.graph
        self.consts: dict[str, np.ndarray] = {}
        for t in g.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                self.fail(f"keeps tensor {t.name!r} in an external data file; save the model with its weights inside")
            self.consts[t.name] = self.numpy_helper.to_array(t)
        for node in g.node:
            if node.op_type == "Constant":
                self.consts[node.output[0]] = self.numpy_helper.to_array(self.attr(node, "value"))

    def fail(self, what: str):
        raise ModelError(f"{self.path} {what}")

    def attr(self, node, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                return self.helper.get_attribute_value(a)
        return default

    def const(self, node, i: int, what: str) -> np.ndarray:
        if len(node.input) <= i or node.input[i] not in self.consts:
            self.fail(f"node {node.name or node.op_type!r} ({node.op_type}): its {what} must be a constant")
        return np.asarray(self.consts[node.input[i]])


class _Importer:
    """Builds the float net node by node; `names` maps an ONNX value to the net's tensor, `perm` marks flattened
    maps whose element order is NCHW's (a Gemm reading one permutes its columns)."""

    def __init__(self, g: _Graph, net: F.Net, first: str):
        self.g, self.net = g, net
        self.names = {first: net.input}
        self.pads: dict[str, tuple[str, tuple[int, int, int, int]]] = {}
        self.nchw_flat: dict[str, tuple[int, int, int]] = {}  # flattened tensor -> its map's (H, W, C)
        self.softmax = False

    def src(self, node, i: int = 0) -> str:
        name = node.input[i]
        if name not in self.names:
            self.g.fail(f"node {node.name or node.op_type!r} ({node.op_type}) reads {name!r}, which no supported node "
                        "computes")
        return self.names[name]

    def node(self, node) -> None:
        op = node.op_type
        handler = {"Conv": self.conv, "BatchNormalization": self.batchnorm, "Gemm": self.gemm, "MatMul": self.gemm,
                   "Relu": self.activation, "Clip": self.activation, "Add": self.add, "MaxPool": self.pool,
                   "AveragePool": self.pool, "GlobalAveragePool": self.global_pool, "ReduceMean": self.global_pool,
                   "Flatten": self.flatten, "Reshape": self.flatten, "Pad": self.pad, "Softmax": self.soft,
                   }.get(op)
        if op in PASS_THROUGH:
            self.names[node.output[0]] = self.src(node)
            return
        if op == "Constant":
            return
        if handler is None:
            self.g.fail(f"uses node {node.name or op!r} ({op}), which tinygen does not import; supported: {SUPPORTED}")
        if self.softmax:
            self.g.fail(f"has node {node.name or op!r} ({op}) after its Softmax; tinygen imports a Softmax only last")
        out = handler(node)
        if out is not None:
            self.names[node.output[0]] = out

    def _name(self, prefix: str) -> str:
        """A generated tensor name (the file's names stay out of the IR: they need not be identifiers)."""
        return f"{prefix}_{len(self.net.layers)}"

    def _where(self, node) -> str:
        return f"node {node.name or node.op_type!r} ({node.op_type})"

    def conv(self, node) -> str:
        g, net = self.g, self.net
        x_name = node.input[0]
        padded = self.pads.pop(x_name, None)
        x = padded[0] if padded else self.src(node)
        w = g.const(node, 1, "weight").astype(np.float32)
        if w.ndim != 4:
            g.fail(f"{self._where(node)}: a {w.ndim - 2}-D convolution; tinygen imports 2-D ones")
        bias = g.const(node, 2, "bias").astype(np.float32) if len(node.input) > 2 and node.input[2] else None
        if (g.attr(node, "auto_pad", b"NOTSET") or b"NOTSET") not in (b"NOTSET", "NOTSET"):
            g.fail(f"{self._where(node)} uses auto_pad; export with explicit pads")
        pads = list(g.attr(node, "pads", [0, 0, 0, 0]))  # top, left, bottom, right
        padding = (pads[0], pads[2], pads[1], pads[3])
        if padded:
            padding = tuple(int(a + b) for a, b in zip(padding, padded[1], strict=True))
        groups = int(g.attr(node, "group", 1))
        stride, dilation = g.attr(node, "strides", [1, 1]), g.attr(node, "dilations", [1, 1])
        weight = w.transpose(0, 2, 3, 1)  # OIHW -> OHWI
        return net.conv2d(x, w.shape[0], (w.shape[2], w.shape[3]), tuple(stride), padding, tuple(dilation), groups,
                          weight=weight, bias=bias is not None, bias_value=bias, name=self._name("conv"))

    def batchnorm(self, node) -> str:
        g, net = self.g, self.net
        x = self.src(node)
        layer = net.layers[-1] if net.layers else None
        if not isinstance(layer, F.Conv2D) or layer.output != x or layer.act != "none":
            g.fail(f"{self._where(node)} does not follow a Conv; tinygen folds a BatchNormalization into the Conv "
                   "before it")
        gamma, beta, mean, var = (g.const(node, i, k).astype(np.float64)
                                  for i, k in enumerate(("scale", "bias", "mean", "variance"), 1))
        scale = gamma / np.sqrt(var + float(g.attr(node, "epsilon", 1e-5)))
        w = layer.params["weight"]
        b = layer.params.get("bias", np.zeros(w.shape[0], w.dtype))
        layer.params["weight"] = (w * scale[:, None, None, None]).astype(w.dtype)
        layer.params["bias"] = ((b - mean) * scale + beta).astype(w.dtype)
        return x

    def gemm(self, node) -> str:
        g, net = self.g, self.net
        x = self.src(node)
        b_mat = g.const(node, 1, "weight").astype(np.float32)
        if node.op_type == "Gemm":
            if g.attr(node, "transA", 0) or float(g.attr(node, "alpha", 1.0)) != 1.0 \
                    or float(g.attr(node, "beta", 1.0)) != 1.0:
                g.fail(f"{self._where(node)}: tinygen imports a Gemm with transA = 0, alpha = beta = 1")
            weight = b_mat if g.attr(node, "transB", 0) else b_mat.T
        else:
            weight = b_mat.T
        bias = g.const(node, 2, "bias").astype(np.float32).reshape(-1) if len(node.input) > 2 else None
        hwc = self.nchw_flat.get(node.input[0])
        if weight.ndim != 2 or weight.shape[1] != int(np.prod(net.shape(x))):
            g.fail(f"{self._where(node)}: weights of shape {list(b_mat.shape)} do not fit the input of "
                   f"{int(np.prod(net.shape(x)))} values")
        if hwc is not None:  # columns in (C, H, W) order -> the NHWC map's (H, W, C)
            h, w, c = hwc
            weight = weight.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
        return net.dense(x, weight.shape[0], weight=weight, bias=bias is not None, bias_value=bias,
                         name=self._name("fc"))

    def activation(self, node) -> str:
        g = self.g
        x = self.src(node)
        if node.op_type == "Relu":
            act = "relu"
        else:
            lo = float(g.const(node, 1, "minimum")) if len(node.input) > 1 and node.input[1] else -np.inf
            hi = float(g.const(node, 2, "maximum")) if len(node.input) > 2 and node.input[2] else np.inf
            act = "relu6" if (lo, hi) == (0.0, 6.0) else "relu" if (lo, hi) == (0.0, np.inf) else (lo, hi)
        return self.net.activation(x, act, name=self._name("act"))

    def add(self, node) -> str:
        g, net = self.g, self.net
        if node.input[1] in g.consts:  # MatMul + Add: the dense layer's bias
            layer = net.layers[-1]
            if not isinstance(layer, F.Dense) or layer.output != self.src(node) or "bias" in layer.params:
                g.fail(f"{self._where(node)} adds a constant; tinygen folds only a MatMul's bias")
            layer.params["bias"] = g.const(node, 1, "bias").astype(np.float32).reshape(-1)
            return layer.output
        a, b = self.src(node, 0), self.src(node, 1)
        if net.shape(a) != net.shape(b):
            g.fail(f"{self._where(node)} adds shapes {net.shape(a)} and {net.shape(b)}; tinygen adds equal shapes")
        return net.add(a, b, name=self._name("add"))

    def pool(self, node) -> str:
        g, net = self.g, self.net
        x = self.src(node)
        if g.attr(node, "ceil_mode", 0) or (node.op_type == "AveragePool" and g.attr(node, "count_include_pad", 0)):
            g.fail(f"{self._where(node)} uses ceil_mode or count_include_pad; tinygen imports neither")
        kernel = tuple(g.attr(node, "kernel_shape"))
        stride = tuple(g.attr(node, "strides", list(kernel)))
        pads = list(g.attr(node, "pads", [0, 0, 0, 0]))
        padding = (pads[0], pads[2], pads[1], pads[3])
        pool = net.avgpool if node.op_type == "AveragePool" else net.maxpool
        return pool(x, kernel, stride, padding, name=self._name("pool"))

    def global_pool(self, node) -> str:
        g, net = self.g, self.net
        x = self.src(node)
        if node.op_type == "ReduceMean":
            axes = g.attr(node, "axes") or (list(g.const(node, 1, "axes")) if len(node.input) > 1 else None)
            if sorted(int(a) % 4 for a in axes or ()) != [2, 3]:
                g.fail(f"{self._where(node)} averages axes {axes}; tinygen imports a mean over height and width")
        return net.global_avgpool(x, name=self._name("gap"))

    def flatten(self, node) -> str:
        g, net = self.g, self.net
        x = self.src(node)
        shape = net.shape(x)
        if node.op_type == "Reshape":
            target = [int(d) for d in g.const(node, 1, "shape")]
            if len(target) != 2 or target[0] not in (1, -1, 0):
                g.fail(f"{self._where(node)} reshapes to {target}; tinygen imports a Reshape that flattens")
        out = net.flatten(x, name=self._name("flatten"))
        if len(shape) == 3 and shape[0] * shape[1] > 1:
            self.nchw_flat[node.output[0]] = tuple(shape)
        return out

    def pad(self, node) -> None:
        g = self.g
        pads = [int(p) for p in (g.attr(node, "pads") or g.const(node, 1, "pads"))]
        value = float(g.const(node, 2, "value")) if len(node.input) > 2 and node.input[2] else 0.0
        if (g.attr(node, "mode", b"constant") not in (b"constant", "constant") or value != 0.0 or len(pads) != 8
                or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0):
            g.fail(f"{self._where(node)}: tinygen imports a Pad of height and width with zeros, before a Conv")
        self.pads[node.output[0]] = (self.src(node), (pads[2], pads[6], pads[3], pads[7]))

    def soft(self, node) -> str:
        x = self.src(node)
        if len(self.net.shape(x)) != 1:
            self.g.fail(f"{self._where(node)} is not over a vector of logits")
        self.softmax = True
        return x


def load_onnx_float(path: str | Path) -> tuple[F.Net, bool]:
    """The float net of an ONNX file and whether it ends in a Softmax; every problem is one ModelError sentence."""
    path = Path(path)
    try:
        return _load_float(path)
    except ModelError:
        raise
    except Exception as exc:  # a damaged file whose protobuf parsed: attributes of the wrong type, shapes that clash
        raise ModelError(f"{path} is not a consistent ONNX model ({type(exc).__name__}: {exc}); is it damaged?"
                         ) from None


def _load_float(path: Path) -> tuple[F.Net, bool]:
    g = _Graph(path)
    graph = g.proto.graph
    inputs = [v for v in graph.input if v.name not in g.consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        g.fail(f"has {len(inputs)} inputs and {len(graph.output)} outputs; tinygen imports one of each")
    dims = [d.dim_value if d.HasField("dim_value") else 1 for d in inputs[0].type.tensor_type.shape.dim]
    if inputs[0].type.tensor_type.elem_type != 1 or len(dims) not in (2, 4):
        g.fail(f"input {inputs[0].name!r} is not a float32 tensor of shape [N, C, H, W] or [N, F]")
    shape = (dims[2], dims[3], dims[1]) if len(dims) == 4 else (dims[1],)
    net = F.Net(shape, name=path.stem, input_name="input")
    imp = _Importer(g, net, inputs[0].name)
    for node in graph.node:
        imp.node(node)
    if graph.output[0].name not in imp.names or not net.layers or imp.names[graph.output[0].name] != net.output:
        g.fail(f"output {graph.output[0].name!r} is not the last supported node's")
    return net, imp.softmax


def load_onnx(path: str | Path, calib_x: np.ndarray | None = None) -> ir.Model:
    """The int8 model of a float ONNX file: tinygen's PTQ calibrated on `calib_x` (float inputs N x H x W x C as the
    model takes them; default: bundled images of the input's shape), a final Softmax as `ir.Softmax`."""
    net, softmax = load_onnx_float(path)
    if calib_x is None:
        calib_x, _ = real_float_inputs(net.input_shape, CALIBRATION_SAMPLES, split="train")
    elif tuple(calib_x.shape[1:]) != net.input_shape:
        raise ModelError(f"{path}: the calibration samples have shape {list(calib_x.shape[1:])}, the model's input "
                         f"{list(net.input_shape)} (H x W x C)")
    try:
        model = ptq.quantize(net, np.asarray(calib_x, np.float32))
    except ValueError as exc:
        raise ModelError(f"{path}: cannot quantize it ({exc})") from None
    if softmax:
        model.layers.append(ir.softmax_of(model.output, f"{model.output.name}_softmax"))
        model = model.validate()
    return model
