"""The one compare: a `RunResult` against the NumPy reference, exactly (np.array_equal).

`compare_forward` holds every sample's outputs (and the firmware's CRC-32 of them) to the
reference's; `compare_training` holds every step's loss, the steps where the learning-rate guard
halved the rate, the step-1 gradient records, every trained parameter and their checksum. Both raise
`MismatchError` whose one sentence names the first difference, whichever target produced the result.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from tinygen.errors import MismatchError
from tinygen.ir.gradmath import fnv1a32
from tinygen.ir.names import layer_symbol
from tinygen.planning.weight_store import FracStore, weight_store
from tinygen.reference.training import Trainer, fraction_of
from tinygen.training.ondevice import reference_selection
from tinygen.verify.runner import HOST_TARGETS, RunResult


def compare_forward(result: RunResult, expected: np.ndarray, who: str = "the generated C") -> int:
    """`expected`: the reference's outputs, one row per sample. Returns the number of values compared."""
    expected = np.asarray(expected)
    n = len(expected)
    want = expected.reshape(n, -1).astype(np.int64)
    if len(result.outputs) != n:
        raise MismatchError(f"{who} reported {len(result.outputs)} samples; the reference has {n}")
    for i, got in enumerate(result.outputs):
        if got is not None:
            got = np.asarray(got, dtype=np.int64).ravel()
            if got.size != want[i].size:
                raise MismatchError(f"sample {i}: {who} wrote {got.size} output values; the reference has "
                                    f"{want[i].size}")
            if not np.array_equal(got, want[i]):
                bad = np.flatnonzero(got != want[i])
                j = int(bad[0])
                where = np.unravel_index(j, expected.shape[1:]) if expected.ndim > 2 else (j,)
                raise MismatchError(f"sample {i}: {len(bad)} of {got.size} output values differ from the reference; "
                                    f"first at element {tuple(int(v) for v in where)}: {who} {got[j]} vs "
                                    f"reference {want[i][j]}")
        crc = result.crcs[i] if i < len(result.crcs) else None
        if crc is not None:
            want_crc = zlib.crc32(want[i].astype(np.int8).tobytes())
            if crc != want_crc:
                raise MismatchError(f"sample {i}: {who}'s output checksum 0x{crc:08x} differs from the "
                                    f"reference's 0x{want_crc:08x}")
    return int(want.size)


@dataclass
class TrainingExpectation:
    """What the reference says a training run must report (None/empty: not checked)."""

    losses: list[int]
    checksum: int | None = None
    params: dict[str, bytes] = field(default_factory=dict)  # C name -> little-endian bytes
    param_order: list[str] = field(default_factory=list)
    records: list[str] = field(default_factory=list)  # "grad:<tensor>", "gacc:...", "dw:<layer>" by record id
    recorded: dict = field(default_factory=dict)  # the reference's step-1 records
    wmasks: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> trained-weight mask (dw records)
    lr_halvings: list[int] | None = None  # steps whose update the learning-rate guard halved
    selection: list[int] | None = None  # --update on-device: the channels the device must choose, per candidate
    unrecorded: set[str] = field(default_factory=set)  # ... and the records its selection leaves out (_unrecorded)


def _trained_layers(trainer: Trainer):
    """(layer, C name prefix, weight store or None where only the bias trains) of each trained layer."""
    for i, layer in enumerate(trainer.model.layers):
        if layer.name in trainer.trained:
            channels = trainer.trained[layer.name].update.channels
            yield layer, layer_symbol(i, layer.name), weight_store(layer, channels) if channels else None


def reference_params(trainer: Trainer) -> dict[str, bytes]:
    """The reference's trained state under the C names (little-endian bytes, as both targets store them)."""
    out = {}
    for layer, prefix, st in _trained_layers(trainer):
        out[f"{prefix}_bias"] = trainer.bias[layer.name].astype("<i4").tobytes()
        if st is not None:
            F = trainer.config.frac_bits
            out[f"{prefix}_weight_t"] = np.ascontiguousarray(st.trained_part(trainer.weights[layer.name])).astype(
                np.int8).tobytes()
            if F:
                frac = fraction_of(trainer.master[layer.name], F)
                out[f"{prefix}_frac"] = FracStore(F).pack(np.ascontiguousarray(st.trained_part(frac)))
    return out


def trained_values(trainer: Trainer, params: dict[str, bytes]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The inverse of `reference_params`: each trained layer's int8 weights (the model's, the trained part
    replaced by the int8 view in `params`) and int32 bias, from the C-named bytes a device reported."""
    out = {}
    for layer, prefix, st in _trained_layers(trainer):
        weight = layer.weight.copy()
        if st is not None:
            part = st.trained_part(weight)
            part[...] = np.frombuffer(params[f"{prefix}_weight_t"], np.int8).reshape(part.shape)
        out[layer.name] = (weight, np.frombuffer(params[f"{prefix}_bias"], "<i4").astype(np.int32))
    return out


def fnv1a(chunks: list[bytes]) -> int:
    return fnv1a32(b"".join(chunks))


def expect_training(trainer: Trainer, x: np.ndarray, labels: np.ndarray, order: list[int], param_order: list[str],
                    records: list[str] = (), on_step=None) -> TrainingExpectation:
    """Replay the steps on the reference (`order[s]`: the sample of step s), recording step 1's gradients;
    `on_step()` after each step (progress). A `--update on-device` build's trainer first makes the device's
    selection on the samples and trains only it (`training.ondevice.reference_selection`)."""
    chosen = reference_selection(trainer, x, labels)
    rec: dict = {}
    losses = []
    for s, k in enumerate(order):
        losses.append(int(trainer.step(x[k], labels[k], record=rec if s == 0 and records else None)))
        if on_step is not None:
            on_step()
    params = reference_params(trainer)
    return TrainingExpectation(losses, fnv1a([params[n] for n in param_order]), params, list(param_order),
                               list(records), rec, {name: t.wmask for name, t in trainer.trained.items()},
                               list(trainer.guard.halved_at),
                               None if chosen is None else [chosen.get(c, 0) for c in trainer.scheme.layers],
                               set() if chosen is None else _unrecorded(trainer.model, chosen, records))


def _unrecorded(model, chosen: dict[str, int], records: list[str]) -> set[str]:
    """The step-1 records a device's selection leaves out: those of the layers before its earliest choice (its
    backward pass ends there) and the weight gradients of the candidates it left frozen."""
    index = {layer.name: i for i, layer in enumerate(model.layers)}
    producer = {layer.output.name: i for i, layer in enumerate(model.layers)}
    top = min(index[n] for n in chosen)

    def left_out(key: str) -> bool:
        kind, name = key.split(":", 1)
        return (producer[name] if kind == "grad" else index[name]) < top or (kind == "dw" and name not in chosen)
    return {key for key in records if left_out(key)}


def _compare_selection(result: RunResult, expect: TrainingExpectation, who: str) -> None:
    """A `--update on-device` run's selection, before any loss: the channels chosen of every candidate."""
    if expect.selection is not None and result.selection != expect.selection:
        raise MismatchError(f"{who} chose {result.selection} channels of its candidates; the reference chose "
                            f"{expect.selection} (--update on-device)")


def _compare_records(result: RunResult, expect: TrainingExpectation, who: str) -> int:
    """Each step-1 record (gradients, G_acc, weight gradients of the trained elements); returns how many values."""
    n_grad_values = 0
    for rid, key in enumerate(expect.records):
        kind, name = key.split(":", 1)
        if key in expect.unrecorded:
            continue
        if kind in ("grad", "gacc"):
            if rid not in result.grads:
                raise MismatchError(f"{who} did not record {key}")
            e, g = result.grads[rid]
            ref = expect.recorded[key]
            if e != ref.e or not np.array_equal(g, ref.g.ravel()):
                bad = int(np.sum(g != ref.g.ravel())) if g.size == ref.g.size else g.size
                raise MismatchError(f"step-1 gradient {key} differs: {bad} values, exponent {who} {e} vs "
                                    f"reference {ref.e}")
            n_grad_values += g.size
        elif kind == "dw":
            have = result.dw.get(rid, {})
            d = expect.recorded[key].ravel()
            want_dw = {int(i): int(d[i]) for i in np.flatnonzero(expect.wmasks[name].ravel())}
            if set(have) != set(want_dw):
                raise MismatchError(f"step-1 weight gradient {key}: {who} updates {len(have)} weights, the reference "
                                    f"{len(want_dw)}; the C and the scheme disagree on which channels train")
            if have != want_dw:
                diff = sum(1 for i in want_dw if have.get(i) != want_dw[i])
                raise MismatchError(f"step-1 weight gradient {key} differs in {diff} of {len(want_dw)} elements")
            n_grad_values += len(want_dw)
    return n_grad_values


def compare_training(result: RunResult, expect: TrainingExpectation, who: str = "the generated C") -> dict:
    """Every loss and learning-rate halving (the earlier difference first), then each step-1 record, each
    trained parameter and the checksum; returns a summary."""
    got, want = result.losses, expect.losses
    _compare_selection(result, expect, who)
    if len(got) != len(want):
        raise MismatchError(f"{who} ran {len(got)} training steps; the reference has {len(want)}")
    bad_loss = next((k for k, (g, w) in enumerate(zip(got, want, strict=True)) if g != w), None)
    halved = expect.lr_halvings
    bad_halving = None if halved is None else min(set(result.lr_halvings) ^ set(halved), default=None)
    if bad_halving is not None and (bad_loss is None or bad_halving <= bad_loss):
        raise MismatchError(f"the learning-rate guard halved the rate at steps {result.lr_halvings} in {who}, at "
                            f"{halved} in the reference (first difference: step {bad_halving})")
    if bad_loss is not None:
        raise MismatchError(f"training step {bad_loss}: {who}'s loss {got[bad_loss]} differs from the reference's "
                            f"{want[bad_loss]} (Q16)")
    n_grad_values = _compare_records(result, expect, who)
    if result.target in HOST_TARGETS:  # the host harness prints every parameter; firmware only the checksum
        for name in expect.param_order:
            if result.params.get(name) != expect.params[name]:
                raise MismatchError(f"trained parameter {name} differs from the reference after {len(got)} steps")
    if expect.checksum is not None and result.checksum != expect.checksum:
        got_sum = "none" if result.checksum is None else f"0x{result.checksum:08x}"
        raise MismatchError(f"after {len(got)} training steps {who}'s parameter checksum {got_sum} differs "
                            f"from the reference's 0x{expect.checksum:08x}")
    return {"steps": len(want), "losses": want, "lr_halvings": halved or [], "gradient_values": n_grad_values,
            "param_bytes": sum(len(expect.params[n]) for n in expect.param_order), "checksum": expect.checksum}
