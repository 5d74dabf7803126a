"""Board data files (`boards/<name>.json`): core, flags, clock, memory map, console, emulators."""

from __future__ import annotations

import json
from dataclasses import dataclass

from tinygen.errors import TinygenError
from tinygen.paths import data_dir


@dataclass
class Region:
    name: str
    origin: int
    length: int


@dataclass
class Board:
    name: str
    description: str
    core: str
    cpu_flags: list[str]
    fpu: str
    clock_hz: int
    flash: list[Region]
    sram: list[Region]
    sram_contiguous: bool
    console: dict
    renode: dict
    qemu: dict

    @property
    def sram_bytes(self) -> int:
        return sum(r.length for r in self.sram)

    @property
    def flash_bytes(self) -> int:
        return sum(r.length for r in self.flash)

    @property
    def largest_sram(self) -> Region:
        return max(self.sram, key=lambda r: r.length)


def _regions(items) -> list[Region]:
    return [Region(d["name"], int(d["origin"], 16), int(d["length"])) for d in items]


def board_names() -> list[str]:
    return sorted(p.stem for p in data_dir("boards").glob("*.json"))


def load_board(name: str) -> Board:
    path = data_dir("boards") / f"{name}.json"
    if not path.is_file():
        raise TinygenError(f"unknown board {name!r}; choose one of: {', '.join(board_names())} "
                           "(or add boards/<name>.json)")
    try:
        d = json.loads(path.read_text())
        mem = d["memory"]
        return Board(d["name"], d["description"], d["core"], list(d["cpu_flags"]), d["fpu"], int(d["clock_hz"]),
                     _regions(mem["flash"]), _regions(mem["sram"]), bool(mem["sram_contiguous"]),
                     d["console"], d["renode"], d["qemu"])
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise TinygenError(f"board file {path} is malformed ({type(exc).__name__}: {exc}); "
                           "compare it with boards/stm32f746.json") from None
