"""`tinygen sim DIR`: run the firmware in an emulator and hold its output to the NumPy reference.

QEMU (default): the board's mps2 stand-in runs DIR/firmware/build/tinygen-qemu.elf with
`-icount shift=0` (deterministic: one instruction per ns of virtual time, which the
firmware counts with SysTick) and semihosting for the exit status. Renode: the emitted
`<board>.resc` runs the real-map ELF on the board's own platform; the UART goes to a file.

The firmware prints `TG ...` lines (templates/firmware/main.c.j2); this module parses them,
reruns `tinygen.reference.forward` on the samples saved in firmware/samples.npz and compares every
output value (and its CRC-32). Training runs print `TG step` / `TG params` lines; the training reference replays the
same steps (or firmware/train_expected.json, when a build provides one) and every loss and
the checksum of the trained parameters must be equal.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tinygen.codegen.firmware import FW_DIR, QEMU_ELF, QEMU_INSTR_PER_TICK, SAMPLES_FILE, hw_elf_name, qemu_args
from tinygen.codegen.project import read_manifest
from tinygen.errors import BuildError, MismatchError, TinygenError
from tinygen.frontends import modelfile
from tinygen.reference import forward as reference
from tinygen.report import table
from tinygen.targets.boards import load_board
from tinygen.verify.check import load_trainer
from tinygen.verify.host_training import fnv1a, reference_params

QEMU = "qemu-system-arm"
RENODE = "renode"
TRAIN_EXPECTED = "train_expected.json"


@dataclass
class Run:
    """What the firmware printed, parsed."""

    lines: list[str]
    start: dict = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    params_crc: int | None = None
    stack: dict = field(default_factory=dict)
    done: dict | None = None
    exit_status: int | None = None
    failures: list[str] = field(default_factory=list)


_KV = re.compile(r"(\w+)=(\S+)")


def _kv(text: str) -> dict:
    return {k: v for k, v in _KV.findall(text)}


def _num(v: str) -> int:
    return int(v, 16) if v.startswith("0x") else int(v)


def parse_output(text: str) -> Run:
    """Parse the firmware's `TG ...` lines (other lines, e.g. QEMU's own messages, are kept but ignored)."""
    lines = [ln.rstrip("\r") for ln in text.splitlines()]
    run = Run(lines)
    for ln in lines:
        if not ln.startswith("TG "):
            continue
        words = ln.split()
        kind = words[1] if len(words) > 1 else ""
        kv = _kv(ln)
        if kind == "start":
            run.start = kv
        elif kind == "sample" and len(words) > 2 and words[2].isdigit():
            s = {"index": int(words[2]), "label": int(kv.get("label", "-1")), "crc": _num(kv.get("crc", "0x0")),
                 "ok": kv.get("ok") == "1", "count": _num(kv.get("instr", kv.get("cycles", "0")))}
            if "out" in kv:
                s["out"] = [int(v) for v in kv["out"].split(",")]
            run.samples.append(s)
        elif kind == "step" and len(words) > 2 and words[2].isdigit():
            run.steps.append({"index": int(words[2]), "sample": int(kv.get("sample", "-1")),
                              "label": int(kv.get("label", "-1")), "loss": int(kv.get("loss", "0")),
                              "count": _num(kv.get("instr", kv.get("cycles", "0")))})
        elif kind == "params" and ("checksum" in kv or "crc" in kv):
            run.params_crc = _num(kv.get("checksum", kv.get("crc", "0")))
        elif kind == "stack":
            run.stack = {k: int(v) for k, v in kv.items()}
        elif kind == "done":
            run.done = kv
        elif kind == "exit" and len(words) > 2:
            run.exit_status = int(words[2])
        elif kind == "FAIL":
            run.failures.append(ln[len("TG FAIL "):])
    return run


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


def _qemu_run(elf: Path, args: list[str], timeout: float) -> tuple[str, int | None, float]:
    """Run QEMU; returns (stdout + stderr, exit code or None on timeout, wall seconds)."""
    if shutil.which(QEMU) is None:
        raise BuildError(f"{QEMU} is not on PATH; install it (Debian: apt-get install qemu-system-arm) to simulate")
    t0 = time.monotonic()
    proc = subprocess.Popen([QEMU, *args, "-kernel", str(elf)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code = None
    return out + err, code, time.monotonic() - t0


def _renode_run(fw: Path, resc: Path, timeout: float) -> tuple[str, int | None, float]:
    """Run the .resc headless; poll the UART file backend until `TG exit`, then stop Renode."""
    if shutil.which(RENODE) is None:
        raise TinygenError(f"{RENODE} is not on PATH; install Renode (https://renode.io) or simulate with "
                           "--emulator qemu")
    log = fw / "renode_uart.log"
    for stale in fw.glob("renode_uart.log*"):
        stale.unlink()
    t0 = time.monotonic()
    proc = subprocess.Popen([RENODE, "--disable-gui", "--plain", str(resc)], cwd=fw,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    code = None
    try:
        while time.monotonic() - t0 < timeout:
            text = log.read_text(errors="replace") if log.is_file() else ""
            m = re.search(r"^TG exit (-?\d+)\s*$", text, re.M)
            if m:
                code = int(m.group(1))
                break
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    text = log.read_text(errors="replace") if log.is_file() else ""
    return text, code, time.monotonic() - t0


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def simulate(build_dir: Path, emulator: str = "qemu", timeout: float = 120.0) -> SimResult:
    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    fwinfo = manifest.get("firmware")
    fw = build_dir / FW_DIR
    if not fwinfo or not (fw / SAMPLES_FILE).is_file():
        raise TinygenError(f"{build_dir} has no firmware project; rebuild it with this version of tinygen build")
    board = load_board(manifest["board"])
    if emulator == "qemu":
        elf = fw / "build" / QEMU_ELF
        if not elf.is_file():
            raise BuildError(f"{elf} does not exist: the firmware was not compiled (arm-none-eabi-gcc was missing "
                             f"at build time); run `make -C {fw} qemu` or rebuild")
        text, code, secs = _qemu_run(elf, qemu_args(board), timeout)
        machine = f"QEMU {board.qemu['machine']}"
    elif emulator == "renode":
        if shutil.which(RENODE) is None:
            raise TinygenError(f"{RENODE} is not on PATH; install Renode (https://renode.io) or simulate with "
                               "--emulator qemu")
        elf = fw / "build" / hw_elf_name(board)
        if not elf.is_file():
            raise BuildError(f"{elf} does not exist: the firmware was not compiled; run `make -C {fw} firmware`")
        text, code, secs = _renode_run(fw, fw / f"{board.name}.resc", timeout)
        machine = f"Renode {board.renode['platform']}"
    else:
        raise TinygenError(f"unknown emulator {emulator!r}; choose qemu or renode")

    run = parse_output(text)
    if run.failures:
        raise BuildError(f"the firmware failed under {machine}: {run.failures[0]}")
    if code is None:
        raise BuildError(f"the firmware did not finish under {machine} within {timeout:g} s (last output: "
                         f"{_last_lines(text)}); raise --timeout if the model is large")
    if run.done is None:
        raise BuildError(f"the firmware stopped under {machine} with status {code} before its final line "
                         f"(last output: {_last_lines(text)})")

    _compare_forward(build_dir, manifest, run)
    if run.steps or fwinfo.get("train"):
        _compare_training(build_dir, manifest, run)
    if code != 0:
        raise MismatchError(f"the firmware exited with status {code} although its outputs match the reference "
                            f"(last output: {_last_lines(text)})")
    counter = run.start.get("counter", "instr")
    return SimResult(emulator, machine, board.name, board.clock_hz, counter, run, fwinfo.get("samples_source", ""),
                     secs)


def _compare_forward(build_dir: Path, manifest: dict, run: Run) -> None:
    model = modelfile.load(build_dir / manifest["model_file"])
    with np.load(build_dir / FW_DIR / SAMPLES_FILE) as z:
        x = z["x"]
    expected = reference.run_batch(model, x).reshape(len(x), -1)
    if len(run.samples) != len(x):
        raise MismatchError(f"the firmware reported {len(run.samples)} samples; {len(x)} are embedded")
    for s in run.samples:
        i = s["index"]
        want = expected[i]
        want_crc = zlib.crc32(want.astype(np.int8).tobytes())
        if "out" in s:
            got = np.array(s["out"], dtype=np.int64)
            if got.size != want.size or not np.array_equal(got, want.astype(np.int64)):
                j = int(np.argmax(got != want)) if got.size == want.size else 0
                raise MismatchError(f"sample {i}: the firmware's outputs differ from the reference; first at element "
                                    f"{j}: firmware {got[j] if got.size else 'none'} vs reference {int(want[j])}")
        if s["crc"] != want_crc:
            raise MismatchError(f"sample {i}: the firmware's output checksum 0x{s['crc']:08x} differs from the "
                                f"reference's 0x{want_crc:08x}")


def _training_reference(build_dir: Path, manifest: dict, run: Run) -> tuple[list[int], int | None]:
    """(losses, parameter checksum) the reference gives for the steps the firmware ran.

    firmware/train_expected.json ({"losses": [...], "params_checksum": "0x..."}) wins when present;
    otherwise the training reference (tinygen.reference.training, via the helpers `tinygen verify` uses) replays
    the same samples in the same order from firmware/samples.npz."""
    path = build_dir / FW_DIR / TRAIN_EXPECTED
    if path.is_file():
        exp = json.loads(path.read_text())
        v = exp.get("params_checksum")
        return [int(x) for x in exp.get("losses", [])], (_num(v) if isinstance(v, str) else v)
    if "train" not in manifest:
        raise TinygenError(f"the firmware trained but {build_dir} has no training reference (no 'train' in its "
                           f"manifest and no {path}); rebuild with tinygen build")

    _, trainer = load_trainer(build_dir, manifest)
    with np.load(build_dir / FW_DIR / SAMPLES_FILE) as z:
        x, labels = z["x"], z["labels"]
    losses = [int(trainer.step(x[s["sample"]], int(labels[s["sample"]]))) for s in run.steps]
    params = reference_params(trainer)
    return losses, fnv1a([params[n] for n in manifest["train"]["params"]])


def _compare_training(build_dir: Path, manifest: dict, run: Run) -> None:
    losses, checksum = _training_reference(build_dir, manifest, run)
    got = [s["loss"] for s in run.steps]
    if len(got) != len(losses):
        raise MismatchError(f"the firmware ran {len(got)} training steps; the reference has {len(losses)}")
    for k, (g, w) in enumerate(zip(got, losses, strict=True)):
        if g != w:
            raise MismatchError(f"training step {k}: the firmware's loss {g} differs from the reference's {w}")
    if checksum is not None and run.params_crc != checksum:
        got_sum = "none" if run.params_crc is None else f"0x{run.params_crc:08x}"
        raise MismatchError(f"after {len(got)} training steps the firmware's parameter checksum {got_sum} differs "
                            f"from the reference's 0x{checksum:08x}")


def format_report(r: SimResult) -> str:
    mhz = r.clock_hz / 1e6
    unit = "instructions" if r.counter == "instr" else "cycles"
    est = f"est. ms @ {mhz:g} MHz"
    rows = [[s["index"], s["label"], "bit-exact", s["count"], round(s["count"] / r.clock_hz * 1e3, 3)]
            for s in r.run.samples]
    lines = [table(["sample", "label", "vs reference", unit, est], rows, "rrlrr")]
    if r.run.steps:
        rows = [[s["index"], s["sample"], s["label"], s["loss"], f"{s['loss'] / 65536:.4f}", s["count"],
                 round(s["count"] / r.clock_hz * 1e3, 3)] for s in r.run.steps]
        lines += ["", table(["step", "sample", "label", "loss (Q16)", "loss", unit, est], rows, "rrrrrrr")]
    if len(r.run.steps) >= 2:
        losses = [s["loss"] / 65536 for s in r.run.steps]
        k = max(1, len(losses) // 4)
        step_counts = [s["count"] for s in r.run.steps]
        lines.append(f"loss: mean of the first {k} steps {sum(losses[:k]) / k:.4f} -> mean of the last {k} steps "
                     f"{sum(losses[-k:]) / k:.4f}; {sum(step_counts) // len(step_counts):,} {unit} per training step "
                     f"(mean)")
    counts = [s["count"] for s in r.run.samples]
    st = r.run.stack
    if r.counter == "instr":
        how = f"counted to {QEMU_INSTR_PER_TICK} by SysTick under -icount shift=0"
        est_note = (f"the ms column is an estimate (one instruction per cycle at {mhz:g} MHz): emulators count "
                    "instructions, not cycles")
    else:
        how = "from DWT CYCCNT"
        est_note = f"ms = cycles / {mhz:g} MHz"
    lines.append("")
    lines.append(f"sim: {r.machine} (for {r.board}): {len(counts)} of {len(counts)} samples ({r.samples_source}) "
                 f"bit-exact with the reference"
                 + (f"; {len(r.run.steps)} training steps: every loss and the trained-parameter checksum "
                    f"0x{r.run.params_crc or 0:08x} equal the reference's" if r.run.steps else "")
                 + f"; {min(counts):,}..{max(counts):,} {unit} per inference, {how}; stack {st.get('used', 0):,} "
                 f"of {st.get('size', 0):,} bytes used; {est_note}")
    return "\n".join(lines)
