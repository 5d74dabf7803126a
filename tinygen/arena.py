"""Static arena planning: place buffers with known lifetimes at byte offsets.

A buffer is live over the closed step interval [first, last]; two buffers whose
intervals intersect must not share bytes. `plan_greedy_by_size` is TFLite Micro's
GreedyMemoryPlanner strategy: largest first, each at the lowest aligned offset that
fits in a gap between already-placed, simultaneously live buffers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Buffer:
    name: str
    size: int
    first: int
    last: int
    offset: int = -1

    def overlaps_in_time(self, other: Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


ORDERS = {
    # TFLite Micro's GreedyMemoryPlanner order
    "greedy-by-size": lambda b: (-b.size, b.first, b.name),
    # alternatives searched by plan_best: long-lived first, area first, conflict-heavy first
    "greedy-by-lifetime": lambda b: (-(b.last - b.first), -b.size, b.name),
    "greedy-by-area": lambda b: (-b.size * (b.last - b.first + 1), b.name),
    "greedy-by-start": lambda b: (b.first, -b.size, b.name),
}


def plan_greedy_by_size(buffers: list[Buffer], align: int = 8, order=ORDERS["greedy-by-size"]) -> int:
    """Assign `offset` to every buffer in place; return the arena size in bytes."""
    placed: list[Buffer] = []
    for buf in sorted(buffers, key=order):
        live = sorted((p for p in placed if p.overlaps_in_time(buf)), key=lambda p: p.offset)
        offset = 0
        for p in live:
            if offset + buf.size <= p.offset:
                break
            offset = max(offset, _align(p.offset + p.size, align))
        buf.offset = offset
        placed.append(buf)
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


def lower_bound(buffers: list[Buffer]) -> int:
    """The largest total size of buffers live at one step (no plan can beat it)."""
    steps = {s for b in buffers for s in (b.first, b.last)}
    return max((sum(b.size for b in buffers if b.first <= s <= b.last) for s in steps), default=0)


def check_no_overlap(buffers: list[Buffer]) -> None:
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            if a.overlaps_in_time(b) and a.offset < b.offset + b.size and b.offset < a.offset + a.size:
                raise AssertionError(f"buffers {a.name} and {b.name} overlap in the arena")
