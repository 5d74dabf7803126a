"""Sparse-update selection: what `--update auto` and `--update fisher` train (docs/selection.md).

`auto` (`choose`): gradient-potential selections with and without a compute cap, ranked by a short
training probe. `fisher`: task-adaptive selection from Fisher potential (TinyTrain, Kwon et al. 2024).
Importance comes from a few samples of the user's data, computed with the bit-exact integer
reference: for every activation channel c of a weighted layer's input,
`Delta_c = 1/2 * mean_n (sum_spatial a * g)^2` with `a` the channel's real value and `g` the
real gradient of the loss with respect to it. A layer's update of its first k input channels is
worth the sum of their Delta (with `reorder`, channels are first renamed most important first —
`reorder.py`, the same function — so the first k are the k most important). Candidate updates
(k in {C/8, C/4, C/2, C}, with the bias) are chosen greedily by importance per byte of SRAM they add
(weights, bias, and what is kept of the input: only the trained channels, as patch sums where a
filter allows, `saved_input.py`), normalised by their MACs, while the planned peak SRAM stays under
the budget (and the backward MACs under an optional compute budget). The planner itself measures
every accepted candidate.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from tinygen.errors import TinygenError
from tinygen.ir import model as ir
from tinygen.ir.scheme import LayerUpdate, Scheme, TrainConfig, first_channels, weighted_layers
from tinygen.planning.memory import training_sram
from tinygen.planning.report import backward_macs
from tinygen.planning.saved_input import saved_input
from tinygen.planning.weight_store import FracStore
from tinygen.reference.forward import im2col, run_model
from tinygen.reference.training import Trainer
from tinygen.training.reorder import reorder_by_importance


def _gradient_trainer(model: ir.Model) -> Trainer:
    """A trainer whose gradient path reaches as deep as the model allows (every weighted layer's bias)."""
    layers = weighted_layers(model)
    for k in range(len(layers), 0, -1):
        try:
            return Trainer(model, Scheme({layer.name: LayerUpdate([], True, 1) for layer in layers[-k:]}),
                           TrainConfig(lr=1e-30))
        except Exception:  # noqa: BLE001 - a max pool on the path: try a shallower one
            continue
    raise TinygenError(f"{model.name}: no weighted layer can be trained")


def fisher_potential(model: ir.Model, x: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per weighted layer: Delta of each of its input channels (the channels a scheme selects)."""

    layers = weighted_layers(model)
    trainer = _gradient_trainer(model)
    tensors = model.tensors()
    acc: dict[str, np.ndarray] = {}
    for xi, yi in zip(x, labels, strict=True):
        rec: dict = {}
        values, _ = trainer.forward(xi)
        trainer.step(xi, yi, record=rec)
        for layer in layers:
            t = layer.inputs[0]
            if f"grad:{t}" not in rec:
                continue
            info = tensors[t]
            a = (values[t].astype(np.float64) - info.zero_point) * info.scale
            gq = rec[f"grad:{t}"]
            g = gq.g.astype(np.float64) * 2.0**gq.e / info.scale  # dL/da_real from dL/dq
            if isinstance(layer, ir.FullyConnected):  # one weight column per input element
                s = (a * g).ravel()
            else:
                s = (a * g).reshape(-1, a.shape[-1]).sum(axis=0)
            acc[layer.name] = acc.get(layer.name, 0) + 0.5 * s * s
    out = {}
    for layer in layers:
        if layer.name in acc:
            d = acc[layer.name] / len(x)
            n = ir.selectable_channels(layer)
            out[layer.name] = d if d.size == n else np.full(n, d.sum() / n)  # grouped: spread evenly
    return out


SELECTION_SAMPLES = 4  # real samples `--update fisher` measures Fisher potential on


@dataclass
class Potential:
    """A layer's expected first-order loss decrease per unit learning rate, by parameter group."""

    weight: np.ndarray  # per selectable channel: sum over its weights of E[dL/dw]^2 (real units)
    bias: float  # sum over the biases of E[dL/db]^2


def gradient_potential(model: ir.Model, x: np.ndarray, labels: np.ndarray) -> dict[str, Potential]:
    """Per weighted layer on the gradient path: `||E_n g||^2` of its weight (per selectable channel) and bias
    gradients in real units — what one SGD step in real units (tinygen's update) gains at first order.
    `E_n g` is over the samples; its square is estimated without the variance's bias,
    `(||sum g||^2 - sum ||g||^2) / (n (n - 1))`, so that noisy gradients (early, high-resolution layers)
    do not look useful by being large."""
    n = len(x)
    if n < 2:
        raise TinygenError("gradient potential needs at least 2 samples")
    trainer = _gradient_trainer(model)
    tensors = model.tensors()
    layers = [layer for layer in weighted_layers(model) if layer.name in trainer.trained]
    s1: dict[str, list[np.ndarray]] = {}  # sum over samples of the gradient (weight, bias)
    s2: dict[str, list[np.ndarray]] = {}  # sum over samples of the squared gradient, per channel (weight, bias)
    for xi, yi in zip(x, labels, strict=True):
        rec: dict = {}
        values, _ = trainer.forward(xi)
        trainer.step(xi, yi, record=rec)
        for layer in layers:
            gq = rec[f"gacc:{layer.name}"]
            dw, db = _real_gradients(layer, values[layer.inputs[0]], tensors[layer.inputs[0]],
                                     gq.g.astype(np.float64) * 2.0**gq.e)
            a1, b1 = s1.get(layer.name, (0, 0))
            a2, b2 = s2.get(layer.name, (0, 0))
            s1[layer.name] = [a1 + dw, b1 + db]
            s2[layer.name] = [a2 + _per_channel(layer, dw * dw), b2 + float((db * db).sum())]
    out = {}
    for layer in layers:
        (w1, b1), (w2, b2) = s1[layer.name], s2[layer.name]
        w = np.maximum(_per_channel(layer, w1 * w1) - w2, 0.0) / (n * (n - 1))
        out[layer.name] = Potential(w, max(float((b1 * b1).sum()) - b2, 0.0) / (n * (n - 1)))
    return out


def _real_gradients(layer, x: np.ndarray, info, g_acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dL/dW, dL/db) in real units from dL/d(accumulator code) of one sample (filter r = 1)."""
    s_w = layer.w_scales.astype(np.float64)
    dw, db = code_gradients(layer, x.astype(np.float64) - info.zero_point, g_acc)
    return dw / s_w.reshape((-1,) + (1,) * (dw.ndim - 1)), db / (info.scale * s_w)


def code_gradients(layer, xs: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum_p g[p, o] * xs[window of p], sum_p g[p, o]): the weight and bias gradients in code units, for
    the input codes less their zero point `xs` and the gradient `g` at the accumulators (filter r = 1)."""
    if isinstance(layer, ir.FullyConnected):
        g = g.reshape(-1)
        return np.outer(g, xs.ravel()), g
    cout, kh, kw, cg = layer.weight.shape
    groups = layer.groups
    oh, ow = layer.output.shape[:2]
    cols = im2col(xs, kh, kw, layer.stride, layer.padding[0], layer.padding[2], layer.dilation, oh, ow)
    cols = cols.reshape(oh * ow, kh * kw, groups, cg).transpose(0, 2, 1, 3).reshape(oh * ow, groups, -1)
    d = np.einsum("pgo,pgk->gok", g.reshape(oh * ow, groups, cout // groups), cols, optimize=True)
    return d.reshape(cout, kh, kw, cg), g.reshape(-1, cout).sum(axis=0)


def _per_channel(layer, sq: np.ndarray) -> np.ndarray:
    """Sum of squared weight gradients per selectable channel (input channel, or depthwise channel)."""
    if isinstance(layer, ir.FullyConnected):
        return sq.sum(axis=0)
    if ir.is_depthwise(layer):
        return sq.reshape(layer.groups, -1).sum(axis=1)
    return sq.reshape(-1, sq.shape[-1]).sum(axis=0)


def _bwd_macs(layer, k: int, n: int) -> int:
    return 2 * ir.layer_macs(layer) * k // max(1, n)


def _candidates(importance, state, layers, saved, too_big, total_macs, path_macs,
                bias_only, weight_bytes: float) -> list[tuple[float, str, int]]:
    """(gain per byte, normalised by backward MACs; layer; channels) of every next step the greedy can take:
    a layer grows to its first C/8, C/4, C/2 or C channels; with a `Potential`, a layer may also train its
    bias alone (0 channels), the layers in `bias_only` only that, and the MACs count the input gradients
    a deeper path adds."""
    cands = []
    for name, imp in importance.items():
        layer = layers[name]
        pot = isinstance(imp, Potential)
        w = imp.weight if pot else imp
        n = len(w)
        new = name not in state
        cur = state.get(name, 0)
        steps = sorted({max(1, n // 8), max(1, n // 4), max(1, n // 2), n} | ({0} if pot and new else set()))
        if pot and name in bias_only:
            steps = [0] if new else []
        for k in steps:
            if (k <= cur and not new) or (name, k) in too_big:
                continue
            gain = float(w[cur:k].sum()) + (imp.bias if pot and new else 0.0)
            per_channel = layer.weight.size // n  # a depthwise channel's kernel, or a weight column
            # trained view + fraction per weight, what the update keeps of the input; a newly trained layer
            # also keeps its bias
            cost_bytes = (weight_bytes * (k - cur) * per_channel + saved(name, k) - saved(name, cur)
                          + (4 * layer.bias.size if new else 0))
            cost_macs = (_bwd_macs(layer, k - cur, n) + (path_macs(name) if pot and new else 0)) / total_macs
            cands.append((gain / (cost_bytes * (1.0 + cost_macs)), name, k))
    return cands


def _feeds_add(layer: ir.Layer, consumers: dict) -> bool:
    """Whether a layer's output feeds a residual addition (`consumers`: `ir.Model.consumers()`)."""
    return any(isinstance(c, ir.Add) for c in consumers.get(layer.output.name, []))


def select(model: ir.Model, importance: dict[str, np.ndarray], budget: int, config: TrainConfig,
           macs_budget: int | None = None, filter_r: int = 1, reorder: bool = False):
    """Greedy selection under the SRAM (and compute) budget; returns (trainer, estimate) or None.
    With `reorder`, channels are first renamed most-important-first (`reorder.py`), so the prefixes the
    greedy step grows are the most important channels and still split between SRAM and flash;
    `trainer.model` is then the reordered model, and its scheme records the order."""

    order: dict[str, list[int]] = {}
    label = ("gradient potential, greedy under the budget" if any(isinstance(v, Potential) for v in importance.values())
             else "fisher (TinyTrain-style Fisher potential, greedy under the budget)")
    if reorder:
        model, importance, order = reorder_by_importance(model, importance)
    layers = {layer.name: layer for layer in weighted_layers(model)}
    head = model.layers[-1]
    state: dict[str, int] = {}  # layer -> trained channels
    if head.name in layers:
        state[head.name] = len(first_channels(head, model.tensors(), 1.0))

    def build(st):
        return Scheme({n: LayerUpdate(list(range(k)), True, filter_r) for n, k in st.items()}, label, order)

    def fits(st):
        return _trial(model, build(st), config, budget, macs_budget)

    best = fits(state) if state else None
    if best is None:
        return None
    total_macs = sum(_bwd_macs(layer, 1, 1) for layer in layers.values()) or 1
    tensors = model.tensors()

    def saved(name, k):  # bytes of the input kept for dW when k channels train
        return saved_input(layers[name], k, filter_r, tensors).nbytes if k else 0
    consumers = model.consumers()
    # Weights whose output feeds a residual addition train their bias only: at 128x128 on MCUNet-5fps,
    # training them cost 4-10 points against the same selection without them (docs/selection.md)
    bias_only = {n for n in layers if _feeds_add(layers[n], consumers)}
    position = {layer.name: i for i, layer in enumerate(model.layers)}
    weighted = list(layers.values())

    def path_macs(name):  # input-gradient MACs of the weighted layers a gradient path down to `name` adds
        top = min((position[n] for n in state), default=len(model.layers))
        return sum(ir.layer_macs(layer) for layer in weighted if position[name] < position[layer.name] < top)
    too_big: set[tuple[str, int]] = set()  # (layer, k) the planner rejected: only grows with the state
    while True:
        cands = _candidates(importance, state, layers, saved, too_big, total_macs, path_macs, bias_only,
                            1 + FracStore(config.frac_bits).per_weight)
        cands.sort(reverse=True)
        for _, name, k in cands:  # best by the proxy first; the planner measures each
            trial = dict(state, **{name: k})
            got = fits(trial)
            if got is not None:
                state, best = trial, got
                break
            too_big.add((name, k))
        else:
            return best


def scheme_tail(model: ir.Model, scheme: Scheme) -> ir.Model:
    """The part of `model` from the first layer on `scheme`'s gradient path (`ir.tail`): what training runs
    each step; the layers before it are frozen and run once per sample."""
    return ir.tail(model, {n for n, u in scheme.layers.items() if u.channels or u.bias})


def _probe_one(args) -> float:
    """Mean held-out loss of one scheme after `train` steps of a fresh trainer on its tail's inputs."""
    tail, scheme, config, values, labels, train = args
    fresh = Trainer(tail, scheme, config)
    name = tail.input.name
    for c, yi in zip(values[:train], labels[:train], strict=True):
        fresh.step(c[name], yi)
    total = 0
    for c, yi in zip(values[train:], labels[train:], strict=True):
        out, _ = fresh.forward(c[name])
        total += fresh.loss(out[tail.output.name], yi)[0]
    return total / max(1, len(values) - train) / 65536


def probe(trainers: list[Trainer], x: np.ndarray, labels: np.ndarray, train: int, log=None,
          jobs: int | None = None) -> list[float]:
    """Held-out loss of each trainer's scheme after a short run of the device's own training (the bit-exact
    integer reference, batch 1, its configuration; the trainers are not touched): train on the first
    `train` samples, then the mean cross-entropy (or MSE) over the rest. Lower is better. The frozen
    layers before a scheme's gradient path run once per sample (`ir.tail`), shared by schemes of one model;
    the schemes train in `jobs` processes (default: the cores), each independent of the others."""
    cached: dict[int, list[dict]] = {}
    tails = [scheme_tail(tr.model, tr.scheme) for tr in trainers]
    for m in {id(tr.model): tr.model for tr in trainers}.values():
        mine = [t for tr, t in zip(trainers, tails, strict=True) if tr.model is m]
        stop = max(len(m.layers) - len(t.layers) for t in mine)
        prefix = ir.Model(m.name, m.input, m.layers[:stop])
        want = {t.input.name for t in mine}
        cached[id(m)] = [{n: v[n] for n in want} for v in (run_model(prefix, xi, keep=True) for xi in x)]
    work = [(tail, tr.scheme, tr.config, [{tail.input.name: c[tail.input.name]} for c in cached[id(tr.model)]],
             labels, train) for tr, tail in zip(trainers, tails, strict=True)]
    jobs = min(len(work), jobs or os.cpu_count() or 1)
    losses = []
    with (ProcessPoolExecutor(jobs) if jobs > 1
          else nullcontext()) as pool:
        results = pool.map(_probe_one, work) if pool else map(_probe_one, work)
        for i, loss in enumerate(results):
            losses.append(loss)
            if log:
                log(f"  probe {i + 1}/{len(trainers)}: held-out loss {loss:.4f} after {train} training steps")
    return losses


def _trial(model: ir.Model, scheme: Scheme, config: TrainConfig, budget: int, macs_budget: int | None):
    """(trainer, estimate) of `scheme` where the planner fits it under the budgets, else None."""
    try:
        tr = Trainer(model, scheme, config)
    except Exception:  # noqa: BLE001 - unreachable by gradients (max pool): not a candidate
        return None
    try:
        est = training_sram(model, tr)
    except TinygenError:  # it trains a layer of the model's patch stage: not a candidate
        return None
    if est.total > budget or (macs_budget is not None and backward_macs(model, tr) > macs_budget):
        return None
    return tr, est


WIDTHS = (1.0, 0.5, 0.25, 0.125)  # the weight widths a measured contribution tries, widest first


def measured(model: ir.Model, path: Scheme, x: np.ndarray, labels: np.ndarray, train: int, budget: int,
             config: TrainConfig, macs_budget: int | None = None, filter_r: int = 1, log=None):
    """A selection from contributions measured by training (the paper's contribution analysis, run by
    the probe): the biases of every weighted layer on `path`'s gradient path and the head as `path` has
    it are the base; each other regular (not depthwise) layer on that path whose output does not feed a
    residual addition adds its weights at the widest of WIDTHS that fits, and the probe measures the
    held-out loss it takes off the base. Layers then join greedily by that gain per byte the planner
    adds, each at the widest width that still fits. Returns (trainer, estimate) or None."""
    position = {layer.name: i for i, layer in enumerate(model.layers)}
    top = min(position[n] for n in path.trained())
    head = model.layers[-1].name
    tensors = model.tensors()
    consumers = model.consumers()
    on_path = [layer for layer in weighted_layers(model) if position[layer.name] >= top]
    base = {layer.name: LayerUpdate([], True, filter_r) for layer in on_path}
    if head in path.layers:
        base[head] = path.layers[head]

    def scheme(extra: dict[str, LayerUpdate]) -> Scheme:
        return Scheme(dict(base, **extra), "measured contributions, greedy under the budget")
    got = _trial(model, scheme({}), config, budget, macs_budget)
    if got is None:
        return None
    trials = {"": got}
    widths: dict[str, float] = {}
    for layer in on_path:
        if layer.name == head or ir.is_depthwise(layer) or _feeds_add(layer, consumers):
            continue
        for ratio in WIDTHS:
            upd = LayerUpdate(first_channels(layer, tensors, ratio), True, filter_r)
            got = _trial(model, scheme({layer.name: upd}), config, budget, macs_budget)
            if got is not None:
                trials[layer.name], widths[layer.name] = got, ratio
                break
    if len(trials) == 1:
        return trials[""]
    if log:
        log(f"  measuring what the weights of {len(trials) - 1} layer(s) add ...")
    losses = dict(zip(trials, probe([tr for tr, _ in trials.values()], x, labels, train, log), strict=True))
    base_total = trials[""][1].total
    gains = sorted(((losses[""] - losses[n]) / max(1, trials[n][1].total - base_total), n)
                   for n in trials if n and losses[n] < losses[""])
    chosen: dict[str, LayerUpdate] = {}
    best = trials[""]
    layers = {layer.name: layer for layer in on_path}
    for _, name in reversed(gains):
        for ratio in (r for r in WIDTHS if r <= widths[name]):
            upd = LayerUpdate(first_channels(layers[name], tensors, ratio), True, filter_r)
            got = _trial(model, scheme(dict(chosen, **{name: upd})), config, budget, macs_budget)
            if got is not None:
                chosen[name], best = upd, got
                break
    return best


POTENTIAL_SAMPLES = 16  # samples the gradient potential averages over (its estimate is unbiased from 2)
PROBE_TRAIN, PROBE_TEST = 256, 128  # the probe's training steps and held-out samples
MACS_CAP = 0.5  # one potential candidate keeps the backward MACs under this share of the forward's
CAPPED, MEASURED = "potential, capped", "measured contributions"  # two candidates' labels


@dataclass
class Choice:
    label: str
    trainer: Trainer
    estimate: object  # planning.memory.SramEstimate
    probe_loss: float | None = None


def choose(model: ir.Model, x: np.ndarray, labels: np.ndarray, budget: int, config: TrainConfig,
           macs_budget: int | None = None, filter_r: int = 1, log=None) -> list[Choice]:
    """`--update auto`: candidate selections under the budget, ranked by a probe; the first is chosen.

    Both candidates come from the gradient potential with bias-only updates: one under `macs_budget`
    (none by default), one also under MACS_CAP of the forward MACs. The uncapped one wins where the
    pretraining is close to the task (MbV2 at 32x32, digits 0-4 -> 5-9), the capped one where it is far
    (ImageNet -> MNIST at 128x128, where a deep gradient path into the high-resolution layers costs
    more than it gains); a short run of the device's own training on the first samples decides
    (`probe`). Where the capped one wins, the layers on its gradient path are chosen again by their
    contributions measured by the same probe (`measured`), and that selection is first: the probe judges
    the depth of a path well, but not what a wide selection reaches after many steps (it ranks the
    measured selection last on MCUNet-5fps at 128x128, where it trains best; docs/selection.md). Fisher
    potential (`--update fisher`) is not a candidate: the probe misjudged it both ways. `x`, `labels`:
    PROBE_TRAIN + PROBE_TEST samples (fewer: the probe uses what there is)."""
    found: dict[str, tuple] = {}
    pot = gradient_potential(model, x[:POTENTIAL_SAMPLES], labels[:POTENTIAL_SAMPLES])
    caps = {"potential": macs_budget}
    cap = int(MACS_CAP * model.macs())
    if macs_budget is None or cap < macs_budget:
        caps[CAPPED] = cap
    for label, limit in caps.items():
        got = select(model, pot, budget, config, limit, filter_r)
        if got is not None and all(got[0].scheme.layers != f[0].scheme.layers for f in found.values()):
            found[label] = got
    choices = [Choice(label, tr, est) for label, (tr, est) in found.items()]
    n = min(len(x), PROBE_TRAIN + PROBE_TEST)
    train = max(1, n * PROBE_TRAIN // (PROBE_TRAIN + PROBE_TEST))
    if len(choices) > 1:
        losses = probe([c.trainer for c in choices], x[:n], labels[:n], train, log)
        for c, loss in zip(choices, losses, strict=True):
            c.probe_loss = loss
        choices.sort(key=lambda c: c.probe_loss)
    if choices and choices[0].label == CAPPED and n > train:
        got = measured(model, choices[0].trainer.scheme, x[:n], labels[:n], train, budget, config, macs_budget,
                       filter_r, log)
        if got is not None and got[0].scheme.layers != choices[0].trainer.scheme.layers:
            choices.insert(0, Choice(MEASURED, *got))
    return choices
