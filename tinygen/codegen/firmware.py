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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinygen.codegen import forward as codegen
from tinygen.errors import TinygenError
from tinygen.frontends import datasets
from tinygen.frontends.inputs import quantize, real_inputs, real_labelled
from tinygen.ir import model as ir
from tinygen.paths import data_dir
from tinygen.reference import forward as reference
from tinygen.targets import armbuild
from tinygen.targets.boards import Board, Region

FW_DIR = "firmware"
SAMPLES_FILE = "samples.npz"
QEMU_ELF = "tinygen-qemu.elf"
QEMU_INSTR_PER_TICK = 40  # mps2 SYSCLK 25 MHz; -icount shift=0 runs one instruction per ns of virtual time
QEMU_SSRAM_BYTES = 4 * 1024 * 1024  # mps2 AN385/AN386/AN500: SSRAM1 at 0x0 and SSRAM2/3 at 0x20000000
GUARD_BYTES = 256  # MPU region 0 below the stack (power of two >= 32, >= the 104-byte FP exception frame)
DEFAULT_STACK_BYTES = 8192
DEFAULT_SAMPLES = 8
DEFAULT_TRAIN_STEPS = 20  # training builds: SGD steps the harness runs, cycling through the embedded samples
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


# ---- consoles on the real boards -------------------------------------------------------------------------------

# How to bring up each board's console UART from reset (reset clocks; no PLL setup). From the reference manuals:
# STM32F746 RM0385: RCC 0x40023800 (AHB1ENR +0x30, APB2ENR +0x44: USART1EN bit 4), HSI 16 MHz at reset;
#   32F746G-DISCOVERY's ST-LINK virtual COM port is USART1, TX = PA9 (AF7).
# STM32H743 RM0433: RCC 0x58024400 (AHB4ENR +0xE0: GPIODEN bit 3, APB1LENR +0xE8: USART3EN bit 18), HSI 64 MHz;
#   NUCLEO-H743ZI's ST-LINK virtual COM port is USART3, TX = PD8 (AF7), GPIOD at 0x58020C00.
# nRF52840-DK: UARTE0, TX = P0.06 (to the J-Link virtual COM port).
# A board file may override any of these in its "console" object (same keys).
CONSOLE_BRINGUP = {
    ("stm32f746", "usart1"): dict(clock_hz=16_000_000, rcc_reg=0x40023844, rcc_bit=4, gpio_rcc_reg=0x40023830,
                                  gpio_rcc_bit=0, gpio_base=0x40020000, tx_pin=9, tx_af=7),
    ("stm32h743", "usart3"): dict(clock_hz=64_000_000, rcc_reg=0x580244E8, rcc_bit=18, gpio_rcc_reg=0x580244E0,
                                  gpio_rcc_bit=3, gpio_base=0x58020C00, tx_pin=8, tx_af=7),
    ("nrf52840", "uart0"): dict(tx_pin=6),
}
BAUD = 115200

# Register writes (address, bits to OR in) that must run before .data/.bss initialisation on the real board.
# STM32H743 RM0433: RCC_AHB2ENR (0x580244DC) SRAM1EN/SRAM2EN/SRAM3EN = bits 29..31; the D2 SRAM banks are
# unclocked after reset, and .tg_bank.SRAM123 is zeroed at reset.
BOARD_EARLY_INIT = {
    "stm32h743": [(0x580244DC, 0xE0000000, "RCC_AHB2ENR: clock D2 SRAM1/2/3")],
}


def early_init_define(board: Board) -> str | None:
    writes = BOARD_EARLY_INIT.get(board.name, [])
    if not writes:
        return None
    body = ", ".join(f"{{0x{a:08X}UL, 0x{b:08X}UL}}" for a, b, _ in writes)
    return f"TG_BOARD_EARLY_INIT {{{body}}} /* {'; '.join(c for _, _, c in writes)} */"


def hw_console_defines(board: Board) -> list[str]:
    c = board.console
    kind = c["kind"]
    cfg = dict(CONSOLE_BRINGUP.get((board.name, c.get("name", "")), {}))
    cfg.update({k: v for k, v in c.items() if k not in ("kind", "name", "base")})
    base = int(c["base"], 16)

    def num(key):
        v = cfg[key]
        return int(v, 16) if isinstance(v, str) else int(v)

    out = [f"TG_CONSOLE_BASE 0x{base:08X}UL"]
    if kind == "stm32_usart":
        clock = num("clock_hz") if "clock_hz" in cfg else 16_000_000
        out = ["TG_CONSOLE_STM32_USART 1", *out, f"TG_CONSOLE_BRR {(clock + BAUD // 2) // BAUD}U /* {BAUD} baud "
               f"from the {clock // 1_000_000} MHz reset clock */"]
        if "rcc_reg" in cfg:
            out += [f"TG_CONSOLE_RCC_REG 0x{num('rcc_reg'):08X}UL", f"TG_CONSOLE_RCC_BIT {num('rcc_bit')}",
                    f"TG_CONSOLE_GPIO_RCC_REG 0x{num('gpio_rcc_reg'):08X}UL",
                    f"TG_CONSOLE_GPIO_RCC_BIT {num('gpio_rcc_bit')}",
                    f"TG_CONSOLE_GPIO_BASE 0x{num('gpio_base'):08X}UL", f"TG_CONSOLE_TX_PIN {num('tx_pin')}",
                    f"TG_CONSOLE_TX_AF {num('tx_af')}"]
    elif kind == "nrf_uarte":
        out = ["TG_CONSOLE_NRF_UARTE 1", *out, f"TG_CONSOLE_TX_PIN {num('tx_pin') if 'tx_pin' in cfg else 6}"]
    elif kind == "cmsdk_uart":
        out = ["TG_CONSOLE_CMSDK_UART 1", *out]
    elif kind == "semihost":
        out = ["TG_CONSOLE_SEMIHOST 1"]
    else:
        raise TinygenError(f"board {board.name}'s console kind {kind!r} has no driver in firmware/tg_console.c "
                           "(known: stm32_usart, nrf_uarte, cmsdk_uart, semihost)")
    return out


# ---- the embedded samples ---------------------------------------------------------------------------------------

def _labels(model: ir.Model, n: int) -> np.ndarray:
    """The labels of the images `inputs.real_inputs` picks (the last n of the data set), -1 if none."""

    shape = tuple(model.input.shape)
    h, w, c = shape if len(shape) == 3 else (1, shape[0], 1)
    if c == 3 and len(shape) == 3:
        return np.full(n, -1, np.int32)
    _, y = datasets.load_digits() if (h, w) == (8, 8) else datasets.load_mnist5k()
    return y[-n:].astype(np.int32)


def embedded_samples(model: ir.Model, n: int, train: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """int8 inputs, labels and a description. Forward builds embed what `tinygen verify` uses (the test end of
    the data set); training builds embed labelled samples of the training split with labels < classes."""
    if train:

        xf, y, source = real_labelled(tuple(model.input.shape), n, model.output.size)
        return quantize(xf, model.input), y.astype(np.int32), source
    x, source = real_inputs(model, n)
    return x, _labels(model, len(x)), source


# ---- writing the project -------------------------------------------------------------------------------------

def _render_link(env, layout: Layout, filename: str, stack_bytes: int, arena_bytes: int | None) -> str:
    return env.get_template("firmware/link.ld.j2").render(
        filename=filename, title=layout.title, notes=layout.notes, flash=layout.flash, sram=layout.sram,
        stack_region=layout.stack_region, data_region=layout.data_region, arena_region=layout.arena_region,
        bank_regions=layout.bank_regions, stack_bytes=stack_bytes, guard_bytes=GUARD_BYTES, arena_bytes=arena_bytes)


RENODE_CHECKED = {
    "stm32f746": ["platforms/cpus/stm32f746.repl:10  usart1: UART.STM32F7_USART @ sysbus 0x40011000",
                  "platforms/cpus/stm32f746.repl:4,7  sram 0x20000000 (0x60000), flash 0x08000000 (0x200000)"],
    "nrf52840": ["platforms/cpus/nrf52840.repl:8  uart0: UART.NRF52840_UART @ sysbus 0x40002000 (easyDMA: true)",
                 "platforms/cpus/nrf52840.repl:33,36  flash 0x0 (0x100000), ram 0x20000000 (0x40000)"],
    "stm32h743": ["platforms/cpus/stm32h743.repl:1  using \"platforms/cpus/stm32h7.repl\"",
                  "platforms/cpus/stm32h7.repl:373  usart3: UART.STM32F7_USART @ sysbus 0x40004800",
                  "platforms/cpus/stm32h7.repl:489,492  axiSram 0x24000000 (0x80000), dtcm 0x20000000 (0x20000)"],
}
RENODE_COMMON_CHECKED = [
    "src/Emulator/Extensions/Utilities/UartFileBackend.cs:21  <uart> CreateFileBackend <path> <immediateFlush>",
    "src/Emulator/Extensions/UserInterface/Monitor.cs:323  $ORIGIN = the including script's directory",
    "src/Emulator/Cores/Arm-M/CortexM.cs:1062  VTOR guessed as the ELF's lowest loaded address (.isr_vector)",
]


def _uart_short(board: Board) -> str:
    return board.renode["uart"]


def write_firmware(model: ir.Model, board: Board, out: Path, facts: dict,
                   options: FirmwareOptions | None = None) -> dict:
    """Write DIR/firmware and, when the toolchain is present, build both ELFs. Returns the manifest section."""
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
    x, labels, source = embedded_samples(model, n_samples, opts.train)
    expected = reference.run_batch(model, x)
    np.savez(fw / SAMPLES_FILE, x=x, labels=labels, source=np.array(source))
    n = len(x)
    (fw / "tg_dataset.h").write_text(env.get_template("firmware/tg_dataset.h.j2").render(
        n=n, source=source, x_size=max(1, x.size), label_size=max(1, n), y_size=max(1, expected.size)))
    with open(fw / "tg_dataset.c", "w") as f:
        f.write(f"/* tg_dataset.c - generated by tinygen: {source} as int8 (model input quantization), their "
                "labels, and tinygen.reference.forward's outputs on them. */\n#include \"tg_dataset.h\"\n\n")
        f.write(codegen.c_array("tg_samples_x", x))
        f.write(codegen.c_array("tg_samples_label", labels.astype(np.int32)))
        f.write(codegen.c_array("tg_samples_expected", expected.astype(np.int8)))

    # board header + harness
    (fw / "tg_board.h").write_text(env.get_template("firmware/tg_board.h.j2").render(
        board=board, model_name=model.name, core_cm7=board.core == "cortex-m7", qemu=board.qemu,
        qemu_console=opts.qemu_console, instr_per_tick=QEMU_INSTR_PER_TICK,
        hw_console_defines=hw_console_defines(board) + [d for d in [early_init_define(board)] if d]))
    (fw / "main.c").write_text(env.get_template("firmware/main.c.j2").render(
        model_name=model.name, board_name=board.name, n_samples=n, train=opts.train, train_steps=opts.train_steps))

    # linker scripts
    real, qemu = real_memory_map(board), qemu_memory_map(board)
    hw_ld, qemu_ld = f"link_{board.name}.ld", "link_qemu.ld"
    arena = facts.get("arena_bytes")
    (fw / hw_ld).write_text(_render_link(env, real, hw_ld, opts.stack_bytes, arena))
    (fw / qemu_ld).write_text(_render_link(env, qemu, qemu_ld, opts.stack_bytes, arena))

    # build files
    src_files = sorted(p.name for p in (Path(out) / "src").glob("*.c"))
    sources = ["main.c", "tg_dataset.c", *[f"runtime/{p.name}" for p in sorted(runtime_dst.glob("*.c"))],
               *[f"../src/{s}" for s in src_files]]
    include_dirs = [".", "runtime", "../src", "../cmsis_glue"]
    hw_elf = hw_elf_name(board)
    build_ctx = dict(model_name=model.name, board_name=board.name, hw_elf=hw_elf, qemu_elf=QEMU_ELF,
                     qemu_machine=board.qemu["machine"], cpu_flags=board.cpu_flags, cflags=armbuild.CFLAGS,
                     ldflags=armbuild.LDFLAGS, sources=sources, include_dirs=include_dirs,
                     includes=[f"-I{i}" for i in include_dirs], qemu_args=qemu_args(board), timeout=600)
    (fw / "Makefile").write_text(env.get_template("firmware/Makefile.j2").render(**build_ctx))
    (fw / "CMakeLists.txt").write_text(env.get_template("firmware/CMakeLists.txt.j2").render(**build_ctx))
    (fw / "arm-none-eabi.cmake").write_text(env.get_template("firmware/arm-none-eabi.cmake.j2").render())

    # Renode
    resc, robot = f"{board.name}.resc", f"{board.name}.robot"
    crcs = [f"0x{zlib.crc32(e.astype(np.int8).tobytes()):08x}" for e in expected]
    renode_ctx = dict(model_name=model.name, board_name=board.name, hw_elf=hw_elf,
                      platform=board.renode["platform"], uart=_uart_short(board), resc_name=resc, robot_name=robot,
                      checked=RENODE_CHECKED.get(board.name, []) + RENODE_COMMON_CHECKED, n_samples=n,
                      labels=[int(v) for v in labels], crcs=crcs, train=opts.train, timeout=120)
    (fw / resc).write_text(env.get_template("firmware/renode.resc.j2").render(**renode_ctx))
    (fw / robot).write_text(env.get_template("firmware/renode.robot.j2").render(**renode_ctx))

    info = {
        "dir": FW_DIR,
        "train_steps": opts.train_steps if opts.train else 0,
        "samples": n,
        "samples_source": source,
        "stack_bytes": opts.stack_bytes,
        "train": opts.train,
        "qemu": {"machine": board.qemu["machine"], "cpu": board.qemu["cpu"], "elf": f"{FW_DIR}/build/{QEMU_ELF}",
                 "linker_script": f"{FW_DIR}/{qemu_ld}", "args": qemu_args(board)},
        "hw": {"elf": f"{FW_DIR}/build/{hw_elf}", "linker_script": f"{FW_DIR}/{hw_ld}", "resc": f"{FW_DIR}/{resc}",
               "robot": f"{FW_DIR}/{robot}"},
        "compiled": False,
    }
    if opts.compile and armbuild.toolchain() is not None:
        jobs = [armbuild.ElfJob("qemu", fw / qemu_ld, fw / "build" / QEMU_ELF, ["TG_TARGET_QEMU=1"], qemu.describe()),
                armbuild.ElfJob(board.name, fw / hw_ld, fw / "build" / hw_elf, [], real.describe())]
        common = [s for s in sources if s.startswith("../src/") or s == "tg_dataset.c"]
        target = [s for s in sources if s not in common]
        armbuild.compile_elfs(fw, board.cpu_flags, common, target, include_dirs, jobs, list(opts.extra_cflags))
        info["compiled"] = True
        info["qemu"]["sizes"] = armbuild.elf_sizes(fw / "build" / QEMU_ELF)
        info["hw"]["sizes"] = armbuild.elf_sizes(fw / "build" / hw_elf)
    return info
