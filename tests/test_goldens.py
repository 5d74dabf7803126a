"""tinygen's NumPy reference kernels against ARM's CMSIS-NN int8 golden vectors, bit-exact."""

from __future__ import annotations

import numpy as np
import pytest
from cmsis_goldens import (
    OPS,
    GoldenFormatError,
    UnsupportedCase,
    case_names,
    golden_dir,
    load_case,
    missing_reason,
    parse_arrays,
    run_reference,
)

EXPECTED_CASES = 44

PRESENT = golden_dir() is not None
needs_goldens = pytest.mark.skipif(not PRESENT, reason=missing_reason() if not PRESENT else "")
CASES = case_names() if PRESENT else [pytest.param("<none>", marks=pytest.mark.skip(reason=missing_reason()))]


@pytest.mark.parametrize("name", CASES)
def test_reference_matches_golden(name):
    try:
        case = load_case(name)
    except UnsupportedCase as exc:
        pytest.skip(f"unsupported golden case: {exc}")
    got = run_reference(case)
    assert got.dtype == np.int8 and got.shape == case.expected.shape, (got.dtype, got.shape, case.expected.shape)
    if not np.array_equal(got, case.expected):
        diff = np.argwhere(got != case.expected)
        first = tuple(int(i) for i in diff[0])
        pytest.fail(f"{name} ({case.op}): {len(diff)}/{got.size} outputs differ; first at {first}: "
                    f"got {int(got[first])}, expected {int(case.expected[first])}")


@needs_goldens
def test_all_cases_discovered_and_parsed():
    names = case_names()
    assert len(names) == EXPECTED_CASES, f"found {len(names)} cases in {golden_dir()}: {names}"
    ops, unsupported = {}, {}
    for name in names:
        try:
            case = load_case(name)  # any parse error fails here: no case is dropped silently
        except UnsupportedCase as exc:
            unsupported[name] = str(exc)
            continue
        assert case.op in OPS
        assert case.expected.dtype == np.int8 and case.expected.shape[0] == case.batches
        ops.setdefault(case.op, []).append(name)
    assert not unsupported, f"cases the int8 reference cannot run: {unsupported}"
    assert set(ops) == set(OPS), f"ops covered: {sorted(ops)}"
    assert sum(len(v) for v in ops.values()) == EXPECTED_CASES


def test_header_parser_reads_null_pointers_and_aliases():
    text = ("const int32_t *conv_biases = NULL;\n"
            "const int8_t conv_weights[3] = {1, -2, 0x7f};\n"
            "const int8_t *const conv_w = conv_weights;\n")
    got = parse_arrays(text, "weights.h")
    assert got["conv_biases"] is None and got["conv_w"] == "conv_weights"
    assert got["conv_weights"].tolist() == [1, -2, 127]


@pytest.mark.parametrize("decl", ["const int16_t **conv_bias = NULL;", "extern const int8_t conv_input[];",
                                  "int8_t conv_input[2] = {1, 2};", "const int32_t *conv_bias = (int32_t *)0;"])
def test_header_parser_names_a_declaration_it_cannot_read(decl):
    with pytest.raises(GoldenFormatError, match="cannot read the declaration") as exc:
        parse_arrays("const int8_t conv_ok[1] = {1};\n" + decl + "\n", "case/data.h")
    assert "case/data.h" in str(exc.value) and decl.split("=")[0].split("[")[0].strip() in str(exc.value)
