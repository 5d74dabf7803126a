"""Generated training C on the host vs the NumPy reference: losses, gradients, parameters.

The host harness (templates/host/train_host.c.j2) trains N steps and prints the loss of
every step, every gradient of step 1 (built with -DTG_RECORD) and every trained parameter
at the end; `compare` runs the reference on the same samples and checks each of those
with exact equality.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinygen.codegen.forward import environment
from tinygen.errors import MismatchError
from tinygen.ir.names import c_ident
from tinygen.paths import data_dir
from tinygen.planning.weight_store import frac_dtype, weight_store
from tinygen.reference.training import Trainer, fraction_of
from tinygen.targets.hostbuild import compile_host, run_host


@dataclass
class CTrainOutput:
    losses: list[int]
    grads: dict[int, tuple[int, np.ndarray]]
    dw: dict[int, dict[int, int]]
    params: dict[str, bytes]
    checksum: int
    preds: list[int]  # predicted class of each test sample after training (when test samples were given)


def write_samples(path: Path, x: np.ndarray, labels: np.ndarray) -> None:
    with open(path, "wb") as f:
        for xi, yi in zip(x, labels, strict=True):
            f.write(np.ascontiguousarray(xi, dtype=np.int8).tobytes())
            yi = np.asarray(yi)
            # a class index (int32) for cross-entropy, int8 target codes for mean squared error
            f.write(yi.astype(np.int8).tobytes() if yi.ndim else np.int32(yi).astype("<i4").tobytes())


def build_host_trainer(build: Path, src: Path, fast: bool = False) -> Path:
    """The host training harness; `fast` builds it optimised without sanitizers or step-1 records."""
    main_c = build / "host" / "train_host.c"
    main_c.parent.mkdir(parents=True, exist_ok=True)
    main_c.write_text(environment().get_template("host/train_host.c.j2").render())
    return compile_host(sorted(src.glob("*.c")) + [main_c], [src, data_dir("cmsis_glue")],
                        build / "host" / "tg_train_host", extra=[] if fast else ["-DTG_RECORD"], fast=fast)


def run_c_training(binary: Path, x: np.ndarray, labels: np.ndarray, steps: int, workdir: Path,
                   x_test: np.ndarray | None = None) -> CTrainOutput:
    samples, out = workdir / "samples.bin", workdir / "train_out.txt"
    write_samples(samples, x, labels)
    args = [str(samples), str(steps), str(out)]
    if x_test is not None:
        write_samples(workdir / "test.bin", x_test, np.zeros(len(x_test), dtype=np.int32))
        args.append(str(workdir / "test.bin"))
    run_host(binary, args, timeout=1800)
    losses, grads, dw, params, checksum, preds = [], {}, {}, {}, 0, []
    lines = out.read_text().splitlines()
    k = 0
    while k < len(lines):
        parts = lines[k].split()
        if parts[0] == "loss":
            losses.append(int(parts[2]))
        elif parts[0] == "grad":
            grads[int(parts[1])] = (int(parts[2]), np.array(parts[4:], dtype=np.int64))
        elif parts[0] == "rec":
            dw.setdefault(int(parts[1]), {})[int(parts[2])] = int(parts[3])
        elif parts[0] == "param":
            k += 1
            params[parts[1]] = bytes.fromhex(lines[k]) if k < len(lines) and int(parts[2]) else b""
        elif parts[0] == "checksum":
            checksum = int(parts[1])
        elif parts[0] == "pred":
            preds.append(int(parts[1]))
        k += 1
    return CTrainOutput(losses, grads, dw, params, checksum, preds)


def reference_params(trainer: Trainer) -> dict[str, bytes]:
    """The reference's trained state under the C names (little-endian bytes, as both targets store them)."""
    out = {}
    for i, layer in enumerate(trainer.model.layers):
        if layer.name not in trainer.trained:
            continue
        prefix = f"tg_l{i}_{c_ident(layer.name)}"
        out[f"{prefix}_bias"] = trainer.bias[layer.name].astype("<i4").tobytes()
        channels = trainer.trained[layer.name].update.channels
        if channels:
            st = weight_store(layer, channels)
            F = trainer.config.frac_bits
            out[f"{prefix}_weight_t"] = np.ascontiguousarray(st.trained_part(trainer.weights[layer.name])).astype(
                np.int8).tobytes()
            frac = fraction_of(trainer.master[layer.name], F)
            out[f"{prefix}_frac"] = np.ascontiguousarray(st.trained_part(frac)).astype(frac_dtype(F)).tobytes()
    return out


def fnv1a(chunks: list[bytes]) -> int:
    h = 2166136261
    for chunk in chunks:
        for b in chunk:
            h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def compare(c: CTrainOutput, trainer: Trainer, x: np.ndarray, labels: np.ndarray, steps: int,
            records: list[str], param_order: list[str]) -> dict:
    """Run the reference for `steps` steps and require exact equality everywhere; returns a summary."""
    rec: dict = {}
    ref_losses = []
    for s in range(steps):
        k = s % len(x)
        ref_losses.append(trainer.step(x[k], labels[k], record=rec if s == 0 else None))
    if len(c.losses) != steps:
        raise MismatchError(f"the C ran {len(c.losses)} steps, expected {steps}")
    for s, (a, b) in enumerate(zip(c.losses, ref_losses, strict=True)):
        if a != b:
            raise MismatchError(f"loss of step {s + 1} differs: C {a} vs reference {b} (Q16)")
    n_grad_values = 0
    for rid, key in enumerate(records):
        kind, name = key.split(":", 1)
        if kind in ("grad", "gacc"):
            if rid not in c.grads:
                raise MismatchError(f"the C did not record {key}")
            e, g = c.grads[rid]
            ref = rec[key]
            if e != ref.e or not np.array_equal(g, ref.g.ravel()):
                bad = int(np.sum(g != ref.g.ravel())) if g.size == ref.g.size else g.size
                raise MismatchError(f"step-1 gradient {key} differs: {bad} values, exponent C {e} vs "
                                    f"reference {ref.e}")
            n_grad_values += g.size
        elif kind == "dw":
            got = c.dw.get(rid, {})
            d = rec[key].ravel()
            mask = trainer.trained[name].wmask.ravel()
            want = {int(i): int(d[i]) for i in np.flatnonzero(mask)}
            if got != want:
                diff = sum(1 for i in want if got.get(i) != want[i])
                raise MismatchError(f"step-1 weight gradient {key} differs in {diff} of {len(want)} elements")
            n_grad_values += len(want)
    ref_params = reference_params(trainer)
    for name in param_order:
        if c.params.get(name) != ref_params[name]:
            raise MismatchError(f"trained parameter {name} differs from the reference after {steps} steps")
    ref_sum = fnv1a([ref_params[n] for n in param_order])
    if c.checksum != ref_sum:
        raise MismatchError(f"parameter checksum differs: C {c.checksum:#010x} vs reference {ref_sum:#010x}")
    return {"steps": steps, "losses": ref_losses, "gradient_values": n_grad_values,
            "param_bytes": sum(len(ref_params[n]) for n in param_order), "checksum": ref_sum}
