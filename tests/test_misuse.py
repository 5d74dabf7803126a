"""Every misuse issue 14 lists: one `error:` sentence on stderr, nothing else, and the exit status that README's
misuse table gives. The table in README.md ("Misuse") is the one place the messages are written; this test runs
each row and holds the command's real output to it (temporary paths read `DIR`)."""

from __future__ import annotations

import errno
import io
import json
import pathlib
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from models_for_tests import small_model
from readme_tables import table_rows

from tinygen.cli import main
from tinygen.frontends import modelfile

BUILD = ["build", "--board", "stm32f746"]


def readme_rows() -> dict[str, tuple[str, int]]:
    """README's misuse table: {misuse: (stderr, exit status)}."""
    rows = {}
    for cells in table_rows("Misuse"):
        if len(cells) == 4 and cells[3].isdigit():
            message = re.fullmatch(r"``\s?(.*?)\s?``|`(.*)`", cells[2])
            rows[cells[0]] = (message.group(1) or message.group(2), int(cells[3]))
    return rows


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A training build of digits-cnn (last layer, 2 firmware steps) that rows damage copies of."""
    out = tmp_path_factory.mktemp("misuse") / "built"
    r = CliRunner().invoke(main, [*BUILD, "--model", "digits-cnn", "--update", "last-1", "--steps", "2",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    return out


def _model(tmp, edit=None, text=None) -> Path:
    path = modelfile.save(small_model(), tmp / "m" / "small.json")
    doc = json.loads(path.read_text())
    if edit is not None:
        edit(doc)
    path.write_text(text if text is not None else json.dumps(doc))
    return path


def _pool_stride(value):
    def edit(doc):
        next(ly for ly in doc["layers"] if ly["op"] in ("avgpool", "maxpool"))["stride"] = value
    return edit


def _huge_integer(tmp) -> Path:
    path = _model(tmp)
    path.write_text(path.read_text().replace('"version": 1', '"version": ' + "9" * 5000))
    return path


def _npz_4gib(tmp) -> Path:
    path = _model(tmp)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|i1", "fortran_order": False, "shape": (1 << 32,)})
    with zipfile.ZipFile(path.with_suffix(".npz"), "a") as zf:
        zf.writestr("huge.npy", header.getvalue() + b"\0" * (4 << 20))
    return path


def _copy(built, tmp) -> Path:
    dst = tmp / "b"
    shutil.copytree(built, dst)
    return dst


def _truncate_elf(built, tmp) -> Path:
    b = _copy(built, tmp)
    elf = b / "firmware" / "build" / "tinygen-qemu.elf"
    elf.parent.mkdir(parents=True, exist_ok=True)
    data = elf.read_bytes() if elf.is_file() else b"\x7fELF" + b"\0" * 60
    elf.write_bytes(data[:40])
    return b


def _edit_scheme(built, tmp) -> Path:
    b = _copy(built, tmp)
    scheme = b / "model" / "scheme.json"
    doc = json.loads(scheme.read_text())
    doc["layers"][0]["bias"] = not doc["layers"][0].get("bias", True)
    scheme.write_text(json.dumps(doc))
    return b


def _used_folder(tmp) -> Path:
    (tmp / "used").mkdir()
    (tmp / "used" / "notes.txt").write_text("mine")
    return tmp / "used"


def _read_only(monkeypatch, tmp):
    ro = tmp / "ro"
    real = pathlib.Path.mkdir

    def mkdir(self, *a, **k):  # a read-only mount, whoever runs the test (root ignores chmod)
        if str(self).startswith(str(ro)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    return ro / "b"


# misuse (README's first column) -> argv, built from (tmp_path, the module's build, monkeypatch)
CASES = {
    "pool stride 0": lambda t, b, mp: [*BUILD, "--model", _model(t, _pool_stride([0, 0])), "--out", t / "o"],
    "pool stride -1": lambda t, b, mp: [*BUILD, "--model", _model(t, _pool_stride([-1, -1])), "--out", t / "o"],
    "an integer of 5,000 digits in model.json": lambda t, b, mp: [*BUILD, "--model", _huge_integer(t),
                                                                   "--out", t / "o"],
    "100,000 nested `[` in model.json": lambda t, b, mp: [*BUILD, "--model", _model(t, text="[" * 100_000),
                                                          "--out", t / "o"],
    "an npz declaring a 4 GiB array": lambda t, b, mp: [*BUILD, "--model", _npz_4gib(t), "--out", t / "o"],
    "`--out` on a read-only filesystem": lambda t, b, mp: [*BUILD, "--model", "digits-cnn",
                                                           "--out", _read_only(mp, t)],
    "`--out` inside a special file": lambda t, b, mp: [*BUILD, "--model", "digits-cnn", "--out", "/dev/null/b"],
    "`--out` a special file": lambda t, b, mp: [*BUILD, "--model", "digits-cnn", "--out", "/dev/null"],
    "`--out` a folder holding other files": lambda t, b, mp: [*BUILD, "--model", "digits-cnn",
                                                               "--out", _used_folder(t)],
    "`--budget-kb inf`": lambda t, b, mp: [*BUILD, "--model", "digits-cnn", "--budget-kb", "inf", "--out", t / "o"],
    "`--budget-kb nan`": lambda t, b, mp: [*BUILD, "--model", "digits-cnn", "--budget-kb", "nan", "--out", t / "o"],
    "`plan --svg` into a missing folder": lambda t, b, mp: ["plan", "--board", "stm32f746", "--model", "digits-cnn",
                                                            "--svg", t / "missing" / "t.svg"],
    "`build --steps 4294967297`": lambda t, b, mp: [*BUILD, "--model", "digits-cnn", "--steps", "4294967297",
                                                    "--out", t / "o"],
    "`verify --steps 4294967297`": lambda t, b, mp: ["verify", b, "--steps", "4294967297"],
    "a truncated firmware ELF": lambda t, b, mp: ["sim", _truncate_elf(b, t)],
    "`model/scheme.json` edited after the build": lambda t, b, mp: ["verify", _edit_scheme(b, t), "--steps", "2"],
    "`--checkpoint-every` without training": lambda t, b, mp: [*BUILD, "--model", "digits-cnn", "--no-train",
                                                                "--checkpoint-every", "5", "--out", t / "o"],
    "an unknown option": lambda t, b, mp: [*BUILD, "--model", "digits-cnn", "--out", t / "o", "--bogus"],
    "a missing option": lambda t, b, mp: ["build", "--model", "digits-cnn", "--out", t / "o"],
    "a value not among the choices": lambda t, b, mp: ["sim", b, "--emulator", "bochs"],
    "a missing argument": lambda t, b, mp: ["verify"],
    "an unknown command": lambda t, b, mp: ["simulate"],
}


def test_every_misuse_has_a_readme_row():
    assert set(CASES) == set(readme_rows())


@pytest.mark.parametrize("misuse", list(CASES))
def test_misuse_is_one_sentence(misuse, built, tmp_path, monkeypatch):
    argv = [str(a) for a in CASES[misuse](tmp_path, built, monkeypatch)]
    r = CliRunner().invoke(main, argv, prog_name="tinygen")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    got = "\n".join(lines).replace(str(tmp_path), "DIR").replace(str(built), "BUILT")
    got = re.sub(r"(?<=/)\.tinygen-[^/ ]+", "...", got)
    want, code = readme_rows()[misuse]
    assert (got, r.exit_code) == (want, code), f"{misuse}: {argv}"
    assert len(lines) == 1 and lines[0].startswith("error: ") and r.stdout == "", r.stdout
