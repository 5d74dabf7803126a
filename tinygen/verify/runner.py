"""The one runner: execute generated C on a target and return what it printed, parsed.

Every path that runs generated code goes through here (`tinygen verify`, `tinygen sim`, the
benchmarks' host training, the tests' harnesses), in the manner of microTVM's AOTTestRunner:
a `Program` names the generated sources, the host harness that drives them (forward or
training) and the kernel implementation; `run` builds it for a target and returns a
`RunResult`; `tinygen.verify.compare` judges that against the NumPy reference.

Targets: "host" (-O2, no sanitizers: benchmarks), "host-asan" (-O1, ASan+UBSan, -Werror:
every comparison), "qemu" and "renode" (the firmware of a build directory, `run_firmware`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tinygen.codegen.firmware import FW_DIR, QEMU_ELF, hw_elf_name, qemu_args, renode_files
from tinygen.codegen.forward import environment
from tinygen.errors import BuildError, TinygenError
from tinygen.paths import data_dir
from tinygen.targets.armbuild import check_elf
from tinygen.targets.boards import load_board
from tinygen.targets.hostbuild import compile_host, run_host
from tinygen.targets.process import run_streaming

HOST_TARGETS = ("host", "host-asan")
EMULATORS = ("qemu", "renode")
TARGETS = HOST_TARGETS + EMULATORS
QEMU = "qemu-system-arm"
RENODE = "renode"


@dataclass(frozen=True)
class KernelImpl:
    """A kernel implementation: what the host build adds to compile it (flags, sources, include dirs)."""

    name: str
    cflags: tuple[str, ...] = ()
    sources: tuple[Path, ...] = ()
    include_dirs: tuple[Path, ...] = ()


# The implementations every kernel test runs through (tests/conftest.py parametrizes over these keys).
# "portable" is the templates' C99 loops. "dsp" is the kernels' DSP-extension paths (the ones a Cortex-M4/M7
# firmware runs, cmsis_glue/tg_dsp.h) compiled on the host with exact C definitions of SXTB16 and SMLAD.
KERNEL_IMPLS: dict[str, KernelImpl] = {"portable": KernelImpl("portable"),
                                       "dsp": KernelImpl("dsp", cflags=("-DTG_DSP_PORTABLE",))}


def kernel_impl(name: str) -> KernelImpl:
    if name not in KERNEL_IMPLS:
        raise TinygenError(f"unknown kernel implementation {name!r}; choose one of {', '.join(KERNEL_IMPLS)}")
    return KERNEL_IMPLS[name]


@dataclass
class Program:
    """Generated sources (`src/*.c`) driven by a host harness: "forward" (host/main_host.c.j2:
    inputs in, outputs out) or "train" (host/train_host.c.j2: steps, records, parameters)."""

    src: Path
    workdir: Path
    kind: str = "forward"
    kernels: str = "portable"
    include_dirs: tuple[Path, ...] = ()  # default: src and the project's cmsis_glue
    record: bool = True  # training: print every step-1 gradient (-DTG_RECORD); off for fast runs

    def binary(self, target: str) -> Path:
        name = "tg_host" if self.kind == "forward" else "tg_train_host"
        return Path(self.workdir) / "host" / (name if target == "host-asan" else f"{name}_fast")


@dataclass
class Run:
    """What the firmware printed (`TG ...` lines of templates/firmware/main.c.j2), parsed."""

    lines: list[str]
    start: dict = field(default_factory=dict)
    clock: dict | None = None  # the `TG clock` line: sysclk, core, ... source, clock, fallback (firmware/tg_clock.c)
    samples: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    lr_halvings: list[int] = field(default_factory=list)  # steps whose update the learning-rate guard halved
    resume: dict | None = None  # {"step", "seq"}: the checkpoint restored at boot
    checkpoints: list[dict] = field(default_factory=list)  # {"step", "seq", "slot"} of each checkpoint saved
    params_crc: int | None = None
    trained: list[dict] = field(default_factory=list)  # --dump-trained: {"index", "crc", "out"?} after training
    dumps: dict[str, dict] = field(default_factory=dict)  # --dump-trained: name -> {"bytes", "crc", "hex": [...]}
    stack: dict = field(default_factory=dict)
    done: dict | None = None
    exit_status: int | None = None
    failures: list[str] = field(default_factory=list)
    profile: list[dict] = field(default_factory=list)  # {"fn", "root", "calls", "count"}: profile builds
    profile_dropped: int = 0  # spans the profile hooks could not record
    selection: list[dict] = field(default_factory=list)  # --update on-device: {"candidate", "layer", "channels"}
    selected: dict | None = None  # ... and {"samples", "count"} of its selection pass


@dataclass
class RunResult:
    """Everything a run reported, in one shape for every target."""

    target: str
    outputs: list[np.ndarray | None] = field(default_factory=list)  # per sample, flat int8 (None: only a CRC)
    crcs: list[int | None] = field(default_factory=list)  # per sample CRC-32 of its outputs (firmware)
    losses: list[int] = field(default_factory=list)  # per training step, Q16
    step_samples: list[int] = field(default_factory=list)  # the sample each training step used
    lr_halvings: list[int] = field(default_factory=list)  # steps whose update the learning-rate guard halved
    grads: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict)  # record id -> (exponent, values)
    dw: dict[int, dict[int, int]] = field(default_factory=dict)  # record id -> {weight index: gradient}
    params: dict[str, bytes] = field(default_factory=dict)  # trained parameters by C name
    checksum: int | None = None  # FNV-1a (host) / firmware checksum of the trained parameters
    preds: list[int] = field(default_factory=list)  # predicted class per test sample
    counts: list[int] = field(default_factory=list)  # instructions/cycles per inference (emulators)
    step_counts: list[int] = field(default_factory=list)  # instructions/cycles per training step
    stack: dict = field(default_factory=dict)
    exit_status: int | None = None
    seconds: float = 0.0
    firmware: Run | None = None  # the firmware's full parsed output (emulators)
    selection: list[int] | None = None  # --update on-device: the channels the device chose, per candidate


# ---------------------------------------------------------------------------
# Host


def _main_c(p: Program) -> Path:
    template = "host/main_host.c.j2" if p.kind == "forward" else "host/train_host.c.j2"
    main_c = Path(p.workdir) / "host" / ("main_host.c" if p.kind == "forward" else "train_host.c")
    main_c.parent.mkdir(parents=True, exist_ok=True)
    main_c.write_text(environment().get_template(template).render())
    return main_c


def compile_program(p: Program, target: str = "host-asan") -> Path:
    """Build the host binary of `p` for a host target; returns its path."""
    if target not in HOST_TARGETS:
        raise TinygenError(f"{target!r} is not a host target; choose one of {', '.join(HOST_TARGETS)}")
    if p.kind not in ("forward", "train"):
        raise TinygenError(f"unknown program kind {p.kind!r}; choose forward or train")
    impl = kernel_impl(p.kernels)
    src = Path(p.src)
    includes = list(p.include_dirs or (src, data_dir("cmsis_glue"))) + list(impl.include_dirs)
    extra = list(impl.cflags) + (["-DTG_RECORD"] if p.kind == "train" and p.record and target == "host-asan" else [])
    sources = sorted(src.glob("*.c")) + list(impl.sources) + [_main_c(p)]
    return compile_host(sources, includes, p.binary(target), extra=extra, fast=target == "host")


def compile_programs(programs: list[Program], target: str = "host-asan", jobs: int | None = None) -> list[Path]:
    """Build many programs at once (one compiler process per program, `jobs` at a time)."""
    jobs = jobs or min(len(programs), os.cpu_count() or 1) or 1
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda p: compile_program(p, target), programs))


def write_samples(path: Path, x: np.ndarray, labels: np.ndarray) -> None:
    """The training harness's sample file: int8 input, then an int32 class (cross-entropy) or int8 targets (MSE)."""
    with open(path, "wb") as f:
        for xi, yi in zip(x, labels, strict=True):
            f.write(np.ascontiguousarray(xi, dtype=np.int8).tobytes())
            yi = np.asarray(yi)
            f.write(yi.astype(np.int8).tobytes() if yi.ndim else np.int32(yi).astype("<i4").tobytes())


def parse_training(text: str, result: RunResult) -> RunResult:
    """The training harness's lines: `loss`, `lr_halved`, `grad`, `rec`, `param` (hex on the next line),
    `checksum`, `pred`."""
    lines = text.splitlines()
    k = 0
    while k < len(lines):
        parts = lines[k].split()
        if not parts:
            pass
        elif parts[0] == "loss":
            result.losses.append(int(parts[2]))
        elif parts[0] == "lr_halved":
            result.lr_halvings.append(int(parts[1]))
        elif parts[0] == "grad":
            result.grads[int(parts[1])] = (int(parts[2]), np.array(parts[4:], dtype=np.int64))
        elif parts[0] == "rec":
            result.dw.setdefault(int(parts[1]), {})[int(parts[2])] = int(parts[3])
        elif parts[0] == "param":
            k += 1
            result.params[parts[1]] = bytes.fromhex(lines[k]) if k < len(lines) and int(parts[2]) else b""
        elif parts[0] == "checksum":
            result.checksum = int(parts[1])
        elif parts[0] == "pred":
            result.preds.append(int(parts[1]))
        elif parts[0] == "select":
            result.selection = (result.selection or []) + [int(parts[2])]
        k += 1
    return result


def run(p: Program, target: str = "host-asan", x: np.ndarray | None = None, labels: np.ndarray | None = None,
        steps: int = 0, x_test: np.ndarray | None = None, binary: Path | None = None, progress=None) -> RunResult:
    """Build (unless `binary` is given) and run `p` on a host target.

    forward: every input of `x` -> `outputs`. train: `steps` steps on (x[s % len(x)], labels[...]) in order,
    then (with `x_test`) the predicted class of every test sample; the harness's `TG step` lines go to
    `progress` as the steps run."""
    binary = binary or compile_program(p, target)
    work = Path(p.workdir)
    result = RunResult(target)
    t0 = time.monotonic()
    if p.kind == "forward":
        fin, fout = work / "in.bin", work / "out.bin"
        x = np.ascontiguousarray(x, dtype=np.int8)
        fin.write_bytes(x.tobytes())
        run_host(binary, [str(fin), str(fout)])
        got = np.frombuffer(fout.read_bytes(), dtype=np.int8)
        n = len(x)
        per = got.size // n if n and got.size % n == 0 else None
        result.outputs = [got[i * per:(i + 1) * per] for i in range(n)] if per is not None else [got]
    else:
        samples, out = work / "samples.bin", work / "train_out.txt"
        write_samples(samples, x, labels)
        args = [str(samples), str(steps), str(out)]
        if x_test is not None:
            write_samples(work / "test.bin", x_test, np.zeros(len(x_test), dtype=np.int32))
            args.append(str(work / "test.bin"))
        run_host(binary, args, timeout=1800, on_line=progress)
        parse_training(out.read_text(), result)
        result.step_samples = [s % len(x) for s in range(len(result.losses))]
    result.exit_status = 0
    result.seconds = time.monotonic() - t0
    return result


# ---------------------------------------------------------------------------
# Emulators: the firmware of a build directory

_KV = re.compile(r"(\w+)=(\S+)")


def _kv(text: str) -> dict:
    return {k: v for k, v in _KV.findall(text)}


def _num(v: str) -> int:
    return int(v, 16) if v.startswith("0x") else int(v)


def _after_training(fw: Run, words: list[str], kv: dict) -> dict | None:
    """A --dump-trained firmware's `TG trained sample I ...` line, or its `TG dump NAME ...` line: returned, the
    frame that the `TG hex` lines after it fill."""
    if words[1] == "trained" and len(words) > 3 and words[3].isdigit():
        t = {"index": int(words[3]), "crc": _num(kv.get("crc", "0x0"))}
        if "out" in kv:
            t["out"] = [int(v) for v in kv["out"].split(",")]
        fw.trained.append(t)
    elif words[1] == "dump" and len(words) > 2 and kv.get("bytes", "").isdigit() and "crc" in kv:
        fw.dumps[words[2]] = {"bytes": int(kv["bytes"]), "crc": _num(kv["crc"]), "hex": []}
        return fw.dumps[words[2]]
    return None


def _record_line(fw: Run, kind: str, kv: dict, words: list[str]) -> None:
    """A `TG select` / `TG selected` line (the device's selection), a `TG lr halved` line (the learning-rate guard),
    the `TG params` checksum, a `TG resume` / `TG checkpoint`
    line (checkpointing builds) or a `TG profile` line (firmware/tg_profile.c: one function's span under one root,
    or the count of spans dropped)."""
    if kind == "select":
        if all(kv.get(k, "").isdigit() for k in ("candidate", "layer", "channels")):
            fw.selection.append({k: int(kv[k]) for k in ("candidate", "layer", "channels")})
    elif kind == "selected":
        if kv.get("samples", "").isdigit():
            fw.selected = {"samples": int(kv["samples"]), "count": _num(kv.get("instr", kv.get("cycles", "0")))}
    elif kind == "lr":
        if len(words) > 2 and words[2] == "halved" and kv.get("step", "").isdigit():
            fw.lr_halvings.append(int(kv["step"]))
    elif kind == "params":
        if "checksum" in kv or "crc" in kv:
            fw.params_crc = _num(kv.get("checksum", kv.get("crc", "0")))
    elif kind == "profile" and "fn" in kv:
        fw.profile.append({"fn": _num(kv["fn"]), "root": _num(kv["root"]), "calls": int(kv["calls"]),
                           "count": _num(kv.get("instr", kv.get("cycles", "0")))})
    elif kind == "profile" and "dropped" in kv:
        fw.profile_dropped = int(kv["dropped"])
    elif kind != "profile" and all(v.isdigit() for v in kv.values()) and "step" in kv:
        record = {k: int(v) for k, v in kv.items()}
        if kind == "resume":
            fw.resume = record
        else:
            fw.checkpoints.append(record)


def _clock_line(line: str, kv: dict) -> dict:
    """A `TG clock` line: frequencies as ints, the words as text, and the fallback's reason (the parenthesis)."""
    out = {k: int(v) if v.isdigit() else v for k, v in kv.items()}
    if "fallback" in out:
        out["fallback"] = line[line.index("fallback=") + len("fallback="):].strip()
    return out


def parse_output(text: str) -> Run:
    """Parse the firmware's `TG ...` lines (other lines, e.g. QEMU's own messages, are kept but ignored)."""
    lines = [ln.rstrip("\r") for ln in text.splitlines()]
    fw = Run(lines)
    dump = None  # the frame the `TG hex` lines belong to
    for ln in lines:
        if not ln.startswith("TG "):
            continue
        words = ln.split()
        kind = words[1] if len(words) > 1 else ""
        kv = _kv(ln)
        if kind == "hex" and dump is not None and len(words) == 3:
            dump["hex"].append(words[2])
            continue
        dump = None
        if kind == "start":
            fw.start = kv
        elif kind == "clock":
            fw.clock = _clock_line(ln, kv)
        elif kind == "sample" and len(words) > 2 and words[2].isdigit():
            s = {"index": int(words[2]), "label": int(kv.get("label", "-1")), "crc": _num(kv.get("crc", "0x0")),
                 "ok": kv.get("ok") == "1", "count": _num(kv.get("instr", kv.get("cycles", "0")))}
            if "out" in kv:
                s["out"] = [int(v) for v in kv["out"].split(",")]
            fw.samples.append(s)
        elif kind == "step" and len(words) > 2 and words[2].isdigit():
            fw.steps.append({"index": int(words[2]), "sample": int(kv.get("sample", "-1")),
                             "label": int(kv.get("label", "-1")), "loss": int(kv.get("loss", "0")),
                             "count": _num(kv.get("instr", kv.get("cycles", "0")))})
        elif kind in ("trained", "dump"):
            dump = _after_training(fw, words, kv)
        elif kind in ("lr", "params", "resume", "checkpoint", "profile", "select", "selected"):
            _record_line(fw, kind, kv, words)
        elif kind == "stack":
            fw.stack = {k: int(v) for k, v in kv.items()}
        elif kind == "done":
            fw.done = kv
        elif kind == "exit" and len(words) > 2:
            fw.exit_status = int(words[2])
        elif kind == "FAIL":
            fw.failures.append(ln[len("TG FAIL "):])
    return fw


def firmware_result(fw: Run, target: str, code: int | None, seconds: float) -> RunResult:
    """A parsed firmware run as a RunResult (outputs are None where the firmware printed only a CRC)."""
    samples = sorted(fw.samples, key=lambda s: s["index"])
    return RunResult(
        target,
        outputs=[np.array(s["out"], dtype=np.int64) if "out" in s else None for s in samples],
        crcs=[s["crc"] for s in samples], losses=[s["loss"] for s in fw.steps],
        step_samples=[s["sample"] for s in fw.steps], lr_halvings=fw.lr_halvings, checksum=fw.params_crc,
        counts=[s["count"] for s in samples], step_counts=[s["count"] for s in fw.steps], stack=fw.stack,
        exit_status=code, seconds=seconds, firmware=fw,
        selection=[s["channels"] for s in sorted(fw.selection, key=lambda s: s["candidate"])] if fw.selection else None)


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def run_qemu(build_dir: Path, board_name: str, timeout: float = 120.0, progress=None,
             workdir: Path | None = None, elf_name: str = QEMU_ELF) -> tuple[str, int | None, float]:
    """Run a build's QEMU image; returns (its output, exit code or None on timeout, wall seconds). Each output
    line goes to `progress` as it arrives, so a long run shows it is alive. QEMU runs in `workdir` (default: a
    fresh temporary folder), where a checkpointing firmware's flash stand-in keeps tg_flash.bin: the same
    `workdir` carries the flash from one run to the next, as a board's flash survives a reset."""
    fw = Path(build_dir) / FW_DIR
    elf = fw / "build" / elf_name
    if not elf.is_file():
        raise BuildError(f"{elf} does not exist: the firmware was not compiled (arm-none-eabi-gcc was missing "
                         f"at build time); run `make -C {fw} qemu` or rebuild")
    check_elf(elf, f"run `make -C {fw} qemu` or rebuild")
    if shutil.which(QEMU) is None:
        raise BuildError(f"{QEMU} is not on PATH; install it (Debian: apt-get install qemu-system-arm) to simulate")
    cmd = [QEMU, *qemu_args(load_board(board_name)), "-kernel", str(elf.resolve())]
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        return run_streaming(cmd, timeout, progress, cwd=workdir)
    with tempfile.TemporaryDirectory(prefix="tinygen-qemu-") as tmp:
        return run_streaming(cmd, timeout, progress, cwd=tmp)


class Progress:
    """How far a long run has got, on one stream (stderr): on a terminal (`tty`) a bar redrawn in place, otherwise
    a plain line at most every `every` seconds. It is fed a run's console lines as they arrive (counting the
    `TG sample` and `TG step` lines that the firmware and the host training harness print) or told of steps done
    elsewhere (`step`, the reference's replay); `begin` starts a phase with its total, `finish` ends the bar's line.
    `write` takes text without a line break added."""

    def __init__(self, write, tty: bool = False, every: float | None = None, prefix: str = ""):
        self.write, self.tty, self.prefix = write, tty, prefix
        self.every = every if every is not None else (0.1 if tty else 2.0)
        self.what, self.total = "", None
        self.t0 = self.last = time.monotonic()
        self.samples = self.steps = 0
        self.drawn = False

    def begin(self, what: str, total: int | None = None) -> None:
        self.finish()
        self.what, self.total = what, total
        self.t0 = self.last = time.monotonic()
        self.samples = self.steps = 0

    def __call__(self, line: str) -> None:
        self.samples += line.startswith("TG sample ")
        self.steps += line.startswith("TG step ")
        self._show()

    def step(self, n: int = 1) -> None:
        self.steps += n
        self._show()

    def finish(self) -> None:
        if self.drawn:
            self._show(force=True)
            self.write("\n")
            self.drawn = False

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        head = f"{self.prefix}{self.what + ': ' if self.what else ''}"
        secs = f"({now - self.t0:.0f} s)"
        samples = f"{self.samples:,} samples, " if self.samples else ""
        if self.tty and self.total:
            done = min(self.steps, self.total)
            bar = "#" * (30 * done // self.total)
            self.write(f"\r{head}[{bar:-<30}] {samples}{self.steps:,}/{self.total:,} training steps {secs}\x1b[K")
            self.drawn = True
        elif self.tty:
            self.write(f"\r{head}{samples}{self.steps:,} training steps {secs}\x1b[K")
            self.drawn = True
        else:
            of = f" of {self.total:,}" if self.total else ""
            self.write(f"{head}{samples}{self.steps:,}{of} training steps {secs}\n")


RENODE_ARGS = ("--disable-gui", "--console", "--plain")  # the monitor on stdin/stdout: no telnet port (1234)
_TG_EXIT = re.compile(r"^TG exit (-?\d+)\s*$", re.M)
_RENODE_ERROR = "There was an error executing command"  # how Renode's monitor reports a failed command


def _monitor_path(path: Path) -> str:
    """`path` as a path argument of Renode's monitor (spaces escaped, as Renode writes $ORIGIN)."""
    return "@" + str(Path(path).resolve()).replace(" ", "\\ ")


@dataclass
class RenodeRun:
    """What one headless Renode run produced."""

    uart: str  # the firmware's console
    status: int | None  # the firmware's exit status (its `TG exit` line), None when it did not get there
    seconds: float
    output: str  # Renode's own monitor and log output
    renode_status: int | None  # Renode's exit status when it exited by itself before the firmware finished


def run_renode(build_dir: Path, board_name: str, timeout: float = 120.0, progress=None) -> RenodeRun:
    """Run a build's .resc in Renode, headless with the monitor on a pipe (no port: runs can overlap) and the UART
    going to a file in a fresh temporary folder, until the firmware prints `TG exit`, Renode exits by itself or
    reports a failed command, or `timeout` seconds pass; then stop Renode. UART lines go to `progress` as they
    arrive."""
    board = load_board(board_name)
    resc = Path(build_dir) / FW_DIR / renode_files(board.name)["resc"]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tinygen-renode-") as tmp:
        uart_file, log_file = Path(tmp) / "uart.log", Path(tmp) / "renode.log"
        with open(log_file, "wb") as log:
            proc = subprocess.Popen([RENODE, *RENODE_ARGS], cwd=tmp, stdin=subprocess.PIPE, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        status, shown = None, 0
        try:
            proc.stdin.write(f"include {_monitor_path(resc)}\n{board.renode['uart']} CreateFileBackend "
                             f"{_monitor_path(uart_file)} true\nstart\n".encode())
            proc.stdin.flush()
            while time.monotonic() - t0 < timeout and proc.poll() is None:
                uart = uart_file.read_text(errors="replace") if uart_file.is_file() else ""
                lines = uart[:uart.rfind("\n") + 1].splitlines()
                for line in lines[shown:] if progress is not None else ():
                    progress(line)
                shown = len(lines)
                m = _TG_EXIT.search(uart)
                if m or _RENODE_ERROR in log_file.read_text(errors="replace"):
                    status = int(m.group(1)) if m else None
                    break
                time.sleep(0.1)
        finally:
            seconds, renode_status = time.monotonic() - t0, proc.poll()
            _stop_renode(proc)
        uart = uart_file.read_text(errors="replace") if uart_file.is_file() else ""
        return RenodeRun(uart, status, seconds, log_file.read_text(errors="replace"), renode_status)


def _stop_renode(proc: subprocess.Popen) -> None:
    """Ask Renode to quit (its monitor's `quit`), and kill its process group if it has not within 10 s."""
    try:
        proc.stdin.write(b"quit\n")
        proc.stdin.close()
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_firmware(build_dir: Path, board_name: str, emulator: str = "qemu",
                 timeout: float = 120.0, progress=None, elf_name: str = QEMU_ELF) -> tuple[RunResult, str]:
    """Run a build's firmware under QEMU or Renode until it exits; returns (result, machine description).

    Raises BuildError when the firmware fails, hangs or stops before its final line; whether its numbers are
    right is `tinygen.verify.compare`'s question."""
    fw = Path(build_dir) / FW_DIR
    board = load_board(board_name)
    if emulator == "qemu":
        text, code, secs = run_qemu(build_dir, board_name, timeout, progress, elf_name=elf_name)
        machine = f"QEMU {board.qemu['machine']}"
    elif emulator == "renode":
        if shutil.which(RENODE) is None:
            raise TinygenError(f"{RENODE} is not on PATH; install Renode {board.renode['version']} or newer "
                               "(https://renode.io) or simulate with --emulator qemu")
        elf = fw / "build" / hw_elf_name(board)
        if not elf.is_file():
            raise BuildError(f"{elf} does not exist: the firmware was not compiled; run `make -C {fw} firmware`")
        check_elf(elf, f"run `make -C {fw} firmware` or rebuild")
        repl = renode_files(board.name)["repl"]
        if not (fw / repl).is_file():
            raise TinygenError(f"{fw} has no {repl} (it was built by an older tinygen, for another Renode setup); "
                               "rebuild it with tinygen build")
        machine = f"Renode {board.renode['platform']}"
        r = run_renode(build_dir, board.name, timeout, progress)
        if r.status is None and (r.renode_status is not None or _RENODE_ERROR in r.output):
            how = "a command failed" if r.renode_status is None else f"it exited with status {r.renode_status}"
            raise BuildError(f"Renode stopped before the firmware finished: {how} (Renode's output: "
                             f"{_renode_problem(r.output)}; the firmware's last output: {_last_lines(r.uart)})")
        text, code, secs = r.uart, r.status, r.seconds
    else:
        raise TinygenError(f"unknown emulator {emulator!r}; choose qemu or renode")
    fwrun = parse_output(text)
    if fwrun.failures:
        raise BuildError(f"the firmware failed under {machine}: {fwrun.failures[0]}")
    if code is None:
        raise BuildError(f"the firmware did not finish under {machine} within {timeout:g} s (last output: "
                         f"{_last_lines(text)}); raise --timeout if the model is large")
    if fwrun.done is None:
        raise BuildError(f"the firmware stopped under {machine} with status {code} before its final line "
                         f"(last output: {_last_lines(text)})")
    return firmware_result(fwrun, emulator, code, secs), machine


def _renode_problem(output: str) -> str:
    """The lines of Renode's output that say what went wrong: from its first failed command or error, else the last."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    at = next((i for i, ln in enumerate(lines) if ln.startswith(_RENODE_ERROR) or "[ERROR]" in ln), None)
    return " | ".join(lines[at:at + 3]) if at is not None else _last_lines(output)


def last_lines(result: RunResult, n: int = 3) -> str:
    return _last_lines("\n".join(result.firmware.lines) if result.firmware else "", n)
