"""`--dataset samples.npz`: the user's own samples drive the selection, are what the firmware embeds and what
`tinygen verify` trains on; a bad file is one `error:` sentence with exit status 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_digits

from tinygen.cli import main

N = 20


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """20 scikit-learn digits from the end of the set (not the bundled samples' start), 5 classes."""
    d = load_digits()
    path = tmp_path_factory.mktemp("data") / "mine.npz"
    np.savez(path, x=(d.images[-N:] / 16.0).astype(np.float32)[..., None], y=d.target[-N:] % 5)
    return path


def _build(tmp_path, *args):
    out = tmp_path / "b"
    r = CliRunner().invoke(main, ["build", "--board", "stm32f746", "--model", "digits-cnn", "--classes", "5",
                                  *args, "--out", str(out)])
    return r, out


def test_build_selects_embeds_and_verifies_on_the_dataset(digits_npz, tmp_path):
    r, out = _build(tmp_path, "--dataset", str(digits_npz), "--samples", "12")
    assert r.exit_code == 0, r.stderr
    assert f"on {N} samples of mine.npz" in r.stderr  # the selection saw the user's samples
    assert "firmware: 12 samples of mine.npz embedded (--samples 12)" in r.stdout
    d = load_digits()
    embedded = np.load(out / "firmware" / "samples.npz")
    assert np.array_equal(embedded["labels"], d.target[-N:][:12] % 5)
    manifest = json.loads((out / "tinygen.json").read_text())
    assert manifest["dataset"]["source"] == f"{N} samples of mine.npz"
    r = CliRunner().invoke(main, ["verify", str(out), "--steps", "24"])
    assert r.exit_code == 0, r.stderr
    assert f"on {N} samples of mine.npz" in r.stdout
    if not (shutil.which("qemu-system-arm") and (out / "firmware" / "build" / "tinygen-qemu.elf").is_file()):
        pytest.skip("the firmware part needs arm-none-eabi-gcc and qemu-system-arm (scripts/setup.sh)")
    r = CliRunner().invoke(main, ["sim", str(out)])
    assert r.exit_code == 0, r.stderr
    assert "12 of 12 samples (12 samples of mine.npz) bit-exact" in r.stdout


def _bad(tmp_path, name: str, **arrays) -> str:
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


BAD = {  # what is wrong -> (arrays, words of the one-sentence error)
    "no labels": (dict(x=np.zeros((3, 8, 8, 1), np.float32)), "no array y"),
    "wrong shape": (dict(x=np.zeros((3, 9, 9, 1), np.float32), y=np.zeros(3, np.int64)), "resize them"),
    "label past the classes": (dict(x=np.zeros((3, 8, 8, 1), np.float32), y=np.array([0, 1, 7])), "--classes"),
    "pixels past 1": (dict(x=np.full((3, 8, 8, 1), 16.0, np.float32), y=np.zeros(3, np.int64)), "[0, 1]"),
    "labels not integers": (dict(x=np.zeros((3, 8, 8, 1), np.float32), y=np.zeros(3)), "integer labels"),
    "objects (pickle)": (dict(x=np.array([object()] * 3), y=np.zeros(3, np.int64)), "plain arrays"),
}


@pytest.mark.parametrize("what", sorted(BAD))
def test_bad_dataset_is_one_sentence_and_exit_2(what, tmp_path):
    arrays, words = BAD[what]
    r, _ = _build(tmp_path, "--dataset", _bad(tmp_path, "bad.npz", **arrays), "--no-train")
    assert r.exit_code == 2, (what, r.output)
    err = r.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and words in err, (what, err)


def test_fresh_head_is_calibrated_on_the_dataset(digits_npz, tmp_path):
    """`--classes` with `--dataset`: the new head's logit range comes from the user's images (the PTQ calibration
    a fresh head needs), not the bundled ones."""
    from tinygen.frontends import modelfile
    from tinygen.frontends.inputs import load_dataset
    from tinygen.zoo.catalog import get_model, replace_head

    r, out = _build(tmp_path, "--dataset", str(digits_npz), "--no-train")
    assert r.exit_code == 0, r.stderr
    built = modelfile.load(out / "model" / "model.json").layers[-1].output
    want = replace_head(get_model("digits-cnn"), 5, load_dataset(digits_npz).images()).layers[-1].output
    bundled = get_model("digits-cnn", classes=5).layers[-1].output
    assert (built.scale, built.zero_point) == (want.scale, want.zero_point)
    assert (built.scale, built.zero_point) != (bundled.scale, bundled.zero_point)
