"""`tinygen bench filter`: what gradient filtering saves, per configuration, on QEMU.

Each MIT model x published scheme x r is built as `tinygen build ... --filter-r r --path-filter-r r` builds it
(r = 1: no filter; the trained layers and every frozen convolution on the gradient path whose map is at least
2r x 2r filter with patch side r; "auto": each layer's r as `--filter-r auto` chooses it) and run by
`tinygen sim`'s path, bit-exact with the reference. Per row: the planner's backward MACs, instructions per
inference and per training step (QEMU -icount shift=0), the backward part (step - inference) and its ratio to
r = 1, where the backward goes (`tinygen sim --profile`), the bytes the trained layers keep of their inputs,
peak SRAM and flash. Emulators count instructions, not cycles.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

from tinygen.bench import speed
from tinygen.bench.suites import _save
from tinygen.codegen.project import load_trainer, read_manifest
from tinygen.planning.report import backward_macs
from tinygen.planning.schedule import plan_training
from tinygen.report import table
from tinygen.verify.profile import run_profile

MODELS = ("mcunet-5fps", "mbv2-w0.35")
RS = (1, 2, 4, "auto")
BOARD = "stm32f746"
BACKWARD_KINDS = ("output gradient", "input gradient", "weight gradient + update")
# Yang et al. (CVPR 2023), the claims tinygen's figures stand beside
PAPER = ("gradient filtering: up to 19x faster backward and 77% less memory at ~0.1% accuracy (Yang et al. 2023, on "
         "their own models and hardware: not like for like)")


def filtered_layers(scheme) -> dict:
    """How many layers filter their output gradient: trained ones (a bias counts) and frozen ones on the path."""
    return {"filtered_layers": sum(1 for u in scheme.layers.values() if u.filter_r > 1),
            "path_filtered": len(scheme.path_filtered())}


def _job(args: tuple) -> dict:
    model, scheme, r, root, timeout = args
    with tempfile.TemporaryDirectory(dir=root) as d:
        out = Path(d) / "build"
        row = asdict(speed.measure(model, scheme, r, BOARD, out, timeout, path_r=r))
        m, trainer = load_trainer(out, read_manifest(out))
        plan = plan_training(m, trainer)
        row.update(backward_macs=backward_macs(m, trainer), saved_bytes=sum(sv.nbytes for sv in plan.saved.values()),
                   **filtered_layers(trainer.scheme))
        by_kind = row.pop("breakdown") or run_profile(out, timeout).to_json()["by_kind"]  # measure profiles r = 1
        row["backward_by_kind"] = {k: by_kind["training step"].get(k, 0) for k in BACKWARD_KINDS}
        row.pop("functions")
        return row


def bench(models=MODELS, schemes=tuple(speed.SCHEMES), rs=RS, jobs: int | None = None, log=print,
          timeout: float = 900.0) -> list[dict]:
    configs = [(m, s, r) for m in models for s in schemes for r in rs]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(configs)))
    log(f"filter: {len(configs)} configurations on QEMU ({BOARD}), {jobs} at a time")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tinygen-filter-") as root:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for c, row in zip(configs, pool.map(_job, [(*c, root, timeout) for c in configs]), strict=True):
                log(f"  {c[0]} {row['scheme']} r={c[2]}: {row['step_instructions'] / 1e6:.1f} M per step, "
                    f"{(row['step_instructions'] - row['inference_instructions']) / 1e6:.1f} M backward")
                rows.append(row)
    return rows


def report(rows: list[dict]) -> str:
    base = {(r["model"], r["scheme"]): r for r in rows if r["filter_r"] == 1}
    body = []
    for r in rows:
        bwd = r["step_instructions"] - r["inference_instructions"]
        b1 = base.get((r["model"], r["scheme"]))
        ratio = bwd / (b1["step_instructions"] - b1["inference_instructions"]) if b1 else None
        kinds = r["backward_by_kind"]
        body.append([r["model"], r["scheme"], r["filter_r"], f"{r['filtered_layers']} ({r['path_filtered']})",
                     f"{r['backward_macs'] / 1e6:.2f}",
                     f"{r['inference_instructions'] / 1e6:.2f}", f"{r['step_instructions'] / 1e6:.2f}",
                     f"{bwd / 1e6:.2f}", f"{ratio:.2f}x" if ratio is not None else "",
                     *[f"{kinds[k] / 1e6:.2f}" for k in BACKWARD_KINDS], f"{r['saved_bytes']:,}",
                     f"{r['peak_sram_bytes']:,}", f"{r['flash_bytes']:,}"])
    head = ["model", "scheme", "r", "filtered (frozen)", "bwd M MACs", "M instr/infer", "M instr/step", "M backward",
            "vs r=1", "M out grad", "M in grad", "M w grad+upd", "saved B", "peak SRAM B", "flash B"]
    note = ("filtered (frozen): layers that filter their output gradient (of them, frozen ones on the path). "
            f"QEMU mps2-an500 -icount shift=0 ({BOARD} build), bit-exact with the reference; backward = step - "
            "inference (plain image); the three kinds from `tinygen sim --profile` (profile image); flash: the QEMU "
            "image's text + rodata + data. Emulators count "
            f"instructions, not cycles. For comparison: {PAPER}.")
    return table(head, body, "llrr" + "r" * 11) + "\n" + note


def save(rows: list[dict], out: Path | None) -> Path:
    return _save(out, "filter", {"note": "emulators count instructions, not cycles", "board": BOARD,
                                 "paper": PAPER, "rows": rows})
