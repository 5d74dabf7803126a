"""tinygen.frontends.mit_import: the tiny-training int8 models, and the safe loader's refusals."""

from __future__ import annotations

import collections
import copy
import json
import os
import pickle
import pickletools
import re
import zipfile

import numpy as np
import pytest

from tinygen import paths
from tinygen.errors import ModelError
from tinygen.frontends.mit_import import (
    MIT_MODELS,
    conv_index_to_layer,
    find_mit_file,
    load_mit_model,
    load_mit_pickle,
)
from tinygen.ir import model as ir
from tinygen.reference.forward import run_model
from tinygen.zoo.catalog import HEAD_HEADROOM, get_model, replace_head
from tinygen.zoo.resolve import resolve_model

# name -> (layers, params, MACs, convs) with 1000 classes; params and MACs with 10 classes
EXPECTED = {
    "mbv2-w0.35": (63, 357448, 16787584, 51, 245578, 16676704),
    "proxyless-w0.3": (75, 423232, 18759936, 60, 327202, 18664896),
    "mcunet-5fps": (51, 630224, 22650368, 42, 470834, 22491968),
}
SCHEME_KEY = {"mbv2-w0.35": "mbv2", "proxyless-w0.3": "proxyless", "mcunet-5fps": "mcunet"}


def _mit_dir():
    shared = paths.shared_dir()
    if shared is None:
        pytest.skip("tinygen.paths.shared_dir() found no ../shared directory (set TINYGEN_SHARED)")
    return shared / "models/mit-tiny-training"


def _model_path(name):
    path = _mit_dir() / MIT_MODELS[name]
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    return path


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name, classes=None):
        if (name, classes) not in cache:
            m = load_mit_model(_model_path(name))
            cache[name, classes] = m if classes is None else replace_head(m, classes)
        return cache[name, classes]

    return get


@pytest.fixture(scope="module")
def mbv2_doc():
    return load_mit_pickle(_model_path("mbv2-w0.35"))


def _one_line_error(fn, path, *words):
    with pytest.raises(ModelError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return msg


def _write_zip(path, payload: bytes, member="archive/data.pkl"):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, payload)
        zf.writestr("archive/version", "3\n")
    return path


# ---------------------------------------------------------------------------
# The three real models


@pytest.mark.parametrize("name", list(MIT_MODELS))
def test_real_model_structure(models, name):
    m = models(name)
    n_layers, params, macs, n_convs, _, _ = EXPECTED[name]
    assert m.input.shape == (128, 128, 3)
    assert m.input.scale == pytest.approx(1 / 127.5) and m.input.zero_point == 0
    assert len(m.layers) == n_layers
    assert m.param_count() == params
    assert m.macs() == macs
    assert m.output.shape == (1000,)
    names = [layer.name for layer in m.layers]
    assert all(re.fullmatch(r"first_conv|b\d+_(pw1|dw|pw2|add)|feature_mix|gap|classifier", n) for n in names)
    assert names[0] == "first_conv" and names[-2:] == ["gap", "classifier"]
    assert isinstance(m.layer("gap"), ir.AvgPool) and isinstance(m.layer("classifier"), ir.FullyConnected)

    convs = conv_index_to_layer(m)
    assert len(convs) == n_convs and convs[0] == "first_conv" and "classifier" not in convs
    assert all(isinstance(m.layer(c), ir.Conv2D) for c in convs)
    assert convs[1:3] == ["b0_dw", "b0_pw2"] and convs[3:6] == ["b1_pw1", "b1_dw", "b1_pw2"]
    schemes = json.loads((_mit_dir() / "sparse_schemes.json").read_text())[SCHEME_KEY[name]]
    for scheme in schemes.values():
        idx = scheme["manual_weight_idx"]
        assert max(idx) < len(convs) and len(scheme["weight_update_ratio"]) == len(idx)
        assert scheme["n_bias_update"] <= len(convs)


@pytest.mark.parametrize("name", list(MIT_MODELS))
def test_real_model_matches_file(models, name):
    """Weights transposed to OHWI, padding k//2, residual quantization from the file."""
    m = models(name)
    doc = load_mit_pickle(_model_path(name))
    entries = [doc["first_conv"]] + [blk[k] for blk in doc["blocks"]
                                     for k in ("pointwise1", "depthwise", "pointwise2") if blk[k] is not None]
    for lname, d in zip(conv_index_to_layer(m), entries, strict=True):
        layer, p = m.layer(lname), d["params"]
        k = d["kernel_size"][0]
        assert layer.padding == (k // 2,) * 4 and layer.stride == (d["stride"],) * 2
        assert layer.output.scale == p["y_scale"] and layer.output.zero_point == p["y_zero"]
        assert (layer.act_min, layer.act_max) == (-128, 127)  # act is None everywhere; ReLU6 is in the quantization
        same = layer.w_scales == p["w_scales"]
        w = p["weight"].transpose(0, 2, 3, 1)
        assert np.array_equal(layer.weight[same], w[same]) and np.array_equal(layer.bias[same], p["bias"][same])
        # degenerate channels (bias at the int32 limit) are rescaled: the real-valued bias is kept
        real_new = layer.bias[~same].astype(np.float64) * layer.w_scales[~same]
        real_old = p["bias"][~same].astype(np.float64) * p["w_scales"][~same]
        np.testing.assert_allclose(real_new, real_old, rtol=1e-8)
    for i, blk in enumerate(doc["blocks"]):
        if blk["residual"] is None:
            continue
        add = m.layer(f"b{i}_add")
        rp = blk["residual"]["params"]
        assert isinstance(add, ir.Add)
        assert add.output.scale == rp["y_scale"] and add.output.zero_point == rp["y_zero"]
        skip = m.tensors()[add.inputs[1]]
        assert (skip.scale, skip.zero_point) == (rp["x_scale"], rp["x_zero"])
    assert all(blk["se"] is None for blk in doc["blocks"]) and doc["feature_mix"] is None


@pytest.mark.parametrize("name", list(MIT_MODELS))
def test_real_model_forward_and_new_head(models, name):
    _, _, _, n_convs, params10, macs10 = EXPECTED[name]
    x = np.random.default_rng(0).integers(-128, 128, size=(128, 128, 3)).astype(np.int8)
    y = run_model(models(name), x)
    assert y.dtype == np.int8 and y.shape == (1000,)

    m10 = models(name, 10)
    assert m10.output.shape == (10,) and m10.param_count() == params10 and m10.macs() == macs10
    assert len(conv_index_to_layer(m10)) == n_convs
    y10 = run_model(m10, x)
    assert y10.dtype == np.int8 and y10.shape == (10,)
    head = m10.layer("classifier")
    assert np.all(head.bias == 0)
    # the one head function's headroom: weights start HEAD_HEADROOM below the int8 limit, so they can grow
    assert np.abs(head.weight.astype(int)).max() <= round(127 / HEAD_HEADROOM)
    # deterministic, and the same head whichever way the model is named (zoo name or .pkl path)
    for again in (get_model(name, classes=10), resolve_model(str(_model_path(name)), classes=10)):
        h = again.layer("classifier")
        assert np.array_equal(h.weight, head.weight) and np.array_equal(h.w_scales, head.w_scales)
        assert (h.output.scale, h.output.zero_point) == (head.output.scale, head.output.zero_point)


@pytest.mark.parametrize("name", list(MIT_MODELS))
def test_real_pickle_uses_only_array_globals(name):
    """What the allow-list is based on: four globals, no persistent ids, no storages."""
    with zipfile.ZipFile(_model_path(name)) as zf:
        assert not [n for n in zf.namelist() if "/data/" in n]
        data = zf.read("archive/data.pkl")
    globals_ = set()
    for op, arg, _ in pickletools.genops(data):
        assert op.name not in ("PERSID", "BINPERSID", "STACK_GLOBAL", "INST", "OBJ", "NEWOBJ", "EXT1")
        if op.name == "GLOBAL":
            globals_.add(arg)
    assert globals_ == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype", "_codecs encode"}


def test_classes_argument_checked():
    with pytest.raises(ModelError, match="positive integer"):
        resolve_model("mcunet-5fps", classes=0)


# ---------------------------------------------------------------------------
# Zoo lookup


def test_find_mit_file(monkeypatch, tmp_path):
    if paths.shared_dir() is not None and (paths.shared_dir() / "models/mit-tiny-training/mbv2-w0.35.pkl").is_file():
        assert find_mit_file("mbv2-w0.35").name == "mbv2-w0.35.pkl"
    monkeypatch.setattr(paths, "shared_dir", lambda: None)
    with pytest.raises(ModelError) as info:
        find_mit_file("mbv2-w0.35")
    assert str(info.value) == ("model 'mbv2-w0.35' needs ../shared/models/mit-tiny-training/mbv2-w0.35.pkl, "
                               "which is not present; pass --model path/to/mbv2-w0.35.pkl")
    monkeypatch.setattr(paths, "shared_dir", lambda: tmp_path)
    with pytest.raises(ModelError, match=r"needs .*mcunet-5fps\.pkl, which is not present; pass --model"):
        find_mit_file("mcunet-5fps")
    with pytest.raises(ModelError, match="unknown MIT model 'resnet'"):
        find_mit_file("resnet")


# ---------------------------------------------------------------------------
# The loader refuses code and malformed files


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    path = _write_zip(tmp_path / "evil.pkl", pickle.dumps({"first_conv": _Evil(marker)}, protocol=2))
    msg = _one_line_error(lambda: load_mit_model(path), path, "refusing to load", "system", "not a NumPy array")
    assert os.system.__module__ in msg  # 'posix' on Linux: the name pickle records
    assert not marker.exists()


def test_refuses_hand_written_global(tmp_path):
    marker = tmp_path / "pwned"
    cmd = f"touch {marker}".encode()
    payload = b"\x80\x02cos\nsystem\nq\x00X" + len(cmd).to_bytes(4, "little") + cmd + b"\x85R."
    path = _write_zip(tmp_path / "evil2.pkl", payload)
    _one_line_error(lambda: load_mit_pickle(path), path, "refusing to load: the pickle references os.system")
    # protocol-4 STACK_GLOBAL goes through the same find_class
    payload4 = (b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x0b__import__()\x85R.")
    path4 = _write_zip(tmp_path / "evil4.pkl", payload4)
    _one_line_error(lambda: load_mit_pickle(path4), path4, "builtins.eval")
    assert not marker.exists()


def test_refuses_other_classes(tmp_path):
    path = _write_zip(tmp_path / "od.pkl", pickle.dumps(collections.OrderedDict(a=1), protocol=2))
    _one_line_error(lambda: load_mit_model(path), path, "collections.OrderedDict", "refusing to load")
    scalar = _write_zip(tmp_path / "scalar.pkl", pickle.dumps({"a": np.float64(1.0)}, protocol=2))
    _one_line_error(lambda: load_mit_pickle(scalar), scalar, "multiarray.scalar")
    obj = _write_zip(tmp_path / "obj.pkl", pickle.dumps({"a": np.array([1, "x"], dtype=object)}, protocol=2))
    _one_line_error(lambda: load_mit_pickle(obj), obj, "dtype")
    codec = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00base64\x86R."
    cpath = _write_zip(tmp_path / "codec.pkl", codec)
    _one_line_error(lambda: load_mit_pickle(cpath), cpath, "latin1")
    # numpy.ndarray is not callable from the pickle, only an argument of _reconstruct
    nd = b"\x80\x02cnumpy\nndarray\nK\x05\x85\x85R."
    npath = _write_zip(tmp_path / "nd.pkl", nd)
    _one_line_error(lambda: load_mit_pickle(npath), npath, "corrupt")


def test_refuses_persistent_id(tmp_path):
    path = _write_zip(tmp_path / "storage.pkl", b"\x80\x02X\x01\x00\x00\x000Q.")
    _one_line_error(lambda: load_mit_model(path), path, "torch storage")


def test_truncated_real_file(tmp_path):
    data = _model_path("mbv2-w0.35").read_bytes()
    path = tmp_path / "half.pkl"
    path.write_bytes(data[: len(data) // 2])
    _one_line_error(lambda: load_mit_model(path), path, "not a readable torch.save zip container", "truncated")


def test_not_a_zip_and_missing(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"first_conv": None}, protocol=2))  # legacy, non-zip torch.save style
    _one_line_error(lambda: load_mit_model(path), path, "not a readable torch.save zip container")
    _one_line_error(lambda: load_mit_model(tmp_path / "nope.pkl"), tmp_path / "nope.pkl", "does not exist")


def test_zip_without_data_pkl(tmp_path):
    path = _write_zip(tmp_path / "nodata.pkl", b"\x80\x02}.", member="archive/other.pkl")
    _one_line_error(lambda: load_mit_model(path), path, "data.pkl")
    garbage = _write_zip(tmp_path / "garbage.pkl", b"\x80\x02}q\x00(X\x01")
    _one_line_error(lambda: load_mit_model(garbage), garbage, "corrupt")


def _tampered(tmp_path, doc, edit, fname="tampered.pkl"):
    doc = copy.deepcopy(doc)
    new = edit(doc)  # edits mutate in place, or return a replacement document
    doc = doc if new is None else new
    return _write_zip(tmp_path / fname, pickle.dumps(doc, protocol=2))


def _set(path_keys, value):
    def edit(doc):
        d = doc
        for k in path_keys[:-1]:
            d = d[k]
        d[path_keys[-1]] = value
    return edit


def _pop(path_keys):
    def edit(doc):
        d = doc
        for k in path_keys[:-1]:
            d = d[k]
        del d[path_keys[-1]]
    return edit


@pytest.mark.parametrize("edit, words", [
    (_pop(["blocks"]), ["has no 'blocks' entry"]),
    (lambda d: list(d.values()), ["expected a dict"]),
    (lambda d: d["blocks"][3]["depthwise"]["params"].update(
        weight=d["blocks"][3]["depthwise"]["params"]["weight"].astype(np.int16)),
     ["blocks[3].depthwise.params.weight has dtype int16; it must be int8"]),
    (lambda d: d["first_conv"]["params"].update(bias=d["first_conv"]["params"]["bias"].astype(np.float32)),
     ["first_conv.params.bias has dtype float32; it must be int32"]),
    (lambda d: d["blocks"][2]["pointwise1"]["params"].update(
        weight=d["blocks"][2]["pointwise1"]["params"]["weight"][:, :4]),
     ["blocks[2].pointwise1.params.weight has shape"]),
    (_pop(["blocks", 2, "pointwise1", "params", "w_scales"]), ["has no 'w_scales' entry"]),
    (_set(["blocks", 4, "se"], {"params": {}}), ["blocks[4]", "squeeze-and-excitation"]),
    (_set(["blocks", 4, "depthwise", "act"], "h_swish"), ["'h_swish'", "does not support"]),
    (_set(["blocks", 1, "depthwise", "out_shape"], 31), ["out_shape says 31x31"]),
    (_set(["blocks", 5, "pointwise2", "params", "x_zero"], 5), ["blocks[5].pointwise2", "inconsistent"]),
    (_set(["blocks", 2, "residual", "params", "x_scale"], 0.5), ["blocks[2].residual", "inconsistent"]),
    (_set(["first_conv", "params", "y_scale"], -1.0), ["y_scale", "finite and > 0"]),
    (_set(["first_conv", "params", "y_zero"], 300), ["y_zero is 300"]),
    (_set(["classifier", "in_channel"], 7), ["classifier.in_channel is 7"]),
])
def test_tampered_structure(tmp_path, mbv2_doc, edit, words):
    path = _tampered(tmp_path, mbv2_doc, edit)
    _one_line_error(lambda: load_mit_model(path), path, *words)


def test_classifier_input_requantization(tmp_path, mbv2_doc):
    """A classifier x_scale that differs from the pooled tensor's: the bias is rescaled to keep its real value."""
    path = _tampered(tmp_path, mbv2_doc, _set(["classifier", "params", "x_scale"],
                                              2 * mbv2_doc["classifier"]["params"]["x_scale"]))
    m = load_mit_model(path)
    fc = m.layer("classifier")
    assert m.tensors()[fc.inputs[0]].scale == mbv2_doc["classifier"]["params"]["x_scale"]
    assert np.array_equal(fc.bias, 2 * mbv2_doc["classifier"]["params"]["bias"])


def test_tampered_round_trip_loads(tmp_path, mbv2_doc):
    """A re-pickled copy (NumPy 2 writes numpy._core names) loads to the same model."""
    path = _tampered(tmp_path, mbv2_doc, lambda d: None)
    m = load_mit_model(path)
    assert m.param_count() == EXPECTED["mbv2-w0.35"][1] and m.name == "tampered"
