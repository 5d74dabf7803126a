"""`tinygen sim DIR`: run the firmware in an emulator and hold its output to the NumPy reference.

QEMU (default): the board's mps2 stand-in runs DIR/firmware/build/tinygen-qemu.elf with
`-icount shift=0` (deterministic: one instruction per ns of virtual time, which the
firmware counts with SysTick) and semihosting for the exit status. Renode: the emitted
`<board>.resc` runs the real-map ELF on the board's own platform (the emitted `<board>.repl`, whose
DWT stand-in counts instructions); the UART goes to a file.

The firmware prints `TG ...` lines (templates/firmware/main.c.j2); the one runner
(`tinygen.verify.runner.run_firmware`) runs and parses them, and the one compare
(`tinygen.verify.compare`) holds every output value (and its CRC-32) to `tinygen.reference.forward`
on the samples saved in firmware/samples.npz. Training runs print `TG step` / `TG params`
lines; the training reference replays the same steps (or firmware/train_expected.json, when a
build provides one) and every loss and the checksum of the trained parameters must be equal.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinygen.codegen.firmware import FW_DIR, QEMU_ELF, QEMU_INSTR_PER_TICK, SAMPLES_FILE, renode_files
from tinygen.codegen.project import TRAINED_FILE, load_trainer, read_manifest
from tinygen.errors import MismatchError, TinygenError
from tinygen.frontends import modelfile
from tinygen.reference import forward as reference
from tinygen.report import loss_trend, table
from tinygen.targets.boards import load_board
from tinygen.verify.compare import TrainingExpectation, compare_forward, compare_training, expect_training
from tinygen.verify.runner import Run, RunResult, last_lines, parse_output, run_firmware

__all__ = ["Run", "SimResult", "format_report", "parse_output", "run_clock", "simulate"]

TRAIN_EXPECTED = "train_expected.json"


@dataclass
class SimResult:
    emulator: str
    machine: str
    board: str
    clock_hz: int
    counter: str
    run: Run
    samples_source: str
    seconds: float
    result: RunResult | None = None
    clock_source: str = "the board file"  # where clock_hz comes from (see run_clock)
    trained: str | None = None  # --dump-trained: what the dump held and where it was saved
    selection: list[dict] | None = None  # --update on-device: per candidate its layer's name and the channels chosen

    @property
    def unit(self) -> str:
        """What the counts count: instructions under an emulator (QEMU's SysTick under -icount, or under Renode the
        DWT stand-in of the emitted .repl), cycles only on hardware."""
        return "instructions" if self.counter == "instr" or self.emulator == "renode" else "cycles"


def simulate(build_dir: Path, emulator: str = "qemu", timeout: float = 120.0, progress=None,
             elf_name: str = QEMU_ELF) -> SimResult:
    """Run the firmware (QEMU: the image `elf_name`) and hold every output, loss and checksum to the reference."""
    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    fwinfo = manifest.get("firmware")
    fw = build_dir / FW_DIR
    if not fwinfo or not (fw / SAMPLES_FILE).is_file():
        raise TinygenError(f"{build_dir} has no firmware project; rebuild it with this version of tinygen build")
    board = load_board(manifest["board"])
    if progress is not None:
        progress.begin(emulator, fwinfo.get("train_steps") if fwinfo.get("train") else None)
    result, machine = run_firmware(build_dir, board.name, emulator, timeout, progress, elf_name)

    if progress is not None:
        progress.finish()
    model = modelfile.load(build_dir / manifest["model_file"])
    with np.load(fw / SAMPLES_FILE) as z:
        x = z["x"]
    compare_forward(result, reference.run_batch(model, x), who="the firmware")
    trained = None
    if result.losses or fwinfo.get("train"):
        expect, trainer = _training_reference(build_dir, manifest, result)
        compare_training(result, expect, who="the firmware")
        if fwinfo.get("dump_trained"):
            trained = _save_trained(build_dir, manifest, result, expect, trainer, x)
    if result.exit_status != 0:
        raise MismatchError(f"the firmware exited with status {result.exit_status} although its outputs match the "
                            f"reference (last output: {last_lines(result)})")
    counter = result.firmware.start.get("counter", "instr")
    clock_hz, clock_source = run_clock(result.firmware, fwinfo, board.clock_hz)
    selection = [dict(s, name=model.layers[s["layer"]].name) for s in result.firmware.selection
                 if 0 <= s["layer"] < len(model.layers)] or None
    return SimResult(emulator, machine, board.name, clock_hz, counter, result.firmware,
                     fwinfo.get("samples_source", ""), result.seconds, result, clock_source, trained, selection)


def _save_trained(build_dir: Path, manifest: dict, result: RunResult, expect: TrainingExpectation, trainer,
                  x: np.ndarray) -> str:
    """Check a --dump-trained firmware's dump and save it to DIR/trained.npz (what `tinygen export` reads): every
    trained parameter's frame (its size and CRC-32) and bytes, equal to the reference's; every sample's outputs
    after training, equal to the reference's trained model (saved as the firmware printed them, or where it printed
    only their CRC-32, as the reference's: the same bits)."""
    if trainer is None:
        raise TinygenError(f"{build_dir} checks its training against {TRAIN_EXPECTED}, which has no trained values; "
                           "rebuild without it to save the dump")
    fw, names, params = result.firmware, manifest["train"]["params"], {}
    for name in names:
        d = fw.dumps.get(name)
        if d is None:
            raise MismatchError(f"the firmware dumped no {name} after training (last output: {last_lines(result)})")
        try:
            data = bytes.fromhex("".join(d["hex"]))
        except ValueError:
            data = b""
        if len(data) != d["bytes"] or zlib.crc32(data) != d["crc"]:
            raise MismatchError(f"the firmware's dump of {name} is damaged in transit ({len(data)} of {d['bytes']} "
                                f"bytes, CRC-32 0x{zlib.crc32(data):08x}, framed 0x{d['crc']:08x}); run sim again")
        if data != expect.params[name]:
            raise MismatchError(f"the firmware's trained {name} differs from the reference's")
        params[name] = np.frombuffer(data, np.uint8)
    want = reference.run_batch(trainer.trained_model(), x)
    if len(fw.trained) != len(x):
        raise MismatchError(f"the firmware reported {len(fw.trained)} of {len(x)} samples after training "
                            f"(last output: {last_lines(result)})")
    after = RunResult("firmware", outputs=[np.array(t["out"], np.int64) if "out" in t else None for t in fw.trained],
                      crcs=[t["crc"] for t in fw.trained])
    compare_forward(after, want, who="the firmware after training")
    printed = all(out is not None for out in after.outputs)  # else each output's CRC-32 matched the reference's
    outputs = np.stack(after.outputs) if printed else want.reshape(len(x), -1)
    np.savez(build_dir / TRAINED_FILE, x=x, outputs=outputs.astype(np.int8), **params)
    return (f"after training: {len(x)} samples' outputs and the {len(names)} trained parameters "
            f"({sum(p.size for p in params.values()):,} B, each framed with its CRC-32) equal the reference's; "
            f"saved to {build_dir / TRAINED_FILE} (tinygen export)")


def run_clock(run: Run, fwinfo: dict, board_hz: int) -> tuple[int, str]:
    """The core clock a run's millisecond estimates use, and where it comes from: the `TG clock` line's core
    clock where the firmware brought the clock tree up (Renode, hardware; the reset clock where it fell back), the
    real-board image's configured clock where the QEMU image skipped the bring-up, else (an older build) the
    board file's maximum."""
    clock = run.clock or {}
    if isinstance(clock.get("core"), int):
        fell = ", the reset clock its bring-up fell back to" if "fallback" in clock else ""
        return clock["core"], f"the core clock the firmware reported{fell}"
    if isinstance(clock.get("board_core"), int):
        return clock["board_core"], (f"the real-board image's configured core clock, --clock "
                                     f"{clock.get('clock', 'max')}; this image skipped the bring-up")
    built = (fwinfo.get("clock") or {}).get("core_hz")
    return (built, "the build's configured clock") if built else (board_hz, "the board file's maximum clock")


def _training_reference(build_dir: Path, manifest: dict, result: RunResult) -> tuple[TrainingExpectation, object]:
    """What the reference says the firmware's training steps must report, and the reference trainer after them
    (None where firmware/train_expected.json stands in).

    firmware/train_expected.json ({"losses": [...], "params_checksum": "0x...", optionally "lr_halvings":
    [steps]}) wins when present;
    otherwise the training reference replays the same samples in the same order from firmware/samples.npz."""
    path = build_dir / FW_DIR / TRAIN_EXPECTED
    if path.is_file():
        exp = json.loads(path.read_text())
        v = exp.get("params_checksum")
        halved = exp.get("lr_halvings")
        return TrainingExpectation([int(x) for x in exp.get("losses", [])], int(v, 0) if isinstance(v, str) else v,
                                   lr_halvings=None if halved is None else [int(s) for s in halved]), None
    if "train" not in manifest:
        raise TinygenError(f"the firmware trained but {build_dir} has no training reference (no 'train' in its "
                           f"manifest and no {path}); rebuild with tinygen build")
    _, trainer = load_trainer(build_dir, manifest)
    with np.load(build_dir / FW_DIR / SAMPLES_FILE) as z:
        x, labels = z["x"], z["labels"]
    return expect_training(trainer, x, labels.astype(int), result.step_samples, manifest["train"]["params"]), trainer


def _halvings(steps: list[int]) -> str:
    """The learning-rate guard's halvings, as a report clause ("" when it never halved)."""
    return f", the learning-rate guard's halvings (at steps {', '.join(map(str, steps))})" if steps else ""


def _counted(r: SimResult) -> tuple[str, str]:
    """How the counts were made, and what the ms column means."""
    mhz = r.clock_hz / 1e6
    estimate = (f"the ms column is an estimate from instruction counts (one instruction per cycle at {mhz:g} MHz, "
                f"{r.clock_source}): emulators count instructions, not cycles")
    if r.counter == "instr":
        return f"counted to {QEMU_INSTR_PER_TICK} by SysTick under -icount shift=0", estimate
    if r.emulator == "renode":
        repl = renode_files(r.board)["repl"]
        return (f"counted by the DWT stand-in of firmware/{repl} (Renode's executed-instruction count, exact to a "
                "translation block)", estimate)
    return "from DWT CYCCNT", f"ms = cycles / {mhz:g} MHz ({r.clock_source})"


def _measured(counts: list[int]) -> bool:
    """Whether the counter counted: a run whose counts are all 0 had none (a .repl without a DWT reads 0)."""
    return any(counts)


def _clock_text(clock: dict) -> str:
    """The `TG clock` line for the report: what the core ran at, or why the bring-up did not run or fell back."""
    if "board_core" in clock:
        return (f"bring-up skipped (the stand-in has no RCC); the real-board image configures "
                f"{clock['board_core'] / 1e6:g} MHz (--clock {clock.get('clock', 'max')})")
    buses = ", ".join(f"{k} {v / 1e6:g}" for k, v in clock.items()
                      if isinstance(v, int) and k not in ("core", "flash_ws"))
    text = (f"core {clock.get('core', 0) / 1e6:g} MHz ({buses} MHz) from {clock.get('source', '?')}, "
            f"--clock {clock.get('clock', '?')}")
    return text + (f"; the bring-up fell back: {clock['fallback']}" if "fallback" in clock else "")


def format_report(r: SimResult) -> str:
    mhz = r.clock_hz / 1e6
    unit = r.unit
    est = f"est. ms @ {mhz:g} MHz"
    counts = [s["count"] for s in r.run.samples]
    step_counts = [s["count"] for s in r.run.steps]
    measured = _measured(counts + step_counts)

    def cols(count: int) -> list:
        return [count, round(count / r.clock_hz * 1e3, 3)] if measured else ["-", "-"]
    rows = [[s["index"], s["label"], "bit-exact", *cols(s["count"])] for s in r.run.samples]
    lines = [table(["sample", "label", "vs reference", unit, est], rows, "rrlrr")]
    if r.selection:
        sel = r.run.selected or {"samples": 0, "count": 0}
        rows = [[s["candidate"], s["name"], s["channels"] or "frozen"] for s in r.selection]
        lines += ["", table(["candidate", "layer", "channels the device chose"], rows, "rlr"),
                  f"the device's selection pass: {sel['samples']} samples, {sel['count']:,} {unit} (the potential "
                  "pass and the greedy)"]
    if r.run.steps:
        rows = [[s["index"], s["sample"], s["label"], s["loss"], f"{s['loss'] / 65536:.4f}", *cols(s["count"])]
                for s in r.run.steps]
        lines += ["", table(["step", "sample", "label", "loss (Q16)", "loss", unit, est], rows, "rrrrrrr")]
    if len(r.run.steps) >= 2:
        trend = loss_trend([s["loss"] for s in r.run.steps])
        lines.append(f"{trend}; {sum(step_counts) // len(step_counts):,} {unit} per training step (mean)"
                     if measured else trend)
    st = r.run.stack
    how, est_note = _counted(r)
    if r.run.clock is not None:
        lines.append(f"clock: {_clock_text(r.run.clock)}")
    counted = (f"{min(counts):,}..{max(counts):,} {unit} per inference, {how}; " if measured else
               f"no {unit} counted (the counter read 0 throughout: the platform models no DWT); ")
    lines.append("")
    lines.append(f"sim: {r.machine} (for {r.board}): {len(counts)} of {len(counts)} samples ({r.samples_source}) "
                 f"bit-exact with the reference"
                 + (f"; the device's selection ({len(r.selection)} candidates) equals the reference's"
                    if r.selection else "")
                 + (f"; {len(r.run.steps)} training steps: every loss{_halvings(r.run.lr_halvings)} and the "
                    f"trained-parameter checksum 0x{r.run.params_crc or 0:08x} equal the reference's"
                    if r.run.steps else "")
                 + (f"; the trained state saved to flash after steps "
                    f"{', '.join(str(c['step']) for c in r.run.checkpoints)}" if r.run.checkpoints else "")
                 + f"; {counted}stack {st.get('used', 0):,} of {st.get('size', 0):,} bytes used"
                 + (f"; {est_note}" if measured else ""))
    if r.trained:
        lines.append(r.trained)
    return "\n".join(lines)
