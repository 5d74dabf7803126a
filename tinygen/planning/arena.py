"""Static arena planning: place buffers with known lifetimes at byte offsets.

A buffer is live over the closed step interval [first, last]; two buffers whose
intervals intersect must not share bytes. `plan_greedy_by_size` is TFLite Micro's
GreedyMemoryPlanner strategy: largest first, each at the lowest aligned offset that
fits in a gap between already-placed, simultaneously live buffers.

A buffer may be pinned to another (`anchor`, `rel`): it then sits at the anchor's offset + rel,
and the two may share bytes by design (a convolution writing its output over the already
consumed part of its input, `fusion.overlap_offset`). Such a group is placed as one unit; each
member keeps its own lifetime, so other buffers reuse a member's bytes once it is dead.
"""

from __future__ import annotations

import bisect
import operator
from dataclasses import dataclass


@dataclass
class Buffer:
    name: str
    size: int
    first: int
    last: int
    offset: int = -1
    anchor: str | None = None  # pinned at buffers[anchor].offset + rel (same group: may overlap by design)
    rel: int = 0

    @property
    def group(self) -> str:
        return self.anchor or self.name

    def overlaps_in_time(self, other: Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


ORDERS = {
    # TFLite Micro's GreedyMemoryPlanner order
    "greedy-by-size": lambda b: (-b.size, b.first, b.name),
    # alternatives searched by plan_best: long-lived first, area first, earliest first
    "greedy-by-lifetime": lambda b: (-(b.last - b.first), -b.size, b.name),
    "greedy-by-area": lambda b: (-b.size * (b.last - b.first + 1), b.name),
    "greedy-by-start": lambda b: (b.first, -b.size, b.name),
    # short-lived first: the gradients of a backward pass written over each other (pinned pairs) fill around them
    "greedy-by-short-lifetime": lambda b: (b.last - b.first, -b.size, b.name),
}


def pin(buffers: dict[str, Buffer], member: str, anchor: str, rel: int) -> None:
    """Fix buffers[member] (and whatever is pinned to it) at buffers[anchor].offset + rel."""
    for b in buffers.values():
        if b.name == member or b.anchor == member:
            b.rel = rel + (b.rel if b.anchor == member else 0)
            b.anchor = anchor


def _groups(buffers: list[Buffer]) -> dict[str, list[Buffer]]:
    groups: dict[str, list[Buffer]] = {}
    for b in buffers:
        groups.setdefault(b.group, []).append(b)
    return groups


def _envelope(members: list[Buffer]) -> Buffer:
    """A group as one buffer for ordering: its extent over its whole lifetime."""
    lo = min(m.rel for m in members)
    return Buffer(members[0].group, max(m.rel + m.size for m in members) - lo, min(m.first for m in members),
                  max(m.last for m in members), rel=lo)


def _place_group(members: list[Buffer], placed: list[Buffer], align: int) -> int:
    """The lowest aligned anchor offset at which no member meets a placed, simultaneously live buffer:
    from the lowest, each conflict found moves the anchor just past that buffer (every anchor in
    between meets it too), until none is left."""
    conflicts = [(m, [p for p in placed if p.overlaps_in_time(m)]) for m in members]
    anchor = _align(-min(m.rel for m in members), align)
    moved = True
    while moved:
        moved = False
        for m, ps in conflicts:
            for p in ps:
                if anchor + m.rel < p.offset + p.size and p.offset < anchor + m.rel + m.size:
                    anchor, moved = _align(p.offset + p.size - m.rel, align), True
    return anchor


def plan_greedy_by_size(buffers: list[Buffer], align: int = 8, order=ORDERS["greedy-by-size"]) -> int:
    """Assign `offset` to every buffer in place; return the arena size in bytes."""
    placed: list[Buffer] = []  # kept in offset order, so a buffer's live neighbours come sorted
    groups = _groups(buffers)
    units = {name: (_envelope(ms) if len(ms) > 1 else ms[0]) for name, ms in groups.items()}
    for name in sorted(units, key=lambda n: order(units[n])):
        members = groups[name]
        if len(members) == 1:
            buf = members[0]
            first, last, size = buf.first, buf.last, buf.size
            offset = 0
            for p in placed:
                if p.first <= last and first <= p.last:  # live at the same time
                    if offset + size <= p.offset:
                        break
                    if p.offset + p.size > offset:  # offset is aligned: the max of the two
                        offset = _align(p.offset + p.size, align)
            buf.offset = offset
        else:
            anchor = _place_group(members, placed, align)
            for m in members:
                m.offset = anchor + m.rel
        for m in members:
            bisect.insort(placed, m, key=operator.attrgetter("offset"))
    return _align(max((b.offset + b.size for b in buffers), default=0), align)


def plan_best(buffers: list[Buffer], align: int = 8) -> tuple[int, str]:
    """Search the greedy orders; keep the smallest arena (ties: TFLite Micro's). Returns (size, order)."""
    best = None
    for name, order in ORDERS.items():
        size = plan_greedy_by_size(buffers, align, order)
        if best is None or size < best[0]:
            best = (size, name, [b.offset for b in buffers])
    for b, off in zip(buffers, best[2], strict=True):
        b.offset = off
    return best[0], best[1]


def _footprint(members: list[Buffer]) -> int:
    """Bytes covered by the union of [rel, rel + size) of a group's members."""
    total, end = 0, None
    for lo, hi in sorted((m.rel, m.rel + m.size) for m in members):
        if end is None or lo >= end:
            total, end = total + hi - lo, hi
        elif hi > end:
            total, end = total + hi - end, hi
    return total


def peak_steps(buffers: list[Buffer]) -> tuple[int, set[int]]:
    """The largest total size of buffers live at one step, and the steps where it is reached; a pinned group
    counts the bytes its live members cover together."""
    steps = sorted({s for b in buffers for s in (b.first, b.last)})
    groups = _groups(buffers)
    live = {s: sum(_footprint([m for m in ms if m.first <= s <= m.last]) for ms in groups.values()) for s in steps}
    top = max(live.values(), default=0)
    return top, {s for s, v in live.items() if v == top}


def lower_bound(buffers: list[Buffer]) -> int:
    """The largest total size of buffers live at one step: no plan can beat it."""
    return peak_steps(buffers)[0]


def check_no_overlap(buffers: list[Buffer]) -> None:
    """No two simultaneously live buffers share bytes, except members of one pinned group (by design)."""
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            if a.group == b.group:
                if b.offset - a.offset != b.rel - a.rel:
                    raise AssertionError(f"buffers {a.name} and {b.name} moved apart from their pinned offsets")
                continue
            if a.overlaps_in_time(b) and a.offset < b.offset + b.size and b.offset < a.offset + a.size:
                raise AssertionError(f"buffers {a.name} and {b.name} overlap in the arena")
