"""Names from a model file are data: they reach the generated C only as sanitised identifiers,
escaped strings or escaped comment text, and cannot change the compiled program."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from models_for_tests import small_model

from tinygen.cli import main
from tinygen.frontends import modelfile
from tinygen.ir.names import c_comment, c_ident, c_string, robot_arg

INJECT_STRING = 'x"\nstatic const int tg_injected_global = 1;\n#define TG_DUMMY "'
INJECT_COMMENT = "conv */ int tg_injected_comment = 2; /* x"
INJECT_NEWLINE = "fc\nint tg_injected_line = 3;"


def _code_only(c_text: str) -> str:
    """C source with comments, string and character literals removed (what the compiler compiles)."""
    return re.sub(r'/\*.*?\*/|//[^\n]*|"(\\.|[^"\\\n])*"|\'(\\.|[^\'\\\n])*\'', " ", c_text, flags=re.S)


def test_identifiers_are_plain_and_distinct():
    assert c_ident("conv1") == "conv1"
    names = ["a.b", "a_b", "A_b", "a/b", "1x", INJECT_STRING, INJECT_COMMENT]
    idents = [c_ident(n) for n in names]
    assert len(set(idents)) == len(names)
    assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", i) for i in idents)


def test_strings_and_comments_are_escaped():
    assert c_string('a"b\\c?\n') == r'"a\"b\\c\?\012"'
    assert "*/" not in c_comment("a */ b") and "\n" not in c_comment("a\nb")
    assert "/*" not in c_comment("a /* b") and "*/" not in c_comment("a **// b")
    assert robot_arg("a  b ${x} #1\\n ") == r"a${SPACE}${SPACE}b \x24{x} \x231\x5cn${SPACE}"
    assert "\n" not in robot_arg(INJECT_STRING) and robot_arg("é") == r"\xc3\xa9"  # UTF-8 bytes, as printed


@pytest.fixture()
def injected_model(tmp_path):
    model = small_model()
    model.name = INJECT_STRING
    path = modelfile.save(model, tmp_path / "m" / "evil.json")
    doc = json.loads(path.read_text())
    # rename a conv and the FC layer (and their output tensors) through the file, as an attacker would
    renames = {doc["layers"][0]["name"]: INJECT_COMMENT, doc["layers"][-1]["name"]: INJECT_NEWLINE}
    for layer in doc["layers"]:
        layer["name"] = renames.get(layer["name"], layer["name"])
        layer["inputs"] = [renames.get(t, t) for t in layer["inputs"]]
        layer["output"]["name"] = renames.get(layer["output"]["name"], layer["output"]["name"])
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("train", ["--train", "--no-train"])
def test_injection_names_build_and_verify_as_data(injected_model, tmp_path, train):
    out = tmp_path / "b"
    r = CliRunner().invoke(main, ["build", "--board", "stm32f746", "--model", str(injected_model), "--out", str(out),
                                  train, "--samples", "2", "--steps", "2"])
    assert r.exit_code == 0, r.stderr
    generated = [p for p in out.rglob("*") if p.suffix in (".c", ".h")]
    assert generated
    for p in generated:
        code = _code_only(p.read_text())
        for marker in ("tg_injected_global", "tg_injected_comment", "tg_injected_line", "TG_DUMMY"):
            assert not re.search(rf"\b{marker}\b", code), f"{p.name}: {marker} is live code"
    build_files = [q for q in out.rglob("*") if q.name in ("Makefile", "CMakeLists.txt")
                   or q.suffix in (".cmake", ".ld", ".repl", ".resc", ".robot")]
    assert build_files
    for p in build_files:  # no line of a name becomes a line of a build file
        assert "tg_injected_global = 1;\n" not in p.read_text(), p
    args = ["verify", str(out)] + (["--steps", "2"] if train == "--train" else [])
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.stderr


def test_unknown_key_is_refused_with_one_sentence(tmp_path):
    path = modelfile.save(small_model(), tmp_path / "m" / "small.json")
    doc = json.loads(path.read_text())
    doc["layers"][0]["filter_offset"] = -15
    path.write_text(json.dumps(doc))
    r = CliRunner().invoke(main, ["plan", "--board", "stm32f746", "--model", str(path), "--json"])
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'filter_offset'" in lines[0]


def test_overlong_name_is_refused(tmp_path):
    model = small_model()
    model.name = "m" * 200
    with pytest.raises(Exception, match="at most 128"):
        modelfile.load(modelfile.save(model, tmp_path / "m" / "long.json"))
