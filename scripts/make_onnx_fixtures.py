"""Make the float ONNX fixtures of tests/test_onnx_import.py (tests/fixtures/onnx/*.onnx) with the `onnx`
package's graph helpers: the node and attribute forms `torch.onnx.export` writes (NCHW; Conv with explicit pads,
BatchNormalization, Gemm with transB, MatMul + Add, Clip with its bounds as inputs), seeded random weights.
No PyTorch needed; run `python scripts/make_onnx_fixtures.py` (it overwrites the files; the same seed gives
the same bytes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "onnx"
OPSET = 17


class Graph:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.k = [], [], 0

    def const(self, arr, name=None) -> str:
        name = name or f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(self, op, inputs, **attrs) -> str:
        self.k += 1
        out = f"/{op.lower()}_{self.k}/output_0"  # PyTorch's naming: slashes, not identifiers
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"/{op}_{self.k}", **attrs))
        return out

    def conv(self, x, cin, cout, k, stride=1, pad=0, group=1, bn=False) -> str:
        w = (self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2 / (cin // group * k * k)))
        ins = [x, self.const(w.astype(np.float32))]
        if not bn:
            ins.append(self.const((self.rng.standard_normal(cout) * 0.1).astype(np.float32)))
        y = self.node("Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=group,
                      dilations=[1, 1])
        if bn:
            params = [1 + 0.2 * self.rng.standard_normal(cout), 0.1 * self.rng.standard_normal(cout),
                      0.1 * self.rng.standard_normal(cout), 0.5 + self.rng.random(cout)]
            y = self.node("BatchNormalization", [y, *(self.const(p.astype(np.float32)) for p in params)],
                          epsilon=1e-5)
        return y

    def save(self, name, x_shape, out, out_shape):
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, x_shape)
        y = helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)
        graph = helper.make_graph(self.nodes, name, [x], [y], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="tinygen-fixtures")
        onnx.checker.check_model(model)
        OUT.mkdir(parents=True, exist_ok=True)
        onnx.save(model, OUT / f"{name}.onnx")


def cnn():
    """28x28x1: Conv+BN+Relu, MaxPool, Conv stride 2 + Clip(0, 6), depthwise Conv + Relu, 1x1 Conv, residual Add,
    Flatten of the 7x7 map, Gemm (transB), Softmax."""
    g = Graph(1)
    y = g.node("Relu", [g.conv("input", 1, 8, 3, pad=1, bn=True)])
    y = g.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    a = g.node("Clip", [g.conv(y, 8, 16, 3, stride=2, pad=1), g.const(np.float32(0)), g.const(np.float32(6))])
    y = g.node("Relu", [g.conv(a, 16, 16, 3, pad=1, group=16)])
    y = g.node("Add", [g.conv(y, 16, 16, 1), a])
    y = g.node("Flatten", [y], axis=1)
    w = (g.rng.standard_normal((10, 16 * 7 * 7)) * 0.05).astype(np.float32)
    y = g.node("Gemm", [y, g.const(w), g.const(np.zeros(10, np.float32))], transB=1)
    y = g.node("Softmax", [y], axis=1)
    g.save("onnx_cnn", [1, 1, 28, 28], y, [1, 10])


def gap():
    """32x32x3: Pad + Conv (no pads), Relu, AveragePool, Conv, GlobalAveragePool, Flatten, MatMul + Add."""
    g = Graph(2)
    p = g.node("Pad", ["input", g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], mode="constant")
    y = g.node("Relu", [g.conv(p, 3, 12, 3, stride=2)])
    y = g.node("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = g.node("Relu", [g.conv(y, 12, 24, 3, pad=1, bn=True)])
    y = g.node("GlobalAveragePool", [y])
    y = g.node("Flatten", [y], axis=1)
    y = g.node("MatMul", [y, g.const((g.rng.standard_normal((24, 6)) * 0.2).astype(np.float32))])
    y = g.node("Add", [y, g.const((g.rng.standard_normal(6) * 0.1).astype(np.float32))])
    g.save("onnx_gap", [1, 3, 32, 32], y, [1, 6])


if __name__ == "__main__":
    cnn()
    gap()
    print(f"wrote {sorted(p.name for p in OUT.glob('*.onnx'))}")
