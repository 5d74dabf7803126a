"""The float ONNX frontend (tinygen/zoo/onnx_import.py): the imported float graph against onnxruntime (a float
check: the layout, padding, BatchNormalization folding and the Flatten permutation), the quantized model's C
against the reference (bit-exact), a build quantized and trained on a user's --dataset under QEMU, and bad files
refused with one sentence. Fixtures: scripts/make_onnx_fixtures.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from c_harness import run_generated_forward
from click.testing import CliRunner
from file_oracles import mutants

from tinygen.cli import main
from tinygen.errors import ModelError
from tinygen.ir import model as ir
from tinygen.reference import forward as reference
from tinygen.zoo import ptq
from tinygen.zoo.onnx_import import load_onnx, load_onnx_float

FIXTURES = Path(__file__).parent / "fixtures" / "onnx"
SHAPES = {"onnx_cnn.onnx": (1, 28, 28), "onnx_gap.onnx": (3, 32, 32)}  # NCHW, batch dropped


def _x(name: str, n: int = 32, seed: int = 0) -> np.ndarray:
    """n float inputs in [0, 1], NCHW."""
    return np.random.default_rng(seed).random((n, *SHAPES[name])).astype(np.float32)


def _runtime(name: str, x: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the test extra) is not installed")
    sess = ort.InferenceSession(str(FIXTURES / name), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": xi[None]})[0] for xi in x])


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_float_graph_equals_onnxruntime(name):
    """The imported float net (NHWC) computes what onnxruntime computes from the file (NCHW), to float32 rounding."""
    net, softmax = load_onnx_float(FIXTURES / name)
    x = _x(name)
    got = net.forward(x.transpose(0, 2, 3, 1))
    if softmax:
        e = np.exp(got - got.max(axis=1, keepdims=True))
        got = e / e.sum(axis=1, keepdims=True)
    want = _runtime(name, x)
    assert softmax == (name == "onnx_cnn.onnx")
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_quantized_model_c_equals_reference_and_keeps_the_float_class(name, kernels, tmp_path):
    """PTQ on 64 calibration inputs: the int8 model's class agrees with the float graph's on >= 90% of 64 other
    inputs, and its generated C equals its reference bit for bit."""
    model = load_onnx(FIXTURES / name, _x(name, 64, seed=1).transpose(0, 2, 3, 1))
    assert isinstance(model.layers[-1], ir.Softmax) == (name == "onnx_cnn.onnx")
    x = _x(name, 64, seed=2)
    q = ptq.quantize_input(model, x.transpose(0, 2, 3, 1))
    ref = reference.run_batch(model, q)
    assert (ref.argmax(axis=1) == _runtime(name, x).argmax(axis=1)).mean() >= 0.9
    assert np.array_equal(run_generated_forward(model, q[:16], tmp_path, kernels), ref[:16])


def test_build_quantizes_and_trains_on_the_dataset_in_qemu(tmp_path):
    """`--model onnx_gap.onnx --dataset samples.npz`: the PTQ calibrates on the samples (their range [0, 0.5] sets
    the input scale 0.5 / 255), the build trains on them and the firmware under QEMU is bit-exact."""
    if not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")):
        pytest.skip("arm-none-eabi-gcc and qemu-system-arm are needed (scripts/setup.sh)")
    x = (0.5 * _x("onnx_gap.onnx", 24, seed=3)).transpose(0, 2, 3, 1)
    x[0, 0, 0, 0] = 0.5
    np.savez(tmp_path / "samples.npz", x=x, y=np.arange(24) % 6)
    runner = CliRunner()
    out = tmp_path / "b"
    r = runner.invoke(main, ["build", "--board", "stm32f746", "--model", str(FIXTURES / "onnx_gap.onnx"),
                             "--dataset", str(tmp_path / "samples.npz"), "--update", "last-2", "--samples", "8",
                             "--out", str(out)])
    assert r.exit_code == 0, r.output
    from tinygen.frontends import modelfile

    model = modelfile.load(out / "model" / "model.json")
    assert abs(model.input.scale - 0.5 / 255) < 1e-9 and model.input.zero_point == -128
    r = runner.invoke(main, ["sim", str(out), "--timeout", "600"])
    assert r.exit_code == 0, r.output
    assert "20 training steps: every loss and the trained-parameter checksum" in r.stdout


def test_bad_onnx_files_are_one_sentence(tmp_path):
    """Truncated and bit-flipped copies either still import as a valid model or are refused with one ModelError
    sentence; an unsupported node is named; weights in an external file are refused (nothing is read from
    another path); the CLI exits 2 with one `error:` line."""
    import onnx

    data = (FIXTURES / "onnx_cnn.onnx").read_bytes()
    refused = 0
    for i, mutant in enumerate(mutants(data, 9, (0, 3, 20, len(data) // 3, len(data) - 1), 30)):
        path = tmp_path / f"m{i}.onnx"
        path.write_bytes(mutant)
        try:
            load_onnx(path).validate()
        except ModelError as exc:
            refused += 1
            assert "\n" not in str(exc)
    assert refused >= 4
    model = onnx.load(str(FIXTURES / "onnx_gap.onnx"))
    next(n for n in model.graph.node if n.op_type == "Relu").op_type = "Sigmoid"
    onnx.save(model, tmp_path / "sigmoid.onnx")
    with pytest.raises(ModelError, match=r"\(Sigmoid\), which tinygen does not import"):
        load_onnx(tmp_path / "sigmoid.onnx")
    model = onnx.load(str(FIXTURES / "onnx_gap.onnx"))
    onnx.save(model, tmp_path / "external.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    with pytest.raises(ModelError, match="external data file"):
        load_onnx(tmp_path / "external.onnx")
    r = CliRunner().invoke(main, ["plan", "--board", "stm32f746", "--model", str(tmp_path / "m0.onnx")])
    assert r.exit_code == 2 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
