"""Malformed model files give one ModelError sentence, fast, without allocating what they declare."""

from __future__ import annotations

import io
import json
import resource
import time
import zipfile

import numpy as np
import pytest
from models_for_tests import small_model

from tinygen.errors import ModelError
from tinygen.frontends import modelfile


@pytest.fixture()
def saved(tmp_path):
    path = modelfile.save(small_model(), tmp_path / "m" / "small.json")
    return path, json.loads(path.read_text())


def _pool(doc):
    return next(layer for layer in doc["layers"] if layer["op"] in ("avgpool", "maxpool"))


@pytest.mark.parametrize("stride", [[0, 0], [-1, -1], [1 << 40, 1]])
def test_pool_stride_out_of_range(saved, stride):
    path, doc = saved
    _pool(doc)["stride"] = stride
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="stride"):
        modelfile.load(path)


def test_huge_integer_and_deep_nesting(saved):
    path, doc = saved
    text = json.dumps(doc)
    path.write_text(text.replace('"version": 1', '"version": ' + "9" * 5000))
    with pytest.raises(ModelError, match="not valid JSON"):
        modelfile.load(path)
    path.write_text("[" * 100_000)
    with pytest.raises(ModelError):
        modelfile.load(path)


def test_npz_declaring_4_gib_is_refused_quickly(saved):
    path, doc = saved
    npz = path.with_suffix(".npz")
    name = doc["layers"][0]["weight"]
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|i1", "fortran_order": False, "shape": (1 << 32,)})
    with zipfile.ZipFile(npz, "a") as zf:
        zf.writestr(name + "x.npy", header.getvalue() + b"\0" * (4 << 20))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match="MiB"):
        modelfile.load(path)
    assert time.perf_counter() - t0 < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB on Linux


def test_big_endian_arrays_are_read_like_the_pkl_loader_reads_them(saved, tmp_path):
    path, doc = saved
    npz = path.with_suffix(".npz")
    arrays = dict(np.load(npz))
    swapped = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in arrays.items()}
    np.savez(npz, **swapped)
    model = modelfile.load(path)
    ref = small_model()
    for a, b in zip(model.layers, ref.layers, strict=True):
        for key, arr in b.params().items():
            assert np.array_equal(a.params()[key], arr) and a.params()[key].dtype == arr.dtype
