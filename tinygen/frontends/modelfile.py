"""The tinygen model file: a JSON graph beside an `.npz` of its arrays.

`model.json` (format "tinygen-model", version 1) lists the input tensor and the layers
in execution order; every array (weights, biases, weight scales) is named by a key in
`model.npz`, which is read with `allow_pickle=False`. See README "Model file format".
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from tinygen.errors import ModelError
from tinygen.frontends.arrays import check_npz_sizes, native
from tinygen.ir import model as ir

FORMAT = "tinygen-model"
VERSION = 1
MAX_JSON_BYTES = 16 << 20  # the graph only: arrays live in the .npz
MODEL_KEYS = ("format", "version", "name", "arrays", "input", "input_transform", "layers")
TENSOR_KEYS = ("name", "shape", "scale", "zero_point")
TRANSFORM_KEYS = ("scale", "offset")
LAYER_KEYS = ("name", "op", "inputs", "output")
CONV_KEYS = ("stride", "padding", "dilation", "groups")
POOL_KEYS = ("kernel", "stride", "padding")
ACT_KEYS = ("act_min", "act_max")


def _tensor_json(t: ir.TensorInfo) -> dict:
    return {"name": t.name, "shape": list(t.shape), "scale": t.scale, "zero_point": t.zero_point}


def to_json(model: ir.Model, npz_name: str) -> tuple[dict, dict[str, np.ndarray]]:
    arrays: dict[str, np.ndarray] = {}
    layers = []
    for layer in model.layers:
        d = {"name": layer.name, "op": layer.op, "inputs": list(layer.inputs), "output": _tensor_json(layer.output)}
        for key, arr in layer.params().items():
            arrays[f"{layer.name}.{key}"] = arr
            d[key] = f"{layer.name}.{key}"
        if isinstance(layer, ir.Conv2D):
            d.update(stride=list(layer.stride), padding=list(layer.padding), dilation=list(layer.dilation),
                     groups=layer.groups)
        if isinstance(layer, ir.Pool):
            d.update(kernel=list(layer.kernel), stride=list(layer.stride), padding=list(layer.padding))
        if hasattr(layer, "act_min"):
            d.update(act_min=layer.act_min, act_max=layer.act_max)
        if getattr(layer, "f32_scale_product", False):  # optional: other files stay as they were
            d["f32_scale_product"] = True
        if isinstance(layer, ir.Softmax):
            d["beta"] = layer.beta
        layers.append(d)
    doc = {"format": FORMAT, "version": VERSION, "name": model.name, "arrays": npz_name,
           "input": _tensor_json(model.input)}
    tf = model.input_transform
    if not tf.is_identity:  # optional: files of identity models stay as they were
        doc["input_transform"] = {"scale": list(tf.scale), "offset": list(tf.offset)}
    doc["layers"] = layers
    return doc, arrays


def save(model: ir.Model, path: str | Path) -> Path:
    """Write `path` (.json) and its `.npz` next to it; returns the JSON path."""
    path = Path(path).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    doc, arrays = to_json(model, path.with_suffix(".npz").name)
    np.savez(path.with_suffix(".npz"), **arrays)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


class _Reader:
    """Typed field access that turns every malformation into one ModelError sentence."""

    def __init__(self, path: Path, arrays):
        self.path = path
        self.arrays = arrays

    def fail(self, what: str):
        raise ModelError(f"{self.path}: {what}")

    def field(self, d: dict, key: str, kind, where: str):
        if not isinstance(d, dict) or key not in d:
            self.fail(f"{where} has no {key!r} field")
        v = d[key]
        ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v, ok = float(v), True
        if not ok:
            self.fail(f"{where} field {key!r} must be {getattr(kind, '__name__', kind)}, got {v!r}")
        return v

    def ints(self, d, key, n, where, default=None):
        if default is not None and key not in d:
            return tuple(default)
        v = self.field(d, key, list, where)
        if len(v) != n or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
            self.fail(f"{where} field {key!r} must be a list of {n} integers, got {v!r}")
        return tuple(v)

    def known(self, d, keys, where: str) -> None:
        """Refuse keys this format does not define: a misspelt or foreign field must not be dropped silently."""
        if isinstance(d, dict):
            unknown = sorted(set(d) - set(keys), key=str)
            if unknown:
                self.fail(f"{where} has the unknown field {unknown[0]!r}; this format defines "
                          f"{', '.join(sorted(keys))} there")

    def tensor(self, d, where) -> ir.TensorInfo:
        self.known(d, TENSOR_KEYS, f"{where}'s tensor")
        shape = self.field(d, "shape", list, where)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in shape):
            self.fail(f"{where} shape must be a list of integers, got {shape!r}")
        return ir.TensorInfo(self.field(d, "name", str, where), tuple(shape),
                             self.field(d, "scale", float, where), self.field(d, "zero_point", int, where))

    def transform(self, d) -> ir.InputTransform:
        where = "the input transform"
        if not isinstance(d, dict):
            self.fail(f"the model field 'input_transform' must be an object with {' and '.join(TRANSFORM_KEYS)} "
                      f"lists, got {d!r}")
        self.known(d, TRANSFORM_KEYS, where)
        vals = [self.field(d, key, list, where) for key in TRANSFORM_KEYS]
        for key, v in zip(TRANSFORM_KEYS, vals, strict=True):
            if not v or not all(isinstance(i, (int, float)) and not isinstance(i, bool) for i in v):
                self.fail(f"{where}'s field {key!r} must be a non-empty list of numbers, got {v!r}")
        try:
            return ir.InputTransform(*vals)
        except ModelError as exc:  # a number past float's range
            self.fail(str(exc))

    def array(self, d, key, where) -> np.ndarray:
        name = self.field(d, key, str, where)
        if name not in self.arrays.files:
            self.fail(f"{where} names array {name!r}, which is not in {self.path.with_suffix('.npz').name}")
        try:
            v = self.arrays[name]
        except Exception as exc:  # zlib/CRC/format errors from a damaged archive member
            self.fail(f"array {name!r} cannot be read ({type(exc).__name__}); the .npz file is damaged")
        want = {"weight": np.int8, "bias": np.int32, "w_scales": np.float32}.get(key)
        return native(v, np.dtype(want)) if want is not None else v


def _layer_keys(layer: ir.Layer) -> tuple[str, ...]:
    keys = LAYER_KEYS + tuple(layer.params())
    if isinstance(layer, ir.Conv2D):
        keys += CONV_KEYS
    if isinstance(layer, ir.Pool):
        keys += POOL_KEYS
    if hasattr(layer, "act_min"):
        keys += ACT_KEYS
    if isinstance(layer, ir.FullyConnected):
        keys += ("f32_scale_product",)
    if isinstance(layer, ir.Softmax):
        keys += ("beta",)
    return keys


def _read_json(path: Path) -> dict:
    """The model's JSON document, bounded in size, digits and depth."""
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist; pass a .json model file or a zoo name")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ModelError(f"{path} is {path.stat().st_size} bytes; a model's JSON may have at most "
                         f"{MAX_JSON_BYTES >> 20} MiB (its arrays belong in the .npz)")
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and integers past Python's digit limit
        if "digits" in str(exc) and not isinstance(exc, json.JSONDecodeError):
            raise ModelError(f"{path} holds an integer of more than 4,300 digits, which no model field needs; "
                             "fix that number") from None
        raise ModelError(f"{path} is not valid JSON ({exc}); is the file truncated?") from None
    except RecursionError:
        raise ModelError(f"{path} nests its JSON too deeply to be a model file") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelError(f"{path} is not a tinygen model (its 'format' field must be {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise ModelError(f"{path} has model format version {doc.get('version')!r}; this tinygen reads {VERSION}")
    return doc


def _open_arrays(path: Path, doc: dict):
    """The .npz beside the JSON, its members' declared sizes checked before anything is read."""
    npz = path.parent / str(doc.get("arrays", path.with_suffix(".npz").name))
    if not npz.is_file():
        raise ModelError(f"{path}: its arrays file {npz.name} is missing; keep it beside the JSON")
    try:
        with zipfile.ZipFile(npz) as zf:
            check_npz_sizes(npz, zf)
        return np.load(npz, allow_pickle=False)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, NotImplementedError) as exc:
        raise ModelError(f"{npz} is not a readable .npz archive ({exc}); is the file truncated?") from None


def load(path: str | Path) -> ir.Model:
    """Load and validate a model file; every problem is one ModelError sentence."""
    path = Path(path)
    doc = _read_json(path)
    arrays = _open_arrays(path, doc)
    with arrays:
        r = _Reader(path, arrays)
        r.known(doc, MODEL_KEYS, "the model")
        model = ir.Model(r.field(doc, "name", str, "model"), r.tensor(r.field(doc, "input", dict, "model"), "input"))
        if "input_transform" in doc:
            model.input_transform = r.transform(doc["input_transform"])
        for i, d in enumerate(r.field(doc, "layers", list, "model")):
            where = f"layer {i}"
            op = r.field(d, "op", str, where)
            if op not in ir.LAYER_TYPES:
                r.fail(f"{where} has unsupported op {op!r}; tinygen supports {', '.join(ir.LAYER_TYPES)}")
            cls = ir.LAYER_TYPES[op]
            inputs = r.field(d, "inputs", list, where)
            if not all(isinstance(t, str) for t in inputs):
                r.fail(f"{where} inputs must be tensor names")
            layer = cls(r.field(d, "name", str, where), inputs, r.tensor(r.field(d, "output", dict, where), where))
            r.known(d, _layer_keys(layer), where)
            for key in layer.params():
                setattr(layer, key, r.array(d, key, where))
            if cls is ir.Conv2D:
                layer.stride = r.ints(d, "stride", 2, where, (1, 1))
                layer.padding = r.ints(d, "padding", 4, where, (0, 0, 0, 0))
                layer.dilation = r.ints(d, "dilation", 2, where, (1, 1))
                layer.groups = r.field(d, "groups", int, where) if "groups" in d else 1
            if issubclass(cls, ir.Pool):
                layer.kernel = r.ints(d, "kernel", 2, where)
                layer.stride = r.ints(d, "stride", 2, where, layer.kernel)
                layer.padding = r.ints(d, "padding", 4, where, (0, 0, 0, 0))
            if hasattr(layer, "act_min"):
                layer.act_min = r.field(d, "act_min", int, where) if "act_min" in d else -128
                layer.act_max = r.field(d, "act_max", int, where) if "act_max" in d else 127
            if cls is ir.Softmax:
                layer.beta = r.field(d, "beta", float, where) if "beta" in d else 1.0
            if cls is ir.FullyConnected and "f32_scale_product" in d:
                layer.f32_scale_product = r.field(d, "f32_scale_product", bool, where)
            model.layers.append(layer)
    try:
        return model.validate()
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
