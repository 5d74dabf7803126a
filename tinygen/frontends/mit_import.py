"""Import the int8 ImageNet models of mit-han-lab/tiny-training (MbV2, Proxyless, MCUNet).

The files (`../shared/models/mit-tiny-training/*.pkl`, see its README) are `torch.save`
zip containers whose pickle holds only dicts, lists, numbers, strings and NumPy arrays.
A pickle is a program, so `load_mit_pickle` never runs it as one: its `find_class`
resolves only NumPy's array reconstruction (`_reconstruct`, `ndarray`, `dtype`) and
`_codecs.encode` (for latin-1 only), each through a guard that accepts only the
arguments array pickles use; `persistent_load` (torch storages) is refused; the result
must be a tree of plain data. No torch import anywhere. Every problem is one
`ModelError` sentence naming the file.

How the file's graph maps onto the IR (`load_mit_model`):

* Layers, in forward order: `first_conv`, per block `b{i}_pw1`, `b{i}_dw`, `b{i}_pw2`
  (absent ones skipped; `i` is the 0-based index into the file's `blocks`), `b{i}_add`,
  then `feature_mix` (None in all three files), `gap`, `classifier`.
* Convolutions: weights (O, I/groups, KH, KW) become OHWI; padding is PyTorch's
  symmetric `k // 2`, checked against the file's `in_shape`/`out_shape`; `act`
  (None in every conv of the three files) maps to `ir.activation_range` ("none" for
  None). ReLU6 is implicit in these files: it lives in the output quantization
  (y_zero = -128, y_scale <= 6/255), so the int8 clamp already is the activation.
  Integer multipliers are recomputed from the float scales (`ir.conv_requant`).
* Degenerate channels: tiny-training gives an all-zero (or near-zero) channel the weight
  scale 5e-7/127 and its bias `round(b / (x_scale * w_scale))`, clamped to int32, so
  such channels carry biases of +-2^31. The IR requires `K*255*128 + |bias| < 2^31`
  (K = the dot-product length) so that the int32 accumulator cannot overflow in C. Each
  offending channel gets its weight scale multiplied by 2^s (smallest s that fits,
  s = 1 in practice) and its weights and bias divided by 2^s and rounded, which keeps
  the channel's real-valued bias to 1e-9 relative and its weights to half a new step.
  mbv2-w0.35 has no such channel; proxyless-w0.3 has 22 and mcunet-5fps 52, all of
  them channels whose output is constant (their weights contribute < 0.2 LSB).
* Residuals: a block's `residual` entry holds no weights, only quantization:
  `x_scale/x_zero` is the block input (the shortcut; checked equal to the tensor it
  names) and `y_scale/y_zero` the sum's output, which the next block reads. It becomes
  `ir.Add([block_output, block_input])` with that output quantization (TFLite int8 add).
* `se` (squeeze-and-excitation) is used by none of the files; a file that has one is
  refused as unsupported.
* Global average pool: the IR's AvgPool keeps its input's quantization. In all three
  files the classifier's stored `x_scale/x_zero` equal the last tensor's, so `gap`
  pools in that quantization and the classifier reads it unchanged. Should a file
  differ, the classifier reads the pooled tensor's quantization instead and its int32
  bias is rescaled by `stored x_scale / pooled scale` (the bias is in units of
  `x_scale * w_scale`; zero points need no correction because each applies to its own
  scale), which preserves the float semantics of a requantization between pool and
  classifier up to the rounding of that requantization.
* The classifier (a 1x1 conv in the file) becomes an `ir.FullyConnected` reading the
  (1, 1, C) pooled tensor directly.
* Input transform `2x - 1` (`MIT_INPUT_TRANSFORM`: scale 2, offset -1). All three files quantize
  `first_conv`'s input with x_scale 1/127.5 and x_zero 0, i.e. int8 codes for reals in [-1, 1];
  tiny-training feeds its MCU models images normalised with mean 0.5, std 1/255 ("leading to
  range -128, 127", `algorithm/core/dataset/vision/transform/transform.py`), codes
  255 * (pixel - 0.5), which at that scale are the reals 2 * pixel - 1. Fed pixels in [0, 1]
  untransformed, the models would see only codes 0..127.

The file's classifier is kept as it is (1000 ImageNet classes); `--classes N` replaces it by
a fresh N-way head through the one head function, `tinygen.zoo.catalog.replace_head`.
"""

from __future__ import annotations

import _codecs
import io
import math
import pickle
import zipfile
from pathlib import Path

import numpy as np

from tinygen import paths
from tinygen.errors import ModelError
from tinygen.frontends.arrays import MAX_MODEL_BYTES, native
from tinygen.ir import model as ir
from tinygen.ir.builder import ModelBuilder

MIT_MODELS = {"mbv2-w0.35": "mbv2-w0.35.pkl", "proxyless-w0.3": "proxyless-w0.3.pkl",
              "mcunet-5fps": "mcunet-5fps.pkl"}
MIT_SUBDIR = "models/mit-tiny-training"
MAX_PICKLE_BYTES = MAX_MODEL_BYTES
MIT_INPUT_TRANSFORM = ir.InputTransform(scale=(2.0,), offset=(-1.0,))  # see the module docstring

try:  # NumPy 2 name; numpy.core is a deprecated alias there
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


# ---------------------------------------------------------------------------
# Safe loading


class _Refused(Exception):
    """Raised inside the unpickler; turned into a ModelError naming the file."""


_NDARRAY = object()  # what find_class returns for numpy.ndarray: usable only as _reconstruct's argument


def _reconstruct(cls, shape, dtype_code):
    if cls is not _NDARRAY or tuple(shape) != (0,) or dtype_code != b"b":
        raise _Refused("the pickle calls numpy's _reconstruct with arguments an array pickle does not use")
    return _np_reconstruct(np.ndarray, (0,), b"b")


def _dtype(spec, align=False, copy=False):
    if not isinstance(spec, str) or not isinstance(align, bool) or not isinstance(copy, bool):
        raise _Refused("the pickle builds a NumPy dtype from something other than a type code")
    dt = np.dtype(spec, align, copy)
    if dt.kind not in "biuf":
        raise _Refused(f"the pickle builds a NumPy dtype {spec!r}; only numeric arrays are allowed")
    return dt


def _encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"the pickle calls _codecs.encode with encoding {encoding!r}; only latin1 is allowed")
    return _codecs.encode(text, encoding)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        fn = _ALLOWED.get((module, name))
        if fn is None:
            raise _Refused(f"refusing to load: the pickle references {module}.{name}, which is not a NumPy array; "
                           "tinygen loads only plain data")
        return fn

    def persistent_load(self, pid):
        raise _Refused("refusing to load: the pickle references a torch storage (persistent id); "
                       "tinygen reads only files whose tensors are NumPy arrays")


_PLAIN = (str, int, float, bool, type(None))


def _check_plain(obj) -> None:
    """The unpickled object must be a tree of dicts/lists/tuples/scalars/numeric ndarrays."""
    stack, seen = [obj], set()
    while stack:
        v = stack.pop()
        if isinstance(v, (dict, list, tuple)):
            if id(v) in seen:
                continue
            seen.add(id(v))
        if type(v) is dict:
            for k, x in v.items():
                if not isinstance(k, (str, int)):
                    raise _Refused(f"the pickle has a dict key of type {type(k).__name__}; expected strings")
                stack.append(x)
        elif type(v) in (list, tuple):
            stack.extend(v)
        elif type(v) is np.ndarray:
            if v.dtype.kind not in "biuf" or v.dtype.fields is not None:
                raise _Refused(f"the pickle holds a NumPy array of dtype {v.dtype}; only numeric arrays are allowed")
        elif type(v) not in _PLAIN:
            raise _Refused(f"the pickle holds a {type(v).__name__} object; expected only plain data and arrays")


def load_mit_pickle(path: str | Path):
    """Read a torch.save zip container holding only plain data; never runs pickle code."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist; pass the path of a tiny-training .pkl model")
    try:
        with zipfile.ZipFile(path) as zf:
            members = [i for i in zf.infolist() if i.filename.count("/") == 1 and i.filename.endswith("/data.pkl")]
            if len(members) != 1:
                what = "no" if not members else f"{len(members)}"
                raise ModelError(f"{path}: the zip container has {what} '<dir>/data.pkl' members; "
                                 "expected exactly one (is this a torch.save file?)")
            if members[0].file_size > MAX_PICKLE_BYTES:
                raise ModelError(f"{path}: {members[0].filename} claims {members[0].file_size} bytes, "
                                 f"more than the {MAX_PICKLE_BYTES >> 20} MiB a model file may have")
            data = zf.read(members[0])
    except ModelError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
        raise ModelError(f"{path} is not a readable torch.save zip container ({_one_line(exc)}); "
                         "is the file truncated?") from None
    except Exception as exc:  # zlib errors and the like from a damaged member
        raise ModelError(f"{path}: the zip container is damaged ({type(exc).__name__}); "
                         "is the file truncated?") from None
    try:
        obj = _SafeUnpickler(io.BytesIO(data)).load()
        _check_plain(obj)
    except _Refused as exc:
        raise ModelError(f"{path}: {exc}") from None
    except RecursionError:
        raise ModelError(f"{path}: the pickle nests too deeply to be a model") from None
    except Exception as exc:  # UnpicklingError, EOFError, TypeError, ValueError, MemoryError, ...
        raise ModelError(f"{path}: the pickle in the zip container is corrupt ({type(exc).__name__}: "
                         f"{_one_line(exc)})") from None
    return obj


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else type(exc).__name__


# ---------------------------------------------------------------------------
# Typed access to the unpickled tree


class _Reader:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, what: str):
        raise ModelError(f"{self.path}: {what}")

    def get(self, d, key: str, where: str):
        if not isinstance(d, dict):
            self.fail(f"{where} must be a dict, got {type(d).__name__}")
        if key not in d:
            self.fail(f"{where} has no {key!r} entry")
        return d[key]

    def integer(self, d, key, where, lo=None, hi=None) -> int:
        v = self.get(d, key, where)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            self.fail(f"{where}.{key} must be an integer, got {v!r}")
        v = int(v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.fail(f"{where}.{key} is {v}; it must be in {lo}..{hi}")
        return v

    def scale(self, d, key, where) -> float:
        v = self.get(d, key, where)
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
            self.fail(f"{where}.{key} must be a number, got {v!r}")
        v = float(v)
        if not (math.isfinite(v) and v > 0):
            self.fail(f"{where}.{key} is {v!r}; a scale must be finite and > 0")
        return v

    def pair(self, d, key, where) -> tuple[int, int]:
        v = self.get(d, key, where)
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            v = (v, v)
        if (not isinstance(v, (list, tuple)) or len(v) != 2
                or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i > 0 for i in v)):
            self.fail(f"{where}.{key} must be a positive integer or a pair of them, got {v!r}")
        return int(v[0]), int(v[1])

    def array(self, d, key, where, dtype, shape) -> np.ndarray:
        v = self.get(d, key, where)
        want = np.dtype(dtype)
        if not isinstance(v, np.ndarray):
            self.fail(f"{where}.{key} must be a NumPy {want.name} array, got {type(v).__name__}")
        v = native(v, want)
        if v.dtype != want:
            self.fail(f"{where}.{key} has dtype {v.dtype}; it must be {want.name}")
        if tuple(v.shape) != tuple(shape):
            self.fail(f"{where}.{key} has shape {list(v.shape)}; expected {list(shape)}")
        return np.ascontiguousarray(v)

    def quant(self, p, prefix, where) -> tuple[float, int]:
        return self.scale(p, f"{prefix}_scale", where), self.integer(p, f"{prefix}_zero", where, -128, 127)


def _act(r: _Reader, d: dict, where: str) -> str:
    act = d.get("act")
    if act is None:
        return "none"
    if not isinstance(act, str) or act.lower() not in ir.ACT_NAMES:
        r.fail(f"{where} has activation {act!r}, which tinygen does not support (it supports "
               f"{', '.join(ir.ACT_NAMES)})")
    return act.lower()


def _same_quant(a: tuple[float, int], b: tuple[float, int]) -> bool:
    return a[1] == b[1] and math.isclose(a[0], b[0], rel_tol=1e-6, abs_tol=0.0)


def _fmt(q: tuple[float, int]) -> str:
    return f"scale {q[0]:.6g} zero {q[1]}"


def _conv(b: ModelBuilder, r: _Reader, x: str, d, where: str, name: str) -> str:
    """One conv entry of the file -> one ir.Conv2D reading tensor `x`."""
    if not isinstance(d, dict):
        r.fail(f"{where} must be a dict or None, got {type(d).__name__}")
    h, w, cin = b.shape(x)
    in_ch = r.integer(d, "in_channel", where, 1)
    out_ch = r.integer(d, "out_channel", where, 1)
    groups = r.integer(d, "groups", where, 1)
    in_shape = r.pair(d, "in_shape", where)
    out_shape = r.pair(d, "out_shape", where)
    kh, kw = r.pair(d, "kernel_size", where)
    stride = r.pair(d, "stride", where)
    if in_ch != cin or in_shape != (h, w):
        r.fail(f"{where} expects a {in_shape[0]}x{in_shape[1]}x{in_ch} input but the tensor it reads is "
               f"{h}x{w}x{cin}")
    if in_ch % groups or out_ch % groups:
        r.fail(f"{where}.groups={groups} does not divide its {in_ch} input and {out_ch} output channels")
    if "depthwise" in d and bool(d["depthwise"]) != (groups == in_ch > 1):
        r.fail(f"{where}.depthwise={d['depthwise']!r} contradicts groups={groups} with {in_ch} input channels")
    act = _act(r, d, where)
    p = r.get(d, "params", where)
    pw = f"{where}.params"
    weight = r.array(p, "weight", pw, np.int8, (out_ch, in_ch // groups, kh, kw))
    bias = r.array(p, "bias", pw, np.int32, (out_ch,))
    w_scales = r.array(p, "w_scales", pw, np.float32, (out_ch,))
    xq, yq = r.quant(p, "x", pw), r.quant(p, "y", pw)
    cur = b.info(x)
    if not _same_quant(xq, (cur.scale, cur.zero_point)):
        r.fail(f"{where} reads its input as {_fmt(xq)} but the tensor it reads has "
               f"{_fmt((cur.scale, cur.zero_point))}; the file is inconsistent")
    weight, bias, w_scales = _fit_bias(weight.reshape(out_ch, -1), bias, w_scales)
    weight = weight.reshape(out_ch, in_ch // groups, kh, kw)
    pads = (kh // 2, kh // 2, kw // 2, kw // 2)  # PyTorch padding=k//2
    oh = ir.conv_out_size(h, kh, stride[0], pads[0], pads[1], 1)
    ow = ir.conv_out_size(w, kw, stride[1], pads[2], pads[3], 1)
    if (oh, ow) != out_shape:
        r.fail(f"{where}: a {kh}x{kw} stride-{stride[0]} conv with padding {kh // 2} on {h}x{w} gives {oh}x{ow}, "
               f"but out_shape says {out_shape[0]}x{out_shape[1]}")
    return b.conv2d(x, np.ascontiguousarray(weight.transpose(0, 2, 3, 1)), bias, w_scales, yq[0], yq[1],
                    stride=stride, padding=pads, groups=groups, act=act, name=name)


def _fit_bias(weight: np.ndarray, bias: np.ndarray, w_scales: np.ndarray):
    """Rescale channels whose int32 bias leaves no accumulator headroom (see the module docstring).

    `weight` is (O, K). A channel with |bias| > 2^31 - 1 - K*255*128 gets its weight scale
    multiplied by 2^s (the smallest s that makes the bias fit) and its weights and bias
    divided by 2^s, rounded: the real-valued weights and bias are kept up to that rounding.
    """
    k = weight.shape[1]
    limit = 2**31 - 1 - ir.acc_bound(k)
    big = np.nonzero(np.abs(bias.astype(np.int64)) > limit)[0]
    if big.size == 0 or limit <= 0:  # limit <= 0: the IR validator reports the layer
        return weight, bias, w_scales
    weight, bias, w_scales = weight.copy(), bias.copy(), w_scales.copy()
    for c in big:
        s = 1
        while abs(int(np.rint(int(bias[c]) / 2.0**s))) > limit:
            s += 1
        weight[c] = np.rint(weight[c].astype(np.float64) / 2.0**s).astype(np.int8)
        bias[c] = np.int32(np.rint(int(bias[c]) / 2.0**s))
        w_scales[c] = np.float32(float(w_scales[c]) * 2.0**s)
    return weight, bias, w_scales


def _block(b: ModelBuilder, r: _Reader, x, i: int, blk) -> object:
    """One inverted-residual block: pointwise1, depthwise, pointwise2 (each optional), then the residual add."""
    where = f"blocks[{i}]"
    if not isinstance(blk, dict):
        r.fail(f"{where} must be a dict, got {type(blk).__name__}")
    for key in ("pointwise1", "depthwise", "pointwise2", "residual", "se"):
        r.get(blk, key, where)
    if blk["se"] is not None:
        r.fail(f"{where} has a squeeze-and-excitation ('se') module, which tinygen does not support")
    block_in = x
    for key, short in (("pointwise1", "pw1"), ("depthwise", "dw"), ("pointwise2", "pw2")):
        if blk[key] is not None:
            x = _conv(b, r, x, blk[key], f"{where}.{key}", f"b{i}_{short}")
    res = blk["residual"]
    if res is None:
        return x
    rw = f"{where}.residual"
    if x == block_in:
        r.fail(f"{rw} adds a block that has no convolution")
    rp = r.get(res, "params", rw)
    xq, yq = r.quant(rp, "x", f"{rw}.params"), r.quant(rp, "y", f"{rw}.params")
    src = b.info(block_in)
    if not _same_quant(xq, (src.scale, src.zero_point)):
        r.fail(f"{rw} reads the block input as {_fmt(xq)} but that tensor has "
               f"{_fmt((src.scale, src.zero_point))}; the file is inconsistent")
    if b.shape(block_in) != b.shape(x):
        r.fail(f"{rw} adds the block input {list(b.shape(block_in))} to the block output "
               f"{list(b.shape(x))}; the shapes differ")
    return b.add(x, block_in, yq[0], yq[1], act=_act(r, res, rw), name=f"b{i}_add")


def _classifier(b: ModelBuilder, r: _Reader, x, cls) -> None:
    """The 1x1 classifier as a fully connected layer over the pooled features."""
    pooled = b.info(x)
    cw = "classifier"
    if not isinstance(cls, dict):
        r.fail("classifier must be a dict")
    c = pooled.shape[-1]
    if r.integer(cls, "in_channel", cw, 1) != c:
        r.fail(f"classifier.in_channel is {cls['in_channel']} but the pooled features have {c} channels")
    if r.pair(cls, "kernel_size", cw) != (1, 1):
        r.fail(f"classifier.kernel_size is {cls['kernel_size']!r}; only a 1x1 classifier is supported")
    if "groups" in cls and r.integer(cls, "groups", cw, 1) != 1:
        r.fail(f"classifier.groups is {cls['groups']}; only groups=1 is supported")
    n_out = r.integer(cls, "out_channel", cw, 1)
    cp = r.get(cls, "params", cw)
    pw = "classifier.params"
    weight = r.array(cp, "weight", pw, np.int8, (n_out, c, 1, 1)).reshape(n_out, c)
    bias = r.array(cp, "bias", pw, np.int32, (n_out,))
    w_scales = r.array(cp, "w_scales", pw, np.float32, (n_out,))
    xq, yq = r.quant(cp, "x", pw), r.quant(cp, "y", pw)
    act = _act(r, cls, cw)
    ys, yz = yq
    if not _same_quant(xq, (pooled.scale, pooled.zero_point)):
        # The classifier reads the pooled tensor's quantization; keep its real-valued bias.
        scaled = np.rint(bias.astype(np.float64) * (xq[0] / pooled.scale))
        if np.abs(scaled).max(initial=0) >= 2**31:
            r.fail("classifier bias overflows int32 when rescaled to the pooled features' scale")
        bias = scaled.astype(np.int32)
    weight, bias, w_scales = _fit_bias(weight, bias, w_scales)
    b.fully_connected(x, weight, bias, w_scales, ys, yz, act=act, name="classifier")


def load_mit_model(path: str | Path, name: str | None = None) -> ir.Model:
    """A tiny-training `.pkl` model as a validated tinygen IR model (see the module docstring)."""
    path = Path(path)
    doc = load_mit_pickle(path)
    r = _Reader(path)
    top = "the model"
    if not isinstance(doc, dict):
        r.fail(f"the pickle holds a {type(doc).__name__}; expected a dict with first_conv, blocks, "
               "feature_mix and classifier")
    first = r.get(doc, "first_conv", top)
    blocks = r.get(doc, "blocks", top)
    feature_mix = r.get(doc, "feature_mix", top)
    cls = r.get(doc, "classifier", top)
    if not isinstance(first, dict):
        r.fail("first_conv must be a dict")
    if not isinstance(blocks, list) or not blocks:
        r.fail("blocks must be a non-empty list")

    hw = r.pair(first, "in_shape", "first_conv")
    cin = r.integer(first, "in_channel", "first_conv", 1)
    xs, xz = r.quant(r.get(first, "params", "first_conv"), "x", "first_conv.params")
    b = ModelBuilder(name or path.stem, (hw[0], hw[1], cin), xs, xz)
    b.model.input_transform = MIT_INPUT_TRANSFORM
    x = _conv(b, r, b.input, first, "first_conv", "first_conv")

    for i, blk in enumerate(blocks):
        x = _block(b, r, x, i, blk)
    if feature_mix is not None:
        x = _conv(b, r, x, feature_mix, "feature_mix", "feature_mix")
    x = b.global_avgpool(x, name="gap")
    _classifier(b, r, x, cls)
    try:
        return b.build()
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------
# Zoo lookup and the sparse-scheme layer index


def find_mit_file(name: str) -> Path:
    """The shared copy of a zoo model, or a ModelError saying where it should be."""
    if name not in MIT_MODELS:
        raise ModelError(f"unknown MIT model {name!r}; choose one of {', '.join(MIT_MODELS)}")
    fname = MIT_MODELS[name]
    shared = paths.shared_dir()
    if shared is not None and (shared / MIT_SUBDIR / fname).is_file():
        return shared / MIT_SUBDIR / fname
    shown = shared / MIT_SUBDIR / fname if shared is not None else f"../shared/{MIT_SUBDIR}/{fname}"
    raise ModelError(f"model {name!r} needs {shown}, which is not present; pass --model path/to/{fname}")


def conv_index_to_layer(model: ir.Model) -> list[str]:
    """Names of the Conv2D layers in forward order: entry i is tiny-training's `manual_weight_idx` i.

    first_conv is 0; the classifier (a FullyConnected here) is not counted, as in the
    published sparse-update schemes.
    """
    return [layer.name for layer in model.layers if isinstance(layer, ir.Conv2D)]
