"""Plain-text tables for the CLI and benchmarks."""

from __future__ import annotations


def table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """Columns padded to width; `align` is one char per column, 'l' or 'r' (numbers default right)."""
    cells = [[str(c) for c in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if align is None:
        align = "".join("r" if rows and isinstance(rows[0][i], (int, float)) else "l" for i in range(len(headers)))
    lines = []
    for k, row in enumerate(cells):
        padded = (c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align, strict=True))
        lines.append("  ".join(padded).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:.4g}"
    if isinstance(c, int) and not isinstance(c, bool):
        return f"{c:,}"
    return str(c)


STALL_MIN_STEPS = 20  # a constant loss this long at the end of a run is a stall, not a plateau


def stall_start(losses_q16: list[int]) -> int | None:
    """The step from which a run's loss has not changed, when that is a stall: the last STALL_MIN_STEPS steps or a
    tenth of the run, whichever is longer (saturated int8 logits give a zero gradient, so nothing more is learned);
    None otherwise."""
    run = 1
    while run < len(losses_q16) and losses_q16[-run - 1] == losses_q16[-1]:
        run += 1
    if losses_q16 and run >= max(STALL_MIN_STEPS, len(losses_q16) // 10) and run < len(losses_q16):
        return len(losses_q16) - run
    return None


def loss_trend(losses_q16: list[int]) -> str:
    """One line on a run's loss (Q16 values as the device prints them): first vs last quarter, and a stall
    (`stall_start`) with what to change."""
    q = [v / 65536 for v in losses_q16]
    k = max(1, len(q) // 4)
    line = f"loss: mean of the first {k} steps {sum(q[:k]) / k:.4f} -> mean of the last {k} steps {sum(q[-k:]) / k:.4f}"
    since = stall_start(losses_q16)
    if since is not None:
        line += (f"; training has stalled: the loss has been {q[-1]:.4f} on every step since step {since} "
                 "(saturated logits give a zero gradient); lower --lr or train fewer steps")
    return line


def loss_curve_svg(losses_q16: list[int], title: str, width: int = 640, height: int = 240) -> str:
    """The loss of every step as an SVG polyline (x: step, y: loss in nats, 0 at the bottom)."""
    q = [v / 65536 for v in losses_q16] or [0.0]
    top = max(max(q), 1e-9)
    pad = 40
    pts = " ".join(f"{pad + i * (width - 2 * pad) / max(1, len(q) - 1):.1f},"
                   f"{height - pad - v / top * (height - 2 * pad):.1f}" for i, v in enumerate(q))
    esc = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
            f'font-size="12">\n<rect width="{width}" height="{height}" fill="white"/>\n'
            f'<text x="{pad}" y="20">{esc}</text>\n'
            f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>\n'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>\n'
            f'<text x="{pad}" y="{height - pad + 16}">step 0</text>\n'
            f'<text x="{width - pad}" y="{height - pad + 16}" text-anchor="end">step {len(q) - 1}</text>\n'
            f'<text x="{pad - 4}" y="{pad + 4}" text-anchor="end">{top:.2f}</text>\n'
            f'<text x="{pad - 4}" y="{height - pad}" text-anchor="end">0</text>\n'
            f'<polyline points="{pts}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>\n</svg>\n')
