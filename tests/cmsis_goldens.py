"""Parser for the CMSIS-NN int8 golden test cases in `../shared/goldens/cmsis-nn/<case>/`.

Each case folder holds C headers: `config_data.h` (`#define <CASE>_<KEY> <value>`), one
`const <type> <case>_<tensor>[N] = {...};` array per tensor, and `test_data.h`, whose
`#include`s name the headers the CMSIS-NN unit test actually uses. Only those headers are
read: some folders carry stale extra headers (e.g. `fully_connected/` also holds the
tensors of a different, 89-input FC test, and `add/` an unused `input_data.h`).

`load_case(name)` returns a `GoldenCase` whose `inputs` and `params` are named after the
parameters of the `tinygen.reference.forward` kernel that implements the op, so a test can call
`kernel(**inputs_for_one_batch_item, **params)`; `run_reference(case)` does exactly that.
The same dicts drive the generated C (tests/test_goldens_c.py): `inputs` holds only NumPy
arrays, `params` only Python ints, tuples of ints and int32 arrays (per-channel mult/shift).
A declaration the parser cannot read raises GoldenFormatError naming it; none is skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tinygen.paths import shared_dir
from tinygen.reference import forward as reference

OPS = ("conv", "depthwise", "fully_connected", "add", "avgpool", "maxpool")

# op -> name of the tinygen.reference.forward kernel that implements it.
KERNELS = {
    "conv": "convolve_s8",
    "depthwise": "convolve_s8",
    "fully_connected": "fully_connected_s8",
    "add": "elementwise_add_s8",
    "avgpool": "avgpool_s8",
    "maxpool": "maxpool_s8",
}

# Keys of `inputs` that carry a leading batch axis (one kernel call per item); the other
# inputs (weight, bias) are shared by every batch item.
BATCHED_INPUTS = ("x", "a", "b")

_C_TYPES = {"int8_t": np.int8, "int16_t": np.int16, "int32_t": np.int32, "int64_t": np.int64,
            "uint8_t": np.uint8, "uint16_t": np.uint16, "uint32_t": np.uint32}

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+(.+?)[ \t]*$", re.M)
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"', re.M)
_ARRAY = re.compile(r"(?:static\s+)?const\s+(\w+)\s+(\w+)\s*\[\s*(\w*)\s*\]\s*=\s*\{(.*?)\}\s*;", re.S)
# `const T *const a = b;` and `const T *a = NULL;` (a pointer to another array, or none)
_ALIAS = re.compile(r"(?:static\s+)?const\s+(\w+)\s*\*\s*(?:const\s+)?(\w+)\s*=\s*(\w+)\s*;")


class GoldenFormatError(ValueError):
    """A header does not have the expected form (a parser bug or a damaged file)."""


class UnsupportedCase(Exception):
    """The case is well-formed but exercises something the int8 reference does not implement."""


@dataclass
class GoldenCase:
    name: str
    op: str  # one of OPS
    inputs: dict[str, np.ndarray]  # kernel-argument name -> array; BATCHED_INPUTS have a leading batch axis
    params: dict[str, object]  # kernel keyword arguments: ints, tuples of ints, int32 arrays
    batches: int
    expected: np.ndarray  # int8, (batches, *output shape of one item)
    defines: dict[str, int | str] = field(default_factory=dict, repr=False)  # config_data.h, prefix stripped
    files: tuple[str, ...] = field(default=(), repr=False)  # headers read, from test_data.h

    @property
    def kernel(self) -> str:
        return KERNELS[self.op]

    def item_inputs(self, i: int) -> dict[str, np.ndarray]:
        """The `inputs` of batch item `i` (batched arrays indexed, shared ones as they are)."""
        return {k: (v[i] if k in BATCHED_INPUTS else v) for k, v in self.inputs.items()}


# ---------------------------------------------------------------------------
# Discovery


def golden_dir() -> Path | None:
    """`<shared>/goldens/cmsis-nn`, or None when it is not present."""
    shared = shared_dir()
    if shared is None:
        return None
    d = shared / "goldens" / "cmsis-nn"
    return d if d.is_dir() else None


def missing_reason() -> str:
    shared = shared_dir()
    if shared is None:
        return ("../shared/goldens not present: tinygen.paths.shared_dir() found no shared/ folder "
                "beside the checkout (set TINYGEN_SHARED to point at it)")
    return f"../shared/goldens not present: {shared / 'goldens' / 'cmsis-nn'} is not a directory"


def case_names() -> list[str]:
    """Every case directory (sorted); [] when the goldens are not present."""
    d = golden_dir()
    if d is None:
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir())


# ---------------------------------------------------------------------------
# Header parsing


def _int(text: str) -> int:
    text = text.strip()
    t = re.sub(r"(?i)(?<=[0-9a-f])(u|l|ul|lu|ll|ull|llu)$", "", text)
    t = t.strip("()").strip()
    try:
        return int(t, 0)
    except ValueError:
        raise GoldenFormatError(f"not an integer literal: {text!r}") from None


def parse_defines(text: str) -> dict[str, int | str]:
    """`#define NAME VALUE` -> {NAME: int, or the raw string for SAME/INT8/true and the like}."""
    out: dict[str, int | str] = {}
    for key, value in _DEFINE.findall(_COMMENT.sub("", text)):
        try:
            out[key] = _int(value)
        except GoldenFormatError:
            out[key] = value
    return out


def parse_arrays(text: str, where: str = "") -> dict[str, np.ndarray | str | None]:
    """Const arrays -> {name: ndarray}; `const T *const a = b;` aliases -> {a: "b"}; `= NULL` -> None."""
    text = _COMMENT.sub("", text)
    out: dict[str, np.ndarray | str | None] = {}
    for ctype, name, length, body in _ARRAY.findall(text):
        if ctype not in _C_TYPES:
            raise GoldenFormatError(f"{where}: array {name} has unknown element type {ctype}")
        tokens = [t for t in (s.strip() for s in body.split(",")) if t]
        values = [_int(t) for t in tokens]
        if length and _int(length) != len(values):
            raise GoldenFormatError(f"{where}: {name} is declared [{length}] but has {len(values)} values")
        dtype = np.dtype(_C_TYPES[ctype])
        info = np.iinfo(dtype)
        if values and not (info.min <= min(values) and max(values) <= info.max):
            raise GoldenFormatError(f"{where}: {name} has values outside {ctype}")
        out[name] = np.array(values, dtype=dtype)
    for _ctype, name, target in _ALIAS.findall(text):
        out[name] = None if target in ("NULL", "0", "nullptr") else target
    # Every statement outside the preprocessor must have been understood: a form the patterns above
    # miss would otherwise drop a tensor without a word.
    for stmt in _statements(text):
        m = re.match(r"[^=\[]*?(\w+)\s*(?:\[[^\]]*\])?\s*=", stmt)
        if m is None or m.group(1) not in out:
            raise GoldenFormatError(f"{where}: cannot read the declaration `{stmt};`")
    return out


def _statements(text: str) -> list[str]:
    """The C statements of a header (comments already removed): initialisers collapsed to `{}`,
    preprocessor lines dropped, whitespace normalised."""
    flat = re.sub(r"\{.*?\}", "{}", text, flags=re.S)
    flat = re.sub(r"^[ \t]*#.*$", "", flat, flags=re.M)
    return [" ".join(s.split()) for s in flat.split(";") if s.strip()]


def _read_case(d: Path) -> tuple[dict[str, int | str], dict[str, np.ndarray | None], tuple[str, ...]]:
    """(defines, arrays with aliases resolved, header names) of the headers test_data.h includes."""
    test_data = d / "test_data.h"
    if not test_data.is_file():
        raise GoldenFormatError(f"{d}: no test_data.h")
    files = tuple(_INCLUDE.findall(test_data.read_text()))
    defines: dict[str, int | str] = {}
    raw: dict[str, np.ndarray | str | None] = {}
    for fname in files:
        path = d / fname
        if not path.is_file():
            raise GoldenFormatError(f"{d}: test_data.h includes {fname}, which is missing")
        text = path.read_text()
        defines.update(parse_defines(text))
        for key, value in parse_arrays(text, f"{d.name}/{fname}").items():
            if key in raw:
                raise GoldenFormatError(f"{d.name}: {key} is defined twice")
            raw[key] = value
    arrays: dict[str, np.ndarray | None] = {}
    for key, value in raw.items():
        seen = {key}
        while isinstance(value, str):
            if value not in raw or value in seen:
                raise GoldenFormatError(f"{d.name}: alias {key} -> {value} does not resolve to an array")
            seen.add(value)
            value = raw[value]
        arrays[key] = value
    return defines, arrays, files


# ---------------------------------------------------------------------------
# Case construction


class _Case:
    """Accessors for one case's defines (prefix `<NAME>_`) and arrays (prefix `<name>_`)."""

    def __init__(self, name: str, defines, arrays):
        self.name = name
        prefix = name.upper() + "_"
        self.d = {k[len(prefix):]: v for k, v in defines.items() if k.startswith(prefix)}
        stray = [k for k in defines if not k.startswith(prefix)]
        if stray:
            raise GoldenFormatError(f"{name}: #defines without the {prefix} prefix: {stray}")
        self.arrays = arrays

    def i(self, key: str, default: int | None = None) -> int:
        if key not in self.d:
            if default is not None:
                return default
            raise GoldenFormatError(f"{self.name}: config_data.h has no {self.name.upper()}_{key}")
        value = self.d[key]
        if not isinstance(value, int):
            raise GoldenFormatError(f"{self.name}: {key} = {value!r} is not an integer")
        return value

    def arr(self, suffix: str, dtype, size: int | None = None, optional: bool = False) -> np.ndarray | None:
        key = f"{self.name}_{suffix}"
        if key not in self.arrays:
            raise GoldenFormatError(f"{self.name}: no array {key} in {sorted(self.arrays)}")
        a = self.arrays[key]
        if a is None:
            if optional:
                return None
            raise GoldenFormatError(f"{self.name}: {key} is NULL")
        if a.dtype != np.dtype(dtype):
            raise UnsupportedCase(f"{self.name}: {key} is {a.dtype}, the int8 reference needs {np.dtype(dtype)}")
        if size is not None and a.size != size:
            raise GoldenFormatError(f"{self.name}: {key} has {a.size} values, expected {size}")
        return a

    def act(self, prefix: str) -> dict[str, int]:
        return {"act_min": self.i(f"{prefix}ACTIVATION_MIN"), "act_max": self.i(f"{prefix}ACTIVATION_MAX")}


def _op_of(c: _Case) -> str:
    d = c.d
    if "LEFT_SHIFT" in d and "INPUT1_MULT" in d:
        return "add"
    if "ACCUMULATION_DEPTH" in d:
        return "fully_connected"
    if "CH_MULT" in d:
        return "depthwise"
    if "FILTER_X" in d:
        return "conv"
    if "PADDING_H" in d and "FILTER_W" in d:
        if c.name.startswith("avgpool"):
            return "avgpool"
        if c.name.startswith("maxpool"):
            return "maxpool"
    raise GoldenFormatError(f"{c.name}: cannot tell the op from config_data.h keys {sorted(d)}")


def _conv(c: _Case, op: str):
    n = c.i("INPUT_BATCHES")
    h, w, cin, cout = c.i("INPUT_H"), c.i("INPUT_W"), c.i("IN_CH"), c.i("OUT_CH")
    kh, kw = c.i("FILTER_Y"), c.i("FILTER_X")
    oh, ow = c.i("OUTPUT_H"), c.i("OUTPUT_W")
    x = c.arr("input", np.int8, n * h * w * cin).reshape(n, h, w, cin)
    if op == "depthwise":
        mult = c.i("CH_MULT")
        if cout != cin * mult:
            raise GoldenFormatError(f"{c.name}: OUT_CH {cout} != IN_CH {cin} * CH_MULT {mult}")
        # CMSIS [1, KH, KW, C*mult] -> (C*mult, KH, KW, 1); output channel c*mult+m reads input channel c.
        wt = c.arr("weights", np.int8, kh * kw * cout).reshape(kh, kw, cout).transpose(2, 0, 1)[..., None]
        groups = cin
    else:
        wt = c.arr("weights", np.int8, cout * kh * kw * cin).reshape(cout, kh, kw, cin)
        groups = 1
    bias = c.arr("biases", np.int32, cout, optional=True)
    inputs = {"x": x, "weight": np.ascontiguousarray(wt), "bias": bias}
    params = {
        "input_offset": c.i("INPUT_OFFSET"),
        "output_offset": c.i("OUTPUT_OFFSET"),
        "mult": c.arr("output_mult", np.int32, cout),
        "shift": c.arr("output_shift", np.int32, cout),
        "stride": (c.i("STRIDE_Y"), c.i("STRIDE_X")),
        "pad_top": c.i("PAD_Y"),
        "pad_left": c.i("PAD_X"),
        "dilation": (c.i("DILATION_Y", 1), c.i("DILATION_X", 1)),
        "out_h": oh,
        "out_w": ow,
        "groups": groups,
        **c.act("OUT_"),
    }
    expected = c.arr("output_ref", np.int8, n * oh * ow * cout).reshape(n, oh, ow, cout)
    return inputs, params, n, expected


def _fully_connected(c: _Case):
    if c.d.get("W_TYPE", "INT8") != "INT8":
        raise UnsupportedCase(f"{c.name}: weights are {c.d['W_TYPE']}; the reference is int8-only")
    n, depth, cout = c.i("INPUT_BATCHES"), c.i("ACCUMULATION_DEPTH"), c.i("OUT_CH")
    x = c.arr("input", np.int8, n * depth).reshape(n, depth)
    wt = c.arr("weights", np.int8, cout * depth).reshape(cout, depth)
    bias = c.arr("biases", np.int32, cout, optional=True)
    if "OUTPUT_MULTIPLIER" in c.d:  # per-tensor requantization
        mult, shift = c.i("OUTPUT_MULTIPLIER"), c.i("OUTPUT_SHIFT")
    else:  # per-channel: arrays
        mult, shift = c.arr("output_mult", np.int32, cout), c.arr("output_shift", np.int32, cout)
    params = {
        "input_offset": c.i("INPUT_OFFSET"),
        "output_offset": c.i("OUTPUT_OFFSET"),
        "mult": mult,
        "shift": shift,
        "filter_offset": c.i("FILTER_OFFSET", 0),
        **c.act("OUT_"),
    }
    expected = c.arr("output_ref", np.int8, n * cout).reshape(n, cout)
    return {"x": x, "weight": wt, "bias": bias}, params, n, expected


def _add(c: _Case):
    size = c.i("DST_SIZE")
    a = c.arr("input1", np.int8, size).reshape(1, size)
    b = c.arr("input2", np.int8, size).reshape(1, size)
    params = {
        "in1_offset": c.i("INPUT1_OFFSET"),
        "in2_offset": c.i("INPUT2_OFFSET"),
        "in1_mult": c.i("INPUT1_MULT"),
        "in1_shift": c.i("INPUT1_SHIFT"),
        "in2_mult": c.i("INPUT2_MULT"),
        "in2_shift": c.i("INPUT2_SHIFT"),
        "left_shift": c.i("LEFT_SHIFT"),
        "out_mult": c.i("OUTPUT_MULT"),
        "out_shift": c.i("OUTPUT_SHIFT"),
        "out_offset": c.i("OUTPUT_OFFSET"),
        **c.act("OUT_"),
    }
    expected = c.arr("output_ref", np.int8, size).reshape(1, size)
    return {"a": a, "b": b}, params, 1, expected


def _pool(c: _Case):
    n = c.i("BATCH_SIZE")
    h, w, ch = c.i("INPUT_H"), c.i("INPUT_W"), c.i("INPUT_C")
    oh, ow, oc = c.i("OUTPUT_H"), c.i("OUTPUT_W"), c.i("OUTPUT_C")
    if oc != ch:
        raise GoldenFormatError(f"{c.name}: pooling changes channels {ch} -> {oc}")
    x = c.arr("input_tensor", np.int8, n * h * w * ch).reshape(n, h, w, ch)
    params = {
        "kernel": (c.i("FILTER_H"), c.i("FILTER_W")),
        "stride": (c.i("STRIDE_H"), c.i("STRIDE_W")),
        "pad_top": c.i("PADDING_H"),
        "pad_left": c.i("PADDING_W"),
        "out_h": oh,
        "out_w": ow,
        **c.act(""),
    }
    expected = c.arr("output", np.int8, n * oh * ow * ch).reshape(n, oh, ow, ch)
    return {"x": x}, params, n, expected


def load_case(name: str) -> GoldenCase:
    """Parse `<goldens>/cmsis-nn/<name>/` into a GoldenCase.

    Raises GoldenFormatError for files the parser does not understand and UnsupportedCase
    for well-formed cases outside the int8 reference (other activation or weight types).
    """
    root = golden_dir()
    if root is None:
        raise FileNotFoundError(missing_reason())
    d = root / name
    if not d.is_dir():
        raise FileNotFoundError(f"no golden case {name!r} in {root}")
    defines, arrays, files = _read_case(d)
    c = _Case(name, defines, arrays)
    op = _op_of(c)
    if op in ("conv", "depthwise"):
        inputs, params, batches, expected = _conv(c, op)
    elif op == "fully_connected":
        inputs, params, batches, expected = _fully_connected(c)
    elif op == "add":
        inputs, params, batches, expected = _add(c)
    else:
        inputs, params, batches, expected = _pool(c)
    for k in BATCHED_INPUTS:
        if k in inputs and inputs[k].shape[0] != batches:
            raise GoldenFormatError(f"{name}: input {k} has {inputs[k].shape[0]} batch items, expected {batches}")
    return GoldenCase(name=name, op=op, inputs=inputs, params=params, batches=batches,
                      expected=expected, defines=c.d, files=files)


def run_reference(case: GoldenCase) -> np.ndarray:
    """Run the tinygen.reference.forward kernel for every batch item; int8, shaped like `case.expected`."""
    fn = getattr(reference, case.kernel)
    outs = []
    for i in range(case.batches):
        item = case.item_inputs(i)
        if case.op == "fully_connected":  # the FC kernel takes a batch (N, I): give it one row
            item["x"] = item["x"][None]
            outs.append(fn(**item, **case.params)[0])
        else:
            outs.append(fn(**item, **case.params))
    return np.stack(outs)
