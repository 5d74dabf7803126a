"""`--update on-device`: the firmware selects what to train from the task's first samples (training/ondevice.py).

The model is mnist14-cnn pretrained on MNIST 0-4 with a fresh 5-way head (the transfer task's start); the tasks
are `tinygen bench ondevice`'s: A is digits 5-9, B digits 0-4 with their labels rotated. Under QEMU on stm32f746
and nrf52840 one build's C, fed each task's samples, makes two different selections, each equal to the
reference's, with every loss and the checksum after it. The envelope's extremes (every candidate at its widest,
the classifier alone) train bit-exact in the planned memory; every selection the device can make plans within
the envelope's peak.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from c_harness import c_driver
from click.testing import CliRunner

from tinygen import cli
from tinygen.bench.ondevice import TASK_NAMES, task_data
from tinygen.bench.transfer import transfer_start
from tinygen.codegen.firmware import FW_DIR, SAMPLES_FILE, FirmwareOptions
from tinygen.codegen.project import load_trainer, write_project
from tinygen.errors import MismatchError
from tinygen.frontends import modelfile
from tinygen.ir.scheme import LayerUpdate, Scheme, TrainConfig
from tinygen.planning.memory import training_sram
from tinygen.reference.training import Trainer
from tinygen.targets.boards import load_board
from tinygen.training import ondevice
from tinygen.training.ondevice import choose_envelope, envelope_scheme, pf, pf_add, pf_div, pf_greater, pf_mul
from tinygen.verify.compare import compare_training, expect_training
from tinygen.verify.runner import run_firmware
from tinygen.verify.sim import simulate

needs_qemu = pytest.mark.skipif(not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")),
                                reason="arm-none-eabi-gcc and qemu-system-arm are needed (scripts/setup.sh)")
STEPS, SAMPLES = 10, 12
BUDGET = 320 * 1024
MASK64 = (1 << 64) - 1


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """The model file and the two tasks' samples (images in [0, 1]) as --dataset files."""
    root = tmp_path_factory.mktemp("ondevice")
    for which in TASK_NAMES:  # the benchmark's tasks, as the model's int8 input codes
        model, x, y, _, _ = task_data("mnist14", which)
        np.savez(root / f"{which}.npz", x=x[:SAMPLES], y=y[:SAMPLES])
    modelfile.save(model, root / "mnist14.json")
    return root, model


# -- the unsigned floating values: C (cmsis_glue/tg_select.h) == Python ---------------------------------------------

PF_BODY = """
        const tg_pf_t a = tg_pf((uint64_t)v[0], (int32_t)v[1]);
        const tg_pf_t b = tg_pf((uint64_t)v[2], (int32_t)v[3]);
        const tg_pf_t p = tg_pf_mul(a, b);
        const tg_pf_t s = tg_pf_add(a, b);
        const tg_pf_t zero = {0U, 0};
        const tg_pf_t q = b.m != 0U ? tg_pf_div(a, b) : zero;
        const tg_pf_t sq = tg_pf_square(v[0] >> 2, (int32_t)v[1]);
        r[0] = a.m;
        r[1] = a.e;
        r[2] = p.m;
        r[3] = p.e;
        r[4] = s.m;
        r[5] = s.e;
        r[6] = q.m;
        r[7] = q.e;
        r[8] = tg_pf_greater(a, b);
        r[9] = sq.m;
        r[10] = sq.e;"""


def test_pf_arithmetic_c_equals_python(tmp_path):
    run = c_driver(tmp_path, "tg_select.h", PF_BODY.rstrip("\n"), np.int64, 11, n_in=4)
    rng = np.random.default_rng(3)
    n = 4000
    bits = rng.integers(0, 64, (n, 2))
    u = [int(rng.integers(0, 1 << 62)) >> int(64 - b) if b else 0 for b in bits[:, 0]]
    w = [int(rng.integers(0, 1 << 62)) >> int(64 - b) if b else 0 for b in bits[:, 1]]
    u += [0, 1, MASK64, 1 << 63, 1 << 31, (1 << 32) - 1, 1 << 32] * 3
    w += [1, 0, MASK64, 1 << 31, (1 << 32) - 1, 1 << 32, 3] * 3
    e = rng.integers(-200, 200, (len(u), 2))
    e[:50] = e[:50] // 100  # equal and near exponents: the tie and alignment paths
    signed = [v - (1 << 64) if v >> 63 else v for v in (*u, *w)]  # the same 64 bits as int64
    rows = np.array([[a, e1, b, e2] for a, b, (e1, e2) in zip(signed[:len(u)], signed[len(u):], e, strict=True)],
                    dtype=np.int64)
    got = run(rows)
    for k, (ui, wi, (e1, e2)) in enumerate(zip(u, w, e, strict=True)):
        a, b = pf(ui, int(e1)), pf(wi, int(e2))
        s = int(rows[k, 0]) >> 2
        sq = pf_mul(pf(abs(s), int(e1)), pf(abs(s), int(e1)))
        want = [*a, *pf_mul(a, b), *pf_add(a, b), *(pf_div(a, b) if b[0] else (0, 0)), int(pf_greater(a, b)), *sq]
        assert got[k].tolist() == want, (ui, int(e1), wi, int(e2))


def test_pf_truncates_and_orders():
    assert pf(0, 5) == (0, 0) and pf(1, 0) == (1 << 31, -31) and pf((1 << 40) + 1, 0) == (1 << 31, 9)
    assert pf_add(pf(3, 0), pf(1, -40)) == pf(3, 0)  # a term below the larger's last bit is lost
    assert pf_greater(pf(1, 0), (0, 0)) and not pf_greater((0, 0), pf(1, -500))
    assert pf_div(pf(6, 0), pf(3, 0)) == pf(2, 0)


# -- the reference: a restricted union trains as the selection alone ------------------------------------------------


def test_restricted_envelope_trains_as_the_selection_alone(tasks):
    """Trainer(envelope).restrict(selection) == Trainer(the selection's own scheme): every loss, every trained
    weight and bias, over the selections a device may make (a frozen candidate between chosen ones, a deeper
    top, the classifier alone)."""
    _, model = tasks
    cfg = TrainConfig(lr=0.02)
    env = choose_envelope(model, BUDGET, cfg)
    names = [c.name for c in env.candidates]
    assert len(names) >= 3, names
    _, xq, y, *_ = transfer_start("mnist14")
    head = env.candidates[-1]
    for sel in ({names[0]: env.candidates[0].options[0], names[-1]: head.widest},
                {names[1]: env.candidates[1].options[1], names[-1]: head.widest},
                {names[-1]: head.widest}):
        union = Trainer(model, envelope_scheme(model, env), cfg)
        union.restrict(sel)
        alone = Trainer(model, Scheme({n: LayerUpdate(list(range(k)), True) for n, k in sel.items()}), cfg)
        for i in range(8):
            assert union.step(xq[i], y[i]) == alone.step(xq[i], y[i]), (sel, i)
        for n in names:
            layer = model.layer(n)
            want_w = alone.weights[n] if n in sel else layer.weight
            want_b = alone.bias[n] if n in sel else layer.bias
            assert np.array_equal(union.weights[n], want_w) and np.array_equal(union.bias[n], want_b), (sel, n)


def test_every_selection_plans_within_the_envelope(tasks):
    """The arena and trained state are planned for the envelope; every selection the device can make, planned as
    a fixed scheme of its own, needs no more (the envelope is the worst case)."""
    _, model = tasks
    cfg = TrainConfig()
    env = choose_envelope(model, BUDGET, cfg)
    peak = training_sram(model, Trainer(model, envelope_scheme(model, env), cfg)).total
    assert peak <= BUDGET
    head = env.candidates[-1]
    widths = [[0, *c.options] for c in env.candidates[:-1]]
    assert len(widths) >= 3  # the mnist14 envelope: conv2, dw3 and pw4 before the classifier
    for choice in itertools.product(*widths):
        sel = {c.name: k for c, k in zip(env.candidates, choice, strict=False) if k} | {head.name: head.widest}
        tr = Trainer(model, Scheme({n: LayerUpdate(list(range(k)), True) for n, k in sel.items()}), cfg)
        assert training_sram(model, tr).total <= peak, sel


def test_potential_pass_changes_nothing(tasks):
    _, model = tasks
    env = choose_envelope(model, BUDGET, TrainConfig())
    tr = Trainer(model, envelope_scheme(model, env), TrainConfig(lr=0.05))
    _, xq, y, *_ = transfer_start("mnist14")
    before = {n: (w.copy(), tr.bias[n].copy()) for n, w in tr.weights.items()}
    pots = ondevice.potentials(tr, env, xq, y)
    assert tr.step_count == 0 and all(np.array_equal(tr.weights[n], w) and np.array_equal(tr.bias[n], b)
                                      for n, (w, b) in before.items())
    assert all(len(p) == c.widest for p, c in zip(pots, env.candidates, strict=True))
    assert any(m for p in pots for m, _ in p)  # some channel has potential


# -- the firmware under QEMU -------------------------------------------------------------------------------------------


def _build(root: Path, task: str, board: str) -> Path:
    out = root / f"{board}-{task}"
    r = CliRunner().invoke(cli.main, ["build", "--board", board, "--model", str(root / "mnist14.json"),
                                      "--update", "on-device", "--dataset", str(root / f"{task}.npz"),
                                      "--samples", str(SAMPLES), "--steps", str(STEPS), "--lr", "0.02",
                                      "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


@needs_qemu
@pytest.mark.parametrize("board", ["stm32f746", "nrf52840"])
def test_two_tasks_two_selections_bit_exact(tasks, board):
    root, _ = tasks
    a, b = _build(root, "A", board), _build(root, "B", board)
    for f in sorted((a / "src").iterdir()):  # one firmware's C: only the embedded samples differ
        assert f.read_bytes() == (b / "src" / f.name).read_bytes(), f.name
    got = {}
    for out in (a, b):
        r = simulate(out)  # the selection, every loss and the checksum equal the reference's, or it raises
        assert r.selection and len(r.run.steps) == STEPS
        assert r.run.selected["samples"] == ondevice.ONDEVICE_SAMPLES and r.run.selected["count"] > 0
        got[out] = [s["channels"] for s in r.selection]
    assert got[a] != got[b], got
    assert got[a][-1] == got[b][-1] > 0  # the classifier always trains


@needs_qemu
def test_sim_fails_when_the_selection_differs(tasks, monkeypatch):
    """A reference that selects otherwise (the classifier alone) is caught at the selection, before any loss."""
    root, _ = tasks
    out = _build(root, "A", "stm32f746")
    monkeypatch.setattr(ondevice, "select_on_device", lambda env, pots: {env.candidates[-1].name:
                                                                          env.candidates[-1].widest})
    with pytest.raises(MismatchError, match="chose"):
        simulate(out)


@needs_qemu
@pytest.mark.parametrize("extreme", ["WIDEST", "HEAD"])
def test_extreme_selections_train_bit_exact_in_the_planned_memory(tasks, tmp_path, extreme):
    """Forced to an extreme of the envelope after its own selection pass (-DTG_TEST_SELECT_*), the firmware trains
    bit-exact with the reference restricted alike, in its static arena and within its stack."""
    _, model = tasks
    cfg = TrainConfig(lr=0.02)
    env = choose_envelope(model, BUDGET, cfg)
    scheme = envelope_scheme(model, env)
    scheme.ondevice = env.to_json()
    out = tmp_path / extreme
    write_project(model, load_board("stm32f746"), out, Trainer(model, scheme, cfg),
                  FirmwareOptions(samples=4, train=True, train_steps=6, extra_cflags=(f"-DTG_TEST_SELECT_{extreme}",)))
    result, _ = run_firmware(out, "stm32f746")
    forced = [c.widest if extreme == "WIDEST" or j == len(env.candidates) - 1 else 0
              for j, c in enumerate(env.candidates)]
    assert result.selection == forced
    manifest = json.loads((out / "tinygen.json").read_text())
    _, trainer = load_trainer(out, manifest)
    trainer.restrict({c.name: k for c, k in zip(env.candidates, forced, strict=True) if k})
    trainer.scheme.ondevice = None  # the selection is forced: replay it as it is
    with np.load(out / FW_DIR / SAMPLES_FILE) as z:
        x, labels = z["x"], z["labels"].astype(int)
    expect = expect_training(trainer, x, labels, result.step_samples, manifest["train"]["params"])
    compare_training(result, expect, "the firmware")
    assert result.exit_status == 0 and 0 < result.stack["used"] <= result.stack["size"]


def test_select_lines_parse_and_robot_requires_them():
    from tinygen.codegen.firmware import robot_lines
    from tinygen.verify.compare import TrainingExpectation
    from tinygen.verify.runner import firmware_result, parse_output

    fw = parse_output("TG select candidate=1 channels=0 layer=3\nTG select candidate=0 channels=8 layer=1\n"
                      "TG selected samples=8 instr=1234\nTG step 0 sample=0 label=1 loss=5 instr=9\n")
    assert firmware_result(fw, "qemu", 0, 0.0).selection == [8, 0]
    assert fw.selected == {"samples": 8, "count": 1234}
    lines = robot_lines("m", load_board("stm32f746"), [1], ["0x0"], TrainingExpectation([5], 7, selection=[8, 0]),
                        FirmwareOptions(train=True, train_steps=1))
    at = lines.index("TG select candidate=0 channels=8 ")
    assert lines[at:at + 4] == ["TG select candidate=0 channels=8 ", "TG select candidate=1 channels=0 ",
                                "TG selected samples=", "TG step 0 sample=0 label=1 loss=5 "]


@pytest.mark.parametrize("extra", [["--checkpoint-every", "2"], ["--filter-r", "auto"], ["--reorder-channels"]])
def test_on_device_refuses_what_it_does_not_combine_with(tmp_path, extra):
    r = CliRunner().invoke(cli.main, ["build", "--board", "stm32f746", "--model", "digits-cnn", "--classes", "5",
                                      "--update", "on-device", *extra, "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "--update on-device does not yet combine" in r.output, r.output
    assert "Traceback" not in r.output


def test_top_channels_takes_the_most_potential():
    """The masks the bench measures: the greedy over ranked channels takes the channel of most potential, where
    the device's prefix takes the first."""
    from tinygen.bench.ondevice import top_channels
    from tinygen.training.ondevice import Candidate, Envelope, select_on_device

    env = Envelope([Candidate("a", 0, 4, [1, 2, 4], [10, 20, 40], [1, 2, 4], [0, 5]),
                    Candidate("fc", 1, 2, [2], [8], [1], [0, 0])], samples=8, macs_budget=7, total_macs=10)
    pots = [[pf(1, 0), pf(9, 0), (0, 0), pf(5, 0)], [pf(1, 0), pf(1, 0)]]
    assert select_on_device(env, pots) == {"a": 1, "fc": 2}  # one more MAC than the budget stops a at 1
    assert top_channels(env, pots) == {"a": [1], "fc": [0, 1]}


def test_host_verify_where_the_device_leaves_its_earliest_candidate_frozen(tmp_path):
    """`tinygen verify` (host C, ASan+UBSan) on a digits build whose selection leaves the earliest candidate
    frozen, so the backward pass ends early: every loss, record and parameter as the reference; the records of
    the layers before the earliest choice are the ones left out."""
    from tinygen.frontends.inputs import training_samples
    from tinygen.verify.check import verify_training

    out = tmp_path / "b"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "FirmwareOptions", lambda **kw: FirmwareOptions(**kw, compile=False))
        r = CliRunner().invoke(cli.main, ["build", "--board", "stm32f746", "--model", "digits-cnn", "--classes", "5",
                                          "--update", "on-device", "--samples", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "tinygen.json").read_text())
    model, trainer = load_trainer(out, manifest)
    x, y, _ = training_samples(model, 12)
    chosen = ondevice.reference_selection(trainer, x, y)
    first = next(iter(trainer.scheme.layers))
    assert first not in chosen, chosen  # the case under test: the earliest candidate stays frozen
    verify_training(out, steps=12)


@pytest.mark.parametrize("budget_kb", ["16", "18"])
def test_host_verify_with_split_candidates(tmp_path, budget_kb):
    """Budgets that leave a candidate's widest short of all its channels (16 KB: dw3 at 4 of 16, depthwise; 18 KB:
    conv2 at 4 of 8, split within every filter): the potential and update kernels of the split storage, host C
    (ASan+UBSan) against the reference."""
    from tinygen.verify.check import verify_training

    out = tmp_path / "b"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "FirmwareOptions", lambda **kw: FirmwareOptions(**kw, compile=False))
        r = CliRunner().invoke(cli.main, ["build", "--board", "stm32f746", "--model", "digits-cnn", "--classes", "5",
                                          "--update", "on-device", "--budget-kb", budget_kb, "--samples", "4",
                                          "--out", str(out)])
    assert r.exit_code == 0, r.output
    envelope = json.loads((out / "model" / "scheme.json").read_text())["ondevice"]
    assert any(c["options"][-1] < c["channels"] for c in envelope["candidates"])
    verify_training(out, steps=12)
