"""The .tflite frontend against TensorFlow Lite Micro's interpreter (PyPI `tflite-micro`, a test extra): the
committed fixtures (scripts/make_tflite_fixtures.py) imported, run by the reference and by TFLM on the same
int8 inputs, `array_equal`; the generated C equal to the reference; a network training bit-exact; and bad
files refused with one sentence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from c_harness import run_generated_forward
from file_oracles import mutants, tflm_outputs
from train_harness import train_c_vs_reference

from tinygen.errors import ModelError
from tinygen.frontends.tflite_import import load_tflite
from tinygen.ir import model as ir
from tinygen.ir.quant import quantize_multiplier, requantize
from tinygen.ir.scheme import TrainConfig, parse_update
from tinygen.reference import forward as reference

FIXTURES = Path(__file__).parent / "fixtures" / "tflite"
UNSUPPORTED = {"float_model.tflite": "float32"}
SOFTMAX = {"softmax.tflite", "net_ds_cnn.tflite"}
IMPORTED = sorted(p.name for p in FIXTURES.glob("*.tflite") if p.name not in UNSUPPORTED)
NETWORKS = ["net_mbv2_block.tflite", "net_ds_cnn.tflite", "net_image_cnn.tflite", "net_gap_dense.tflite"]
MEANS = ["mean.tflite", "mean_keepdims_large_multiplier.tflite", "net_gap_dense.tflite"]
SAMPLES = 16


def _inputs(model: ir.Model, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-128, 128, size=(SAMPLES, *model.input.shape)).astype(np.int8)


def test_fixtures_cover_every_operator():
    assert len(IMPORTED) >= 12, IMPORTED
    assert set(NETWORKS) <= set(IMPORTED)


@pytest.mark.parametrize("name", IMPORTED)
def test_reference_equals_tflite_micro(name):
    """Every output element equal, a final SOFTMAX's probabilities included."""
    path = FIXTURES / name
    imported = load_tflite(path)
    assert imported.softmax == (name in SOFTMAX)
    x = _inputs(imported.model)
    ref = reference.run_batch(imported.model, x)
    got = tflm_outputs(path, x)
    assert np.array_equal(ref.reshape(got.shape), got), f"{np.sum(ref.reshape(got.shape) != got)} elements differ"


def test_softmax_equals_tflm_at_patched_logit_scales(tmp_path):
    """The SOFTMAX fixture at 60 other scales written into its flatbuffer: the dense layer's weight scales times
    1 to 30 (its int8 logits spread up to saturation) and the logits' scale times 1/30 to 30 (the Q5 exponents
    from a few steps to all 31, differences below diff_min): the reference equals TFLite Micro on every
    probability at every scale, and the generated C (both kernel sets) equals the reference at every sixth."""
    path = FIXTURES / "softmax.tflite"
    data = path.read_bytes()
    model = load_tflite(path).model
    fc, softmax = model.layers[-2], model.layers[-1]
    w_bytes, s_bytes = fc.w_scales.astype(np.float32).tobytes(), np.float32(fc.output.scale).tobytes()
    assert data.count(w_bytes) == 1 and data.count(s_bytes) == 1 and softmax.inputs == [fc.output.name]
    rng = np.random.default_rng(5)
    x = _inputs(model)
    cut = 0
    for i in range(60):
        w = (fc.w_scales * np.float32(10 ** rng.uniform(0, 1.5))).astype(np.float32)
        s = np.float32(fc.output.scale * 10 ** rng.uniform(-1.5, 1.5))
        patched = tmp_path / "patched.tflite"
        patched.write_bytes(data.replace(w_bytes, w.tobytes()).replace(s_bytes, s.tobytes()))
        model = load_tflite(patched).model
        ref = reference.run_batch(model, x)
        assert np.array_equal(ref, tflm_outputs(patched, x)), f"weight scales {w}, logit scale {s}"
        cut += int((ref == -128).sum())
        if i % 6 == 0:
            for kernels in ("dsp", "portable"):
                got = run_generated_forward(model, x, tmp_path / f"c{i}{kernels}", kernels)
                assert np.array_equal(got, ref), f"weight scales {w}, logit scale {s}, {kernels} kernels"
    assert cut > 100  # many probabilities rounded to nothing or cut at diff_min


def test_softmax_the_validator_refuses_is_one_sentence():
    """More classes than TFLite's shifts allow, a softmax before the last layer, another output scale: one
    sentence each."""
    def model(n, out_scale=1 / 256, extra=False):
        layers = [ir.Softmax("p", ["x"], ir.TensorInfo("p", (n,), out_scale, -128))]
        if extra:
            layers.append(ir.Reshape("r", ["p"], ir.TensorInfo("r", (n,), out_scale, -128)))
        return ir.Model("m", ir.TensorInfo("x", (n,), 0.1, 0), layers)

    for m, word in [(model(512), "at most 511"), (model(10, extra=True), "must be the model's last layer"),
                    (model(10, out_scale=0.01), "scale 1/256")]:
        with pytest.raises(ModelError) as exc:
            m.validate()
        assert word in str(exc.value) and "\n" not in str(exc.value)
    model(511).validate()


@pytest.mark.parametrize("name", IMPORTED)
def test_generated_c_equals_reference(name, tmp_path):
    """Every fixture, each operator alone and the networks: the generated C equals the reference."""
    model = load_tflite(FIXTURES / name).model
    x = _inputs(model, 1)
    assert np.array_equal(run_generated_forward(model, x, tmp_path, "dsp"), reference.run_batch(model, x))


def _mean_inputs(path: Path, x: np.ndarray) -> tuple[ir.Mean, ir.TensorInfo, np.ndarray]:
    """A fixture's MEAN layer, its input tensor and that tensor's values (by the reference) for inputs `x`."""
    model = load_tflite(path).model
    mean = next(layer for layer in model.layers if isinstance(layer, ir.Mean))
    values = np.stack([reference.run_model(model, sample, keep=True)[mean.inputs[0]] for sample in x])
    return mean, model.tensors()[mean.inputs[0]], values


@pytest.mark.parametrize("name", MEANS)
def test_mean_takes_tflm_multiplier(name):
    """TFLite Micro's MEAN requantizes the sum of (x - z_in) once, with its own multiplier for s_in / (s_out N)
    (`ir.mean_requant`: 1/N folded into q31(s_in / s_out) in integers). At the large-multiplier fixture's scales
    (q31(s_in / (s_out N)) >= 1.92e9, TFLM's multiplier below 2^30) and the network's, one requantization by
    q31(s_in / (s_out N)) would differ from TFLM on some of the test inputs; the reference does not
    (test_reference_equals_tflite_micro)."""
    path = FIXTURES / name
    x = _inputs(load_tflite(path).model)
    mean, xi, values = _mean_inputs(path, x)
    n = xi.shape[0] * xi.shape[1]
    mult, shift = ir.mean_requant(xi, mean.output)
    m0, e0 = quantize_multiplier(xi.scale / mean.output.scale)
    k = min(n.bit_length() - 1, 31 + e0)
    assert (mult, shift) == ((m0 << k) // n, e0 - k)
    sums = values.astype(np.int64).sum(axis=(1, 2)) - xi.zero_point * n
    naive_mult, naive_shift = quantize_multiplier(xi.scale / (mean.output.scale * n))
    naive = np.clip(requantize(sums, naive_mult, naive_shift) + mean.output.zero_point, -128, 127)
    ours = np.clip(requantize(sums, mult, shift) + mean.output.zero_point, -128, 127)
    if name == "mean.tflite":  # N = 36, TFLM's multiplier >= 2^30: the two rules agree
        assert mult >= 2**30 and np.array_equal(naive, ours)
    else:
        assert mult < 2**30 and not np.array_equal(naive, ours)
    if name.startswith("mean_keepdims"):
        assert naive_mult >= 1.92e9 and mean.output.shape == (1, 1, xi.shape[2])


def test_mean_equals_tflm_at_patched_output_scales(tmp_path):
    """The MEAN-alone fixture with 100 other output scales written into its flatbuffer (1/20 to 3 times the input's,
    every second one drawn until q31(s_in / (s_out N)) >= 1.92e9): the reference equals TFLite Micro on every
    output at every scale; one requantization by q31(s_in / (s_out N)) matches at fewer than half of them."""
    path = FIXTURES / "mean_keepdims_large_multiplier.tflite"
    data = path.read_bytes()
    model = load_tflite(path).model
    xi, out = model.input, model.output
    n = xi.shape[0] * xi.shape[1]
    scale_bytes = np.float32(out.scale).tobytes()
    assert data.count(scale_bytes) == 1
    rng = np.random.default_rng(3)
    x = _inputs(model)
    sums = x.astype(np.int64).sum(axis=(1, 2)) - xi.zero_point * n
    one_rule = 0
    for i in range(100):
        s = np.float32(xi.scale * 10 ** rng.uniform(-1.3, 0.5))
        while i % 2 and quantize_multiplier(xi.scale / (float(s) * n))[0] < 1.92e9:
            s = np.float32(xi.scale * 10 ** rng.uniform(-1.3, 0.5))
        patched = tmp_path / "patched.tflite"
        patched.write_bytes(data.replace(scale_bytes, s.tobytes()))
        ref = reference.run_batch(load_tflite(patched).model, x).reshape(len(x), -1)
        assert np.array_equal(ref, tflm_outputs(patched, x).reshape(len(x), -1)), f"output scale {s}"
        mult, shift = quantize_multiplier(xi.scale / (float(s) * n))
        one_rule += np.array_equal(np.clip(requantize(sums, mult, shift) + out.zero_point, -128, 127), ref)
    assert one_rule < 50, one_rule


@pytest.mark.parametrize("name", ["mean_keepdims_large_multiplier.tflite", "net_gap_dense.tflite"])
def test_generated_c_equals_reference_with_mean(name, kernels, tmp_path):
    """MEAN's C kernel (kernels/mean_s8) equals the reference, with either kernel set."""
    model = load_tflite(FIXTURES / name).model
    x = _inputs(model, 1)
    assert np.array_equal(run_generated_forward(model, x, tmp_path, kernels), reference.run_batch(model, x))


def test_network_with_mean_trains_bit_exact(kernels):
    """conv -> GlobalAveragePooling2D (MEAN) -> dense from the converter trains both weighted layers for 12 steps in
    generated C on the host exactly as the reference does: the gradient crosses the MEAN (train/mean_backward_s16)."""
    model = load_tflite(FIXTURES / "net_gap_dense.tflite").model
    scheme = parse_update("last-2", model, 1)
    x = _inputs(model, 2)
    labels = np.random.default_rng(2).integers(0, model.output.size, size=SAMPLES)
    result = train_c_vs_reference(model, scheme, TrainConfig(lr=0.05), x, labels, 12, kernels)
    assert result["steps"] == 12 and result["gradient_values"] > 0


@pytest.mark.parametrize("name, update", [("net_mbv2_block.tflite", "last-2"), ("net_ds_cnn.tflite", "last-2"),
                                          ("net_image_cnn.tflite", "last-1")])
def test_imported_network_trains_bit_exact(name, update):
    """The MobileNetV2-style block, the DS-CNN (on its logits: the softmax dropped) and the image CNN (its dense
    layer: a max pool before it, whose gradient tinygen does not compute) from the converter train for 12 steps
    in generated C on the host exactly as the reference does."""
    model = ir.logits(load_tflite(FIXTURES / name).model)
    scheme = parse_update(update, model, 1)
    x = _inputs(model, 2)
    labels = np.random.default_rng(2).integers(0, model.output.size, size=SAMPLES)
    train_c_vs_reference(model, scheme, TrainConfig(lr=0.01), x, labels, 12, "dsp")


def test_per_tensor_fully_connected_takes_tflm_float32_product():
    """TFLite Micro's per-tensor FULLY_CONNECTED multiplier is (double)(s_x * s_w as float32) / s_y; the importer
    marks such layers (the fixture's dense layer has one weight scale) and conv_requant follows the flag."""
    model = load_tflite(FIXTURES / "fully_connected_per_tensor.tflite").model
    fc = next(layer for layer in model.layers if isinstance(layer, ir.FullyConnected))
    assert fc.f32_scale_product and np.unique(fc.w_scales).size == 1
    # scales whose float32 product rounds differently from the double one change the multiplier
    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(200):
        sx, sw, sy = (float(np.float32(v)) for v in rng.uniform(1e-3, 1e-1, size=3))
        layer = ir.FullyConnected("fc", ["x"], ir.TensorInfo("y", (1,), sy, 0), weight=np.zeros((1, 1), np.int8),
                                  bias=np.zeros(1, np.int32), w_scales=np.array([sw], np.float32),
                                  f32_scale_product=True)
        info = ir.TensorInfo("x", (1,), sx, 0)
        mult, _ = ir.conv_requant(layer, info)
        assert int(mult[0]) == quantize_multiplier(float(np.float32(sx) * np.float32(sw)) / sy)[0]
        layer.f32_scale_product = False
        changed += int(mult[0] != ir.conv_requant(layer, info)[0][0])
    assert changed > 0


@pytest.mark.parametrize("name, word", sorted(UNSUPPORTED.items()))
def test_unsupported_model_is_one_sentence(name, word):
    with pytest.raises(ModelError) as exc:
        load_tflite(FIXTURES / name)
    assert word in str(exc.value) and "\n" not in str(exc.value)


def test_unsupported_operator_is_one_sentence(tmp_path):
    """mean.tflite with its MEAN's operator code rewritten to SUM: refused with one sentence naming the operator, its
    output tensor and what is supported."""
    import tflite

    data = bytearray((FIXTURES / "mean.tflite").read_bytes())
    model = tflite.Model.GetRootAsModel(data, 0)
    code = next(model.OperatorCodes(i) for i in range(model.OperatorCodesLength())
                if model.OperatorCodes(i).BuiltinCode() == tflite.BuiltinOperator.MEAN)
    data[code._tab.Pos + code._tab.Offset(4)] = tflite.BuiltinOperator.SUM  # deprecated_builtin_code, int8
    at = code._tab.Pos + code._tab.Offset(10)  # builtin_code, int32
    data[at:at + 4] = np.int32(tflite.BuiltinOperator.SUM).tobytes()
    (tmp_path / "sum.tflite").write_bytes(data)
    with pytest.raises(ModelError) as exc:
        load_tflite(tmp_path / "sum.tflite")
    assert "operator 1 SUM" in str(exc.value) and "MEAN (over height and width)" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_corrupted_files_load_or_fail_with_one_sentence(tmp_path):
    """Truncated and bit-flipped copies of a network: each either still imports as a valid model or is
    refused with one ModelError sentence; no other exception escapes."""
    data = (FIXTURES / "net_mbv2_block.tflite").read_bytes()
    refused = 0
    for i, mutant in enumerate(mutants(data, 7, (0, 4, 8, 16, len(data) // 3, len(data) // 2, len(data) - 1), 40)):
        path = tmp_path / f"m{i}.tflite"
        path.write_bytes(mutant)
        try:
            load_tflite(path).model.validate()
        except ModelError as exc:
            refused += 1
            assert "\n" not in str(exc)
    assert refused >= 7  # at least every truncation


def test_cli_refuses_a_bad_tflite_with_exit_2(tmp_path):
    from click.testing import CliRunner

    from tinygen.cli import main

    bad = tmp_path / "bad.tflite"
    bad.write_bytes((FIXTURES / "add.tflite").read_bytes()[:100])
    result = CliRunner().invoke(main, ["plan", "--board", "stm32f746", "--model", str(bad)])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) == 1


def test_verify_inputs_and_expected_outputs_from_tflite_micro(tmp_path):
    """`tinygen verify DIR --inputs x.npy --expect y.npy`: exit 0 when the generated C equals the reference on
    the user's inputs and both equal TFLite Micro's outputs for them; exit 1 naming the first difference when
    y.npy is off by one somewhere."""
    from click.testing import CliRunner

    from tinygen.cli import main

    path = FIXTURES / "net_image_cnn.tflite"
    out = tmp_path / "b"
    runner = CliRunner()
    r = runner.invoke(main, ["build", "--board", "stm32f746", "--model", str(path), "--no-train", "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    model = load_tflite(path).model
    x = _inputs(model, 3)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", tflm_outputs(path, x).astype(np.int8))
    r = runner.invoke(main, ["verify", str(out), "--inputs", str(tmp_path / "x.npy"), "--expect",
                             str(tmp_path / "y.npy")])
    assert r.exit_code == 0, r.output
    assert f"on {SAMPLES} inputs of x.npy, equal to y.npy" in r.stdout
    wrong = np.load(tmp_path / "y.npy")
    wrong[5, 3] = wrong[5, 3] + 1 if wrong[5, 3] < 127 else 126
    np.save(tmp_path / "wrong.npy", wrong)
    r = runner.invoke(main, ["verify", str(out), "--inputs", str(tmp_path / "x.npy"), "--expect",
                             str(tmp_path / "wrong.npy")])
    assert r.exit_code == 1
    assert "1 of 160 output values differ from wrong.npy; first at sample 5, element 3" in r.stderr
    r = runner.invoke(main, ["verify", str(out), "--inputs", str(tmp_path / "y.npy")])  # outputs, not inputs
    assert r.exit_code == 2 and r.stderr.startswith("error:") and "must be N x" in r.stderr


def test_relu6_bound_rounds_as_tflite():
    """6 / s = 0.5 exactly (s = 12): TFLite rounds half away from zero (one step above the zero point), the
    double rule of the other frontends to even (none)."""
    out = ir.TensorInfo("y", (1,), 12.0, -128)
    assert ir.activation_range("relu6", out, float32=True) == (-128, -127)
    assert ir.activation_range("relu6", out) == (-128, -128)


def test_mean_the_validator_refuses_is_one_sentence():
    """A MEAN whose sum, shifted left by its requantization, could overflow int32 (an output scale 2e7 times below
    the input's: a left shift of 21), or whose output is not the per-channel mean, is refused with one sentence."""
    for shape, out_shape, out_scale, word in [((4, 4, 2), (2,), 1e-9, "overflow int32"),
                                              ((4, 4, 2), (4,), 0.01, "must be [2] or [1, 1, 2]")]:
        model = ir.Model("m", ir.TensorInfo("x", shape, 0.02, 0),
                         [ir.Mean("mean", ["x"], ir.TensorInfo("y", out_shape, out_scale, 0))])
        with pytest.raises(ModelError) as exc:
            model.validate()
        assert word in str(exc.value) and "\n" not in str(exc.value)


def test_softmax_survives_the_model_file_and_a_training_build(tmp_path):
    """A model ending in SOFTMAX saved as a model file loads with its beta and equal outputs; `tinygen plan` of it
    trains the logits (the softmax dropped), `--no-train` keeps the softmax."""
    from click.testing import CliRunner

    from tinygen.cli import main
    from tinygen.frontends import modelfile

    model = load_tflite(FIXTURES / "net_ds_cnn.tflite").model
    back = modelfile.load(modelfile.save(model, tmp_path / "m.json"))
    assert isinstance(back.layers[-1], ir.Softmax) and back.layers[-1].beta == model.layers[-1].beta
    x = _inputs(model)
    assert np.array_equal(reference.run_batch(back, x), reference.run_batch(model, x))
    runner = CliRunner()
    trained = runner.invoke(main, ["plan", "--board", "stm32f746", "--model", str(tmp_path / "m.json"), "--json"])
    frozen = runner.invoke(main, ["plan", "--board", "stm32f746", "--model", str(tmp_path / "m.json"), "--json",
                                  "--no-train"])
    assert trained.exit_code == 0 and frozen.exit_code == 0, trained.output + frozen.output
    assert "softmax_11" not in trained.stdout and "softmax_11" in frozen.stdout
