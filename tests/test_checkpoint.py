"""Trained weights that survive a reset (issue 14, item 5): the firmware saves its whole training state to two
flash slots every N steps (sequence number + CRC, the header's magic word programmed last) and resumes from the
newest complete one at boot.

The power-cut test: a build with -DTG_TEST_POWER_CUT stops the core right after the k-th programmed flash word;
the flash (QEMU's RAM stand-in, kept in tg_flash.bin in QEMU's working directory) is carried into the next run.
For every k over three checkpoint writes (the first with no checkpoint before it, the second beside one, the
third overwriting the older of two) the next boot must resume from the last complete checkpoint and finish with
every loss and the trained-parameter checksum equal to the reference's uninterrupted run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tinygen.cli import main
from tinygen.codegen.firmware import CKPT_HEADER_BYTES, FW_DIR, SAMPLES_FILE, FirmwareOptions
from tinygen.codegen.project import write_project
from tinygen.ir.scheme import TrainConfig, parse_update
from tinygen.reference.training import Trainer
from tinygen.targets.boards import load_board
from tinygen.verify.check import load_trainer
from tinygen.verify.compare import expect_training
from tinygen.verify.runner import parse_output, run_qemu
from tinygen.zoo.resolve import resolve_model

needs_qemu = pytest.mark.skipif(not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")),
                                reason="arm-none-eabi-gcc and qemu-system-arm are needed (scripts/setup.sh)")
STEPS, EVERY = 6, 2  # checkpoints after steps 2, 4 and 6
SCHEME = {"format": "tinygen-scheme", "version": 1, "source": "fc: one channel's weights and the biases",
          "layers": [{"layer": "fc", "channels": [0], "bias": True, "filter_r": 1}]}


def _build(board: str, tmp: Path, extra=(), lr=0.1) -> Path:
    """digits-cnn with a fresh 5-way head, one fc channel and its biases training at a rate that moves them."""
    tmp.mkdir(parents=True, exist_ok=True)
    scheme = tmp / "scheme.json"
    scheme.write_text(json.dumps(SCHEME))
    model = resolve_model("digits-cnn", 5)
    trainer = Trainer(model, parse_update(str(scheme), model), TrainConfig(lr=lr).check())
    out = tmp / board
    write_project(model, load_board(board), out, trainer,
                  FirmwareOptions(samples=2, train=True, train_steps=STEPS, checkpoint_every=EVERY,
                                  extra_cflags=tuple(extra)))
    return out


def _reference(build: Path):
    manifest = json.loads((build / "tinygen.json").read_text())
    _, trainer = load_trainer(build, manifest)
    with np.load(build / FW_DIR / SAMPLES_FILE) as z:
        x, labels = z["x"], z["labels"].astype(int)
    return expect_training(trainer, x, labels, [s % len(x) for s in range(STEPS)], manifest["train"]["params"])


def _run(build: Path, board: str, workdir: Path):
    text, code, _ = run_qemu(build, board, timeout=60, workdir=workdir)
    return parse_output(text), code


@needs_qemu
@pytest.mark.parametrize("board", ["stm32f746", "nrf52840"])
def test_power_cut_at_every_flash_word_resumes_bit_exact(board, tmp_path):
    build = _build(board, tmp_path, ["-DTG_TEST_POWER_CUT"])
    manifest = json.loads((build / "tinygen.json").read_text())
    unit = load_board(board).checkpoint.program_bytes
    words = (CKPT_HEADER_BYTES + -(-manifest["train"]["state_bytes"] // unit) * unit) // 4  # one checkpoint
    ref = _reference(build)

    whole, code = _run(build, board, tmp_path / "whole")  # no cut: three checkpoints, bit-exact
    assert code == 0 and [c["step"] for c in whole.checkpoints] == [2, 4, 6]
    assert [s["loss"] for s in whole.steps] == ref.losses and whole.params_crc == ref.checksum
    assert len(set(ref.losses)) > 2, "training must move the state for the test to mean anything"

    for k in range(1, 3 * words + 1):
        flash = tmp_path / f"cut{k}"
        flash.mkdir()
        (flash / "tg_power_cut.txt").write_text(str(k))
        cut, code = _run(build, board, flash)
        assert code == 5 and f"TG power cut after flash word {k}" in cut.lines, (k, cut.lines[-3:])
        assert [s["loss"] for s in cut.steps] == ref.losses[:len(cut.steps)]

        (flash / "tg_power_cut.txt").unlink()  # the next boot: same flash, no cut
        after, code = _run(build, board, flash)
        complete = k // words  # checkpoints whose last (commit) word was programmed before the cut
        first = EVERY * complete
        assert (after.resume or {}).get("step", 0) == first, (k, after.resume)
        assert code == 0 and after.done is not None, (k, after.lines[-3:])
        assert [s["index"] for s in after.steps] == list(range(first, STEPS))
        assert [s["loss"] for s in after.steps] == ref.losses[first:], k
        assert after.params_crc == ref.checksum, k


@needs_qemu
def test_a_finished_run_resumes_at_its_last_step_and_sim_starts_fresh(tmp_path):
    build = _build("stm32f746", tmp_path)
    ref = _reference(build)
    _run(build, "stm32f746", tmp_path)
    again, code = _run(build, "stm32f746", tmp_path)
    assert code == 0 and again.resume == {"step": STEPS, "seq": 3} and again.steps == []
    assert again.params_crc == ref.checksum  # the trained state came back from flash
    r = CliRunner().invoke(main, ["sim", str(build)])  # sim: a fresh flash each time, from step 0
    assert r.exit_code == 0 and f"{STEPS} training steps: every loss" in r.stdout, r.stderr
    assert "the trained state saved to flash after steps 2, 4, 6" in r.stdout
    r = CliRunner().invoke(main, ["sim", str(build), "--json"])
    assert [c["step"] for c in json.loads(r.stdout)["checkpoints"]] == [2, 4, 6]


@needs_qemu
def test_another_models_checkpoint_is_not_restored(tmp_path):
    """The header carries the build's model id: a firmware of another model (here the same network at another
    learning rate, so other multipliers in the generated C) starts fresh instead of loading foreign state."""
    a = _build("stm32f746", tmp_path / "a")
    b = _build("stm32f746", tmp_path / "b", lr=0.05)
    _run(a, "stm32f746", tmp_path / "flash")
    again, code = _run(a, "stm32f746", tmp_path / "flash")
    assert again.resume == {"step": STEPS, "seq": 3}
    other, code = _run(b, "stm32f746", tmp_path / "flash")
    assert code == 0 and other.resume is None and [s["index"] for s in other.steps] == list(range(STEPS))


def test_the_plan_and_the_links_count_the_slots(tmp_path):
    for board in ("stm32f746", "nrf52840", "stm32h743"):  # each board's writer compiles into its real-board image
        out = tmp_path / board
        r = CliRunner().invoke(main, ["build", "--board", board, "--model", "digits-cnn", "--update", "last-1",
                                      "--checkpoint-every", "5", "--out", str(out)])
        assert r.exit_code == 0, r.stderr
        c = load_board(board).checkpoint
        plan = json.loads((out / "plan.json").read_text())
        assert plan["checkpoint_bytes"] == c.bytes == 2 * c.slots[0].length
        assert plan["flash_bytes"] > c.bytes
        link = (out / "firmware" / f"link_{board}.ld").read_text()
        assert f"LENGTH = {c.slots[0].origin - load_board(board).flash[0].origin}" in link
        header = (out / "firmware" / "tg_board.h").read_text()
        assert "TG_FLASH_RAM" in header and f"0x{c.slots[0].origin:08X}UL" in header
    r = CliRunner().invoke(main, ["plan", "--board", "nrf52840", "--model", "digits-cnn", "--update", "last-1",
                                  "--checkpoint-every", "5", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["checkpoint_bytes"] == 2 * 65536, r.stderr


def test_checkpoints_between_accumulated_updates_are_refused(tmp_path):
    """A checkpoint must fall where no update is half accumulated (without training: README's misuse table)."""
    r = CliRunner().invoke(main, ["build", "--board", "stm32f746", "--model", "digits-cnn", "--update", "last-1",
                                  "--accumulate", "2", "--checkpoint-every", "5", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "multiple of --accumulate (2)" in r.stderr
