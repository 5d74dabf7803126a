"""The command line: happy path and every kind of bad input (one sentence, non-zero exit)."""

from __future__ import annotations

import io
import json
import pickle
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from models_for_tests import small_model

from tinygen.cli import main
from tinygen.frontends import modelfile


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def assert_one_sentence_error(code, out, err, *words):
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture()
def model_file(tmp_path):
    return modelfile.save(small_model(), tmp_path / "m" / "small.json")


def test_boards_lists_the_three_boards():
    code, out, _ = run("boards")
    assert code == 0
    for name in ("stm32f746", "nrf52840", "stm32h743"):
        assert name in out
    assert "320 KB" in out and "256 KB" in out


def test_build_and_verify_a_model_file(model_file, tmp_path):
    code, out, err = run("build", "--board", "nrf52840", "--model", model_file, "--out", tmp_path / "b")
    assert code == 0, err
    manifest = json.loads((tmp_path / "b" / "tinygen.json").read_text())
    assert manifest["board"] == "nrf52840" and manifest["output_shape"] == [10]
    code, out, err = run("verify", tmp_path / "b")
    assert code == 0, err
    assert "bit-exact" in out


def test_verify_catches_a_changed_weight(model_file, tmp_path):
    assert run("build", "--board", "stm32f746", "--model", model_file, "--out", tmp_path / "b")[0] == 0
    src = tmp_path / "b" / "src" / "tg_weights.c"
    text = src.read_text()
    marker = "tg_l9_fc_bias[10] = {\n    "
    i = text.index(marker) + len(marker)
    j = text.index(",", i)
    src.write_text(text[:i] + str(int(text[i:j]) + 3000) + text[j:])
    code, out, err = run("verify", tmp_path / "b")
    assert_one_sentence_error(code, out, err, "differ from the reference")
    assert code == 1


def test_unknown_board(model_file, tmp_path):
    assert_one_sentence_error(*run("build", "--board", "esp32", "--model", model_file, "--out", tmp_path / "b"),
                              "unknown board 'esp32'", "stm32f746")


def test_unknown_model_name(tmp_path):
    assert_one_sentence_error(*run("build", "--board", "stm32f746", "--model", "resnet-999", "--out", tmp_path / "b"),
                              "resnet-999")


def test_truncated_model_json(model_file, tmp_path):
    model_file.write_text(model_file.read_text()[:200])
    assert_one_sentence_error(*run("build", "--board", "stm32f746", "--model", model_file, "--out", tmp_path / "b"),
                              "not valid JSON")


def test_truncated_npz(model_file, tmp_path):
    npz = model_file.with_suffix(".npz")
    npz.write_bytes(npz.read_bytes()[:300])
    assert_one_sentence_error(*run("build", "--board", "stm32f746", "--model", model_file, "--out", tmp_path / "b"),
                              "npz")


def test_tampered_weight_dtype(model_file, tmp_path):
    arrays = dict(np.load(model_file.with_suffix(".npz")))
    arrays["stem.weight"] = arrays["stem.weight"].astype(np.int16)
    np.savez(model_file.with_suffix(".npz"), **arrays)
    assert_one_sentence_error(*run("build", "--board", "stm32f746", "--model", model_file, "--out", tmp_path / "b"),
                              "stem", "int8")


def test_tampered_shape_in_json(model_file, tmp_path):
    doc = json.loads(model_file.read_text())
    doc["layers"][0]["output"]["shape"] = [9, 9, 8]
    model_file.write_text(json.dumps(doc))
    assert_one_sentence_error(*run("build", "--board", "stm32f746", "--model", model_file, "--out", tmp_path / "b"),
                              "stem", "output shape")


def test_unsupported_op(model_file, tmp_path):
    doc = json.loads(model_file.read_text())
    doc["layers"][3]["op"] = "lstm"
    model_file.write_text(json.dumps(doc))
    assert_one_sentence_error(*run("build", "--board", "stm32f746", "--model", model_file, "--out", tmp_path / "b"),
                              "unsupported op 'lstm'")


def test_pickle_with_foreign_class_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"first_conv": Evil()}))
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(buf.getvalue())
    assert_one_sentence_error(*run("build", "--board", "stm32f746", "--model", evil, "--out", tmp_path / "b"),
                              "system")
    assert not marker.exists()


def test_verify_on_a_non_build_dir(tmp_path):
    assert_one_sentence_error(*run("verify", tmp_path), "not a tinygen build directory")


def test_classes_on_a_model_file_gives_it_a_fresh_head(model_file, tmp_path):
    code, out, err = run("build", "--board", "stm32f746", "--model", model_file, "--classes", "5", "--no-train",
                         "--out", tmp_path / "b")
    assert code == 0, err
    built = json.loads((tmp_path / "b" / "tinygen.json").read_text())
    assert built["output_shape"] == [5]


def test_editing_the_built_scheme_is_one_sentence(tmp_path):
    """verify reruns the reference on model/; an edit after the build is named, not reported as a C mismatch."""
    build = tmp_path / "b"
    code, _, err = run("build", "--board", "stm32f746", "--model", "digits-cnn", "--classes", "5", "--out", build)
    assert code == 0, err
    scheme = build / "model" / "scheme.json"
    doc = json.loads(scheme.read_text())
    doc["layers"][0]["channels"] = doc["layers"][0]["channels"][:1]
    scheme.write_text(json.dumps(doc))
    for cmd in (("verify", build, "--steps", "2"), ("sim", build)):
        assert_one_sentence_error(*run(*cmd), "scheme.json has changed since the build", "rebuild")
