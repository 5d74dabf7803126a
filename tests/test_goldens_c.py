"""The generated C against ARM's CMSIS-NN int8 golden vectors, bit-exact (np.array_equal).

Each golden becomes a model built through codegen (`tinygen.codegen.forward.generate_forward`)
and run by the one runner on the host (ASan+UBSan), once per kernel implementation. A golden
carries its own requantization constants (per-channel multipliers and shifts, ADD's shifts), which
no float scale reproduces exactly (weight scales are float32, a multiplier has 31 bits), so while
the C is generated `ir.conv_requant` / `ir.add_requant` answer the golden's values for its layer.

An ADD golden has two distinct inputs and a model has one, so its model is three layers: two
1x1 selection convs (requantization exactly 1.0, bias cancelling the zero point) split one input
[a | b] into tensors a and b, then the ADD.

All goldens are generated first and compiled together (`compile_programs`, one compiler
process per golden, in parallel) so the module costs seconds, not minutes.
"""

from __future__ import annotations

import numpy as np
import pytest
from cmsis_goldens import case_names, golden_dir, load_case, missing_reason

from tinygen.codegen.forward import generate_forward
from tinygen.ir import model as ir
from tinygen.verify.compare import compare_forward
from tinygen.verify.runner import Program, compile_programs, run

PRESENT = golden_dir() is not None
CASES = case_names() if PRESENT else [pytest.param("<none>", marks=pytest.mark.skip(reason=missing_reason()))]
LAYER = "golden"


def _t(name, shape, zero_point):
    return ir.TensorInfo(name, tuple(int(d) for d in shape), 1.0, int(zero_point))


def _far_pad(size, k, stride, dil, before, out):
    """Padding after the input that makes the output size `out` (CMSIS-NN is given out, not padding)."""
    return max(0, (out - 1) * stride + dil * (k - 1) + 1 - size - before)


def _per_channel(p, cout):
    """The golden's (multiplier, shift) per output channel, as `ir.conv_requant` returns them."""
    return tuple(np.broadcast_to(np.asarray(p[k]), cout).astype(np.int64) for k in ("mult", "shift"))


def golden_model(case):
    """(model, inputs (batches, *input shape), requantization overrides for the golden layer)."""
    p = case.params
    if case.op in ("conv", "depthwise"):
        _, h, w, _ = case.inputs["x"].shape
        wt = case.inputs["weight"]
        cout, kh, kw, _ = wt.shape
        bias = case.inputs["bias"]
        bias = np.zeros(cout, np.int32) if bias is None else bias.astype(np.int32)
        (sh, sw), (dh, dw) = p["stride"], p["dilation"]
        pad = (p["pad_top"], _far_pad(h, kh, sh, dh, p["pad_top"], p["out_h"]),
               p["pad_left"], _far_pad(w, kw, sw, dw, p["pad_left"], p["out_w"]))
        x = _t("x", case.inputs["x"].shape[1:], -p["input_offset"])
        layer = ir.Conv2D(LAYER, ["x"], _t("y", (p["out_h"], p["out_w"], cout), p["output_offset"]), weight=wt,
                          bias=bias, w_scales=np.ones(cout, np.float32), stride=(sh, sw), padding=pad,
                          dilation=(dh, dw), groups=p["groups"], act_min=p["act_min"], act_max=p["act_max"])
        return ir.Model(case.name, x, [layer]).validate(), case.inputs["x"], _per_channel(p, cout)
    if case.op == "fully_connected":
        wt = case.inputs["weight"]
        cout, depth = wt.shape
        bias = case.inputs["bias"]
        bias = np.zeros(cout, np.int32) if bias is None else bias.astype(np.int32)
        assert p["filter_offset"] == 0, "the IR's weights are symmetric (no filter offset)"
        x = _t("x", (depth,), -p["input_offset"])
        layer = ir.FullyConnected(LAYER, ["x"], _t("y", (cout,), p["output_offset"]), weight=wt, bias=bias,
                                  w_scales=np.ones(cout, np.float32), act_min=p["act_min"], act_max=p["act_max"])
        return ir.Model(case.name, x, [layer]).validate(), case.inputs["x"], _per_channel(p, cout)
    if case.op == "add":
        a, b = case.inputs["a"], case.inputs["b"]
        n = a.shape[1]
        x = _t("x", (1, 1, 2 * n), 0)
        layers = []
        for k, (name, zp) in enumerate([("a", -p["in1_offset"]), ("b", -p["in2_offset"])]):
            sel = np.zeros((n, 1, 1, 2 * n), np.int8)
            sel[np.arange(n), 0, 0, k * n + np.arange(n)] = 1
            # acc = x - zp, requantized by exactly 1.0, plus zp: the codes of x unchanged
            layers.append(ir.Conv2D(f"select_{name}", ["x"], _t(name, (1, 1, n), zp), weight=sel,
                                    bias=np.full(n, -zp, np.int32), w_scales=np.ones(n, np.float32)))
        layers.append(ir.Add(LAYER, ["a", "b"], _t("y", (1, 1, n), p["out_offset"]), act_min=p["act_min"],
                             act_max=p["act_max"]))
        requant = {k: p[k] for k in ("left_shift", "in1_mult", "in1_shift", "in2_mult", "in2_shift", "out_mult",
                                     "out_shift")}
        return ir.Model(case.name, x, layers).validate(), np.concatenate([a, b], axis=1).reshape(-1, 1, 1, 2 * n), \
            requant
    # pooling: scale and zero point pass through; the clamp is the golden's activation range
    _, h, w, c = case.inputs["x"].shape
    (kh, kw), (sh, sw) = p["kernel"], p["stride"]
    pad = (p["pad_top"], _far_pad(h, kh, sh, 1, p["pad_top"], p["out_h"]),
           p["pad_left"], _far_pad(w, kw, sw, 1, p["pad_left"], p["out_w"]))
    cls = ir.AvgPool if case.op == "avgpool" else ir.MaxPool
    layer = cls(LAYER, ["x"], _t("y", (p["out_h"], p["out_w"], c), 0), kernel=(kh, kw), stride=(sh, sw),
                padding=pad, act_min=p["act_min"], act_max=p["act_max"])
    return ir.Model(case.name, _t("x", (h, w, c), 0), [layer]).validate(), case.inputs["x"], None


@pytest.fixture(scope="module")
def golden_runs(kernels, tmp_path_factory):
    """{case name: (outputs RunResult, expected)} for every golden, generated then compiled in one batch."""
    if not PRESENT:
        pytest.skip(missing_reason())
    root = tmp_path_factory.mktemp(f"goldens-{kernels}")
    conv_requant = ir.conv_requant
    built = {}
    for name in case_names():
        case = load_case(name)
        model, x, requant = golden_model(case)

        def conv(layer, xi, requant=requant):
            return requant if layer.name == LAYER else conv_requant(layer, xi)

        def add(a, b, out, requant=requant):
            return dict(requant)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ir, "conv_requant", conv)
            mp.setattr(ir, "add_requant", add)
            generate_forward(model, root / name / "src")
        built[name] = (Program(root / name / "src", root / name, "forward", kernels), x, case.expected)
    binaries = compile_programs([prog for prog, _, _ in built.values()])
    return {name: (run(prog, "host-asan", x, binary=binary), expected)
            for (name, (prog, x, expected)), binary in zip(built.items(), binaries, strict=True)}


@pytest.mark.parametrize("name", CASES)
def test_generated_c_matches_golden(name, golden_runs):
    result, expected = golden_runs[name]
    compare_forward(result, expected)  # MismatchError names the first differing value
    assert np.array_equal(np.stack(result.outputs).reshape(expected.shape), expected)
