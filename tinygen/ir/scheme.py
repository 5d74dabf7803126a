"""Which layers train, and how: the update scheme and the training configuration.

A scheme names, per layer, the input channels whose weights are updated, whether its
bias is updated, and its gradient-filter patch size r. Two file forms load:

* tinygen's own (`"format": "tinygen-scheme"`):
      {"format": "tinygen-scheme", "version": 1,
       "layers": [{"layer": "conv3", "weight_ratio": 0.5, "bias": true, "filter_r": 2}, ...]}
  (`"channels": [..]` may replace `weight_ratio` to pick input channels explicitly);
* the MIT tiny-training published schemes as they are (`manual_weight_idx`,
  `weight_update_ratio`, `n_bias_update`), either one scheme object or the whole
  `sparse_schemes.json` with a key: `sparse_schemes.json#mbv2/49kb`.

For MIT schemes, `manual_weight_idx` indexes the 2-D convolutions in forward order and
the first `ceil(ratio * C_in)` input channels are updated — the same channels in the
reference and in the C, by construction. The classifier (the final fully connected
layer) is always trained, weights and bias, as in their transfer-learning setup.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from tinygen.errors import TinygenError
from tinygen.ir import model as ir

# The learning-rate guard (docs/numerics.md §6.1): after `lr_guard` consecutive saturated steps the rate
# halves, at most LR_GUARD_MAX_HALVINGS times (lr / 256: below that a diverged run is not coming back).
LR_GUARD_STEPS = 8
LR_GUARD_MAX_HALVINGS = 8
MAX_LR_GUARD = 1 << 16
ROUNDINGS = ("nearest", "stochastic")
MASTER_BITS = (8, 4, 0)  # the trained-weight storages measured (README): F-bit master fraction, F = 8, 4 or none


def default_rounding(frac_bits: int) -> str:
    """Stochastic where the master has no fraction (an update below one int8 step would otherwise be lost
    every time: numerics §6.2), else to nearest."""
    return "stochastic" if frac_bits == 0 else "nearest"


@dataclass
class LayerUpdate:
    channels: list[int]  # input channels whose weights train (empty: weights frozen)
    bias: bool
    filter_r: int = 1


@dataclass
class Scheme:
    layers: dict[str, LayerUpdate] = field(default_factory=dict)
    source: str = "custom"
    # tensor -> original channel index of each channel, where the build reordered channels (reorder.py)
    channel_order: dict[str, list[int]] = field(default_factory=dict)
    # `--update on-device`: the envelope the device selects from (training.ondevice.Envelope.to_json); the layers
    # above are then every candidate at its widest, what the firmware's storage is laid out for
    ondevice: dict | None = None

    def trained(self) -> list[str]:
        return [n for n, u in self.layers.items() if u.channels or u.bias]

    def filter_r(self, name: str) -> int:
        """The gradient filter's patch side at layer `name`: its entry's (a trained layer's, or a frozen one on the
        gradient path that filters its output gradient, `with_path_filter`), else 1."""
        u = self.layers.get(name)
        return u.filter_r if u is not None else 1

    def path_filtered(self) -> list[str]:
        """The frozen layers that filter their output gradient."""
        return [n for n, u in self.layers.items() if not (u.channels or u.bias) and u.filter_r > 1]

    def counts(self) -> tuple[int, int]:
        """(layers that update weights, layers that update biases)."""
        return (sum(1 for u in self.layers.values() if u.channels), sum(1 for u in self.layers.values() if u.bias))


# The SGD learning rate when none is given: 0.01 diverges on the MIT models at 128x128 (their 99kb scheme falls
# to chance in integer and float training alike, logits pinned at the int8 limits); 0.001-0.003 trains them,
# and 0.003 is what the zoo's transfer tasks use (README, Results; `tinygen bench transfer --task mnist128`).
DEFAULT_LR = 0.003


@dataclass
class TrainConfig:
    """Build-time training settings (the device sees only the integers derived from them)."""

    lr: float = DEFAULT_LR
    momentum: float = 0.0
    lr_halve_every: int = 0  # 0: constant learning rate; N: halve it every N steps
    loss: str = "ce"  # "ce" softmax cross-entropy on the logits, or "mse"
    frac_bits: int = 8  # master bits: the master weight's fraction below the int8 view (0: none, the view itself)
    accumulate: int = 1  # apply the summed update of every `accumulate` samples (gradient accumulation)
    lr_guard: int = LR_GUARD_STEPS  # halve the rate after this many saturated steps in a row (0: off)
    rounding: str = "nearest"  # weight updates to the master's last bit: "nearest" or "stochastic" (numerics §6.2)
    # depthwise layers whose filtered input gradient takes its taps one by one instead of the patch-summed weights
    # (planning.backward.structured_channels; the same integers): the build drops them to fit the flash
    taps_only: tuple[str, ...] = ()

    @property
    def lr_varies(self) -> bool:
        """Whether the update's learning-rate shift changes between steps (a schedule or the guard)."""
        return bool(self.lr_halve_every or self.lr_guard)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "taps_only": list(self.taps_only)}

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        """A build's recorded config; one recorded before the guard (stochastic rounding) existed had none."""
        keys = ("lr", "momentum", "lr_halve_every", "loss", "frac_bits", "accumulate", "lr_guard", "rounding")
        taps_only = d.get("taps_only", [])
        if not (isinstance(taps_only, (list, tuple)) and all(isinstance(n, str) for n in taps_only)):
            raise TinygenError("the recorded training config's taps_only must be a list of layer names; rebuild")
        return cls(**{"lr_guard": 0, "rounding": "nearest", **{k: d[k] for k in keys if k in d}},
                   taps_only=tuple(taps_only)).check()

    def check(self) -> TrainConfig:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise TinygenError(f"learning rate {self.lr} must be a positive number")
        if not (isinstance(self.frac_bits, int) and 0 <= self.frac_bits <= 16):
            raise TinygenError(f"master weights with {self.frac_bits} fraction bits: use 0..16 (8, 4 or 0 measured)")
        if not 0.0 <= self.momentum < 1.0:
            raise TinygenError(f"momentum {self.momentum} must be in [0, 1)")
        if not (isinstance(self.accumulate, int) and 1 <= self.accumulate <= 1 << 16):
            raise TinygenError(f"gradient accumulation over {self.accumulate} samples: use 1..65536")
        if not (isinstance(self.lr_guard, int) and 0 <= self.lr_guard <= MAX_LR_GUARD):
            raise TinygenError(f"learning-rate guard of {self.lr_guard} steps: use 0 (off) to {MAX_LR_GUARD}")
        if self.rounding not in ROUNDINGS:
            raise TinygenError(f"rounding {self.rounding!r} is not supported; use 'nearest' or 'stochastic'")
        if self.loss not in ("ce", "mse"):
            raise TinygenError(f"loss {self.loss!r} is not supported; use 'ce' or 'mse'")
        return self


def first_channels(layer: ir.Layer, tensors, ratio: float) -> list[int]:
    if not 0.0 <= ratio <= 1.0:
        raise TinygenError(f"layer {layer.name!r}: weight ratio {ratio} must be in [0, 1]")
    n = ir.selectable_channels(layer)
    return list(range(math.ceil(ratio * n - 1e-9)))


def weighted_layers(model: ir.Model) -> list[ir.Layer]:
    return [layer for layer in model.layers if isinstance(layer, (ir.Conv2D, ir.FullyConnected))]


def full_scheme(model: ir.Model, filter_r: int = 1) -> Scheme:
    """Every weighted layer trains, all channels and bias."""
    tensors = model.tensors()
    return Scheme({layer.name: LayerUpdate(first_channels(layer, tensors, 1.0), True, filter_r)
                   for layer in weighted_layers(model)}, "full")


def last_k_scheme(model: ir.Model, k: int, filter_r: int = 1) -> Scheme:
    tensors = model.tensors()
    layers = weighted_layers(model)[-k:]
    return Scheme({layer.name: LayerUpdate(first_channels(layer, tensors, 1.0), True, filter_r)
                   for layer in layers}, f"last-{k}")


def _mit_scheme(model: ir.Model, d: dict, where: str, filter_r: int) -> Scheme:
    try:
        idx = [int(i) for i in d["manual_weight_idx"]]
        ratios = [float(r) for r in d["weight_update_ratio"]]
        n_bias = int(d["n_bias_update"])
    except (KeyError, TypeError, ValueError):
        raise TinygenError(f"{where}: an MIT scheme needs manual_weight_idx, weight_update_ratio and "
                           "n_bias_update") from None
    if len(idx) != len(ratios):
        raise TinygenError(f"{where}: manual_weight_idx and weight_update_ratio differ in length")
    convs = [layer for layer in model.layers if isinstance(layer, ir.Conv2D)]
    tensors = model.tensors()
    if any(i < 0 or i >= len(convs) for i in idx):
        raise TinygenError(f"{where}: manual_weight_idx {max(idx)} is out of range for {model.name}, which has "
                           f"{len(convs)} convolutions; is the scheme for another model?")
    scheme = Scheme(source=where)
    for i, r in zip(idx, ratios, strict=True):
        scheme.layers[convs[i].name] = LayerUpdate(first_channels(convs[i], tensors, r), False, filter_r)
    for conv in convs[len(convs) - n_bias:] if n_bias > 0 else []:
        u = scheme.layers.setdefault(conv.name, LayerUpdate([], False, filter_r))
        u.bias = True
    head = model.layers[-1]
    if isinstance(head, ir.FullyConnected):
        scheme.layers[head.name] = LayerUpdate(first_channels(head, tensors, 1.0), True, filter_r)
    return scheme


def load_scheme(spec: str, model: ir.Model, filter_r: int = 1) -> Scheme:
    """`path.json`, or `path.json#model/budget` for a key inside the MIT schemes file."""
    path_s, _, key = spec.partition("#")
    path = Path(path_s)
    if not path.is_file():
        raise TinygenError(f"update scheme file {path} does not exist")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TinygenError(f"update scheme {path} is not valid JSON ({exc})") from None
    for part in [k for k in key.split("/") if k]:
        if not isinstance(d, dict) or part not in d:
            choices = ", ".join(d) if isinstance(d, dict) else "none"
            raise TinygenError(f"update scheme {path} has no entry {part!r} (choices: {choices})")
        d = d[part]
    if not isinstance(d, dict):
        raise TinygenError(f"update scheme {spec} is not a JSON object")
    if "manual_weight_idx" in d:
        return _mit_scheme(model, d, spec, filter_r)
    if d.get("format") != "tinygen-scheme":
        raise TinygenError(f"{spec} is neither a tinygen scheme nor an MIT scheme; for sparse_schemes.json "
                           "add a key, e.g. sparse_schemes.json#mbv2/49kb")
    tensors = model.tensors()
    names = {layer.name: layer for layer in weighted_layers(model)}
    scheme = Scheme(source=spec)
    for entry in d.get("layers", []):
        name = entry.get("layer")
        if name not in names:
            raise TinygenError(f"{spec}: layer {name!r} is not a conv or fully connected layer of {model.name}")
        layer = names[name]
        if "channels" in entry:
            chans = sorted({int(c) for c in entry["channels"]})
            if chans and (chans[0] < 0 or chans[-1] >= ir.selectable_channels(layer)):
                raise TinygenError(f"{spec}: layer {name!r} channel index out of range")
        else:
            chans = first_channels(layer, tensors, float(entry.get("weight_ratio", 1.0)))
        scheme.layers[name] = LayerUpdate(chans, bool(entry.get("bias", True)), int(entry.get("filter_r", filter_r)))
    order = d.get("channel_order", {})
    if not (isinstance(order, dict) and all(
            t in tensors and isinstance(p, list) and all(isinstance(i, int) for i in p)
            and sorted(p) == list(range(tensors[t].shape[-1]))
            for t, p in order.items())):
        raise TinygenError(f"{spec}: channel_order must map tensors of {model.name} to a permutation of their "
                           "channels (as a build writes it)")
    scheme.channel_order = order
    ondevice = d.get("ondevice")
    if ondevice is not None and not isinstance(ondevice, dict):
        raise TinygenError(f"{spec}: ondevice must be the envelope object a build writes")
    scheme.ondevice = ondevice
    return scheme


def scheme_to_json(scheme: Scheme) -> dict:
    """The native form with explicit channel lists (what a build records)."""
    d = {"format": "tinygen-scheme", "version": 1, "source": scheme.source,
         "layers": [{"layer": n, "channels": u.channels, "bias": u.bias, "filter_r": u.filter_r}
                    for n, u in scheme.layers.items()]}
    if scheme.channel_order:
        d["channel_order"] = scheme.channel_order
    if scheme.ondevice is not None:
        d["ondevice"] = scheme.ondevice
    return d


def parse_update(spec: str, model: ir.Model, filter_r: int = 1) -> Scheme:
    """`--update`: full | last-K | bias | layers:NAME,NAME,... (those layers wholly) | PATH.json[#key]."""
    if spec == "full":
        return full_scheme(model, filter_r)
    if spec == "bias":
        s = full_scheme(model, filter_r)
        for u in s.layers.values():
            u.channels = []
        s.source = "bias-only"
        return s
    if spec.startswith("last-"):
        try:
            k = int(spec[5:])
        except ValueError:
            k = 0
        if k < 1:
            raise TinygenError(f"--update {spec}: use last-K with K >= 1 layers")
        return last_k_scheme(model, k, filter_r)
    if spec.startswith("layers:"):
        names = [n for n in spec[7:].split(",") if n]
        weighted = {layer.name: layer for layer in weighted_layers(model)}
        unknown = [n for n in names if n not in weighted]
        if not names or unknown:
            raise TinygenError(f"--update {spec}: name weighted layers of {model.name} after layers: "
                               f"({', '.join(unknown) or 'none given'} is not one; they are {', '.join(weighted)})")
        tensors = model.tensors()
        return Scheme({n: LayerUpdate(first_channels(weighted[n], tensors, 1.0), True, filter_r) for n in names},
                      spec)
    return load_scheme(spec, model, filter_r)


def with_path_filter(scheme: Scheme, model: ir.Model, r: int) -> Scheme:
    """`scheme` plus a gradient filter of patch side `r` on every frozen convolution on the gradient path (after
    the earliest trained layer) whose output map is at least 2r x 2r: its output gradient is filtered as a trained
    layer's is (numerics §5 step 2), so its input gradient reads patch means. An approximation of the gradient
    those layers pass on (the paper's filtering along the path); the trained layers keep their own r."""
    if r <= 1:
        return scheme
    out = Scheme({n: LayerUpdate(list(u.channels), u.bias, u.filter_r) for n, u in scheme.layers.items()},
                 f"{scheme.source} + path filter r={r}", dict(scheme.channel_order))
    trained = set(scheme.trained())
    on_path: set[str] = set()
    for layer in model.layers:
        if layer.name in trained or any(t in on_path for t in layer.inputs):
            on_path.add(layer.output.name)
            h, w = layer.output.shape[:2] if len(layer.output.shape) == 3 else (1, 1)
            if layer.name not in trained and isinstance(layer, ir.Conv2D) and min(h, w) >= 2 * r:
                out.layers[layer.name] = LayerUpdate([], False, r)
    return out
