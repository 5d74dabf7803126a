"""Task-adaptive sparse-update selection from Fisher potential (TinyTrain, Kwon et al. 2024).

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

import numpy as np

from tinygen.errors import TinygenError
from tinygen.ir import model as ir
from tinygen.ir.scheme import LayerUpdate, Scheme, TrainConfig, first_channels, weighted_layers
from tinygen.planning.memory import training_sram
from tinygen.planning.report import backward_macs, layer_macs
from tinygen.planning.saved_input import saved_input
from tinygen.reference.training import Trainer
from tinygen.training.reorder import reorder_by_importance


def _probe(model: ir.Model) -> Trainer:
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
    trainer = _probe(model)
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


SELECTION_SAMPLES = 4  # real samples `--update auto` measures Fisher potential on


def _bwd_macs(layer, k: int, n: int) -> int:
    return 2 * layer_macs(layer) * k // max(1, n)


def _candidates(importance, state, layers, saved, too_big, total_macs) -> list[tuple[float, str, int]]:
    """(gain per byte, normalised by backward MACs; layer; channels) of every next step the greedy can take:
    a layer grows to its first C/8, C/4, C/2 or C channels."""
    cands = []
    for name, imp in importance.items():
        layer = layers[name]
        n = len(imp)
        new = name not in state
        cur = state.get(name, 0)
        for k in sorted({max(1, n // 8), max(1, n // 4), max(1, n // 2), n}):
            if k <= cur or (name, k) in too_big:
                continue
            gain = float(imp[cur:k].sum())
            per_channel = layer.weight.size // n  # a depthwise channel's kernel, or a weight column
            # trained view + fraction per weight, what the update keeps of the input; a newly trained layer
            # also keeps its bias
            cost_bytes = (2 * (k - cur) * per_channel + saved(name, k) - saved(name, cur)
                          + (4 * layer.bias.size if new else 0))
            cost_macs = _bwd_macs(layer, k - cur, n) / total_macs
            cands.append((gain / (cost_bytes * (1.0 + cost_macs)), name, k))
    return cands


def select(model: ir.Model, importance: dict[str, np.ndarray], budget: int, config: TrainConfig,
           macs_budget: int | None = None, filter_r: int = 1, reorder: bool = False):
    """Greedy selection under the SRAM (and compute) budget; returns (trainer, estimate) or None.
    With `reorder`, channels are first renamed most-important-first (`reorder.py`), so the prefixes the
    greedy step grows are the most important channels and still split between SRAM and flash;
    `trainer.model` is then the reordered model, and its scheme records the order."""

    order: dict[str, list[int]] = {}
    if reorder:
        model, importance, order = reorder_by_importance(model, importance)
    layers = {layer.name: layer for layer in weighted_layers(model)}
    head = model.layers[-1]
    state: dict[str, int] = {}  # layer -> trained channels
    if head.name in layers:
        state[head.name] = len(first_channels(head, model.tensors(), 1.0))

    def build(st):
        return Scheme({n: LayerUpdate(list(range(k)), True, filter_r) for n, k in st.items()},
                      "fisher (TinyTrain-style Fisher potential, greedy under the budget)", order)

    def fits(st):
        try:
            tr = Trainer(model, build(st), config)
        except Exception:  # noqa: BLE001 - unreachable by gradients (max pool): not a candidate
            return None
        est = training_sram(model, tr)
        if est.total > budget or (macs_budget is not None and backward_macs(model, tr) > macs_budget):
            return None
        return tr, est

    best = fits(state) if state else None
    if best is None:
        return None
    total_macs = sum(_bwd_macs(layer, 1, 1) for layer in layers.values()) or 1
    tensors = model.tensors()

    def saved(name, k):  # bytes of the input kept for dW when k channels train
        return saved_input(layers[name], k, filter_r, tensors).nbytes if k else 0
    too_big: set[tuple[str, int]] = set()  # (layer, k) the planner rejected: only grows with the state
    while True:
        cands = _candidates(importance, state, layers, saved, too_big, total_macs)
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
