"""`tinygen bench speed`: instructions per training step and per inference of the MIT models on QEMU.

Each configuration (model x published scheme x filter r x board) is built exactly as `tinygen build`
builds it (a 10-way head, the scheme as published, the board's flags), then run by `tinygen sim`'s
path (`tinygen.verify.sim.simulate`): the firmware is held bit for bit to the NumPy reference and
counts its own instructions (QEMU `-icount shift=0`, SysTick). Peak SRAM is the planner's figure
(the one `tinygen plan` prints); flash is the QEMU ELF's `.text + .rodata + .data`.

Emulators count instructions, not cycles: every millisecond figure here is instructions / clock.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tinygen.bench.suites import SCHEME_KEYS, _save
from tinygen.codegen.firmware import FirmwareOptions
from tinygen.codegen.project import write_project
from tinygen.errors import TinygenError
from tinygen.frontends.inputs import training_samples
from tinygen.ir.scheme import TrainConfig, load_scheme, with_path_filter
from tinygen.paths import shared_dir
from tinygen.planning.memory import check_fits, sram_budget
from tinygen.planning.report import build_plan
from tinygen.reference.training import Trainer
from tinygen.report import table
from tinygen.targets.boards import load_board
from tinygen.training.filtering import AUTO_SAMPLES, auto_filter_r
from tinygen.verify.profile import KIND_ORDER, run_profile
from tinygen.verify.sim import simulate
from tinygen.zoo.resolve import resolve_model

MODELS = ("mbv2-w0.35", "proxyless-w0.3", "mcunet-5fps")
# The published schemes: the smallest ("49kb") and the one the paper's latency figures used (~100 KB).
SCHEMES = {"49kb": {"mbv2": "49kb", "proxyless": "49kb", "mcunet": "49kb"},
           "100kb": {"mbv2": "99kb", "proxyless": "98kb", "mcunet": "99kb"}}
BOARDS = ("stm32f746", "nrf52840")
CLASSES = 10
SAMPLES = 2  # two inferences and two training steps per run: the counts repeat to within 0.1%
STEPS = 2
# Configurations also run as a profile image (where the instructions go): the board the anchor ran on, r = 1.
PROFILED = {"board": "stm32f746", "filter_r": 1}

# Measured on QEMU mps2-an500 with -icount shift=0 (DESIGN.md §7): MIT's TinyEngine code for MCUNet-5fps
# with its 49kb scheme, built -Ofast for the M7. Instructions per training step and per inference.
TINYENGINE = {("mcunet-5fps", "49kb", "stm32f746"): (106_400_000, 65_000_000)}
# The paper's training latency per sample on a real STM32F746 (ms; Lin et al. 2022, ~100 KB schemes).
PAPER_MS = {"mbv2-w0.35": 373, "proxyless-w0.3": 443, "mcunet-5fps": 546}


@dataclass
class SpeedRow:
    model: str
    scheme: str  # the published scheme's key, e.g. "mcunet/49kb"
    filter_r: int
    board: str
    step_instructions: int
    inference_instructions: int
    forward_macs: int
    mac_per_instr: float
    peak_sram_bytes: int
    flash_bytes: int
    clock_hz: int
    bit_exact: bool
    # `tinygen sim --profile` of the configuration (PROFILED ones): instructions per inference and per training
    # step by kind of work, and per function (layer, op, kind, instructions per run, forward MACs)
    breakdown: dict | None = None
    functions: list | None = None


def _scheme_spec(model: str, scheme: str) -> tuple[str, str]:
    root = shared_dir()
    if root is None:
        raise TinygenError("the speed benchmark needs ../shared/models/mit-tiny-training (not present)")
    key = SCHEME_KEYS[model]
    name = f"{key}/{SCHEMES[scheme][key]}"
    return f"{root}/models/mit-tiny-training/sparse_schemes.json#{name}", name


def measure(model_name: str, scheme: str, r: int | str, board_name: str, workdir: Path, timeout: float = 600.0,
            path_r: int = 1) -> SpeedRow:
    """Build one configuration into `workdir` and run it under QEMU; raises on any mismatch. `path_r`: the frozen
    layers on the gradient path filter too (`with_path_filter`). `r` "auto": each layer's r as `--filter-r auto`
    chooses it (no path filter)."""
    spec, name = _scheme_spec(model_name, scheme)
    board = load_board(board_name)
    model = resolve_model(model_name, CLASSES)
    if r == "auto":
        trainer = Trainer(model, load_scheme(spec, model, 1), TrainConfig())
        x, y, _ = training_samples(model, AUTO_SAMPLES)
        trainer = auto_filter_r(trainer, x, y)[0]
    else:
        trainer = Trainer(model, with_path_filter(load_scheme(spec, model, r), model, path_r), TrainConfig())
    budget = sram_budget(board)
    check_fits(model, trainer, board, budget)
    m = write_project(model, board, workdir, trainer,
                      FirmwareOptions(samples=SAMPLES, train=True, train_steps=STEPS))
    if not m.get("firmware", {}).get("compiled"):
        raise TinygenError("the speed benchmark needs arm-none-eabi-gcc on PATH to build the firmware")
    plan = build_plan(model, trainer, board, budget)
    res = simulate(workdir, "qemu", timeout)
    steps = [s["count"] for s in res.run.steps]
    infers = [s["count"] for s in res.run.samples]
    step_i, infer_i = sum(steps) // len(steps), sum(infers) // len(infers)
    row = SpeedRow(model_name, name, r, board_name, step_i, infer_i, m["macs"], round(m["macs"] / infer_i, 4),
                   plan["peak_sram_bytes"], m["firmware"]["qemu"]["sizes"]["flash_bytes"], board.clock_hz, True)
    if (board_name, r) == (PROFILED["board"], PROFILED["filter_r"]):
        prof = run_profile(workdir, timeout).to_json()
        row.breakdown, row.functions = prof["by_kind"], prof["functions"]
    return row


def _measure_job(args: tuple) -> dict:
    model, scheme, r, board, root, timeout = args
    with tempfile.TemporaryDirectory(dir=root) as d:
        return asdict(measure(model, scheme, r, board, Path(d) / "build", timeout))


def bench(models: list[str], schemes: list[str], rs: list[int], boards: list[str], jobs: int | None = None,
          log=print, timeout: float = 600.0) -> list[dict]:
    configs = [(m, s, r, b) for m in models for s in schemes for r in rs for b in boards]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(configs)))
    log(f"speed: {len(configs)} configurations on QEMU, {jobs} at a time")
    with tempfile.TemporaryDirectory(prefix="tinygen-speed-") as root:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            args = [(*c, root, timeout) for c in configs]
            rows = []
            for c, row in zip(configs, pool.map(_measure_job, args), strict=True):
                log(f"  {c[0]} {row['scheme']} r={c[2]} {c[3]}: {row['step_instructions'] / 1e6:.1f} M per step, "
                    f"{row['inference_instructions'] / 1e6:.1f} M per inference")
                rows.append(row)
    return rows


def summary(rows: list[dict]) -> tuple[list[str], list[list], str]:
    headers = ["model", "scheme", "r", "board", "M instr/step", "M instr/infer", "MAC/instr", "peak SRAM KB",
               "flash KB", "est. ms/step", "TinyEngine M step/infer", "paper ms/step"]
    out = []
    for row in rows:
        te = TINYENGINE.get((row["model"], row["scheme"].split("/")[1], row["board"]))
        paper = PAPER_MS.get(row["model"]) if not row["scheme"].endswith("49kb") and row["board"] == "stm32f746" \
            else None
        out.append([row["model"], row["scheme"], row["filter_r"], row["board"], f"{row['step_instructions'] / 1e6:.1f}",
                    f"{row['inference_instructions'] / 1e6:.1f}", f"{row['mac_per_instr']:.3f}",
                    f"{row['peak_sram_bytes'] / 1024:.1f}", f"{row['flash_bytes'] / 1024:.1f}",
                    f"{row['step_instructions'] / row['clock_hz'] * 1e3:.0f}",
                    f"{te[0] / 1e6:.1f} / {te[1] / 1e6:.1f}" if te and row["filter_r"] == 1 else "",
                    paper or ""])
    note = ("est. ms = instructions / the core clock the firmware configures (the board file's clock.max), one "
            "instruction per cycle: an estimate from instruction counts, for emulators count instructions, not "
            "cycles. "
            "TinyEngine: MIT's generated code for MCUNet-5fps 49kb, -Ofast, on the same QEMU -icount shift=0; "
            "paper ms: Lin et al. 2022 on a real STM32F746 (cycles, ~100 KB schemes)")
    return headers, out, note


def save(rows: list[dict], out: Path | None) -> Path:
    anchors = {"tinyengine_mcunet_49kb_stm32f746": {"step_instructions": 106_400_000,
                                                    "inference_instructions": 65_000_000,
                                                    "how": "QEMU mps2-an500 -icount shift=0, -Ofast"},
               "paper_ms_per_step_stm32f746": PAPER_MS}
    return _save(out, "speed", {"note": "emulators count instructions, not cycles", "anchors": anchors,
                                "samples": SAMPLES, "steps": STEPS, "rows": rows})


def breakdown_table(rows: list[dict]) -> str:
    """M instructions per training step by kind of work, for the profiled rows (profile image; its total
    differs from the plain image's by the hooks and inlining, under 1%)."""
    kinds = [k for k in KIND_ORDER if any(k in (r.get("breakdown") or {}).get("training step", {}) for r in rows)]
    body = [[r["model"], r["scheme"], *[f"{r['breakdown']['training step'].get(k, 0) / 1e6:.1f}" for k in kinds]]
            for r in rows if r.get("breakdown")]
    if not body:
        return ""
    return ("\nWhere a training step goes (M instructions, `tinygen sim --profile`, "
            f"{PROFILED['board']}, r = {PROFILED['filter_r']}):\n"
            + table(["model", "scheme", *kinds], body, "ll" + "r" * len(kinds)))


def report(rows: list[dict]) -> str:
    headers, body, note = summary(rows)
    return table(headers, body, "llrlrrrrrrrr") + "\n" + note + "\n" + breakdown_table(rows)


