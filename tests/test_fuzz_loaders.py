"""Seeded fuzzing of every model loader, in-process: each mutant of a model file (JSON graph, npz
arrays) or of an MIT tiny-training pickle is either accepted as a valid model or refused with a
TinygenError — never another exception. Accepted mutants that differ from the original are built
and verified bit-exact like any model."""

from __future__ import annotations

import copy
import io
import json
import random
import time
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from models_for_tests import small_model

from tinygen.cli import main
from tinygen.errors import TinygenError
from tinygen.frontends import modelfile
from tinygen.frontends.mit_import import load_mit_model
from tinygen.paths import shared_dir

SEED = 20261204
N_JSON, N_NPZ, N_PKL = 700, 300, 80  # 1,080 mutants per run
EXTREMES = [0, -1, 1, 2**31, -(2**31) - 1, 2**63, 10**30, 1e308, -1e308, 1e-320, 0.5, "", "x", None, [], {}, True,
            [0], [1, 1], [-1, -1], [0, 0, 0, 0], [2**40, 1], "conv */ x", 'a"\nb']


def _outcome(load, path):
    """'ok' (a validated model), 'refused' (a TinygenError), or the unexpected exception."""
    try:
        load(path)
    except TinygenError as exc:
        assert str(exc) and "\n" not in str(exc).strip(), f"not one line: {exc!r}"
        return "refused"
    return "ok"


def _paths(doc, prefix=()):
    """Every (path, value) in a JSON document."""
    yield prefix, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


def _set(doc, path, value):
    node = doc
    for p in path[:-1]:
        node = node[p]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


_DELETE = object()


def _json_mutant(rng: random.Random, doc: dict, text: str) -> str:
    kind = rng.randrange(6)
    if kind == 0:  # truncation
        return text[: rng.randrange(len(text))]
    if kind == 1:  # byte flips
        b = bytearray(text.encode())
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return b.decode("utf-8", "replace")
    d = copy.deepcopy(doc)
    paths = [p for p, _ in _paths(d) if p]
    path = rng.choice(paths)
    if kind == 2:
        _set(d, path, rng.choice(EXTREMES))
    elif kind == 3:
        _set(d, path, _DELETE) if isinstance(path[-1], str) else _set(d, path, rng.choice(EXTREMES))
    elif kind == 4:  # a stray key
        node = d
        for p in path[:-1]:
            node = node[p]
        if isinstance(node, dict):
            node[rng.choice(["extra", "filter_offset", "name2"])] = 1
    else:  # reorder, duplicate or drop layers
        layers = d["layers"]
        op = rng.randrange(3)
        if op == 0:
            rng.shuffle(layers)
        elif op == 1:
            layers.insert(rng.randrange(len(layers) + 1), copy.deepcopy(rng.choice(layers)))
        else:
            layers.pop(rng.randrange(len(layers)))
    return json.dumps(d)


def _npz_mutant(rng: random.Random, arrays: dict, raw: bytes) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return raw[: rng.randrange(len(raw))]
    if kind == 1:
        b = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    a = dict(arrays)
    key = rng.choice(sorted(a))
    if kind == 2:  # wrong dtype, byte order or shape
        v = a[key]
        a[key] = rng.choice([v.astype(np.float64), v.astype(v.dtype.newbyteorder(">")), v.reshape(-1)[:-1] if v.size > 1
                             else v, np.zeros((2,) + v.shape, v.dtype), v.astype(np.int64)])
    elif kind == 3:
        del a[key]
    buf = io.BytesIO()
    np.savez(buf, **a)
    out = buf.getvalue()
    if kind == 4:  # a header declaring a huge array
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<i4", "fortran_order": False, "shape": (1 << 30, 4)})
        zbuf = io.BytesIO(out)
        with zipfile.ZipFile(zbuf, "a") as zf:
            zf.writestr(f"{key}.npy", header.getvalue() + b"\0" * 64)
        out = zbuf.getvalue()
    return out


def _pkl_mutant(rng: random.Random, payload: bytes) -> bytes:
    b = bytearray(payload)
    kind = rng.randrange(3)
    if kind == 0:
        b = b[: rng.randrange(len(b))]
    elif kind == 1:
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    else:  # tamper with an opcode near the start (protocol, globals, memo)
        i = rng.randrange(min(len(b), 512))
        b[i] = rng.choice(b"cGRbs.(}]q")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("archive/data.pkl", bytes(b))
        zf.writestr("archive/version", "3\n")
    return out.getvalue()


@pytest.mark.filterwarnings("ignore:Duplicate name")  # the huge-header mutant adds a second member
def test_model_file_and_npz_mutants(tmp_path):
    rng = random.Random(SEED)
    base = modelfile.save(small_model(), tmp_path / "base" / "m.json")
    doc, text = json.loads(base.read_text()), base.read_text()
    arrays = dict(np.load(base.with_suffix(".npz")))
    raw_npz = base.with_suffix(".npz").read_bytes()
    path = tmp_path / "mut" / "m.json"
    path.parent.mkdir()
    counts = {"ok": 0, "refused": 0}
    accepted = []
    t0 = time.perf_counter()
    for i in range(N_JSON + N_NPZ):
        if i < N_JSON:
            mutant = _json_mutant(rng, doc, text)
            path.write_text(mutant)
            path.with_suffix(".npz").write_bytes(raw_npz)
        else:
            path.write_text(text)
            path.with_suffix(".npz").write_bytes(_npz_mutant(rng, arrays, raw_npz))
        outcome = _outcome(modelfile.load, path)
        counts[outcome] += 1
        if outcome == "ok" and i < N_JSON and mutant != text and len(accepted) < 2:
            keep = tmp_path / f"accepted{len(accepted)}"
            keep.mkdir()
            (keep / "m.json").write_text(mutant)
            (keep / "m.npz").write_bytes(raw_npz)
            accepted.append(keep / "m.json")
    assert counts["refused"] > 0 and sum(counts.values()) == N_JSON + N_NPZ
    assert time.perf_counter() - t0 < 120
    for m in accepted:  # an accepted mutant is a model like any other: it builds and verifies bit-exact
        out = m.parent / "b"
        r = CliRunner().invoke(main, ["build", "--board", "stm32f746", "--model", str(m), "--no-train", "--out",
                                      str(out)])
        assert r.exit_code == 0, r.stderr
        r = CliRunner().invoke(main, ["verify", str(out)])
        assert r.exit_code == 0, r.stderr


def test_mit_pickle_mutants(tmp_path):
    root = shared_dir()
    if root is None or not (root / "models/mit-tiny-training/mbv2-w0.35.pkl").is_file():
        pytest.skip("../shared/models/mit-tiny-training is not present")
    with zipfile.ZipFile(root / "models/mit-tiny-training/mbv2-w0.35.pkl") as zf:
        payload = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    rng = random.Random(SEED + 1)
    path = tmp_path / "m.pkl"
    counts = {"ok": 0, "refused": 0}
    for _ in range(N_PKL):
        path.write_bytes(_pkl_mutant(rng, payload))
        counts[_outcome(lambda p: load_mit_model(p), path)] += 1
    assert counts["refused"] > 0 and sum(counts.values()) == N_PKL
