"""Acceptance: `tinygen build --board B --model M --out D && tinygen sim D` exits 0 — every output,
every loss of >= 20 training steps and the trained-parameter checksum equal the reference — for
B in {stm32f746, nrf52840, stm32h743} (the F746 and nRF52840 at their real SRAM sizes, 320 KB and
256 KB) and M in {the digits CNN (8, 4 and 0 master bits), MbV2-w0.35 with a published scheme (on the
nRF52840 its initial stage patch by patch), the
converter-made .tflite networks (one ending in GlobalAveragePooling2D's MEAN -> dense)}, under QEMU."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tinygen.cli import main
from tinygen.paths import shared_dir

BOARDS = ["stm32f746", "nrf52840", "stm32h743"]
needs_arm = pytest.mark.skipif(not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")),
                               reason="arm-none-eabi-gcc and qemu-system-arm are needed (scripts/setup.sh)")


def _build_and_sim(tmp_path, board, model_args):
    runner = CliRunner()
    r = runner.invoke(main, ["build", "--board", board, *model_args, "--steps", "20", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(main, ["sim", str(tmp_path / "b"), "--timeout", "900"])
    assert r.exit_code == 0, r.stderr
    assert "20 training steps: every loss and the trained-parameter checksum" in r.stdout
    return r.stdout


@needs_arm
@pytest.mark.parametrize("board,master_bits", zip(BOARDS, ["8", "4", "0"], strict=True))
def test_digits_cnn_trains_bit_exact_in_qemu(board, master_bits, tmp_path):
    """Each board with another trained-weight storage: 8 master bits, nibbles, the int8 weights in place."""
    _build_and_sim(tmp_path, board, ["--model", "digits-cnn", "--classes", "5", "--samples", "16",
                                     "--master-bits", master_bits])


@needs_arm
@pytest.mark.parametrize("board", BOARDS)
def test_mbv2_with_published_scheme_trains_bit_exact_in_qemu(board, tmp_path):
    root = shared_dir()
    if root is None:
        pytest.skip("../shared is not present: the MIT models are not available")
    scheme = f"{root}/models/mit-tiny-training/sparse_schemes.json#mbv2/49kb"
    # the nRF52840 (256 KB) runs the initial stage patch by patch (planning/patches.py)
    patches = ["--patches", "2", "--patch-stage", "b3_pw2"] if board == "nrf52840" else []
    out = _build_and_sim(tmp_path, board, ["--model", "mbv2-w0.35", "--classes", "10", "--update", scheme,
                                           "--samples", "4", *patches])
    assert "bit-exact with the reference" in out


@needs_arm
@pytest.mark.parametrize("board,network", zip(BOARDS, ["net_ds_cnn", "net_mbv2_block", "net_image_cnn"], strict=True))
def test_tflite_networks_train_bit_exact_in_qemu(board, network, tmp_path):
    """The .tflite fixtures' three networks (tests/fixtures/tflite), one per board, trained by the default
    selection on 8 embedded samples."""
    path = Path(__file__).parent / "fixtures" / "tflite" / f"{network}.tflite"
    _build_and_sim(tmp_path, board, ["--model", str(path), "--samples", "8"])


@needs_arm
def test_tflite_network_with_mean_trains_bit_exact_in_qemu(tmp_path):
    """conv -> GlobalAveragePooling2D (TFLite's MEAN) -> dense from the converter, both weighted layers trained
    (the gradient crosses the MEAN), on the nRF52840."""
    path = Path(__file__).parent / "fixtures" / "tflite" / "net_gap_dense.tflite"
    out = _build_and_sim(tmp_path, "nrf52840", ["--model", str(path), "--update", "last-2", "--samples", "8"])
    assert "8 of 8 samples" in out and "bit-exact with the reference" in out
