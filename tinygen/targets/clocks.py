"""Clock trees: a board file's `clock` object, checked against the reference manuals' limits.

A board file states its clock configuration once: the oscillator, the PLL's dividers, the bus prescalers, the
flash wait states and the voltage it needs, and the frequencies that result (SYSCLK, the core and bus clocks), for
the reset state and for the maximum rated clock (`--clock max`, the default). `parse_clock` derives every frequency
from the dividers, refuses a file whose stated frequencies differ from the derived ones, and holds every divider,
VCO frequency, bus clock and wait state to the limits below, which are the manuals' (one table per clock tree, each
row citing its source). Everything else -- tg_board.h's register fields, the UART baud divisors, the TG clock line
the firmware prints, `tinygen sim`'s millisecond estimates -- is derived from the parsed `Clock`.

Trees:
  stm32f7  RM0385 (STM32F75x/74x) 5.3 RCC, 4.1.4 over-drive, 3.3.2 flash read latency; DS10916 (STM32F746xx).
  stm32h7  RM0433 (STM32H742/743/753/750) 8.7 RCC, PWR (supply, voltage scaling), FLASH (wait states);
           DS12110 (STM32H743xI) for VOS0 (480 MHz) on silicon revision V.
  nrf52    nRF52840 Product Specification v1.7, 5.4 CLOCK: the core always runs at 64 MHz; the HF crystal (HFXO)
           only makes the clock, and so the UART's baud rate, accurate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MHZ = 1_000_000


class ClockError(Exception):
    """A problem in a board file's `clock` object, phrased as the middle of the board loader's one sentence."""


# ---- the manuals' limits --------------------------------------------------------------------------------------

# RM0385 5.3.2 RCC_PLLCFGR: PLLM 2..63 with the VCO input 1..2 MHz ("2 MHz recommended to limit jitter"),
# PLLN 50..432 with the VCO output 100..432 MHz, PLLP 2/4/6/8, PLLQ 2..15 (its output feeds USB OTG FS, SDMMC and the
# RNG: 48 MHz at most). RM0385 5.2 / DS10916 table 16: SYSCLK and HCLK up to 216 MHz with over-drive (180 MHz
# without, voltage scale 1), APB1 (low speed) 54 MHz, APB2 (high speed) 108 MHz.
F7 = {
    "pllm": (2, 63), "plln": (50, 432), "pllp": (2, 4, 6, 8), "pllq": (2, 15),
    "vco_in": (1 * MHZ, 2 * MHZ), "vco_out": (100 * MHZ, 432 * MHZ), "pllq_out_max": 48 * MHZ,
    "sysclk_max": 216 * MHZ, "sysclk_max_no_overdrive": 180 * MHZ,
    "hclk_max": 216 * MHZ, "pclk1_max": 54 * MHZ, "pclk2_max": 108 * MHZ,
}
# RM0385 3.3.2 table 5: flash wait states against HCLK for VDD 2.7..3.6 V (the 32F746G-DISCOVERY runs at 3.3 V):
# one more wait state per 30 MHz, 7 WS up to 216 MHz.
F7_FLASH_MHZ_PER_WS = 30
F7_FLASH_WS_MAX = 15  # FLASH_ACR.LATENCY is 4 bits
# RM0385 5.3.3 RCC_CFGR: HPRE (AHB) and PPRE1/PPRE2 (APB) encodings, divisor -> field.
AHB_DIV_FIELD = {1: 0x0, 2: 0x8, 4: 0x9, 8: 0xA, 16: 0xB, 64: 0xC, 128: 0xD, 256: 0xE, 512: 0xF}
APB_DIV_FIELD = {1: 0x0, 2: 0x4, 4: 0x5, 8: 0x6, 16: 0x7}

# RM0433 RCC (PLL1; RCC_PLLCKSELR, RCC_PLLCFGR, RCC_PLL1DIVR): DIVM1 1..63 with ref1_ck 1..16 MHz, in one of
# four input ranges (PLL1RGE); the wide VCO (VCOSEL 0) takes ref1_ck >= 2 MHz, the medium one (VCOSEL 1) 1..2 MHz;
# DIVN1 4..512; DIVP1 2..128, even only for PLL1. DS12110 (PLL characteristics): wide VCO 192..960 MHz on
# revision V (836 MHz on revision Y, which tinygen assumes unless the setting names revision V), medium VCO
# 150..420 MHz.
H7 = {
    "divm": (1, 63), "divn": (4, 512), "divp": (2, 128),
    "ref": (1 * MHZ, 16 * MHZ), "vco_wide": (192 * MHZ, 960 * MHZ), "vco_wide_rev_y": (192 * MHZ, 836 * MHZ),
    "vco_medium": (150 * MHZ, 420 * MHZ),
}
H7_RGE = ((2 * MHZ, 0), (4 * MHZ, 1), (8 * MHZ, 2), (16 * MHZ, 3))  # ref1_ck upper bound -> PLL1RGE field
# RM0433 PWR (voltage scaling) / DS12110 (general operating conditions): maxima per voltage scale
# (CPU = sys_d1cpre_ck; HCLK = AXI/AHB; PCLK = APB1..4).
# VOS0 exists on silicon revision V only (DBGMCU_IDC.REV_ID 0x2003).
H7_VOS = {
    0: {"cpu_max": 480 * MHZ, "hclk_max": 240 * MHZ, "pclk_max": 120 * MHZ},
    1: {"cpu_max": 400 * MHZ, "hclk_max": 200 * MHZ, "pclk_max": 100 * MHZ},
}
H7_REV_V = 0x2003
# RM0433's FLASH wait-state table ("FLASH recommended number of wait states and programming delay"): wait states
# and programming delay (WRHIGHFREQ) against the AXI clock, per VOS:
# (AXI clock upper bound, LATENCY, WRHIGHFREQ).
H7_FLASH = {
    0: ((70 * MHZ, 0, 0), (140 * MHZ, 1, 1), (185 * MHZ, 2, 1), (210 * MHZ, 2, 2), (225 * MHZ, 3, 2),
        (240 * MHZ, 4, 2)),
    1: ((70 * MHZ, 0, 0), (140 * MHZ, 1, 1), (185 * MHZ, 2, 1), (210 * MHZ, 2, 2), (225 * MHZ, 3, 2)),
}

NRF52_HZ = 64 * MHZ  # nRF52840 PS 5.4: HFCLK, from HFINT or HFXO, is always 64 MHz

TREES = ("stm32f7", "stm32h7", "nrf52")
CHOICES = ("max", "reset")  # `tinygen build --clock`


# ---- parsed clocks ----------------------------------------------------------------------------------------------

@dataclass
class Setting:
    """One clock configuration (the reset state or the maximum): what feeds SYSCLK and every clock it yields."""

    source: str  # "hsi", "pll-hsi", "hfint", "hfxo"
    hz: dict[str, int]  # sysclk, core, hclk, pclk1.. (nrf52: sysclk, core)
    fields: dict[str, int] = field(default_factory=dict)  # register field values for tg_board.h
    notes: dict[str, str] = field(default_factory=dict)  # what each field means, for tg_board.h's comments

    @property
    def core_hz(self) -> int:
        return self.hz["core"]


@dataclass
class Clock:
    tree: str
    reset: Setting
    max: Setting
    reference: str
    why: str
    revision: int | None = None  # stm32h7 VOS0: the DBGMCU_IDC.REV_ID the configuration needs

    def setting(self, choice: str) -> Setting:
        return self.max if choice == "max" else self.reset

    def line(self, choice: str) -> str:
        """The ` key=value ...` tail of the `TG clock` line the firmware prints for a setting."""
        s = self.setting(choice)
        extra = ""
        if choice == "max" and "flash_latency" in s.fields:
            extra = f" flash_ws={s.fields['flash_latency']}"
        return "".join(f" {k}={v}" for k, v in s.hz.items()) + f" source={s.source}" + extra


# ---- parsing ----------------------------------------------------------------------------------------------------

def _int(d: dict, key: str, where: str) -> int:
    if not isinstance(d, dict) or key not in d:
        raise ClockError(f"{where}.{key} is missing")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ClockError(f"{where}.{key} must be a non-negative integer, not {v!r}")
    return v


def _obj(d: dict, key: str, where: str) -> dict:
    v = d.get(key) if isinstance(d, dict) else None
    if not isinstance(v, dict):
        raise ClockError(f"{where}.{key} is missing or not an object")
    return v


def _in(value: int, lo: int, hi: int, what: str, source: str) -> None:
    """`value` within lo..hi (lo 0: a maximum only), else one clause naming it, the limit and the manual."""
    if not lo <= value <= hi:
        limit = f"above its maximum {_fmt(hi)}" if lo == 0 else f"outside {_fmt(lo)}..{_fmt(hi)}"
        raise ClockError(f"{what} is {_fmt(value)}, {limit} ({source})")


def _fmt(hz: int) -> str:
    """A frequency as the manuals write it (16 MHz, 1.5 MHz); small integers (dividers) as they are."""
    if hz < 1000:
        return str(hz)
    return f"{hz / MHZ:g} MHz"


def _stated(d: dict, where: str, derived: dict[str, int]) -> dict[str, int]:
    """The frequencies the board file states, which must be exactly the ones its dividers give."""
    hz = _obj(d, "hz", where)
    unknown = sorted(set(hz) - set(derived))
    if unknown:
        raise ClockError(f"{where}.hz.{unknown[0]} is not a clock of this tree (its clocks: {', '.join(derived)})")
    for name, want in derived.items():
        got = _int(hz, name, f"{where}.hz")
        if got != want:
            raise ClockError(f"{where}.hz.{name} states {got} Hz but the dividers give {want} Hz")
    return dict(derived)


def _div(d: dict, key: str, where: str, table: dict[int, int]) -> int:
    v = _int(d, key, where)
    if v not in table:
        raise ClockError(f"{where}.{key} is {v}; the prescaler divides by {', '.join(map(str, table))} only")
    return v


def _f7(c: dict) -> tuple[Setting, Setting, int | None]:
    hsi = _int(c, "hsi_hz", "clock")
    if hsi != 16 * MHZ:
        raise ClockError(f"clock.hsi_hz is {hsi}; the STM32F7's HSI runs at 16 MHz (RM0385 RCC)")
    reset = Setting("hsi", _stated(_obj(c, "reset", "clock"), "clock.reset",
                                   {"sysclk": hsi, "core": hsi, "hclk": hsi, "pclk1": hsi, "pclk2": hsi}))
    m = _obj(c, "max", "clock")
    pll, div = _obj(m, "pll", "clock.max"), _obj(m, "dividers", "clock.max")
    pm, pn, pp, pq = (_int(pll, k, "clock.max.pll") for k in ("m", "n", "p", "q"))
    _in(pm, *F7["pllm"], "clock.max.pll.m (PLLM)", "RM0385 5.3.2")
    _in(pn, *F7["plln"], "clock.max.pll.n (PLLN)", "RM0385 5.3.2")
    if pp not in F7["pllp"]:
        raise ClockError(f"clock.max.pll.p (PLLP) is {pp}; it divides by 2, 4, 6 or 8 only (RM0385 5.3.2)")
    _in(pq, *F7["pllq"], "clock.max.pll.q (PLLQ)", "RM0385 5.3.2")
    vco_in = hsi // pm
    if hsi % pm:
        raise ClockError(f"clock.max.pll.m (PLLM) {pm} does not divide the 16 MHz HSI into whole hertz")
    _in(vco_in, *F7["vco_in"], "the PLL's VCO input (HSI / PLLM)", "RM0385 5.3.2")
    vco = vco_in * pn
    _in(vco, *F7["vco_out"], "the PLL's VCO output (VCO input x PLLN)", "RM0385 5.3.2")
    _in(vco // pq, 0, F7["pllq_out_max"], "the PLL's Q output (VCO / PLLQ)", "RM0385 5.3.2: USB, SDMMC, RNG")
    overdrive = m.get("overdrive")
    if not isinstance(overdrive, bool):
        raise ClockError("clock.max.overdrive must be true or false (over-drive, needed above 180 MHz)")
    sysclk = vco // pp
    top = F7["sysclk_max"] if overdrive else F7["sysclk_max_no_overdrive"]
    _in(sysclk, 0, top, "SYSCLK (VCO / PLLP)",
        "RM0385 5.2" + ("" if overdrive else ": 180 MHz without over-drive"))
    ahb, apb1, apb2 = (_div(div, k, "clock.max.dividers", t)
                       for k, t in (("ahb", AHB_DIV_FIELD), ("apb1", APB_DIV_FIELD), ("apb2", APB_DIV_FIELD)))
    hclk = sysclk // ahb
    hz = {"sysclk": sysclk, "core": hclk, "hclk": hclk, "pclk1": hclk // apb1, "pclk2": hclk // apb2}
    _in(hz["pclk1"], 0, F7["pclk1_max"], "APB1 (HCLK / apb1)", "RM0385 5.2: APB1 54 MHz at most")
    _in(hz["pclk2"], 0, F7["pclk2_max"], "APB2 (HCLK / apb2)", "RM0385 5.2: APB2 108 MHz at most")
    ws = _int(m, "flash_wait_states", "clock.max")
    need = f7_wait_states(hclk)
    if not need <= ws <= F7_FLASH_WS_MAX:
        raise ClockError(f"clock.max.flash_wait_states is {ws}; HCLK {_fmt(hclk)} needs {need} (RM0385 3.3.2 table 5, "
                         "2.7-3.6 V: one per 30 MHz)")
    hz = _stated(m, "clock.max", hz)
    fields = {"pllm": pm, "plln": pn, "pllp": pp // 2 - 1, "pllq": pq, "hpre": AHB_DIV_FIELD[ahb],
              "ppre1": APB_DIV_FIELD[apb1], "ppre2": APB_DIV_FIELD[apb2], "flash_latency": ws,
              "overdrive": int(overdrive)}
    notes = {"pllm": f"VCO input = HSI 16 MHz / {pm} = {_fmt(vco_in)}",
             "plln": f"VCO output = {_fmt(vco_in)} x {pn} = {_fmt(vco)}",
             "pllp": f"SYSCLK = VCO / {pp} = {_fmt(sysclk)} (field: P / 2 - 1)",
             "pllq": f"48 MHz domain = VCO / {pq} = {_fmt(vco // pq)} (unused here)",
             "hpre": f"HCLK = SYSCLK / {ahb} = {_fmt(hclk)}",
             "ppre1": f"APB1 = HCLK / {apb1} = {_fmt(hz['pclk1'])}",
             "ppre2": f"APB2 = HCLK / {apb2} = {_fmt(hz['pclk2'])}",
             "flash_latency": f"wait states for HCLK {_fmt(hclk)} at 2.7-3.6 V",
             "overdrive": "over-drive on (SYSCLK above 180 MHz)" if overdrive else "no over-drive"}
    return reset, Setting("pll-hsi", hz, fields, notes), None


def f7_wait_states(hclk: int) -> int:
    """RM0385 3.3.2 table 5 (2.7-3.6 V): the fewest flash wait states for an HCLK."""
    return max(0, math.ceil(hclk / (F7_FLASH_MHZ_PER_WS * MHZ)) - 1)


def h7_flash(vos: int, axi: int) -> tuple[int, int] | None:
    """RM0433's FLASH wait-state table: (LATENCY, WRHIGHFREQ) for an AXI clock at a voltage scale, None above it."""
    for top, ws, wr in H7_FLASH[vos]:
        if axi <= top:
            return ws, wr
    return None


def _h7(c: dict) -> tuple[Setting, Setting, int | None]:
    hsi = _int(c, "hsi_hz", "clock")
    if hsi != 64 * MHZ:
        raise ClockError(f"clock.hsi_hz is {hsi}; the STM32H7's HSI runs at 64 MHz at reset (RM0433 RCC)")
    reset_hz = {"sysclk": hsi, "core": hsi, "hclk": hsi, **{f"pclk{i}": hsi for i in range(1, 5)}}
    reset = Setting("hsi", _stated(_obj(c, "reset", "clock"), "clock.reset", reset_hz))
    m = _obj(c, "max", "clock")
    pll, div = _obj(m, "pll", "clock.max"), _obj(m, "dividers", "clock.max")
    pm, pn, pp = (_int(pll, k, "clock.max.pll") for k in ("m", "n", "p"))
    _in(pm, *H7["divm"], "clock.max.pll.m (DIVM1)", "RM0433 RCC_PLLCKSELR")
    _in(pn, *H7["divn"], "clock.max.pll.n (DIVN1)", "RM0433 RCC_PLL1DIVR")
    _in(pp, *H7["divp"], "clock.max.pll.p (DIVP1)", "RM0433 RCC_PLL1DIVR")
    if pp % 2:
        raise ClockError(f"clock.max.pll.p (DIVP1) is {pp}; PLL1's P divider takes even values only "
                         "(RM0433 RCC_PLL1DIVR)")
    if hsi % pm:
        raise ClockError(f"clock.max.pll.m (DIVM1) {pm} does not divide the 64 MHz HSI into whole hertz")
    ref = hsi // pm
    _in(ref, *H7["ref"], "PLL1's input ref1_ck (HSI / DIVM1)", "RM0433 RCC_PLLCKSELR")
    rge = next(r for top, r in H7_RGE if ref <= top)
    wide = ref > 2 * MHZ  # RM0433 8.7.12: the medium VCO for ref1_ck 1..2 MHz, the wide one above
    vos = _int(m, "vos", "clock.max")
    if vos not in H7_VOS:
        raise ClockError(f"clock.max.vos is {vos}; tinygen configures VOS0 (480 MHz, revision V) or VOS1 (400 MHz)")
    lim = H7_VOS[vos]
    revision = None
    if vos == 0:
        rev = m.get("revision")
        if rev != "V":
            raise ClockError("clock.max.vos 0 needs \"revision\": \"V\" (VOS0 and 480 MHz exist on silicon revision V "
                             "only)")
        revision = H7_REV_V
    vco = ref * pn
    limits = H7["vco_medium"] if not wide else H7["vco_wide"] if revision else H7["vco_wide_rev_y"]
    _in(vco, *limits, f"PLL1's {'wide' if wide else 'medium'} VCO (ref1_ck x DIVN1)",
        "DS12110 PLL characteristics" + ("" if revision or not wide else ", revision Y"))
    sysclk = vco // pp
    _in(sysclk, 0, lim["cpu_max"], "SYSCLK (VCO / DIVP1)", f"DS12110 operating conditions, VOS{vos}")
    d1cpre, hpre = (_div(div, k, "clock.max.dividers", AHB_DIV_FIELD) for k in ("cpu", "ahb"))
    apbs = [_div(div, f"apb{i}", "clock.max.dividers", APB_DIV_FIELD) for i in range(1, 5)]
    cpu = sysclk // d1cpre
    hclk = cpu // hpre
    hz = {"sysclk": sysclk, "core": cpu, "hclk": hclk, **{f"pclk{i}": hclk // d for i, d in enumerate(apbs, 1)}}
    _in(cpu, 0, lim["cpu_max"], "the CPU clock (SYSCLK / cpu)", f"DS12110 operating conditions, VOS{vos}")
    _in(hclk, 0, lim["hclk_max"], "HCLK, the AXI/AHB clock (CPU / ahb)", f"DS12110 operating conditions, VOS{vos}")
    for i in range(1, 5):
        _in(hz[f"pclk{i}"], 0, lim["pclk_max"], f"APB{i} (HCLK / apb{i})", f"DS12110 operating conditions, VOS{vos}")
    ws = _int(m, "flash_wait_states", "clock.max")
    wr = _int(m, "flash_wrhighfreq", "clock.max")
    need = h7_flash(vos, hclk)
    if need is None or ws < need[0] or ws > 15 or wr != need[1]:
        raise ClockError(f"clock.max.flash_wait_states {ws} and flash_wrhighfreq {wr} do not fit an AXI clock of "
                         f"{_fmt(hclk)} at VOS{vos}: RM0433's FLASH wait-state table gives "
                         + (f"LATENCY {need[0]}, WRHIGHFREQ {need[1]}" if need else "no setting"))
    hz = _stated(m, "clock.max", hz)
    fields = {"divm1": pm, "divn1": pn - 1, "divp1": pp - 1, "pll1rge": rge, "pll1vcosel": 0 if wide else 1,
              "d1cpre": AHB_DIV_FIELD[d1cpre], "hpre": AHB_DIV_FIELD[hpre],
              "d2ppre1": APB_DIV_FIELD[apbs[0]], "d2ppre2": APB_DIV_FIELD[apbs[1]],
              "d1ppre": APB_DIV_FIELD[apbs[2]], "d3ppre": APB_DIV_FIELD[apbs[3]],
              "flash_latency": ws, "flash_wrhighfreq": wr, "vos0": int(vos == 0)}
    notes = {"divm1": f"ref1_ck = HSI 64 MHz / {pm} = {_fmt(ref)}",
             "divn1": f"VCO = {_fmt(ref)} x {pn} = {_fmt(vco)} (field: N - 1)",
             "divp1": f"SYSCLK = VCO / {pp} = {_fmt(sysclk)} (field: P - 1)",
             "pll1rge": f"ref1_ck {_fmt(ref)}: input range {rge}",
             "pll1vcosel": "wide VCO (192-960 MHz)" if wide else "medium VCO (150-420 MHz)",
             "d1cpre": f"CPU = SYSCLK / {d1cpre} = {_fmt(cpu)}", "hpre": f"AXI/AHB = CPU / {hpre} = {_fmt(hclk)}",
             "d2ppre1": f"APB1 = HCLK / {apbs[0]} = {_fmt(hz['pclk1'])}",
             "d2ppre2": f"APB2 = HCLK / {apbs[1]} = {_fmt(hz['pclk2'])}",
             "d1ppre": f"APB3 = HCLK / {apbs[2]} = {_fmt(hz['pclk3'])}",
             "d3ppre": f"APB4 = HCLK / {apbs[3]} = {_fmt(hz['pclk4'])}",
             "flash_latency": f"wait states for AXI {_fmt(hclk)} at VOS{vos}",
             "flash_wrhighfreq": "programming delay for that AXI clock",
             "vos0": "VOS0 (SYSCFG_PWRCR.ODEN over VOS1)" if vos == 0 else "VOS1"}
    return reset, Setting("pll-hsi", hz, fields, notes), revision


def _nrf52(c: dict) -> tuple[Setting, Setting, int | None]:
    hz = {"sysclk": NRF52_HZ, "core": NRF52_HZ}
    reset = Setting("hfint", _stated(_obj(c, "reset", "clock"), "clock.reset", hz))
    m = _obj(c, "max", "clock")
    hfxo = m.get("hfxo")
    if not isinstance(hfxo, bool):
        raise ClockError("clock.max.hfxo must be true or false (start the 64 MHz crystal oscillator)")
    return reset, Setting("hfxo" if hfxo else "hfint", _stated(m, "clock.max", hz), {"hfxo": int(hfxo)},
                          {"hfxo": "start HFXO (accurate UART baud rate)"}), None


def parse_clock(c) -> Clock:
    """A board file's `clock` object, every frequency derived and checked (ClockError names the first problem)."""
    if not isinstance(c, dict):
        raise ClockError("clock must be an object (see boards/stm32f746.json)")
    tree = c.get("tree")
    if tree not in TREES:
        raise ClockError(f"clock.tree {tree!r} has no bring-up in firmware/tg_clock.c (known: {', '.join(TREES)})")
    for key in ("reference", "why"):
        if not isinstance(c.get(key), str):
            raise ClockError(f"clock.{key} must be a string")
    reset, top, revision = {"stm32f7": _f7, "stm32h7": _h7, "nrf52": _nrf52}[tree](c)
    return Clock(tree, reset, top, c["reference"], c["why"], revision)
