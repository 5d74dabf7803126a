"""The selection the device makes (`--update on-device`): TinyTrain's task-adaptive sparse update on the device.

At build time the host chooses an *envelope* (`choose_envelope`), knowing nothing of the task: the classifier
and the weighted layers before it, walking back from it, each with its options — its first C/8, C/4, C/2 or C
input channels (a depthwise conv's channels), always with the bias — up to the widest the SRAM budget lets every
candidate hold at once. The firmware is built for that union (`envelope_scheme`): the arena, the SRAM copies of
the trained weights and the saved inputs are planned for every candidate at its widest, so whatever the device
selects fits (the plan says so).

On the device, over the first K samples of the new task, a pass without updates computes each candidate
channel's Fisher potential (TinyTrain, Kwon et al. 2024), `sum_n (sum_spatial a * g)^2`, in integers: per
sample, `S_c = sum over the channel's weights of W * dW` (int64: `sum_spatial a * g` in units of `2^e_acc`,
`Trainer.potential`), then squared and summed as the unsigned floating values of `pf` below, bit-exact in
C and NumPy (docs/numerics.md §8). The greedy of `training.selection.select` follows: starting from the
classifier, a candidate grows to its next option by potential per byte it adds, normalised by the backward MACs
it adds (`score = gain / (bytes * (total MACs + MACs))`), while the backward MACs stay under the compute budget;
the best score wins, ties going to the earlier layer, then the narrower option. `select_on_device` is the
reference the firmware's choice is held to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tinygen.errors import TinygenError
from tinygen.ir import model as ir
from tinygen.ir.scheme import LayerUpdate, Scheme, TrainConfig, first_channels, weighted_layers
from tinygen.planning.saved_input import saved_input
from tinygen.planning.weight_store import FracStore
from tinygen.reference.training import Trainer
from tinygen.training.selection import MACS_CAP, _bwd_macs, _feeds_add, _trial

ONDEVICE_SAMPLES = 8  # K: the samples the device's potential pass runs on
MAX_CANDIDATES = 8  # weighted layers before the classifier the envelope holds at most
PF_BITS = 32  # a `pf` value's mantissa: 0, or in [2^31, 2^32)
S_BOUND_LOG2 = 62  # |S_c| < 2^62: a layer's W * dW terms (|W| <= 127, |dW| <= 2^22 a product) fit int64

# -- unsigned floating values with a 32-bit mantissa, truncated (the same in C: train/select_ondevice.c.j2) -------


def pf(u: int, e: int) -> tuple[int, int]:
    """`u * 2^e` (u >= 0, < 2^64) as (m, x): m in [2^31, 2^32) with `m * 2^x` the value truncated to 32
    significant bits; (0, 0) for zero."""
    if u == 0:
        return 0, 0
    b = u.bit_length()
    return (u >> (b - PF_BITS), e + b - PF_BITS) if b > PF_BITS else (u << (PF_BITS - b), e - (PF_BITS - b))


def pf_mul(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return (0, 0) if not (a[0] and b[0]) else pf(a[0] * b[0], a[1] + b[1])


def pf_add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """The sum, the smaller term first truncated to the larger's exponent."""
    if not a[0] or not b[0]:
        return a if a[0] else b
    if a[1] < b[1]:
        a, b = b, a
    d = a[1] - b[1]
    return pf(a[0] + (b[0] >> d if d < 64 else 0), a[1])


def pf_div(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """a / b for b > 0: the quotient of the mantissas, the dividend's shifted up 32 bits, truncated."""
    return (0, 0) if not a[0] else pf((a[0] << 32) // b[0], a[1] - b[1] - 32)


def pf_greater(a: tuple[int, int], b: tuple[int, int]) -> bool:
    if not a[0] or not b[0]:
        return bool(a[0]) and not b[0]
    return (a[1], a[0]) > (b[1], b[0])


# -- the envelope -----------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """A layer the device may train: its options (channels, ascending) and what each costs."""

    name: str
    position: int  # index in the model's layers
    channels: int  # selectable channels
    options: list[int]  # first-k channel counts the device may choose (the classifier: all of them only)
    option_bytes: list[int]  # SRAM each option adds (weights and fraction, saved input, bias)
    option_macs: list[int]  # backward MACs each option adds (its weight gradient, as the host greedy counts)
    path_macs: list[int]  # to each candidate (by index): input-gradient MACs a path from there down to this adds

    @property
    def widest(self) -> int:
        return self.options[-1]


@dataclass
class Envelope:
    candidates: list[Candidate]  # in forward order; the classifier last
    samples: int  # K
    macs_budget: int  # the backward MACs a selection may take
    total_macs: int  # the backward MACs of every weighted layer at full width (the greedy's normaliser)

    def potential_starts(self) -> list[int]:
        """Where each candidate's channel potentials start in one array of them all, and (last) its length."""
        return np.cumsum([0] + [c.widest for c in self.candidates]).tolist()

    def to_json(self) -> dict:
        return {"candidates": [asdict(c) for c in self.candidates], "samples": self.samples,
                "macs_budget": self.macs_budget, "total_macs": self.total_macs}

    @classmethod
    def from_json(cls, d: dict) -> Envelope:
        try:
            return cls([Candidate(**c) for c in d["candidates"]], int(d["samples"]), int(d["macs_budget"]),
                       int(d["total_macs"]))
        except (KeyError, TypeError) as exc:
            raise TinygenError(f"the build's on-device envelope is damaged ({exc}); rebuild") from None


def envelope_scheme(model: ir.Model, env: Envelope, filter_r: int = 1) -> Scheme:
    """Every candidate at its widest option with its bias: what the firmware's storage is laid out for."""
    return Scheme({c.name: LayerUpdate(list(range(c.widest)), True, filter_r) for c in env.candidates},
                  "on-device selection envelope")


def _options(n: int, widest: int) -> list[int]:
    return sorted({k for k in (max(1, n // 8), max(1, n // 4), max(1, n // 2), n) if k <= widest})


def _weight_gradient_macs(layer, k: int) -> int:
    """The backward MACs of k channels' weight gradient, as the host greedy counts them."""
    return _bwd_macs(layer, k, ir.selectable_channels(layer))


def _option_bytes(layer, k: int, filter_r: int, frac: FracStore, tensors) -> int:
    per_channel = layer.weight.size // ir.selectable_channels(layer)
    return (k * per_channel + frac.nbytes(k * per_channel) + saved_input(layer, k, filter_r, tensors).nbytes
            + 4 * layer.bias.size)


def _s_fits(layer) -> bool:
    """|S_c| < 2^S_BOUND_LOG2: per weight |dW| <= patches * 255 * 2^14 (one product a patch), times 127, over
    the channel's weights (numerics §8)."""
    out = layer.output.shape
    patches = out[0] * out[1] if len(out) == 3 else 1
    per_channel = layer.weight.size // ir.selectable_channels(layer)
    return patches * 255 * (1 << 14) * 127 * per_channel < (1 << S_BOUND_LOG2)


def choose_envelope(model: ir.Model, budget: int, config: TrainConfig, macs_budget: int | None = None,
                    filter_r: int = 1, samples: int = ONDEVICE_SAMPLES) -> Envelope:
    """The candidates, from the classifier back, each at the widest option with which all of them fit the SRAM
    budget (the planner measures the union) and the layer's narrowest option and its path fit the compute budget
    (default: MACS_CAP of the forward MACs). Layers whose output feeds a residual addition, grouped (not
    depthwise) convolutions and layers no gradient reaches are passed over; the walk stops at MAX_CANDIDATES or
    at the first layer that does not fit."""
    layers = weighted_layers(model)
    head = model.layers[-1]
    if not layers or layers[-1] is not head:
        raise TinygenError(f"{model.name} does not end in a weighted layer (a classifier); --update on-device "
                           "starts from it")
    tensors = model.tensors()
    frac = FracStore(config.frac_bits)
    limit = macs_budget if macs_budget is not None else int(MACS_CAP * model.macs())
    consumers = model.consumers()
    position = {layer.name: i for i, layer in enumerate(model.layers)}
    chosen: dict[str, int] = {head.name: len(first_channels(head, tensors, 1.0))}

    def scheme(widths: dict[str, int]) -> Scheme:  # planned with the selection pass's potentials (ondevice set)
        return Scheme({n: LayerUpdate(list(range(k)), True, filter_r) for n, k in widths.items()}, "envelope",
                      ondevice={})
    if _trial(model, scheme(chosen), config, budget, None) is None:
        raise TinygenError(f"the classifier {head.name!r} alone does not fit {budget:,} B of SRAM with its weights; "
                           "raise --budget-kb or choose a fixed --update (bias)")
    path = _weight_gradient_macs(head, chosen[head.name])
    for layer in reversed(layers[:-1]):
        if len(chosen) > MAX_CANDIDATES:
            break
        if _feeds_add(layer, consumers) or (layer.groups > 1 and not ir.is_depthwise(layer)) or not _s_fits(layer):
            continue
        n = ir.selectable_channels(layer)
        top = min(position[c] for c in chosen)
        reach = sum(ir.layer_macs(x) for x in layers if position[layer.name] < position[x.name] <= top)
        if path + reach + _weight_gradient_macs(layer, _options(n, n)[0]) > limit:
            break
        for k in reversed(_options(n, n)):
            if _trial(model, scheme({**chosen, layer.name: k}), config, budget, None) is not None:
                chosen[layer.name] = k
                path += reach
                break
        else:
            break
    names = sorted(chosen, key=position.__getitem__)
    cands = []
    for name in names:
        layer = model.layer(name)
        n = ir.selectable_channels(layer)
        opts = [chosen[name]] if name == head.name else _options(n, chosen[name])
        to = [sum(ir.layer_macs(x) for x in layers if position[name] < position[x.name] <= position[t])
              for t in names]
        cands.append(Candidate(name, position[name], n, opts,
                               [_option_bytes(layer, k, filter_r, frac, tensors) for k in opts],
                               [_weight_gradient_macs(layer, k) for k in opts], to))
    total = sum(_weight_gradient_macs(layer, ir.selectable_channels(layer)) for layer in layers)
    return Envelope(cands, samples, limit, total)


# -- the device's pass and choice, as the reference ------------------------------------------------------------------


def potentials(trainer: Trainer, env: Envelope, x: np.ndarray, labels: np.ndarray) -> list[list[tuple[int, int]]]:
    """Per candidate, per channel of its widest option: `sum_n pf(|S_c|, e_n)^2` over samples 0..K-1 (cycling where
    there are fewer), added in sample order (`trainer`: built for `envelope_scheme`, untouched)."""
    pots = [[(0, 0)] * c.widest for c in env.candidates]
    for n in range(env.samples):
        got = trainer.potential(x[n % len(x)], labels[n % len(x)])
        for j, c in enumerate(env.candidates):
            s, e = got[c.name]
            for ch in range(c.widest):
                v = pf(abs(int(s[ch])), int(e))
                pots[j][ch] = pf_add(pots[j][ch], pf_mul(v, v))
    return pots


def select_on_device(env: Envelope, pots: list[list[tuple[int, int]]]) -> dict[str, int]:
    """The greedy the firmware runs: layer -> channels (in forward order); absent layers stay frozen."""
    cands = env.candidates
    head = len(cands) - 1
    state = {head: 0}  # candidate -> option index
    used = cands[head].option_macs[0]
    top = head
    while True:
        best = None
        for j, c in enumerate(cands):
            cur = state.get(j)
            first = 0 if cur is None else cur + 1
            for oi in range(first, len(c.options)):
                lo = 0 if cur is None else c.options[cur]
                gain = (0, 0)
                for ch in range(lo, c.options[oi]):
                    gain = pf_add(gain, pots[j][ch])
                nbytes = c.option_bytes[oi] - (0 if cur is None else c.option_bytes[cur])
                macs = c.option_macs[oi] - (0 if cur is None else c.option_macs[cur])
                macs += c.path_macs[top] if cur is None else 0
                if used + macs > env.macs_budget:
                    continue
                score = pf_div(gain, pf(nbytes * (env.total_macs + macs), 0))
                if best is None or pf_greater(score, best[0]):
                    best = (score, j, oi, macs)
        if best is None:
            return {cands[j].name: cands[j].options[oi] for j, oi in sorted(state.items())}
        _, j, oi, macs = best
        state[j] = oi
        used += macs
        top = min(top, j)


def selection_macs(env: Envelope, selection: dict[str, int]) -> int:
    """The backward MACs the greedy counts for a selection (its widths' weight gradients and the input gradients
    of its path from the classifier down to its earliest layer)."""
    cands = env.candidates
    chosen = [j for j, c in enumerate(cands) if selection.get(c.name)]
    return (sum(c.option_macs[c.options.index(selection[c.name])] for c in (cands[j] for j in chosen))
            + cands[min(chosen)].path_macs[-1])


def reference_selection(trainer: Trainer, x: np.ndarray, labels: np.ndarray) -> dict[str, int] | None:
    """For a `--update on-device` build's trainer: the selection the device makes on these samples (its first K,
    in order), applied to the trainer (`Trainer.restrict`); None (the trainer untouched) for any other build."""
    if trainer.scheme.ondevice is None:
        return None
    env = Envelope.from_json(trainer.scheme.ondevice)
    selection = select_on_device(env, potentials(trainer, env, x, labels))
    trainer.restrict(selection)
    return selection
