"""Board data files (`boards/<name>.json`): core, flags, clock, memory map, console, early init, emulators.

Every register fact the firmware needs about a board lives in its file, so adding a board is a data file
(plus a driver in firmware/tg_console.c when its UART is of a new kind). The fields are documented in
firmware/README.md; `load_board` checks them and names the first bad one in a single sentence.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tinygen.errors import TinygenError
from tinygen.paths import data_dir
from tinygen.targets.clocks import Clock, ClockError, parse_clock

# Console fields with register addresses (hex strings in the file, ints after loading) and plain integers.
_HEX_FIELDS = ("base", "rcc_reg", "gpio_rcc_reg", "gpio_base")
_INT_RANGES = {"baud": (1, 10_000_000), "rcc_bit": (0, 31), "gpio_rcc_bit": (0, 31),
               "tx_pin": (0, 47), "tx_af": (0, 15)}
_TEXT_FIELDS = ("name", "reference", "kernel_clock")
# An STM32 USART's bring-up from reset (peripheral clock, TX pin routing): all of these or none.
STM32_BRINGUP = ("rcc_reg", "rcc_bit", "gpio_rcc_reg", "gpio_rcc_bit", "gpio_base", "tx_pin", "tx_af")
# The console kinds firmware/tg_console.c has a driver for, and the fields each requires.
CONSOLE_KINDS = {
    "stm32_usart": ("base", "kernel_clock", "baud"),
    "nrf_uarte": ("base", "baud", "tx_pin"),
    "cmsdk_uart": ("base",),
    "semihost": (),
}
NRF_UARTE_BAUD = 115200  # the only rate tg_console.c programs into the UARTE


@dataclass
class Region:
    name: str
    origin: int
    length: int


@dataclass
class RegWrite:
    """A register write (OR in `bits`) the reset handler does before .data/.bss are initialised."""

    address: int
    bits: int
    what: str


@dataclass
class Board:
    name: str
    description: str
    core: str
    cpu_flags: list[str]
    fpu: str
    clock: Clock  # the clock tree: reset and maximum settings, every frequency derived (tinygen.targets.clocks)
    flash: list[Region]
    sram: list[Region]
    sram_contiguous: bool
    console: dict  # "kind" plus that kind's fields, addresses as ints (see CONSOLE_KINDS)
    renode: dict  # "version", "platform", "uart", "sysbus_init", "checked" (see _renode)
    qemu: dict
    early_init: list[RegWrite]
    checkpoint: Checkpoint | None = None  # where trained state persists across resets (--checkpoint-every)
    opt_flags: list[str] = field(default_factory=lambda: ["-O2"])  # compiler optimisation, chosen by measurement

    @property
    def clock_hz(self) -> int:
        """The core clock at the board's maximum rated setting (what `--clock max` configures)."""
        return self.clock.max.core_hz

    @property
    def sram_bytes(self) -> int:
        return sum(r.length for r in self.sram)

    @property
    def flash_bytes(self) -> int:
        return sum(r.length for r in self.flash)

    @property
    def largest_sram(self) -> Region:
        return max(self.sram, key=lambda r: r.length)


# Flash writers in firmware/tg_flash.c, with the unit each programs in bytes (the H7 programs 256-bit flash words).
CHECKPOINT_WRITERS = {"stm32f7_flash": 4, "nrf52_nvmc": 4, "stm32h7_flash": 32}


@dataclass(frozen=True)
class Slot:
    origin: int
    length: int
    sector: int | None = None  # the STM32 writers erase a sector by number


@dataclass(frozen=True)
class Checkpoint:
    """Two flash slots (each a whole number of erase units, adjacent, at the top of flash) and their writer."""

    writer: str
    program_bytes: int
    slots: tuple[Slot, Slot]
    reference: str

    @property
    def bytes(self) -> int:
        return sum(s.length for s in self.slots)


class _Bad(Exception):
    """A problem in a board file, phrased as the middle of the one error sentence."""


def _hex(value, where: str) -> int:
    if not isinstance(value, str) or not value.lower().startswith("0x"):
        raise _Bad(f"{where} must be a hex string such as \"0x40011000\", not {value!r}")
    try:
        n = int(value, 16)
    except ValueError:
        raise _Bad(f"{where} must be a hex string such as \"0x40011000\", not {value!r}") from None
    if not 0 <= n < 2**32:
        raise _Bad(f"{where} {value} is not a 32-bit address")
    return n


def _int(value, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _Bad(f"{where} must be an integer from {lo} to {hi}, not {value!r}")
    return value


def _get(d: dict, key: str, where: str, kind: type):
    if not isinstance(d, dict) or key not in d:
        raise _Bad(f"{where}.{key} is missing" if where else f"{key} is missing")
    value = d[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Bad(f"{where + '.' if where else ''}{key} must be a {kind.__name__}, not {value!r}")
    return value


def _regions(items, where: str) -> list[Region]:
    if not isinstance(items, list) or not items:
        raise _Bad(f"{where} must be a non-empty list of regions")
    return [Region(_get(d, "name", f"{where}[{i}]", str), _hex(_get(d, "origin", f"{where}[{i}]", str),
                                                                f"{where}[{i}].origin"),
                   _int(_get(d, "length", f"{where}[{i}]", int), f"{where}[{i}].length", 1, 2**32))
            for i, d in enumerate(items)]


def _console(c, clock: Clock | None = None) -> dict:
    kind = _get(c, "kind", "console", str)
    if kind not in CONSOLE_KINDS:
        raise _Bad(f"console.kind {kind!r} has no driver in firmware/tg_console.c "
                   f"(known: {', '.join(CONSOLE_KINDS)})")
    allowed = {"kind", *_TEXT_FIELDS, *CONSOLE_KINDS[kind], *(STM32_BRINGUP if kind == "stm32_usart" else ())}
    unknown = sorted(set(c) - allowed)
    if unknown:
        raise _Bad(f"console field {unknown[0]!r} is not used by a {kind} console "
                   f"(its fields: {', '.join(sorted(allowed))})")
    for key in CONSOLE_KINDS[kind]:
        if key not in c:
            raise _Bad(f"console.{key} is missing (a {kind} console needs {', '.join(CONSOLE_KINDS[kind])})")
    present = [k for k in STM32_BRINGUP if k in c] if kind == "stm32_usart" else []
    if present and len(present) != len(STM32_BRINGUP):
        missing = [k for k in STM32_BRINGUP if k not in c]
        raise _Bad(f"console gives part of the USART bring-up but not {', '.join(missing)} "
                   f"(give all of {', '.join(STM32_BRINGUP)} or none)")
    out = {}
    for key, value in c.items():
        if key in _HEX_FIELDS:
            out[key] = _hex(value, f"console.{key}")
        elif key in _INT_RANGES:
            out[key] = _int(value, f"console.{key}", *_INT_RANGES[key])
        else:
            out[key] = _get(c, key, "console", str)
    if "kernel_clock" in out and clock is not None and out["kernel_clock"] not in clock.max.hz:
        raise _Bad(f"console.kernel_clock {out['kernel_clock']!r} is not a clock of the board's tree (its clocks: "
                   f"{', '.join(k for k in clock.max.hz if k != 'core')})")
    if kind == "nrf_uarte" and out["baud"] != NRF_UARTE_BAUD:
        raise _Bad(f"console.baud must be {NRF_UARTE_BAUD} for an nrf_uarte console (the rate its driver sets)")
    return out


def _early_init(items) -> list[RegWrite]:
    if not isinstance(items, list):
        raise _Bad("early_init must be a list of {\"reg\", \"set\", \"what\"} objects")
    return [RegWrite(_hex(_get(w, "reg", f"early_init[{i}]", str), f"early_init[{i}].reg"),
                     _hex(_get(w, "set", f"early_init[{i}]", str), f"early_init[{i}].set"),
                     _get(w, "what", f"early_init[{i}]", str))
            for i, w in enumerate(items)]


_BOARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_RENODE_VERSION = re.compile(r"\d+\.\d+\.\d+", re.ASCII)
_RENODE_PLATFORM = re.compile(r"[\w.-]+(/[\w.-]+)*\.repl", re.ASCII)  # relative to Renode's root, as Renode ships it
_RENODE_UART = re.compile(r"sysbus\.[A-Za-z_]\w*", re.ASCII)
_PRINTABLE = re.compile(r"[ -~]+")  # one line of printable ASCII: it goes into the emitted Renode files as is


def _lines(r: dict, key: str) -> list[str]:
    lines = r.get(key, [])
    if not isinstance(lines, list) or not all(isinstance(s, str) and _PRINTABLE.fullmatch(s) for s in lines):
        raise _Bad(f"renode.{key} must be a list of one-line strings of printable ASCII")
    return lines


def _renode(r) -> dict:
    """The Renode platform: its version, stock .repl and UART, the stock sysbus init to keep offline
    (`sysbus_init`, present only where the stock file fetches an SVD), and where those were checked."""
    checked = _lines(r, "checked")
    version, platform, uart = (_get(r, k, "renode", str) for k in ("version", "platform", "uart"))
    if not _RENODE_VERSION.fullmatch(version):
        raise _Bad(f"renode.version must be a Renode release such as \"1.15.3\", not {version!r}")
    if not _RENODE_PLATFORM.fullmatch(platform):
        raise _Bad(f"renode.platform must be a .repl path such as \"platforms/cpus/stm32f746.repl\", not {platform!r}")
    if not _RENODE_UART.fullmatch(uart):
        raise _Bad(f"renode.uart must name a peripheral on the system bus such as \"sysbus.usart1\", not {uart!r}")
    init = _lines(r, "sysbus_init") if "sysbus_init" in r else None
    if init == []:
        raise _Bad("renode.sysbus_init must hold at least one statement (leave it out where the stock platform "
                   "fetches nothing)")
    return {"version": version, "platform": platform, "uart": uart, "sysbus_init": init, "checked": checked}


def _qemu(q) -> dict:
    for key in ("machine", "cpu"):
        _get(q, key, "qemu", str)
    for key in ("flash_origin", "sram_origin"):
        if key in q:
            _hex(q[key], f"qemu.{key}")
    return dict(q)


def _checkpoint(c, flash: list[Region]) -> Checkpoint:
    writer = _get(c, "writer", "checkpoint", str)
    if writer not in CHECKPOINT_WRITERS:
        raise _Bad(f"checkpoint.writer {writer!r} has no driver in firmware/tg_flash.c "
                   f"(known: {', '.join(CHECKPOINT_WRITERS)})")
    unit = _int(_get(c, "program_bytes", "checkpoint", int), "checkpoint.program_bytes", 4, 256)
    if unit != CHECKPOINT_WRITERS[writer]:
        raise _Bad(f"checkpoint.program_bytes must be {CHECKPOINT_WRITERS[writer]} for the {writer} writer")
    items = _get(c, "slots", "checkpoint", list)
    if len(items) != 2:
        raise _Bad("checkpoint.slots must list exactly two slots")
    slots = []
    for i, d in enumerate(items):
        where = f"checkpoint.slots[{i}]"
        sector = _int(d["sector"], f"{where}.sector", 0, 255) if isinstance(d, dict) and "sector" in d else None
        if sector is None and writer.startswith("stm32"):
            raise _Bad(f"{where}.sector is missing (the {writer} writer erases by sector number)")
        slots.append(Slot(_hex(_get(d, "origin", where, str), f"{where}.origin"),
                          _int(_get(d, "length", where, int), f"{where}.length", 1024, 2**31), sector))
    top = flash[-1].origin + flash[-1].length
    if slots[0].length != slots[1].length or slots[0].origin + slots[0].length != slots[1].origin \
            or slots[1].origin + slots[1].length != top:
        raise _Bad(f"checkpoint.slots must be two equal, adjacent slots ending at the top of flash (0x{top:08x})")
    return Checkpoint(writer, unit, (slots[0], slots[1]), _get(c, "reference", "checkpoint", str))


# What `opt_flags` may hold: optimisation levels, -f options and --param settings (nothing that changes the
# target, the language or where the output goes).
_OPT_FLAG = re.compile(r"-O[0-3sz]?|-f[a-z][a-z0-9-]*(=[A-Za-z0-9_.,-]+)?|--param=[a-z][a-z0-9-]*=[0-9]+")


def _opt_flags(d) -> list[str]:
    flags = d.get("opt_flags", ["-O2"])
    if not isinstance(flags, list) or not flags or not all(isinstance(f, str) for f in flags):
        raise _Bad("opt_flags must be a non-empty list of strings")
    bad = [f for f in flags if not _OPT_FLAG.fullmatch(f)]
    if bad:
        raise _Bad(f"opt_flags holds {bad[0]!r}, which is not an optimisation flag (-O<level>, -f<option>, "
                   "--param=<name>=<value>)")
    note = d.get("opt_measured", "")
    if not isinstance(note, str):
        raise _Bad("opt_measured must be a string (the measurement that chose opt_flags)")
    return list(flags)


def _board(d, stem: str) -> Board:
    if not isinstance(d, dict):
        raise _Bad("the file must hold one JSON object")
    name = _get(d, "name", "", str)
    if not _BOARD_NAME.fullmatch(name):
        raise _Bad(f"name {name!r} must be letters, digits, '_', '-' and '.' (it names files and goes into "
                   "build files and Renode scripts)")
    if name != stem:
        raise _Bad(f"name {name!r} differs from the file name {stem!r}")
    flags = _get(d, "cpu_flags", "", list)
    if not all(isinstance(f, str) for f in flags):
        raise _Bad("cpu_flags must be a list of strings")
    mem = _get(d, "memory", "", dict)
    flash = _regions(_get(mem, "flash", "memory", list), "memory.flash")
    if "clock_hz" in d:
        raise _Bad("clock_hz is replaced by the clock object (the clock tree's dividers and the frequencies they "
                   "give, see boards/stm32f746.json)")
    try:
        clock = parse_clock(_get(d, "clock", "", dict))
    except ClockError as exc:
        raise _Bad(str(exc)) from None
    return Board(name, _get(d, "description", "", str), _get(d, "core", "", str), list(flags),
                 _get(d, "fpu", "", str), clock,
                 flash, _regions(_get(mem, "sram", "memory", list), "memory.sram"),
                 _get(mem, "sram_contiguous", "memory", bool), _console(_get(d, "console", "", dict), clock),
                 _renode(_get(d, "renode", "", dict)), _qemu(_get(d, "qemu", "", dict)),
                 _early_init(d.get("early_init", [])),
                 _checkpoint(d["checkpoint"], flash) if "checkpoint" in d else None, _opt_flags(d))


def board_names() -> list[str]:
    return sorted(p.stem for p in data_dir("boards").glob("*.json"))


def load_board_file(path: Path) -> Board:
    """A board from its JSON file, checked field by field (one sentence naming the first problem)."""
    path = Path(path)
    try:
        return _board(json.loads(path.read_text()), path.stem)
    except json.JSONDecodeError as exc:
        raise TinygenError(f"board file {path} is not valid JSON ({exc})") from None
    except _Bad as exc:
        raise TinygenError(f"board file {path} is malformed: {exc}; compare it with boards/stm32f746.json "
                           "(fields in firmware/README.md)") from None


def load_board(name: str) -> Board:
    path = data_dir("boards") / f"{name}.json"
    if not path.is_file():
        raise TinygenError(f"unknown board {name!r}; choose one of: {', '.join(board_names())} "
                           "(or add boards/<name>.json)")
    return load_board_file(path)
