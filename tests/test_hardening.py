"""Malformed model files give one ModelError sentence, fast, without allocating what they declare."""

from __future__ import annotations

import io
import json
import resource
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from models_for_tests import small_model

from tinygen.cli import main
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
    with pytest.raises(ModelError, match="more than 4,300 digits"):
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
    tracemalloc.start()  # NumPy reports its array buffers to tracemalloc, so the peak counts any array read
    t0 = time.perf_counter()
    try:
        with pytest.raises(ModelError, match="MiB"):
            modelfile.load(path)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < 1.0  # the resource bound issue 14 asks for
    assert peak < 100 << 20, peak
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


def _cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def _one_error(code, err, *words):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize("args, words", [
    (["--budget-kb", "nan"], ["--budget-kb", "finite"]),
    (["--budget-kb", "inf"], ["--budget-kb"]),
    (["--lr", "nan"], ["--lr", "finite"]),
    (["--steps", "4294967297"], ["--steps"]),
    (["--momentum", "1"], ["--momentum"]),
    (["--bogus"], ["--bogus", "--help"]),
])
def test_cli_misuse_is_one_sentence(tmp_path, args, words):
    code, _, err = _cli("build", "--board", "stm32f746", "--model", "digits-cnn", "--out", tmp_path / "b", *args)
    _one_error(code, err, *words)


def test_out_that_is_a_file_fails_before_the_slow_steps(tmp_path):
    (tmp_path / "f").write_text("x")
    code, out, err = _cli("build", "--board", "stm32f746", "--model", "digits-cnn", "--out", tmp_path / "f")
    _one_error(code, err, "is a file")
    assert "update scheme" not in out


def test_plan_svg_into_a_missing_folder_and_no_stray_svg(tmp_path, monkeypatch):
    code, _, err = _cli("plan", "--board", "stm32f746", "--model", "digits-cnn", "--svg", tmp_path / "no" / "t.svg")
    _one_error(code, err, "does not exist")
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli("plan", "--board", "stm32f746", "--model", "digits-cnn", "--update", "last-1", "--json")
    assert code == 0, err
    assert list(tmp_path.iterdir()) == [], "plan wrote into the working directory"


def test_rebuild_removes_the_previous_builds_files(tmp_path):
    out = tmp_path / "b"
    code, _, err = _cli("build", "--board", "stm32f746", "--model", "digits-cnn", "--update", "last-1", "--out", out)
    assert code == 0, err
    stale = out / "src" / "stale.c"
    stale.write_text("int stale;\n")
    code, _, err = _cli("build", "--board", "stm32f746", "--model", "digits-cnn", "--no-train", "--out", out)
    assert code == 0, err
    assert not stale.exists() and (out / "src" / "tg_model.c").is_file()


def test_numpy_scalars_read_as_numbers_in_messages():
    import numpy as np

    from tinygen.errors import ModelError

    msg = str(ModelError(f"stride {np.int64(0)!r}, scale {np.float32(0.5)!r}, flag {np.bool_(True)!r}, "
                         f"shape {[np.int64(3), np.int64(4)]}"))
    assert msg == "stride 0, scale 0.5, flag True, shape [3, 4]"
