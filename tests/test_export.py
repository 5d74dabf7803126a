"""Trained weights out: a `--dump-trained` firmware trains under QEMU and dumps its trained parameters (framed,
CRC-32); `tinygen sim` checks them against the reference and saves them; `tinygen export` writes the trained
model as a .tflite (the source file, trained values in its own tensors) and as a model file. TFLite Micro's
interpreter running the exported .tflite equals the firmware's post-training outputs, bit for bit."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from file_oracles import tflm_outputs

from tinygen.cli import main
from tinygen.codegen.firmware import QEMU_ELF
from tinygen.codegen.project import TRAINED_FILE, read_manifest
from tinygen.errors import MismatchError
from tinygen.frontends import modelfile
from tinygen.frontends.tflite_import import load_tflite
from tinygen.reference import forward as reference
from tinygen.verify import sim
from tinygen.verify.runner import RunResult, parse_output, run_firmware

FIXTURES = Path(__file__).parent / "fixtures" / "tflite"
needs_arm = pytest.mark.skipif(not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")),
                               reason="arm-none-eabi-gcc and qemu-system-arm are needed (scripts/setup.sh)")


def _tflm(path: Path, x: np.ndarray) -> np.ndarray:
    return tflm_outputs(path, x).reshape(len(x), -1)


@pytest.fixture(scope="module")
def trained_build(tmp_path_factory):
    """net_ds_cnn.tflite (its FULLY_CONNECTED has no bias tensor, its convolutions share one zero-bias buffer, it
    ends in SOFTMAX), its last three layers trained 20 steps in the firmware under QEMU with --dump-trained."""
    if not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")):
        pytest.skip("arm-none-eabi-gcc and qemu-system-arm are needed (scripts/setup.sh)")
    out = tmp_path_factory.mktemp("export") / "b"
    runner = CliRunner()
    r = runner.invoke(main, ["build", "--board", "stm32f746", "--model", str(FIXTURES / "net_ds_cnn.tflite"),
                             "--update", "last-3", "--lr", "0.05", "--samples", "8", "--steps", "20",
                             "--dump-trained", "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["sim", str(out), "--timeout", "600"])
    assert r.exit_code == 0, r.output
    assert "after training: 8 samples' outputs and the" in r.stdout and (out / TRAINED_FILE).is_file()
    return out


@needs_arm
def test_tflm_on_the_exported_tflite_equals_the_firmware_after_training(trained_build, tmp_path):
    """The exported .tflite, run by TFLite Micro on the embedded samples, gives the softmax of the logits the
    firmware printed after training; the trained layers changed; the exported model file gives the same."""
    r = CliRunner().invoke(main, ["export", str(trained_build), "--out", str(tmp_path / "trained.tflite")])
    assert r.exit_code == 0, r.output
    assert "3 trained layers' int8 weights and int32 biases" in r.stdout
    with np.load(trained_build / TRAINED_FILE) as z:
        x, logits = z["x"], z["outputs"]
    firmware_run = read_manifest(trained_build)["firmware"]
    assert firmware_run["dump_trained"] and logits.shape == (8, 12)
    source = load_tflite(FIXTURES / "net_ds_cnn.tflite").model
    softmax = source.layers[-1]
    want = np.stack([reference.run_layer(softmax, [v.astype(np.int8)], source.tensors()) for v in logits])
    got = _tflm(tmp_path / "trained.tflite", x)
    assert np.array_equal(got, want)
    assert not np.array_equal(got, _tflm(FIXTURES / "net_ds_cnn.tflite", x))  # training changed the outputs
    exported = load_tflite(tmp_path / "trained.tflite").model
    assert [type(a) for a in exported.layers] == [type(b) for b in source.layers]
    r = CliRunner().invoke(main, ["export", str(trained_build), "--out", str(tmp_path / "trained.json")])
    assert r.exit_code == 0, r.output
    model = modelfile.load(tmp_path / "trained.json")
    assert np.array_equal(reference.run_batch(model, x).reshape(got.shape), got)


@needs_arm
def test_round_trip_without_softmax_equals_the_firmware_directly(tmp_path):
    """net_image_cnn.tflite (no softmax: the firmware's outputs are the model's), trained 20 steps under QEMU by the
    default selection: TFLite Micro on the exported file prints exactly what the firmware printed after training."""
    runner = CliRunner()
    out = tmp_path / "b"
    r = runner.invoke(main, ["build", "--board", "nrf52840", "--model", str(FIXTURES / "net_image_cnn.tflite"),
                             "--samples", "8", "--dump-trained", "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["sim", str(out), "--timeout", "600"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["export", str(out), "--out", str(tmp_path / "trained.tflite")])
    assert r.exit_code == 0, r.output
    with np.load(out / TRAINED_FILE) as z:
        x, printed = z["x"], z["outputs"]
    assert np.array_equal(_tflm(tmp_path / "trained.tflite", x), printed)
    assert not np.array_equal(_tflm(FIXTURES / "net_image_cnn.tflite", x), printed)


@needs_arm
def test_a_damaged_dump_is_refused(trained_build):
    """One hex digit of the dump changed in transit: the frame's CRC-32 catches it; a parameter left out: named."""
    manifest = read_manifest(trained_build)
    result, _ = run_firmware(trained_build, manifest["board"], "qemu", 600, None, QEMU_ELF)
    lines = result.firmware.lines
    at = next(i for i, ln in enumerate(lines) if ln.startswith("TG hex "))
    flipped = list(lines)
    flipped[at] = flipped[at][:-1] + ("0" if flipped[at][-1] != "0" else "1")
    dropped = [ln for ln in lines if not ln.startswith(f"TG dump {manifest['train']['params'][0]} ")]
    for text, word in [(flipped, "damaged in transit"), (dropped, "dumped no")]:
        fw = parse_output("\n".join(text))
        result = RunResult("qemu", step_samples=[s["sample"] for s in fw.steps], firmware=fw)
        expect, trainer = sim._training_reference(trained_build, manifest, result)
        with np.load(trained_build / "firmware" / "samples.npz") as z:
            x = z["x"]
        with pytest.raises(MismatchError, match=word):
            sim._save_trained(trained_build, manifest, result, expect, trainer, x)


def test_export_refuses_what_it_cannot_write(tmp_path):
    """No dump saved, an inference build, another format, a missing folder, --dump-trained without training: one
    sentence each, exit 2."""
    runner = CliRunner()
    train = tmp_path / "train"
    r = runner.invoke(main, ["build", "--board", "stm32f746", "--model", "digits-cnn", "--classes", "5",
                             "--update", "last-1", "--samples", "4", "--out", str(train)])
    assert r.exit_code == 0, r.output
    infer = tmp_path / "infer"
    r = runner.invoke(main, ["build", "--board", "stm32f746", "--model", "digits-cnn", "--no-train", "--samples",
                             "4", "--out", str(infer)])
    assert r.exit_code == 0, r.output
    for build, out, word in [(train, "t.json", "rebuild it with --dump-trained"), (infer, "t.json", "inference"),
                             (train, "t.onnx", "must end in .json"), (train, "no/such/t.json", "does not exist")]:
        r = runner.invoke(main, ["export", str(build), "--out", str(tmp_path / out)])
        assert r.exit_code == 2 and r.stderr.startswith("error:") and word in r.stderr, r.output
        assert len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(main, ["build", "--board", "stm32f746", "--model", "digits-cnn", "--no-train",
                             "--dump-trained", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--dump-trained needs a firmware that trains" in r.stderr
