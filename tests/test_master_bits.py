"""Trained-weight storage (`--master-bits`, docs/numerics.md §6): 4 (nibble-packed fractions) and 0 (the
int8 weight is its own master, stochastic rounding) are bit-exact between the reference and the C over 24
steps like 8, cost the SRAM the planner (and the selection) says, and 0 bits still learns from updates below one int8
step."""

from __future__ import annotations

import numpy as np
import pytest
from train_harness import train_c_vs_reference

from tinygen.frontends.inputs import training_samples
from tinygen.ir import model as ir
from tinygen.ir.scheme import (
    MASTER_BITS,
    LayerUpdate,
    Scheme,
    TrainConfig,
    default_rounding,
    full_scheme,
    last_k_scheme,
    weighted_layers,
)
from tinygen.planning.memory import trained_state_bytes, training_sram
from tinygen.planning.weight_store import FracStore, weight_store
from tinygen.reference.training import Trainer, fraction_of, view_of
from tinygen.training.selection import fisher_potential, select
from tinygen.zoo.catalog import get_model

STEPS = 24


@pytest.fixture(scope="module")
def digits():
    return get_model("digits-cnn")


def _partial(model):
    """Every weighted layer: an odd-sized prefix of its channels (a nibble array with a half-used last byte
    and a frozen rest in flash) or all of them, with biases."""
    layers = {}
    for i, layer in enumerate(weighted_layers(model)):
        n = ir.selectable_channels(layer)
        layers[layer.name] = LayerUpdate(list(range(max(1, n // 2) | 1 if i % 2 == 0 else n)), True, 1)
    return Scheme(layers)


@pytest.mark.parametrize("bits, rounding", [(4, "nearest"), (4, "stochastic"), (0, "stochastic")])
def test_master_bits_match_reference_over_24_steps(digits, bits, rounding, kernels):
    """The two new storages (8 bits with either rounding is every other training test's)."""
    x, y, _ = training_samples(digits, 8)
    config = TrainConfig(lr=0.05, momentum=0.5, frac_bits=bits, rounding=rounding)
    summary = train_c_vs_reference(digits, _partial(digits), config, x, y, STEPS, kernels)
    assert summary["steps"] == STEPS


@pytest.mark.parametrize("bits", [0, 1, 3, 4, 5, 8, 12, 16])
def test_view_and_fraction_rebuild_the_master(bits):
    rng = np.random.default_rng(bits)
    limit = 127 << bits
    master = rng.integers(-limit, limit + 1, size=1001)
    view = view_of(master, bits)
    frac = fraction_of(master, bits)
    assert np.array_equal((view << bits) + frac, master)
    assert view.min() >= -127 and view.max() <= 127
    half = (1 << bits) >> 1
    assert frac.min() >= -half and frac.max() <= max(half - 1, 0)
    packed = FracStore(bits).pack(frac)
    assert len(packed) == FracStore(bits).nbytes(frac.size)
    if FracStore(bits).nibbles:  # two's-complement nibbles, low first: unpack and compare
        b = np.frombuffer(packed, dtype=np.uint8).astype(np.int64)
        nib = np.stack([b & 15, b >> 4], axis=1).ravel()[: frac.size]
        assert np.array_equal(((nib ^ 8) - 8), frac)


def test_sram_per_trained_weight(digits):
    """2, 1.5 and 1 bytes per trained weight (plus the same biases) for 8, 4 and 0 master bits."""
    scheme = full_scheme(digits)
    got = {b: trained_state_bytes(Trainer(digits, scheme, TrainConfig(frac_bits=b))) for b in MASTER_BITS}
    sizes = [layer.weight.size for layer in weighted_layers(digits) if layer.name in scheme.layers]
    assert got[8] - got[0] == sum(sizes)
    assert got[8] - got[4] == sum(sizes) - sum((n + 1) // 2 for n in sizes)


def test_no_fraction_still_learns_below_one_step(digits):
    """At a rate whose updates are all below half an int8 step, the in-place weights (0 master bits) move only
    with stochastic rounding — the default there."""
    assert default_rounding(0) == "stochastic" and default_rounding(8) == "nearest"
    x, y, _ = training_samples(digits, 6)
    moved = {}
    for rounding in ("nearest", "stochastic"):
        tr = Trainer(digits, full_scheme(digits), TrainConfig(lr=2e-4, frac_bits=0, rounding=rounding, lr_guard=0))
        start = {n: w.copy() for n, w in tr.weights.items()}
        for i in range(len(x)):
            tr.step(x[i], y[i])
        moved[rounding] = sum(int(np.count_nonzero(tr.weights[n] != start[n])) for n in start)
    assert moved["nearest"] == 0 < moved["stochastic"]


def test_selection_counts_the_storage(digits):
    """Under the same SRAM budget, the Fisher selection trains more weights the fewer master bits each costs,
    and every choice fits the budget the planner measures."""
    x, y, _ = training_samples(digits, 8)
    full = training_sram(digits, Trainer(digits, full_scheme(digits), TrainConfig())).total
    budget = (full + training_sram(digits, Trainer(digits, last_k_scheme(digits, 1), TrainConfig())).total) // 2
    imp = fisher_potential(digits, x, y)
    trained = {}
    for bits in MASTER_BITS:
        trainer, est = select(digits, imp, budget, TrainConfig(frac_bits=bits))
        assert est.total <= budget
        trained[bits] = sum(weight_store(digits.layer(n), u.channels).trained_part(digits.layer(n).weight).size
                            for n, u in trainer.scheme.layers.items() if u.channels)
    assert trained[8] < trained[0] and trained[8] <= trained[4] <= trained[0]
