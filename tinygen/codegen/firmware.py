"""The firmware project `tinygen build` writes into DIR/firmware/, and its ELFs.

DIR/firmware/
    runtime/              the hand-written runtime (copied from the package's firmware/)
    main.c                the harness: tg_infer on the embedded samples (training hooks: train=True)
    tg_board.h            driver selection for the QEMU and the real-board image
    tg_dataset.[ch]       the samples embedded in flash, their labels, the reference's outputs
    samples.npz           the same samples for `tinygen sim` (it reruns the NumPy reference on them)
    link_qemu.ld          QEMU stand-in memory map (see qemu_memory_map)
    link_<board>.ld       the board's real memory map (hardware, Renode)
    Makefile, CMakeLists.txt, arm-none-eabi.cmake
    <board>.resc, <board>.robot   Renode script and renode-test suite for the real-map image
    build/tinygen-qemu.elf, build/tinygen-<board>.elf   when arm-none-eabi-gcc is on PATH

Memory maps. The real map is the board file's. A board whose SRAM banks are contiguous
(stm32f746: DTCM + SRAM1 + SRAM2) gets one RAM region; a banked board (stm32h743) keeps
one region per bank: the stack goes at the bottom of the lowest-addressed bank other than
the largest, .data/.bss and the planner's arena in the largest (AXI SRAM), and the other
banks take sections named `.tg_bank.<REGION>`.
QEMU 7.2's mps2-an386/-an500 (hw/arm/mps2.c) have 4 MB of SSRAM1 at 0x0 and 4 MB of
SSRAM2/3 at 0x20000000 and nothing at 0x08000000, so the QEMU image links flash at 0x0 with
the board's flash size and SRAM from 0x20000000 with the board's sizes: contiguous SRAM as
one region, banks one after another in address order (stm32h743: 992 KB in all), so a
buffer that overflows a bank fails both links the same way. Every board here fits in 4 MB;
a larger one would have to use the 16 MB PSRAM (0x21000000 on an386, 0x60000000 on an500)
and is refused with that explanation.
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinygen.codegen import forward as codegen
from tinygen.codegen.cstyle import c_array
from tinygen.errors import TinygenError
from tinygen.frontends.inputs import Dataset, real_inputs_labelled, training_samples
from tinygen.ir import model as ir
from tinygen.ir.names import c_comment, c_string
from tinygen.paths import data_dir
from tinygen.reference import forward as reference
from tinygen.targets import armbuild
from tinygen.targets.boards import Board, Region
from tinygen.targets.clocks import CHOICES as CLOCK_CHOICES

FW_DIR = "firmware"
SAMPLES_FILE = "samples.npz"
QEMU_ELF = "tinygen-qemu.elf"
QEMU_INSTR_PER_TICK = 40  # mps2 SYSCLK 25 MHz; -icount shift=0 runs one instruction per ns of virtual time
QEMU_UART_BASE = 0x40004000  # mps2 CMSDK UART0, which QEMU connects to -serial stdio
QEMU_SSRAM_BYTES = 4 * 1024 * 1024  # mps2 AN385/AN386/AN500: SSRAM1 at 0x0 and SSRAM2/3 at 0x20000000
GUARD_BYTES = 256  # MPU region 0 below the stack (power of two >= 32, >= the 104-byte FP exception frame)
DEFAULT_STACK_BYTES = 8192
DEFAULT_SAMPLES = 8
DEFAULT_TRAIN_STEPS = 20  # training builds: SGD steps the harness runs, cycling through the embedded samples
RENODE_LINE_TIMEOUT = 120  # .robot: virtual seconds Renode may take from one TG line to the next
SAMPLES_FLASH_BUDGET = 64 * 1024  # auto sample count: at most this many bytes of embedded inputs (at least one)


def hw_elf_name(board: Board) -> str:
    return f"tinygen-{board.name}.elf"


def qemu_args(board: Board) -> list[str]:
    """QEMU arguments before `-kernel ELF`: the stand-in machine, instruction counting, semihosting exit."""
    return ["-M", board.qemu["machine"], "-cpu", board.qemu["cpu"], "-nographic", "-monitor", "none",
            "-serial", "stdio", "-icount", "shift=0", "-semihosting-config", "enable=on,target=native"]


@dataclass
class FirmwareOptions:
    samples: int | None = None  # None: DEFAULT_SAMPLES, fewer for big inputs (SAMPLES_FLASH_BUDGET)
    stack_bytes: int = DEFAULT_STACK_BYTES
    qemu_console: str = "uart"  # "uart" (CMSDK UART0 -> QEMU stdout) or "semihost" (-> QEMU stderr)
    compile: bool = True  # build the ELFs when arm-none-eabi-gcc is on PATH
    train: bool = False  # harness calls tg_train_step (the training issue provides tg_train.[ch])
    train_steps: int = 0
    extra_cflags: tuple[str, ...] = ()  # e.g. ("-DTG_TEST_STACK_OVERFLOW",) in tests
    checkpoint_every: int = 0  # training builds: save the trained state to the board's flash slots every N steps
    dataset: Dataset | None = None  # --dataset: the user's samples, embedded instead of the bundled ones
    clock: str = "max"  # --clock: "max" brings the board up to its configured clock, "reset" leaves it alone
    dump_trained: bool = False  # training builds: after training, infer every sample and dump the parameters


# ---- memory maps ---------------------------------------------------------------------------------------------

@dataclass
class Layout:
    title: str
    flash: Region
    sram: list[Region]
    stack_region: str
    data_region: str
    arena_region: str
    bank_regions: list[str]
    notes: list[str]

    def describe(self) -> dict[str, str]:
        out = {self.flash.name: f"flash, {self.flash.length:,} bytes at 0x{self.flash.origin:08x}"}
        for r in self.sram:
            out[r.name] = f"SRAM, {r.length:,} bytes at 0x{r.origin:08x}"
        return out


def _contiguous(regions: list[Region]) -> bool:
    rs = sorted(regions, key=lambda r: r.origin)
    return all(a.origin + a.length == b.origin for a, b in zip(rs, rs[1:], strict=False))


def _sram_regions(board: Board) -> list[Region]:
    """One merged RAM region when the banks are contiguous, else one region per bank (address order)."""
    if board.sram_contiguous and _contiguous(board.sram):
        lo = min(r.origin for r in board.sram)
        return [Region("RAM", lo, board.sram_bytes)]
    return sorted(board.sram, key=lambda r: r.origin)


def _placement(sram: list[Region]) -> tuple[str, str, str, list[str]]:
    """(stack, data, arena, other banks): data and arena in the largest bank, the stack at the bottom of the
    lowest-addressed other bank (so it does not split the big one), the rest available as .tg_bank sections."""
    largest = max(sram, key=lambda r: r.length)
    others = [r for r in sram if r.name != largest.name]
    stack = others[0].name if others else largest.name
    banks = [r.name for r in others if r.name != stack]
    return stack, largest.name, largest.name, banks


def real_memory_map(board: Board) -> Layout:
    if len(board.flash) != 1:
        raise TinygenError(f"board {board.name} lists {len(board.flash)} flash regions; tinygen links code into one")
    sram = _sram_regions(board)
    stack, data, arena, banks = _placement(sram)
    notes = [f"The real {board.name} memory map from boards/{board.name}.json (hardware and Renode's "
             f"{board.renode['platform']})."]
    if len(board.sram) > 1 and len(sram) == 1:
        notes.append("SRAM banks " + " + ".join(f"{r.name} {r.length // 1024} KB" for r in board.sram)
                     + " are contiguous: linked as one region.")
    return Layout(f"real memory map of the {board.name}", board.flash[0], sram, stack, data, arena, banks, notes)


def qemu_memory_map(board: Board) -> Layout:
    machine = board.qemu["machine"]
    flash_origin = int(board.qemu.get("flash_origin", "0x0"), 16)
    sram_origin = int(board.qemu.get("sram_origin", "0x20000000"), 16)
    flash_len = board.flash_bytes
    if flash_len > QEMU_SSRAM_BYTES or board.sram_bytes > QEMU_SSRAM_BYTES:
        raise TinygenError(f"board {board.name} has more flash or SRAM than QEMU {machine}'s 4 MB SSRAM regions; "
                           "its QEMU map would need the 16 MB PSRAM (0x21000000 on mps2-an386, 0x60000000 on "
                           "mps2-an500), which tinygen does not use yet")
    real = _sram_regions(board)
    sram, addr = [], sram_origin
    for r in real:
        sram.append(Region(r.name, addr, r.length))
        addr += (r.length + 255) // 256 * 256
    stack, data, arena, banks = _placement(sram)
    notes = [f"QEMU {machine} ({board.qemu['cpu']}) stand-in for the {board.name}.",
             "QEMU 7.2 mps2 (hw/arm/mps2.c): SSRAM1 4 MB at 0x00000000, SSRAM2/3 4 MB at 0x20000000, "
             "nothing at 0x08000000.",
             f"Flash {flash_len // 1024} KB at 0x{flash_origin:08x} (the board's size); SRAM regions with the board's "
             f"sizes from 0x{sram_origin:08x}" + (" (banks kept apart, in address order)." if len(sram) > 1 else ".")]
    for q, r in zip(sram, real, strict=True):
        if q.origin != r.origin:
            notes.append(f"  {r.name}: real 0x{r.origin:08x} -> QEMU 0x{q.origin:08x}, {r.length // 1024} KB")
    flash = Region(board.flash[0].name, flash_origin, flash_len)
    return Layout(f"QEMU {machine} memory map for the {board.name}", flash, sram, stack, data, arena, banks, notes)


# ---- checkpoint slots --------------------------------------------------------------------------------------------

CKPT_HEADER_BYTES = 32  # firmware/tg_checkpoint.c: the header unit before the payload
CKPT_WRITER_MACROS = {"stm32f7_flash": "TG_FLASH_STM32F7", "nrf52_nvmc": "TG_FLASH_NRF52",
                      "stm32h7_flash": "TG_FLASH_STM32H7"}


def checkpoint_slot_bytes(board: Board, state_bytes: int) -> int:
    """The flash both checkpoint slots take (what the plan counts); one sentence when the state does not fit a
    slot or the board has none."""
    c = board.checkpoint
    if c is None:
        raise TinygenError(f"board {board.name} names no checkpoint slots (boards/{board.name}.json "
                           "'checkpoint'); build without --checkpoint-every or add them")
    need = CKPT_HEADER_BYTES + -(-state_bytes // c.program_bytes) * c.program_bytes
    if need > c.slots[0].length:
        raise TinygenError(f"a checkpoint of the trained state needs {need:,} B but {board.name}'s slots hold "
                           f"{c.slots[0].length:,} B; train fewer layers or build without --checkpoint-every")
    return c.bytes


def model_id(src: Path) -> int:
    """CRC-32 of the generated sources (src/): the same code and weights, the same id. A checkpoint records it,
    so a firmware never resumes from another model's (or another scheme's) trained state."""
    crc = 0
    for path in sorted(Path(src).glob("*")):
        crc = zlib.crc32(path.name.encode() + b"\0" + path.read_bytes(), crc)
    return crc


def _reserve_slots(layout: Layout, board: Board) -> tuple[Layout, int]:
    """The layout with its flash region ending where the checkpoint slots begin (they sit at the top of flash),
    and the slots' address in this map."""
    c = board.checkpoint
    offset = c.slots[0].origin - board.flash[-1].origin
    layout.flash = Region(layout.flash.name, layout.flash.origin, offset)
    layout.notes.append(f"Checkpoint slots: 2 x {c.slots[0].length // 1024} KB at 0x{layout.flash.origin + offset:08x}"
                        f" (flash ends there for code and constants).")
    return layout, layout.flash.origin + offset


def checkpoint_defines(board: Board, qemu_slot0: int) -> tuple[list, list, list]:
    """tg_board.h rows: (QEMU image, real board, both) for the checkpoint slots and their writer."""
    c = board.checkpoint
    qemu = [("TG_FLASH_RAM", "1"), ("TG_CKPT_SLOT0_ADDR", f"0x{qemu_slot0:08X}UL")]
    real = [(CKPT_WRITER_MACROS[c.writer], "1"), ("TG_CKPT_SLOT0_ADDR", f"0x{c.slots[0].origin:08X}UL")]
    if c.slots[0].sector is not None:
        real += [("TG_CKPT_SLOT0_SECTOR", f"{c.slots[0].sector}U"), ("TG_CKPT_SLOT1_SECTOR", f"{c.slots[1].sector}U")]
    both = [("TG_CKPT_SLOT_BYTES", f"{c.slots[0].length}UL"), ("TG_FLASH_PROGRAM_BYTES", f"{c.program_bytes}U")]
    return qemu, real, both


# ---- the clock tree -----------------------------------------------------------------------------------------------

CLOCK_TREE_MACROS = {"stm32f7": "TG_CLOCK_STM32F7", "stm32h7": "TG_CLOCK_STM32H7", "nrf52": "TG_CLOCK_NRF52"}
_HEX_CLOCK_FIELDS = ("hpre", "ppre1", "ppre2", "d1cpre", "d1ppre", "d2ppre1", "d2ppre2", "d3ppre")


def check_clock_choice(choice: str) -> str:
    if choice not in CLOCK_CHOICES:
        raise TinygenError(f"--clock must be one of {', '.join(CLOCK_CHOICES)}, not {choice!r}")
    return choice


C_COLUMNS = 100  # .clang-format's ColumnLimit


def string_define(name: str, text: str, width: int | None) -> tuple[str, bool]:
    """`#define NAME "text"` as clang-format lays it out, and whether it took several lines: on one line, the name
    padded to `width` (the alignment group it joins; None after a multi-line macro, which ends a group), when that
    fits in C_COLUMNS, else the string on continuation lines of adjacent literals split at spaces, each backslash
    in the last column."""
    one = f"#define {name.ljust(width or 0)} {c_string(text)}"
    if len(one) <= C_COLUMNS:
        return one, False
    pieces, cur = [], ""
    for word in text.split(" "):
        trial = f"{cur} {word}" if cur else word
        if cur and len(c_string(" " + trial)) + 4 > C_COLUMNS - 6:
            pieces.append(cur)
            trial = word
        cur = trial
    pieces.append(cur)
    literals = [c_string((" " if text.startswith(" ") or i else "") + p) for i, p in enumerate(pieces)]
    lines = [f"#define {name}", *(f"    {lit}" for lit in literals)]
    return "\n".join(ln.ljust(C_COLUMNS - 1) + "\\" if i < len(lines) - 1 else ln
                     for i, ln in enumerate(lines)), True


@dataclass
class ClockDefines:
    """tg_board.h's clock rows: the QEMU image's, the real board's register fields (name, value, what it gives),
    its other rows, and the two TG clock line tails (name, text: see string_define)."""

    qemu: list[tuple[str, str]]
    fields: list[tuple[str, str, str]]
    real: list[tuple[str, str]]
    lines: list[tuple[str, str]]


def clock_defines(board: Board, choice: str) -> ClockDefines:
    """tg_board.h's rows for firmware/tg_clock.c: the tree's register fields with what each gives (from the
    board file's "clock", tinygen.targets.clocks) and the TG clock lines it prints."""
    c = board.clock
    s = c.setting(check_clock_choice(choice))
    qemu = [("TG_CLOCK_SKIPPED", "1"),
            ("TG_CLOCK_SKIPPED_LINE", c_string(f" bringup=skipped board_core={s.core_hz} clock={choice}"))]
    fields, real = [], []
    if choice == "max":
        real.append((CLOCK_TREE_MACROS[c.tree], "1"))
        for key, value in s.fields.items():
            text = f"0x{value:X}U" if key in _HEX_CLOCK_FIELDS else f"{value}U"
            fields.append((f"TG_CLOCK_{key.upper()}", text, c_comment(s.notes[key])))
        if c.revision is not None:
            fields.append(("TG_CLOCK_REV_ID", f"0x{c.revision:04X}U", "DBGMCU_IDC.REV_ID the setting needs"))
    real.append(("TG_CLOCK_CHOICE", c_string(choice)))
    lines = [("TG_CLOCK_MAX_LINE", c.line("max")), ("TG_CLOCK_RESET_LINE", c.line("reset"))]
    return ClockDefines(qemu, fields, real, lines)


def clock_summary(board: Board, choice: str) -> dict:
    """The manifest's record of the build's clock: the choice, the frequencies the real-board image configures
    and the reset ones it falls back to."""
    c = board.clock
    return {"choice": choice, "tree": c.tree, "core_hz": c.setting(choice).core_hz, "hz": dict(c.setting(choice).hz),
            "source": c.setting(choice).source, "reset_hz": dict(c.reset.hz),
            "qemu": "skipped: the mps2 stand-in has no RCC"}


def describe_clock(board: Board, choice: str) -> str:
    """One line for `tinygen build`: the clock the firmware runs at on the board, and QEMU's skip."""
    c = board.clock
    s = c.setting(choice)
    buses = ", ".join(f"{k} {v / 1e6:g}" for k, v in s.hz.items() if k not in ("sysclk", "core"))
    how = (f"--clock {choice}: {board.name} at {s.core_hz / 1e6:g} MHz"
           + (f" (SYSCLK {s.hz['sysclk'] / 1e6:g}; {buses} MHz)" if buses else "")
           + f" from {s.source}")
    if choice == "max" and (s.hz, s.source) != (c.reset.hz, c.reset.source):
        how += (f", falling back to the reset clock ({c.reset.core_hz / 1e6:g} MHz from {c.reset.source}) with a "
                "message if a ready bit never comes")
    return (f"clock: {how}; the QEMU image skips the bring-up ({board.qemu['machine']} has no RCC), so the "
            "millisecond estimates of its runs use this configured clock")


# ---- consoles on the real boards -------------------------------------------------------------------------------

def hw_console_defines(board: Board, clock: str = "max") -> list[tuple[str, str]]:
    """The real board's console as (macro, value) rows for tg_board.h, from the board file's "console" object
    (checked by tinygen.targets.boards; firmware/README.md lists its fields). An STM32 USART's baud divisor comes
    from its kernel clock in the configured setting, and in the reset one for a bring-up that falls back."""
    c = board.console
    kind = c["kind"]
    if kind == "semihost":
        return [("TG_CONSOLE_SEMIHOST", "1")]
    if kind not in ("stm32_usart", "nrf_uarte", "cmsdk_uart"):
        raise TinygenError(f"board {board.name}'s console kind {kind!r} has no driver in firmware/tg_console.c "
                           "(known: stm32_usart, nrf_uarte, cmsdk_uart, semihost)")
    rows = [(f"TG_CONSOLE_{kind.upper()}", "1"), ("TG_CONSOLE_BASE", f"0x{c['base']:08X}UL")]
    if kind == "stm32_usart":
        rows += [("TG_CONSOLE_BRR", f"{usart_brr(board, clock)}U"),
                 ("TG_CONSOLE_BRR_RESET", f"{usart_brr(board, 'reset')}U")]
        if "rcc_reg" in c:
            rows += [("TG_CONSOLE_RCC_REG", f"0x{c['rcc_reg']:08X}UL"), ("TG_CONSOLE_RCC_BIT", f"{c['rcc_bit']}U"),
                     ("TG_CONSOLE_GPIO_RCC_REG", f"0x{c['gpio_rcc_reg']:08X}UL"),
                     ("TG_CONSOLE_GPIO_RCC_BIT", f"{c['gpio_rcc_bit']}U"),
                     ("TG_CONSOLE_GPIO_BASE", f"0x{c['gpio_base']:08X}UL"), ("TG_CONSOLE_TX_PIN", f"{c['tx_pin']}U"),
                     ("TG_CONSOLE_TX_AF", f"{c['tx_af']}U")]
    elif kind == "nrf_uarte":
        rows.append(("TG_CONSOLE_TX_PIN", f"{c['tx_pin']}U"))
    return rows


def usart_brr(board: Board, choice: str) -> int:
    """USART_BRR for the console's baud rate from its kernel clock (16x oversampling: clock / baud, rounded)."""
    c = board.console
    hz = board.clock.setting(choice).hz[c["kernel_clock"]]
    return (hz + c["baud"] // 2) // c["baud"]


def board_header(board: Board, model_name: str, opts: FirmwareOptions, checkpoint=None) -> str:
    """tg_board.h: the board's drivers, console, clock tree and early writes for both images (checkpoint: the rows
    of checkpoint_defines, when the build saves checkpoints)."""
    return codegen.environment().get_template("firmware/tg_board.h.j2").render(
        board=board, model_name=model_name, core_cm7=board.core == "cortex-m7", qemu=board.qemu,
        qemu_console=opts.qemu_console, instr_per_tick=QEMU_INSTR_PER_TICK, qemu_uart_base=QEMU_UART_BASE,
        hw_console=hw_console_defines(board, opts.clock), early_init=board.early_init, checkpoint=checkpoint,
        clock=clock_defines(board, opts.clock), clock_choice=opts.clock, string_define=string_define)


# ---- the embedded samples ---------------------------------------------------------------------------------------

def embedded_samples(model: ir.Model, n: int, train: bool = False,
                     dataset: Dataset | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """int8 inputs, their labels (-1 where none) and a description, chosen together so each label belongs to
    its image. Forward builds embed what `tinygen verify` uses (the test split); training builds embed labelled
    samples of the training split with labels < classes; with a user `dataset`, its first n samples."""
    if dataset is not None:
        x, y, source = dataset.for_model(model, n)
    else:
        x, y, source = training_samples(model, n) if train else real_inputs_labelled(model, n)
    return x, y.astype(np.int32), source


def _samples_why(model: ir.Model, opts: FirmwareOptions, n: int) -> str:
    """Why the firmware embeds n samples: asked for, the default, the flash budget, or all the dataset has."""
    if opts.dataset is not None and n < (opts.samples or DEFAULT_SAMPLES):
        return f"all that --dataset holds ({n})"
    if opts.samples is not None:
        return f"--samples {opts.samples}"
    if n < DEFAULT_SAMPLES:
        return (f"{n} of the default {DEFAULT_SAMPLES}: embedded inputs get at most {SAMPLES_FLASH_BUDGET // 1024} KB "
                f"of flash and one is {model.input.size:,} B (--samples N to choose)")
    return f"the default {DEFAULT_SAMPLES}"


# ---- writing the project -------------------------------------------------------------------------------------

INCLUDE_DIRS = [".", "runtime", "../src", "../cmsis_glue"]  # relative to DIR/firmware


def _sources(out: Path) -> list[str]:
    """The firmware's C sources, relative to DIR/firmware: harness, samples, runtime, generated model."""
    fw = Path(out) / FW_DIR
    return ["main.c", "tg_dataset.c", *[f"runtime/{p.name}" for p in sorted((fw / "runtime").glob("*.c"))],
            *[f"../src/{p.name}" for p in sorted((Path(out) / "src").glob("*.c"))]]


def _split(sources: list[str]) -> tuple[list[str], list[str]]:
    """(sources every image shares: the model, its weights, the samples; the per-image harness and runtime)"""
    common = [s for s in sources if s.startswith("../src/") or s == "tg_dataset.c"]
    return common, [s for s in sources if s not in common]


def _render_link(env, layout: Layout, filename: str, stack_bytes: int, arena_bytes: int | None) -> str:
    return env.get_template("firmware/link.ld.j2").render(
        filename=filename, title=layout.title, notes=layout.notes, flash=layout.flash, sram=layout.sram,
        stack_region=layout.stack_region, data_region=layout.data_region, arena_region=layout.arena_region,
        bank_regions=layout.bank_regions, stack_bytes=stack_bytes, guard_bytes=GUARD_BYTES, arena_bytes=arena_bytes)


def write_firmware(model: ir.Model, board: Board, out: Path, facts: dict, options: FirmwareOptions | None = None,
                   expect: Callable | None = None, shrink: Callable[[int], str | None] | None = None) -> dict:
    """Write DIR/firmware and, when the toolchain is present, build both ELFs. Returns the manifest section.
    `expect(x, labels, order)`: the reference's `TrainingExpectation` for training steps on the embedded samples
    in that order, whose losses and checksum the .robot of a training firmware holds (without it, that .robot
    fails at once saying so). `shrink(nbytes)`: where the image overflows the flash at the board's flags, writes the
    sources again at least `nbytes` smaller computing the same integers, and says what it left out (None: nothing
    left to leave out); only then is the image built for size."""
    opts = options or FirmwareOptions()
    n_samples = opts.samples
    if n_samples is None:
        n_samples = max(1, min(DEFAULT_SAMPLES, SAMPLES_FLASH_BUDGET // model.input.size))
    if n_samples < 1:
        raise TinygenError("the firmware needs at least one embedded sample")
    if opts.stack_bytes < 1024 or opts.stack_bytes % 8:
        raise TinygenError(f"stack size {opts.stack_bytes} must be a multiple of 8 and at least 1024 bytes")
    fw = Path(out) / FW_DIR
    fw.mkdir(parents=True, exist_ok=True)
    env = codegen.environment()

    # runtime sources, copied so the directory builds on its own
    runtime_dst = fw / "runtime"
    if runtime_dst.exists():
        shutil.rmtree(runtime_dst)
    shutil.copytree(data_dir("firmware"), runtime_dst, ignore=shutil.ignore_patterns("*.md"))

    # embedded samples + the reference's outputs on them
    x, labels, source = embedded_samples(model, n_samples, opts.train, opts.dataset)
    expected = reference.run_batch(model, x)
    np.savez(fw / SAMPLES_FILE, x=x, labels=labels, source=np.array(source))
    n = len(x)
    dataset = dict(n=n, source=source, x_size=max(1, x.size), label_size=max(1, n), y_size=max(1, expected.size),
                   x_array=c_array("tg_samples_x", x),
                   label_array=c_array("tg_samples_label", labels.astype(np.int32)),
                   expected_array=c_array("tg_samples_expected", expected.astype(np.int8)))
    for name in ("tg_dataset.h", "tg_dataset.c"):
        (fw / name).write_text(env.get_template(f"firmware/{name}.j2").render(**dataset))

    # memory maps: the checkpoint slots, when saved, come off the top of flash
    real, qemu = real_memory_map(board), qemu_memory_map(board)
    ckpt = None
    if opts.checkpoint_every:
        if not opts.train:
            raise TinygenError("--checkpoint-every needs a training build (the firmware saves its trained state)")
        checkpoint_slot_bytes(board, facts["state_bytes"])
        real, _ = _reserve_slots(real, board)
        qemu, qemu_slot0 = _reserve_slots(qemu, board)
        ckpt = checkpoint_defines(board, qemu_slot0)

    # board header + harness
    (fw / "tg_board.h").write_text(board_header(board, model.name, opts, ckpt))

    def write_main() -> None:  # again where `shrink` rewrites src/: the checkpoint id is its CRC
        (fw / "main.c").write_text(env.get_template("firmware/main.c.j2").render(
            model_name=model.name, board_name=board.name, n_samples=n, train=opts.train,
            train_steps=opts.train_steps, checkpoint_every=opts.checkpoint_every,
            checkpoint_model_id=model_id(Path(out) / "src"), dump_trained=opts.train and opts.dump_trained,
            ondevice=opts.train and facts.get("ondevice")))

    write_main()

    # linker scripts
    hw_ld, qemu_ld = f"link_{board.name}.ld", "link_qemu.ld"
    arena = facts.get("arena_bytes")
    (fw / hw_ld).write_text(_render_link(env, real, hw_ld, opts.stack_bytes, arena))
    (fw / qemu_ld).write_text(_render_link(env, qemu, qemu_ld, opts.stack_bytes, arena))

    # build files
    sources = _sources(out)
    hw_elf = hw_elf_name(board)
    build_ctx = dict(model_name=model.name, board_name=board.name, hw_elf=hw_elf, qemu_elf=QEMU_ELF,
                     qemu_machine=board.qemu["machine"], cpu_flags=board.cpu_flags,
                     cflags=[*board.opt_flags, *armbuild.CFLAGS],
                     ldflags=armbuild.LDFLAGS, sources=sources, include_dirs=INCLUDE_DIRS,
                     includes=[f"-I{i}" for i in INCLUDE_DIRS], qemu_args=qemu_args(board), timeout=600)
    (fw / "Makefile").write_text(env.get_template("firmware/Makefile.j2").render(**build_ctx))
    (fw / "CMakeLists.txt").write_text(env.get_template("firmware/CMakeLists.txt.j2").render(**build_ctx))
    (fw / "arm-none-eabi.cmake").write_text(env.get_template("firmware/arm-none-eabi.cmake.j2").render())

    # Renode
    training = expect(x, labels, [s % n for s in range(opts.train_steps)]) if opts.train and expect else None
    write_renode_files(fw, model.name, board, [f"0x{zlib.crc32(e.astype(np.int8).tobytes()):08x}" for e in expected],
                       [int(v) for v in labels], training, opts)

    info = {
        "dir": FW_DIR,
        "train_steps": opts.train_steps if opts.train else 0,
        "dump_trained": opts.train and opts.dump_trained,
        "samples": n,
        "samples_source": source,
        "samples_why": _samples_why(model, opts, n),
        "stack_bytes": opts.stack_bytes,
        "train": opts.train,
        "checkpoint_every": opts.checkpoint_every,
        "arena_bytes": arena,
        "extra_cflags": list(opts.extra_cflags),
        "clock": clock_summary(board, opts.clock),
        "qemu": {"machine": board.qemu["machine"], "cpu": board.qemu["cpu"], "elf": f"{FW_DIR}/build/{QEMU_ELF}",
                 "linker_script": f"{FW_DIR}/{qemu_ld}", "args": qemu_args(board)},
        "hw": {"elf": f"{FW_DIR}/build/{hw_elf}", "linker_script": f"{FW_DIR}/{hw_ld}",
               **{k: f"{FW_DIR}/{v}" for k, v in renode_files(board.name).items()}},
        "compiled": False,
    }
    if opts.compile and armbuild.toolchain() is not None:
        jobs = [armbuild.ElfJob("qemu", fw / qemu_ld, fw / "build" / QEMU_ELF, ["TG_TARGET_QEMU=1"], qemu.describe()),
                armbuild.ElfJob(board.name, fw / hw_ld, fw / "build" / hw_elf, [], real.describe())]
        common, target = _split(sources)
        info["opt_flags"] = list(board.opt_flags)
        overflow = None
        while True:  # the board's flags; where the flash overflows, smaller sources first (`shrink`)
            try:
                armbuild.compile_elfs(fw, board.cpu_flags, common, target, INCLUDE_DIRS, jobs,
                                      list(opts.extra_cflags), board.opt_flags)
                break
            except armbuild.LinkOverflowError as exc:
                left_out = shrink(exc.nbytes) if shrink is not None and exc.kinds == {"flash"} else None
                if left_out is None:
                    overflow = exc
                    break
                info.setdefault("flash_fit", []).append(left_out)
                write_main()
        if overflow is not None:
            if overflow.kinds != {"flash"}:
                raise overflow
            # the unrolled kernels' code is what grows with the board's speed flags: built for size, or refused
            armbuild.compile_elfs(fw, board.cpu_flags, common, target, INCLUDE_DIRS, jobs, list(opts.extra_cflags),
                                  armbuild.SIZE_OPT_FLAGS)
            info["opt_flags"] = list(armbuild.SIZE_OPT_FLAGS)
            info["size_fallback"] = (f"the image did not fit the flash with {' '.join(board.opt_flags)} ({overflow}); "
                                     f"built with {' '.join(armbuild.SIZE_OPT_FLAGS)} instead (smaller code, slower)")
        info["compiled"] = True
        info["qemu"]["sizes"] = armbuild.elf_sizes(fw / "build" / QEMU_ELF)
        info["hw"]["sizes"] = armbuild.elf_sizes(fw / "build" / hw_elf)
    return info


# ---- Renode ------------------------------------------------------------------------------------------------------

def renode_files(board_name: str) -> dict[str, str]:
    """The Renode files of a board's firmware project (in DIR/firmware): platform, script, Robot suite."""
    return {kind: f"{board_name}.{kind}" for kind in ("repl", "resc", "robot")}


def robot_lines(model_name: str, board: Board, labels: list[int], crcs: list[str], training, opts: FirmwareOptions,
                ) -> list[str]:
    """Every `TG` line the real-board image prints, in order, as the start the .robot requires of it (the counts
    that follow vary): the clock line, each sample's CRC, the device's selection, each step's loss, the
    learning-rate guard's halvings, the checkpoints saved and the trained parameters' checksum, as the reference
    `training` has them (templates/firmware/main.c.j2)."""
    n = len(labels)
    # the clock line's numbers differ where the bring-up falls back (tg_clock.c): its start only
    lines = [f"TG start model={model_name} board={board.name} ", "TG clock sysclk="]
    lines += [f"TG sample {i} label={labels[i]} crc={crcs[i]} " for i in range(n)]
    if opts.train:
        halved, seq = set(training.lr_halvings or ()), 0
        # --update on-device: the channels the device must choose, per candidate, before the first step
        if training.selection is not None:
            lines += [f"TG select candidate={j} channels={k} " for j, k in enumerate(training.selection)]
            lines.append("TG selected samples=")
        for s, loss in enumerate(training.losses):
            lines.append(f"TG step {s} sample={s % n} label={labels[s % n]} loss={loss} ")
            if s in halved:
                lines.append(f"TG lr halved step={s} ")
            if opts.checkpoint_every and (s + 1) % opts.checkpoint_every == 0:
                seq += 1
                lines.append(f"TG checkpoint step={s + 1} seq={seq} slot={seq % 2}")
        lines.append(f"TG params checksum=0x{training.checksum:08x}")
    return lines + ["TG stack used=", f"TG done samples={n} mismatches=0 ", "TG exit 0"]


def write_renode_files(fw: Path, model_name: str, board: Board, crcs: list[str], labels: list[int], training,
                       opts: FirmwareOptions) -> None:
    """DIR/firmware/<board>.repl, .resc and .robot, for the board file's Renode version and newer, offline; the
    .robot fails at the first line that differs from the reference's, not at a timeout."""
    files = renode_files(board.name)
    r = board.renode
    unchecked = opts.train and training is None
    ctx = dict(model_name=model_name, board_name=board.name, hw_elf=hw_elf_name(board), version=r["version"],
               platform=r["platform"], uart=r["uart"], sysbus_init=r["sysbus_init"], checked=r["checked"],
               repl_name=files["repl"], resc_name=files["resc"], robot_name=files["robot"],
               timeout=RENODE_LINE_TIMEOUT, unchecked=unchecked,
               lines=[] if unchecked else robot_lines(model_name, board, labels, crcs, training, opts))
    env = codegen.environment()
    for kind, name in files.items():
        (fw / name).write_text(env.get_template(f"firmware/renode.{kind}.j2").render(**ctx))


# ---- the profile image -------------------------------------------------------------------------------------------

PROFILE_ELF = "tinygen-qemu-profile.elf"
PROFILE_OBJ_DIR = "obj-profile"
# Only the generated model is instrumented: the harness, the runtime (the hooks among it), the inline helpers
# of cmsis_glue and the model's own small helpers are not layers (their instructions count to the layer that
# calls them, as in the plain image, where they are inlined).
PROFILE_CFLAGS = ["-DTG_PROFILE=1", "-finstrument-functions",
                  "-finstrument-functions-exclude-file-list=runtime/,cmsis_glue/,main.c,tg_dataset",
                  "-finstrument-functions-exclude-function-list=tg_master_sub,_ln_q16"]
PROFILE_SRAM_EXTRA = 64 * 1024  # the hooks' slot table and the instrumented code's larger frames


def build_profile_elf(out: Path, board: Board, info: dict) -> Path:
    """DIR/firmware/build/tinygen-qemu-profile.elf: the QEMU image compiled once more with the profile hooks
    (firmware/tg_profile.c). Its memory map is the QEMU stand-in's with all of QEMU's 4 MB for flash and
    PROFILE_SRAM_EXTRA more SRAM where .bss goes: the instrumentation must not make a build that fits fail."""
    fw = Path(out) / FW_DIR
    if "arena_bytes" not in info:
        raise TinygenError(f"{out} was built by an older tinygen; rebuild it with tinygen build to profile it")
    layout = qemu_memory_map(board)
    layout.flash = Region(layout.flash.name, layout.flash.origin, QEMU_SSRAM_BYTES)
    grown, addr = [], layout.sram[0].origin
    for r in layout.sram:
        length = r.length + (PROFILE_SRAM_EXTRA if r.name == layout.data_region else 0)
        grown.append(Region(r.name, addr, length))
        addr += (length + 255) // 256 * 256
    layout.sram = grown
    layout.notes.append(f"Profile image: flash {QEMU_SSRAM_BYTES // 1024} KB, {PROFILE_SRAM_EXTRA // 1024} KB more "
                        f"SRAM in {layout.data_region} for the profile hooks.")
    ld = "link_qemu_profile.ld"
    (fw / ld).write_text(_render_link(codegen.environment(), layout, ld, info["stack_bytes"], info["arena_bytes"]))
    elf = fw / "build" / PROFILE_ELF
    job = armbuild.ElfJob("qemu", fw / ld, elf, ["TG_TARGET_QEMU=1"], layout.describe())
    common, target = _split(_sources(out))
    armbuild.compile_elfs(fw, board.cpu_flags, common, target, INCLUDE_DIRS, [job],
                          [*info.get("extra_cflags", []), *PROFILE_CFLAGS], info.get("opt_flags", board.opt_flags),
                          obj_dir=PROFILE_OBJ_DIR)
    return elf
