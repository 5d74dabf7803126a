"""Channel reordering: permute a model's channels so that the channels chosen for training come first.

A layer that trains a prefix of its channels keeps only that prefix in SRAM (`weight_store.py`);
the frozen rest stays in flash. To train the *most important* channels rather than the first
ones, tinygen renames channels before it builds: a tensor's channels are permuted, its producers'
output channels (weights, bias, weight scales) and its consumers' input channels follow, and the
model computes exactly the same function — integer dot products are exact sums, so their order
does not matter, and requantization is per output channel.

Channels that must move together form a *group*: a depthwise conv (multiplier 1), a pooling, an
add and a 1x1xC -> C reshape keep channel identity from input to output. A group that contains the
model's input or output, a grouped convolution, a channel multiplier or a spatial flatten stays in
order (pinned). A permutation `p` lists old channel indices in their new order: new channel j is
old channel p[j].
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tinygen.ir import model as ir
from tinygen.ir.scheme import weighted_layers


class _Groups:
    """Union-find over tensor names; a pinned root means 'keep this group's order'."""

    def __init__(self, names):
        self.parent = {n: n for n in names}
        self.pinned: set[str] = set()

    def find(self, t: str) -> str:
        while self.parent[t] != t:
            self.parent[t] = self.parent[self.parent[t]]
            t = self.parent[t]
        return t

    def union(self, *ts: str) -> None:
        roots = [self.find(t) for t in ts]
        for r in roots[1:]:
            if r != roots[0]:
                self.parent[r] = roots[0]
                if r in self.pinned:
                    self.pinned.add(roots[0])

    def pin(self, *ts: str) -> None:
        self.pinned.update(self.find(t) for t in ts)

    def is_pinned(self, t: str) -> bool:
        return self.find(t) in self.pinned


def channel_groups(model: ir.Model) -> _Groups:
    tensors = model.tensors()
    g = _Groups(tensors)
    for layer in model.layers:
        ins, out = layer.inputs, layer.output.name
        if isinstance(layer, ir.Conv2D) and layer.groups > 1:
            if ir.is_depthwise(layer, multiplier=1):
                g.union(ins[0], out)
            else:  # a channel multiplier or groups: channel positions are tied to the grouping
                g.pin(ins[0], out)
        elif isinstance(layer, (ir.Add, ir.Pool, ir.Mean)):  # channel c of the output is channel c of the input
            g.union(*ins, out)
        elif isinstance(layer, ir.Reshape):
            x = tensors[ins[0]]
            if len(x.shape) == 3 and x.shape[0] * x.shape[1] == 1 and len(layer.output.shape) == 1:
                g.union(ins[0], out)
            else:
                g.pin(ins[0], out)
    g.pin(model.input.name, model.output.name)
    return g


def permute_channels(model: ir.Model, perms: dict[str, np.ndarray]) -> ir.Model:
    """The same function with the channels of each group permuted. `perms` maps any tensor of a group to
    its permutation; every tensor in that group is permuted alike."""
    groups = channel_groups(model)
    pinned = [t for t in perms if groups.is_pinned(t)]
    if pinned:
        raise ValueError(f"tensor {pinned[0]!r}: its channels cannot be reordered")
    by_root = {groups.find(t): np.asarray(p, dtype=np.int64) for t, p in perms.items()}
    tensors = model.tensors()

    def perm_of(t):
        return by_root.get(groups.find(t))

    layers = []
    for layer in model.layers:
        if not isinstance(layer, (ir.Conv2D, ir.FullyConnected)):
            layers.append(layer)
            continue
        w, b, s = layer.weight, layer.bias, layer.w_scales
        po, pi = perm_of(layer.output.name), perm_of(layer.inputs[0])
        if po is not None:
            w, b, s = w[po], b[po], s[po]
        if pi is not None and not ir.is_depthwise(layer):  # a depthwise conv's input follows its output
            w = w[..., pi] if isinstance(layer, ir.Conv2D) else _by_channel(w, tensors[layer.inputs[0]])[..., pi]
        layers.append(dataclasses.replace(layer, weight=np.ascontiguousarray(w.reshape(layer.weight.shape)),
                                          bias=np.ascontiguousarray(b), w_scales=np.ascontiguousarray(s)))
    return ir.Model(model.name, model.input, layers, model.input_transform).validate()


def _by_channel(a: np.ndarray, x: ir.TensorInfo) -> np.ndarray:
    """An array over a layer's (flattened) input elements, viewed (..., spatial, channel): FC columns and
    a layer's per-input-element scores index an H x W x C input as (h * W + w) * C + c."""
    a = np.asarray(a)
    return a.reshape(a.shape[:-1] + (-1, x.shape[-1]))


def reorder_by_importance(model: ir.Model, importance: dict[str, np.ndarray]):
    """(permuted model, its importance arrays, {tensor: permutation}) — most important channels first.

    A group's order: its channels by falling importance, a channel's importance being its share of each
    consuming layer's total, summed over those layers; ties keep the original order."""
    groups = channel_groups(model)
    tensors = model.tensors()
    score: dict[str, np.ndarray] = {}
    for layer in weighted_layers(model):
        t = layer.inputs[0]
        if layer.name not in importance or groups.is_pinned(t):
            continue
        v = _by_channel(np.asarray(importance[layer.name], dtype=np.float64), tensors[t]).sum(axis=0)
        if v.sum() > 0:
            score[groups.find(t)] = score.get(groups.find(t), 0) + v / v.sum()
    perms = {root: np.argsort(-s, kind="stable") for root, s in score.items()}
    perms = {root: p for root, p in perms.items() if not np.array_equal(p, np.arange(p.size))}
    if not perms:
        return model, importance, {}
    new_importance = {}
    for name, v in importance.items():
        t = model.layer(name).inputs[0]
        p = perms.get(groups.find(t))
        new_importance[name] = v if p is None else _by_channel(v, tensors[t])[:, p].ravel()
    order = {t: [int(i) for i in perms[groups.find(t)]] for t in tensors if groups.find(t) in perms}
    return permute_channels(model, perms), new_importance, order


def restore_order(model: ir.Model, channel_order: dict[str, list[int]]) -> ir.Model:
    """Undo a reordering (a build's recorded `channel_order`): e.g. to export trained weights in the
    original model's channel order."""
    inverse = {t: np.argsort(np.asarray(p)) for t, p in channel_order.items()}
    return permute_channels(model, inverse) if inverse else model
