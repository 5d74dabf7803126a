"""Benchmarks the project ships: each prints a table and writes JSON (`tinygen bench ...`)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from tinygen.bench import transfer as T
from tinygen.codegen.firmware import FirmwareOptions
from tinygen.codegen.project import write_project
from tinygen.errors import TinygenError
from tinygen.frontends.inputs import training_samples
from tinygen.ir.scheme import MASTER_BITS, TrainConfig, full_scheme, load_scheme, parse_update
from tinygen.paths import shared_dir
from tinygen.planning.memory import (
    RUNTIME_RESERVE,
    auto_last_k,
    check_fits,
    choose_patch_stage,
    sram_budget,
    trained_state_bytes,
    training_sram,
)
from tinygen.planning.report import build_plan
from tinygen.reference.float_grad import cosine, float_backward, integer_gradients
from tinygen.reference.training import Trainer
from tinygen.report import table
from tinygen.targets.boards import load_board
from tinygen.training.selection import PROBE_TEST, PROBE_TRAIN, choose, fisher_potential, select
from tinygen.verify.host_train import c_train_predict
from tinygen.zoo.catalog import get_model, list_models


def _save(out: Path | None, name: str, payload: dict) -> Path:
    out = Path(out or "bench-results")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def gradient_filter(models: list[str], samples: int, rs: list[int], out: Path | None, log=print) -> dict:
    """Per layer: cosine similarity of tinygen's integer gradients (filter r) to the exact float
    gradient of the same int8 network, averaged over real samples."""

    rows, payload = [], {"samples": samples, "filter_r": rs, "models": {}}
    for name in models:
        model = get_model(name)
        x, y, source = training_samples(model, samples)
        per = {}
        for r in rs:
            for xi, yi in zip(x, y, strict=True):
                exact = float_backward(Trainer(model, full_scheme(model, 1), TrainConfig()), xi, yi)
                got = integer_gradients(Trainer(model, full_scheme(model, r), TrainConfig()), xi, yi)
                for key, v in got.items():
                    if key.startswith("dw:") or key.startswith("grad:"):
                        per.setdefault(key, {}).setdefault(r, []).append(cosine(v, exact[key]))
        payload["models"][name] = {"data": source, "cosine": {k: {str(r): float(np.mean(v)) for r, v in d.items()}
                                                              for k, d in per.items()}}
        shapes = {layer.name: layer.output.shape for layer in model.layers}
        for key, d in per.items():
            kind, layer = key.split(":", 1)
            if kind != "dw":
                continue
            rows.append([name, layer, "x".join(map(str, shapes[layer])), *[f"{np.mean(d[r]):.4f}" for r in rs]])
        log(f"[{name}] {len(per)} gradients over {samples} samples of {source}")
    log(table(["model", "layer (weight grad)", "output", *[f"cos r={r}" for r in rs]], rows,
              "lll" + "r" * len(rs)))
    path = _save(out, "gradient_filter", payload)
    log(f"saved {path}")
    return payload


def transfer(tasks: list[str], updates: list[str], rs: list, out: Path | None, log=print,
             seeds: int = 3, float_nq: bool = False, path_rs: tuple[int, ...] = ()) -> dict:
    """Accuracy of on-device (integer, bit-exact) training vs float SGD of the same layers (fake-quantized
    like the int8 network; with float_nq also unquantized) vs none, each the mean over `seeds` sample
    orders from the same start. `rs`: the trained layers' filter (an int or "auto"); `path_rs`: also with every
    frozen convolution on the gradient path filtering at that r (the trained layers at r = 1)."""

    rows, results = [], []
    for task in tasks:
        t0 = time.perf_counter()
        model, *_ = T.transfer_start(task)
        log(f"[{task}] pretrained {model.name} on classes 0-4 in {time.perf_counter() - t0:.1f} s; "
            f"training on classes 5-9, lr {T.TASKS[task].lr}, {T.TASKS[task].epochs} epochs, batch 1")
        for update in updates:
            runs = [("none", 1, 1), ("float", 1, 1)] + [("float-nq", 1, 1)] * float_nq + [("int", r, 1) for r in rs]
            runs += [("int", 1, p) for p in path_rs]
            accs = {}
            for method, r, p in runs:
                reps = [T.run(task, update, method, r, seed=s, path_r=p)
                        for s in range(1 if method == "none" else seeds)]
                accs[reps[0].method] = float(np.mean([x.accuracy for x in reps]))
                results.extend(x.__dict__ for x in reps)
                log(f"  {update:8s} {reps[0].method:9s} {100 * accs[reps[0].method]:6.2f}%  "
                    f"(per order: {', '.join(f'{100 * x.accuracy:.1f}' for x in reps)}; {reps[0].steps} steps each)")
            rows.append([task, update, *[f"{100 * accs[k]:.2f}" for k in accs],
                         f"{100 * (accs['int r=1'] - accs['float']):+.2f}",
                         *[f"{100 * (accs[f'int r={r}'] - accs['int r=1']):+.2f}" for r in rs if r != 1],
                         *[f"{100 * (accs[f'int r=1 path r={p}'] - accs['int r=1']):+.2f}" for p in path_rs]])
    headers = ["task", "update", "none", "float SGD (fake-quant)", *["float SGD (no quant)"] * float_nq,
               *[f"int r={r}" for r in rs], *[f"int path r={p}" for p in path_rs], "int-float",
               *[f"r={r} cost" for r in rs if r != 1], *[f"path r={p} cost" for p in path_rs]]
    log(table(headers, rows, "ll" + "r" * (len(headers) - 2)))
    path = _save(out, "transfer_" + "-".join(tasks), {"results": results, "seeds": seeds, "float": "fake-quant",
                                   "tasks": {t: T.TASKS[t].__dict__ for t in tasks}})
    log(f"saved {path}")
    return {"rows": rows, "results": results}


# Lin et al. 2022, STM32F746, 128x128, 10 classes: peak SRAM (KB) with sparse update + operator
# reordering, and sparse update without reordering.
PAPER_KB = {"mbv2-w0.35": (141, 335), "proxyless-w0.3": (135, 326), "mcunet-5fps": (173, 560)}
SCHEME_KEYS = {"mbv2-w0.35": "mbv2", "proxyless-w0.3": "proxyless", "mcunet-5fps": "mcunet"}


PAPER_PATCHES = (2,)  # the paper ran its initial stage in 2x2 patches (section 3.1)
# (master bits, patch stage): today's default, the smaller storages, and the paper's own setting (the int8
# weights updated in place, the initial stage in 2x2 patches where the planner finds one that lowers the peak)
MEMORY_CONFIGS = tuple((bits, False) for bits in MASTER_BITS) + ((0, True),)


def _config_label(bits: int, patches: bool) -> str:
    return f"{bits} bits" + (", 2x2 patch stage" if patches else "")


def _linked_sram(args) -> int:
    """The linked F746 training firmware's SRAM (.data + .bss + arena + stack) for one scheme, storage and patch
    stage."""
    name, spec, bits, stage = args
    model = get_model(name, classes=10)
    model.patch_stage = stage
    trainer = None if spec is None else Trainer(model, load_scheme(spec, model), TrainConfig(frac_bits=bits))
    with tempfile.TemporaryDirectory(prefix="tinygen-memory-") as tmp:
        m = write_project(model, load_board("stm32f746"), Path(tmp) / "b", trainer,
                          FirmwareOptions(samples=1, train=trainer is not None, train_steps=int(trainer is not None)))
    fw = m.get("firmware", {})
    if not fw.get("compiled"):
        what = "inference" if spec is None else spec.rsplit("#", 1)[-1]
        raise TinygenError(f"the {name} {what} firmware did not link: {fw.get('reason', '?')}")
    return fw["hw"]["sizes"]["sram_bytes"]


def memory(out: Path | None, log=print, elf: bool = True, jobs: int | None = None) -> dict:
    """tinygen's planned peak SRAM for the MIT models with each published scheme, each trained-weight storage
    (`--master-bits` 8, 4, 0) and the paper's own setting (0 bits and a 2x2 patch stage), beside the linked
    firmware's (with `elf`) and the paper's."""

    root = shared_dir()
    if root is None:
        raise TinygenError("the memory benchmark needs ../shared/models/mit-tiny-training (not present)")
    board = load_board("stm32f746")
    path = root / "models/mit-tiny-training/sparse_schemes.json"
    schemes = json.loads(path.read_text())
    cases = [(name, key, f"{path}#{SCHEME_KEYS[name]}/{key}")
             for name in PAPER_KB for key in schemes[SCHEME_KEYS[name]]]
    plans, work = {}, []
    for done, (name, key, spec) in enumerate(cases, 1):
        model = get_model(name, classes=10)
        scheme = load_scheme(spec, model)
        for bits, patches in MEMORY_CONFIGS:
            trainer = Trainer(model, scheme, TrainConfig(frac_bits=bits))
            model.patch_stage = choose_patch_stage(model, trainer, PAPER_PATCHES) if patches else None
            plans[(name, key, bits, patches)] = (build_plan(model, trainer, board, sram_budget(board)),
                                                 model.patch_stage)
            work.append((name, spec, bits, model.patch_stage))
        log(f"  [{done}/{len(cases)}] {name} {key} planned")
    inference = {}
    for name in PAPER_KB:  # inference only: whole tensors, and the 2x2 stage with the least peak
        model = get_model(name, classes=10)
        for stage in (None, choose_patch_stage(model, None, PAPER_PATCHES)):
            model.patch_stage = stage
            inference[(name, stage)] = build_plan(model, None, board, sram_budget(board))
            work.append((name, None, 0, stage))
    linked = {}
    if elf:
        log(f"linking {len(work)} training firmwares for the {board.name} on {jobs or os.cpu_count()} processes ...")
        with ProcessPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
            for done, (args, sram) in enumerate(zip(work, pool.map(_linked_sram, work), strict=True), 1):
                linked[args] = sram
                what = "inference" if args[1] is None else f"{args[1].rsplit('/', 1)[-1]}, {args[2]} bits"
                log(f"  [{done}/{len(work)}] {args[0]} {what}, patch stage {args[3]}: {sram:,} B linked")
    rows, payload = [], []
    for name, key, spec in cases:
        reorder_kb, sparse_kb = PAPER_KB[name]
        cells = []
        for bits, patches in MEMORY_CONFIGS:
            p, stage = plans[(name, key, bits, patches)]
            facts = {k: p[k] for k in ("peak_sram_bytes", "arena_bytes", "arena_lower_bound_bytes",
                                       "trained_state_bytes", "runtime_reserve_bytes", "flash_bytes", "fits")}
            got = linked.get((name, spec, bits, stage))
            payload.append({"model": name, "scheme": key, "master_bits": bits, "patch_stage": stage,
                            "patch_macs": p["patch_stage"] and p["patch_stage"]["macs"],
                            "paper_kb_sparse_reorder": reorder_kb, "paper_kb_sparse": sparse_kb, **facts,
                            "linked_sram_bytes": got})
            cells.append(f"{p['peak_sram_bytes'] / 1024:.1f}" + (f" ({got / 1024:.1f})" if got else ""))
        first, paper = plans[(name, key, 8, False)][0], plans[(name, key, 0, True)][0]
        rows.append([name, key, f"{first['arena_bytes'] / 1024:.1f}", f"{paper['arena_bytes'] / 1024:.1f}", *cells,
                     reorder_kb, sparse_kb])
    labels = [_config_label(b, p) for b, p in MEMORY_CONFIGS]
    log(table(["model", "scheme", "arena KB", "arena KB, patch stage",
               *[f"peak KB, {c}" + (" (linked)" if elf else "") for c in labels],
               "paper sparse+reorder KB", "paper sparse KB"], rows, "ll" + "r" * (2 + len(labels) + 2)))
    log(f"peak = arena (activations, masks, gradients, planes) + trained weights and optimizer state + the "
        f"{RUNTIME_RESERVE // 1024} KB stack/runtime allowance (planned); linked = the ELF's .data + .bss + arena + "
        "stack; master bits: `--master-bits`; patch stage: `--patches 2`, the stage the planner chooses")
    inf_rows, inf_payload = [], []
    for name in PAPER_KB:
        (whole_key, whole), (stage_key, patched) = [(k, p) for k, p in inference.items() if k[0] == name]
        ps = patched["patch_stage"]
        got = [linked.get((name, None, 0, k[1])) for k in (whole_key, stage_key)]
        inf_payload.append({"model": name, "patch_stage": stage_key[1], "peak_sram_bytes": whole["peak_sram_bytes"],
                            "patched_peak_sram_bytes": patched["peak_sram_bytes"], "linked_sram_bytes": got[0],
                            "patched_linked_sram_bytes": got[1], "stage_macs": ps["macs"],
                            "stage_whole_macs": ps["whole_macs"],
                            "model_macs": sum(la["macs_forward"] for la in whole["layers"])})
        cells = [f"{p['peak_sram_bytes'] / 1024:.1f}" + (f" ({g / 1024:.1f})" if g else "")
                 for p, g in zip((whole, patched), got, strict=True)]
        extra = ps["macs"] - ps["whole_macs"]
        inf_rows.append([name, *cells, f"{ps['end']}, {ps['patches']}x{ps['patches']}",
                         f"{ps['whole_macs']:,} -> {ps['macs']:,}",
                         f"+{100 * extra / inf_payload[-1]['model_macs']:.1f}%"])
    log(table(["model (inference)", "peak KB, whole" + (" (linked)" if elf else ""),
               "peak KB, patch stage" + (" (linked)" if elf else ""), "stage", "stage MACs", "model MACs"],
              inf_rows, "lrrlrr"))
    saved = _save(out, "memory", {"rows": payload, "inference": inf_payload})
    log(f"saved {saved}")
    return {"rows": payload}


def selection(task: str, budgets_kb: list[float], out: Path | None, log=print, seeds: int = 1) -> dict:
    """Transfer accuracy of the Fisher-selected scheme vs the deepest last-K at the same SRAM budget."""

    model, xq, y, xq_te, y_te, _, _ = T.transfer_start(task)
    lr = T.TASKS[task].lr
    imp = fisher_potential(model, xq[:8], y[:8])
    rows, payload = [], []
    for kb in budgets_kb:
        budget = int(kb * 1024)
        accs = {}
        for method in ("fisher", "last-K"):
            if method == "fisher":
                got = select(model, imp, budget, TrainConfig(lr=lr))
            else:
                try:
                    got = auto_last_k(model, TrainConfig(lr=lr), budget)
                except TinygenError:  # nothing fits this budget
                    got = None
            if got is None:
                accs[method] = (None, 0, "-")
                continue
            scheme = got[0].scheme
            res = []
            for s in range(seeds):
                tr = Trainer(got[0].model, scheme, TrainConfig(lr=lr))  # the model the selection returned
                rng = np.random.default_rng(s)
                for i in np.concatenate([rng.permutation(len(y)) for _ in range(T.TASKS[task].epochs)]):
                    tr.step(xq[i], y[i])
                res.append(T._int_accuracy(tr.trained_model(), xq_te, y_te))
            est = training_sram(got[0].model, got[0])
            desc = ", ".join(f"{n}:{len(u.channels)}" for n, u in scheme.layers.items() if u.channels)
            accs[method] = (float(np.mean(res)), est.total, desc)
            payload.append({"budget_kb": kb, "method": method, "accuracy": float(np.mean(res)),
                            "peak_sram_bytes": est.total, "scheme": desc})
            log(f"  {kb:g} KB {method:7s} {100 * float(np.mean(res)):.2f}%  peak {est.total:,} B  [{desc}]")
        rows.append([f"{kb:g}", *[f"{100 * accs[m][0]:.2f}" if accs[m][0] is not None else "-"
                                   for m in ("fisher", "last-K")],
                     *[f"{accs[m][1] / 1024:.1f}" for m in ("fisher", "last-K")]])
    log(table(["budget KB", "fisher acc %", "last-K acc %", "fisher peak KB", "last-K peak KB"], rows, "lrrrr"))
    path = _save(out, f"selection_{task}", {"task": task, "rows": payload})
    log(f"saved {path}")
    return {"rows": payload}


def schemes(task: str, out: Path | None, log=print, seeds: int = 1) -> dict:
    """Transfer accuracy of each published MIT mbv2 scheme vs tinygen's `--update auto`, its Fisher selection
    alone (`--update fisher`: each layer's first channels; and with `--reorder-channels`: the most important
    channels first) and the deepest last-K, all planned at the MIT scheme's own peak SRAM. Training runs the
    generated C on the host."""

    root = shared_dir()
    if root is None:
        raise TinygenError("the schemes benchmark needs ../shared/models/mit-tiny-training (not present)")
    path = root / "models/mit-tiny-training/sparse_schemes.json"
    keys = list(json.loads(path.read_text())["mbv2"])
    t0 = time.perf_counter()
    model, xq, y, xq_te, y_te, _, _ = T.transfer_start(task)
    cfg = TrainConfig(lr=T.TASKS[task].lr)
    log(f"[{task}] pretrained {model.name} on classes 0-4 in {time.perf_counter() - t0:.1f} s; training on "
        f"{len(y)} images of 5-9 ({T.TASKS[task].epochs} epoch(s), lr {cfg.lr}, batch 1), testing on {len(y_te)}")
    imp = fisher_potential(model, xq[:8], y[:8])
    orders = [T.sample_order(task, len(y), s) for s in range(seeds)]

    def accuracy(trainer) -> float:  # trainer.model: Fisher selection may reorder channels
        return float(np.mean([np.mean(c_train_predict(trainer.model, trainer.scheme, cfg, xq[o], y[o], xq_te) == y_te)
                              for o in orders]))

    rows, payload = [], []
    for key in keys:
        mit = Trainer(model, load_scheme(f"{path}#mbv2/{key}", model), cfg)
        budget = training_sram(model, mit).total
        got = {"MIT " + key: (mit, budget)}
        choices = choose(model, xq[:PROBE_TRAIN + PROBE_TEST], y[:PROBE_TRAIN + PROBE_TEST], budget, cfg)
        if choices:
            got["auto"] = (choices[0].trainer, choices[0].estimate.total)
            log(f"  {key:6s} auto chose the {choices[0].label} selection")
        for method, reorder in (("fisher", False), ("fisher, reordered", True)):
            fisher = select(model, imp, budget, cfg, reorder=reorder)
            if fisher is not None:
                got[method] = (fisher[0], fisher[1].total)
        try:
            lk = auto_last_k(model, cfg, budget)
            got["last-K"] = (lk[0], lk[1].total)
        except TinygenError:  # nothing fits this budget
            pass
        accs = {}
        for method, (tr, total) in got.items():
            t1 = time.perf_counter()
            accs[method] = accuracy(tr)
            layers, biases = tr.scheme.counts()
            payload.append({"budget_scheme": key, "method": method, "accuracy": accs[method], "peak_sram_bytes": total,
                            "weight_layers": layers, "bias_layers": biases,
                            "scheme": {n: [len(u.channels), u.bias] for n, u in tr.scheme.layers.items()}})
            log(f"  {key:6s} {method:10s} {100 * accs[method]:6.2f}%  peak {total:,} B  ({layers} weight / {biases} "
                f"bias layers; {time.perf_counter() - t1:.0f} s)")
        methods = ("MIT " + key, "auto", "fisher", "fisher, reordered", "last-K")
        rows.append([key, f"{budget / 1024:.1f}", *[f"{100 * accs[m]:.2f}" if m in accs else "-" for m in methods],
                     *[f"{got[m][1] / 1024:.1f}" if m in got else "-" for m in methods[1:]]])
    log(table(["MIT scheme", "its peak KB", "MIT acc %", "auto acc %", "fisher acc %", "fisher reordered acc %",
               "last-K acc %", "auto peak KB", "fisher peak KB", "reordered peak KB", "last-K peak KB"], rows,
              "lrrrrrrrrrr"))
    saved = _save(out, f"schemes_{task}", {"task": task, "seeds": seeds, "lr": cfg.lr, "rows": payload})
    log(f"saved {saved}")
    return {"rows": payload}


AUTO_BUDGETS_KB = {"stm32f746": 256, "nrf52840": 256, "stm32h743": 1024}


def auto_fit(out: Path | None, log=print) -> dict:
    """`--update auto` (Fisher selection) for every zoo model (10 classes) on each board at the issue's
    budgets (256 KB on the F746 and nRF52840, 1 MB on the H743, capped by the board's largest bank)."""

    rows, payload = [], []
    for entry in list_models():
        try:
            model = get_model(entry.name, classes=10)
        except TinygenError as exc:  # the MIT models without ../shared
            log(f"  {entry.name}: skipped ({exc})")
            continue
        x, y, _ = training_samples(model, 4)
        imp = fisher_potential(model, x, y)
        for board_name, kb in AUTO_BUDGETS_KB.items():
            board = load_board(board_name)
            budget = sram_budget(board, kb)
            t0 = time.perf_counter()
            got = select(model, imp, budget, TrainConfig())
            seconds = time.perf_counter() - t0
            if got is None:
                row = {"model": entry.name, "board": board_name, "budget_bytes": budget, "fits": False}
            else:
                trainer, est = got
                check_fits(trainer.model, trainer, board, budget)  # raises (with the numbers) if it does not
                weights, biases = trainer.scheme.counts()
                row = {"model": entry.name, "board": board_name, "budget_bytes": budget, "fits": True,
                       "peak_sram_bytes": est.total, "seconds": round(seconds, 1),
                       "weight_layers": weights, "bias_layers": biases}
            payload.append(row)
            rows.append([entry.name, board_name, f"{budget:,}", f"{row.get('peak_sram_bytes', 0):,}",
                         "yes" if row["fits"] else "no", str(row.get("weight_layers", "-")),
                         str(row.get("bias_layers", "-")), f"{seconds:.1f}"])
            log(f"  {entry.name} on {board_name}: {'fits' if row['fits'] else 'nothing fits'} ({seconds:.1f} s)")
    log(table(["model", "board", "budget B", "planned peak B", "fits", "weight layers", "bias layers",
               "selection s"], rows, "llrrlrrr"))
    path = _save(out, "auto_fit", {"budgets_kb": AUTO_BUDGETS_KB, "rows": payload})
    log(f"saved {path}")
    return {"rows": payload}


# The trained-weight storages measured (`--master-bits`, docs/numerics.md §6) with the rounding each is run with:
# nearest where the master has a fraction (the default), both for 4 bits, stochastic where it has none.
MASTER_BITS_RUNS = ((8, "nearest"), (4, "nearest"), (4, "stochastic"), (0, "stochastic"))


def _master_bits_run(args) -> tuple:
    """One (task, update, storage or float, sample order) run: its accuracy."""
    task, spec, bits, rounding, seed = args
    if bits is None:
        return args, T.run(task, spec, "float", seed=seed).accuracy
    model, xq, y, xq_te, y_te, _, _ = T.transfer_start(task)
    order = T.sample_order(task, len(y), seed)
    cfg = TrainConfig(lr=T.TASKS[task].lr, frac_bits=bits, rounding=rounding)
    pred = c_train_predict(model, parse_update(spec, model), cfg, xq[order], y[order], xq_te)
    return args, float(np.mean(pred == y_te))


def master_bits(out: Path | None, log=print, seeds: int = 3, jobs: int | None = None) -> dict:
    """Accuracy of each trained-weight storage against float SGD of the same layers (fake-quantized): on
    `mnist-mbv2` with the MIT mbv2 99kb scheme and on `mnist14` training its last 3 layers, `seeds` sample
    orders each, integer runs on the generated C (host); beside each, the SRAM its trained state takes."""

    root = shared_dir()
    if root is None:
        raise TinygenError("the master-bits benchmark needs ../shared/models/mit-tiny-training (not present)")
    cases = [("mnist-mbv2", f"{root}/models/mit-tiny-training/sparse_schemes.json#mbv2/99kb", "MIT mbv2 99kb"),
             ("mnist14", "last-3", "last-3")]
    runs = [(None, None)] + list(MASTER_BITS_RUNS)
    work = [(task, spec, bits, rounding, s) for task, spec, _ in cases for bits, rounding in runs for s in range(seeds)]
    for task, _, _ in cases:
        T.transfer_start(task)  # pretrain once here, not in every worker
    log(f"{len(work)} runs ({seeds} sample orders each) on {jobs or os.cpu_count()} processes ...")
    acc: dict[tuple, list[float]] = {}
    with ProcessPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        for done, ((task, _, bits, rounding, s), a) in enumerate(pool.map(_master_bits_run, work), 1):
            acc.setdefault((task, bits, rounding), []).append(a)
            log(f"  [{done}/{len(work)}] {task} {'float' if bits is None else f'{bits} bits, {rounding}'} "
                f"order {s}: {100 * a:.1f}%")
    rows, payload = [], []
    for task, spec, label in cases:
        model = T.transfer_start(task)[0]
        scheme = parse_update(spec, model)
        fl = float(np.mean(acc[(task, None, None)]))
        for bits, rounding in runs:
            mean = float(np.mean(acc[(task, bits, rounding)]))
            state = None if bits is None else trained_state_bytes(
                Trainer(model, scheme, TrainConfig(frac_bits=bits, rounding=rounding)))
            payload.append({"task": task, "update": label, "master_bits": bits, "rounding": rounding,
                            "accuracy": mean, "per_order": acc[(task, bits, rounding)], "trained_state_bytes": state})
            rows.append([task, label, "float SGD (fake-quant)" if bits is None else f"{bits} bits, {rounding}",
                         f"{100 * mean:.2f}", "-" if bits is None else f"{100 * (mean - fl):+.2f}",
                         "-" if state is None else f"{state / 1024:.1f}"])
    log(table(["task", "update", "trained weights", "accuracy %", "vs float", "trained state KB"], rows, "lllrrr"))
    saved = _save(out, "master_bits", {"seeds": seeds, "lr": {t: T.TASKS[t].lr for t, _, _ in cases},
                                       "rows": payload})
    log(f"saved {saved}")
    return {"rows": payload}
