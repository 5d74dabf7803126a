"""`tinygen bench ondevice`: what the device's own selection (`--update on-device`) is worth.

Two tasks per model, from the transfer start (pretrained on digits 0-4, a fresh 5-way head): A, the new classes
5-9 (the transfer task), and B, the old classes 0-4 with their labels rotated by two (a new labelling of familiar
inputs). For each task and sample order the device's selection is made on the order's first K samples, as the
firmware makes it (the bit-exact reference of its pass, `training.ondevice`), and compared at the same envelope
and compute budget with: the selection the device made on the other task (a scheme chosen for another task),
and fixed schemes (the last k candidates, each at the widest width the compute budget allows), the best of
which is chosen with the test accuracies in hand (an oracle, so "best fixed" is an upper bound on any one
fixed choice). A fourth row measures masks against prefixes: the same greedy over each candidate's channels
ranked by potential, training the top k channels instead of the first k (what run-time masks over a whole
tensor in SRAM would allow; the firmware trains prefixes). Training is the integer reference (batch 1), the
task's epochs and learning rate.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from tinygen.bench import transfer as T
from tinygen.bench.suites import _save
from tinygen.frontends.inputs import quantize_images
from tinygen.ir.scheme import LayerUpdate, Scheme, TrainConfig
from tinygen.planning.memory import sram_budget
from tinygen.reference.training import Trainer
from tinygen.report import table
from tinygen.targets.boards import load_board
from tinygen.training.ondevice import (
    Envelope,
    choose_envelope,
    envelope_scheme,
    potentials,
    select_on_device,
    selection_macs,
)

TASK_NAMES = {"A": "new classes 5-9", "B": "classes 0-4, labels rotated"}
DEVICE, OTHER, MASKS = "on-device", "other task's selection", "on-device, top channels"
BOARD = "stm32f746"


def task_data(model_task: str, which: str):
    """(model, x, y, x_test, y_test) of task `which` on the transfer start of `model_task`."""
    model, xq, y, xq_te, y_te, _, _ = T.transfer_start(model_task)
    if which == "A":
        return model, xq, y, xq_te, y_te
    xtr, ytr, xte, yte = T._split(T.TASKS[model_task])
    tr, te = ytr < 5, yte < 5
    return (model, quantize_images(xtr[tr], model), (ytr[tr] + 2) % 5, quantize_images(xte[te], model),
            (yte[te] + 2) % 5)


def fixed_selections(env: Envelope) -> dict[str, dict[str, int]]:
    """The last k candidates, each at its widest, narrowed from the earliest while the compute budget is exceeded;
    k where none fits is left out."""
    out = {}
    cands = env.candidates
    for k in range(1, len(cands) + 1):
        widths = {c.name: len(c.options) - 1 for c in cands[-k:]}
        order = cands[-k:-1]
        while True:
            sel = {c.name: c.options[widths[c.name]] for c in cands[-k:]}
            if selection_macs(env, sel) <= env.macs_budget:
                out[f"last-{k}"] = sel
                break
            narrow = next((c for c in order if widths[c.name] > 0), None)
            if narrow is None:
                break
            widths[narrow.name] -= 1
    return out


def top_channels(env: Envelope, pots: list[list[tuple[int, int]]]) -> dict[str, list[int]]:
    """The device's greedy over each candidate's channels ranked by potential (most first, ties to the lower
    channel), choosing any channels (run-time masks) instead of the first ones: layer -> the chosen channels.
    Reference only, to measure what masks would gain; the firmware trains prefixes."""
    ranked = [sorted(range(len(p)), key=lambda c, p=p: (p[c][0] == 0, -p[c][1], -p[c][0], c)) for p in pots]
    sel = select_on_device(env, [[p[c] for c in r] for p, r in zip(pots, ranked, strict=True)])
    names = [c.name for c in env.candidates]
    return {n: sorted(ranked[names.index(n)][:k]) for n, k in sel.items()}


def _train(args) -> float:
    model_task, which, sel, seed, lr = args
    model, x, y, x_te, y_te = task_data(model_task, which)
    chans = {n: list(range(k)) if isinstance(k, int) else k for n, k in sel.items()}
    tr = Trainer(model, Scheme({n: LayerUpdate(c, True) for n, c in chans.items()}), TrainConfig(lr=lr))
    for i in T.sample_order(model_task, len(y), seed):
        tr.step(x[i], y[i])
    return T._int_accuracy(tr.trained_model(), x_te, y_te)


def describe(env: Envelope, sel: dict[str, int]) -> str:
    return " ".join(f"{c.name}:{sel[c.name]}" for c in env.candidates if sel.get(c.name))


def run(models: list[str], seeds: int, out: Path | None, log=print, jobs: int | None = None) -> dict:
    payload = {"board": BOARD, "seeds": seeds, "models": {}}
    rows = []
    for model_task in models:
        model = T.transfer_start(model_task)[0]
        lr = T.TASKS[model_task].lr
        cfg = TrainConfig(lr=lr)
        env = choose_envelope(model, sram_budget(load_board(BOARD), None), cfg)
        fixed = fixed_selections(env)
        device: dict[tuple[str, int], dict[str, int]] = {}
        masks: dict[tuple[str, int], dict[str, list[int]]] = {}
        for which in TASK_NAMES:
            m, x, y, _, _ = task_data(model_task, which)
            for seed in range(seeds):
                first = T.sample_order(model_task, len(y), seed)[:env.samples]
                pots = potentials(Trainer(m, envelope_scheme(m, env), cfg), env, x[first], y[first])
                device[which, seed] = select_on_device(env, pots)
                masks[which, seed] = top_channels(env, pots)
        work = {}
        for which in TASK_NAMES:
            other = "B" if which == "A" else "A"
            for seed in range(seeds):
                work[which, DEVICE, seed] = (model_task, which, device[which, seed], seed, lr)
                work[which, OTHER, seed] = (model_task, which, device[other, seed], seed, lr)
                work[which, MASKS, seed] = (model_task, which, masks[which, seed], seed, lr)
                for label, sel in fixed.items():
                    work[which, label, seed] = (model_task, which, sel, seed, lr)
        log(f"[{model_task}] {len(work)} training runs ({len(fixed)} fixed schemes, {seeds} orders, 2 tasks) ...")
        with ProcessPoolExecutor(min(len(work), jobs or os.cpu_count() or 1)) as pool:
            acc = dict(zip(work, pool.map(_train, work.values()), strict=True))
        result = {"envelope": env.to_json(), "fixed": fixed,
                  "device": {f"{w}/{s}": sel for (w, s), sel in device.items()},
                  "masks": {f"{w}/{s}": sel for (w, s), sel in masks.items()}, "tasks": {}}
        for which in TASK_NAMES:
            mean = {label: float(np.mean([acc[which, label, s] for s in range(seeds)]))
                    for label in (DEVICE, OTHER, MASKS, *fixed)}
            best = max(fixed, key=lambda label: mean[label])
            result["tasks"][which] = {"accuracy": mean, "orders": {label: [acc[which, label, s] for s in range(seeds)]
                                                                   for label in mean}, "best_fixed": best}
            rows.append([model_task, f"{which}: {TASK_NAMES[which]}", f"{100 * mean[DEVICE]:.2f}",
                         f"{100 * mean[OTHER]:.2f}", f"{100 * mean[MASKS]:.2f}", f"{100 * mean[best]:.2f} ({best})",
                         " / ".join(describe(env, device[which, s]) for s in range(seeds))])
        payload["models"][model_task] = result
    log(table(["model", "task", f"{DEVICE} %", f"{OTHER} %", f"{MASKS} %", "best fixed % (oracle)",
               "device's selections (per order)"], rows, "llrrrrl"))
    path = _save(out, "ondevice", payload)
    log(f"saved {path}")
    return payload
