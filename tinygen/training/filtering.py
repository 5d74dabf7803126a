"""`--filter-r auto`: the gradient filter's patch side per trained layer, from its map and measured gradients.

A layer filters at r only where its output map holds at least 2r x 2r outputs (smaller maps are where the
measured accuracy cost lies: README, transfer tables) and where, over a few of the user's samples, the gradient
the filter changes keeps its direction: the layer's weight gradient, or for a bias-only layer (whose bias
gradient a filter leaves exact: the patch means sum to the same total) the gradient it passes on, has a cosine
of at least AUTO_MIN_COSINE to the same step's gradient at r = 1. The steps are the bit-exact reference's, every
layer filtering at once at the candidate r (capped by its map), so each cosine counts the layers above it too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tinygen.ir import model as ir
from tinygen.ir.scheme import Scheme
from tinygen.reference.float_grad import cosine, integer_gradients
from tinygen.reference.training import Trainer

# The patch sides `auto` considers beside 1. Not 4: on mnist14 (last 3 layers, 14x14 maps) r = 4 cost 1.47
# points against r = 1 with weight-gradient cosines of 0.91-0.98, where r = 2 gained 0.60: one step's cosine does
# not predict r = 4's cost (README, "Gradient filtering"); `--filter-r 4` still asks for it.
AUTO_RS = (2,)
# Measured at r = 2 on the 4x4 and 8x8 maps of the MIT models' published schemes: weight-gradient cosines
# 0.58-0.99, with the accuracy cost at r = 2 at most a point where measured.
AUTO_MIN_COSINE = 0.6
AUTO_SAMPLES = 4  # the samples the cosines are averaged over


@dataclass(frozen=True)
class FilterChoice:
    layer: str
    output: tuple[int, ...]
    cap: int  # the largest r the map allows
    cosine: dict[int, float]  # r -> mean cosine (what was measured)
    measured: str  # "weight gradient", "passed-on gradient" or "" (nothing a filter changes)
    r: int


def map_cap(layer: ir.Layer) -> int:
    """The largest r in {1} + AUTO_RS whose 2r x 2r patches fit the layer's output map."""
    shape = layer.output.shape
    if len(shape) != 3:
        return 1
    return max([1] + [r for r in AUTO_RS if shape[0] >= 2 * r and shape[1] >= 2 * r])


def _with_rs(scheme: Scheme, rs: dict[str, int]) -> Scheme:
    return replace(scheme, layers={n: replace(u, filter_r=rs.get(n, u.filter_r)) for n, u in scheme.layers.items()})


def auto_filter_r(trainer: Trainer, x: np.ndarray, labels: np.ndarray) -> tuple[Trainer, list[FilterChoice]]:
    """`trainer` with each scheme layer's r chosen (module docstring), and the choices with what was measured."""
    model, scheme = trainer.model, trainer.scheme
    caps = {n: map_cap(model.layer(n)) for n in scheme.layers}
    producer = {layer.output.name: layer.name for layer in model.layers}

    def gradients(rs: dict[str, int]) -> list[dict]:
        s = _with_rs(scheme, rs)
        return [integer_gradients(Trainer(model, s, trainer.config), xi, int(yi))
                for xi, yi in zip(x, labels, strict=True)]

    base = gradients(dict.fromkeys(scheme.layers, 1))
    runs = {r: gradients({n: min(r, cap) for n, cap in caps.items()}) for r in AUTO_RS if max(caps.values()) >= r}
    choices, rs = [], {}
    for name, u in scheme.layers.items():
        layer = model.layer(name)
        key, measured = f"dw:{name}", "weight gradient"
        if not u.channels:
            src = producer.get(layer.inputs[0])
            key, measured = (f"grad:{src}", "passed-on gradient") if src else ("", "")
        cos = {}
        for r, grads in runs.items():
            if r <= caps[name] and key and all(key in g for g in grads):
                cos[r] = float(np.mean([cosine(g[key], b[key]) for g, b in zip(grads, base, strict=True)]))
        rs[name] = 1
        for r in AUTO_RS:  # the largest r that passes, every smaller one passing too
            if r > caps[name] or cos.get(r, 1.0) < AUTO_MIN_COSINE:
                break
            rs[name] = r
        choices.append(FilterChoice(name, tuple(layer.output.shape), caps[name], cos, measured, rs[name]))
    return Trainer(model, _with_rs(scheme, rs), trainer.config), choices
