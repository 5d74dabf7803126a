"""It learns: on the digits transfer task (pretrained on 0-4, trained on 5-9), the bit-exact integer
training clearly beats no training and tracks float SGD of the same layers. The full comparison,
with more data and sample orders, is `tinygen bench transfer` (README, Results)."""

from __future__ import annotations

from tinygen.bench import transfer


def test_integer_training_learns_the_held_out_task():
    none = transfer.run("digits", "last-2", "none").accuracy
    integer = transfer.run("digits", "last-2", "int", limit=400, epochs=2).accuracy
    floating = transfer.run("digits", "last-2", "float", limit=400, epochs=2).accuracy
    assert none < 0.35
    assert integer > none + 0.25
    assert abs(integer - floating) < 0.06


def test_host_c_training_predicts_what_the_reference_predicts():
    """The benchmarks' fast path (the generated C, optimised, on the host) trains to the same classes."""
    import numpy as np

    from tinygen.ir.scheme import TrainConfig, parse_update
    from tinygen.reference.forward import run_model
    from tinygen.reference.training import Trainer
    from tinygen.verify.host_train import c_train_predict

    model, xq, y, xq_te, _, _, _ = transfer.transfer_start("digits")
    scheme = parse_update("last-2", model, 2)
    order = np.random.default_rng(1).permutation(len(y))[:120]
    got = c_train_predict(model, scheme, TrainConfig(lr=0.005), xq[order], y[order], xq_te[:80])
    tr = Trainer(model, scheme, TrainConfig(lr=0.005))
    for i in order:
        tr.step(xq[i], y[i])
    trained = tr.trained_model()
    want = np.array([int(np.argmax(run_model(trained, xi))) for xi in xq_te[:80]])
    assert np.array_equal(got, want)
    assert len(set(want.tolist())) > 1  # a trained head, not a constant answer


def test_a_partial_mnist128_run_replaces_only_its_own_rows(tmp_path):
    """`tinygen bench transfer --task mnist128 --only LABEL` (or `--int-only`) updates its own rows in the saved
    JSON - those of its updates and methods - and keeps the others (a full run writes the file whole)."""
    import json

    from tinygen.bench import transfer128

    def rows(update, acc, methods=("int", "float"), scheme="s"):
        return [{"model": "m", "update": update, "method": m, "seed": s, "accuracy": acc, "scheme": scheme}
                for s in range(2) for m in methods]
    transfer128.save(rows("a", 0.5) + rows("b", 0.5), "mnist128", tmp_path)
    path, dropped = transfer128.save(rows("b", 0.9), "mnist128", tmp_path, merge=True)
    got = {(r["update"], r["method"], r["accuracy"]) for r in json.loads(path.read_text())["results"]}
    assert got == {("a", "int", 0.5), ("a", "float", 0.5), ("b", "int", 0.9), ("b", "float", 0.9)}
    assert dropped == []
    path, dropped = transfer128.save(rows("a", 0.7, ("int",)), "mnist128", tmp_path, merge=True)  # --int-only
    got = {(r["update"], r["method"], r["accuracy"]) for r in json.loads(path.read_text())["results"]}
    assert got == {("a", "int", 0.7), ("a", "float", 0.5), ("b", "int", 0.9), ("b", "float", 0.9)}
    # `auto` chose another scheme this time: its float rows no longer describe the same training
    path, dropped = transfer128.save(rows("b", 0.8, ("int",), scheme="t"), "mnist128", tmp_path, merge=True)
    got = {(r["update"], r["method"], r["accuracy"]) for r in json.loads(path.read_text())["results"]}
    assert got == {("a", "int", 0.7), ("a", "float", 0.5), ("b", "int", 0.8)} and dropped == [("m", "b")]
    transfer128.save(rows("c", 0.1), "mnist128", tmp_path)
    assert {r["update"] for r in json.loads(path.read_text())["results"]} == {"c"}


def test_bench_transfer_runs_each_requested_filter(monkeypatch, tmp_path):
    """`tinygen bench transfer` on a small task: the wiring from the CLI to each run (the runs themselves stubbed:
    a real one trains for minutes), r = 1 always, the trained layers' r and auto, and the path filter."""
    from click.testing import CliRunner

    from tinygen.cli import main

    calls = []

    def fake_run(task, update, method, filter_r=1, epochs=None, limit=None, seed=0, path_r=1):
        calls.append((method, filter_r, path_r))
        label = method if method != "int" else f"int r={filter_r}" + (f" path r={path_r}" if path_r > 1 else "")
        return transfer.TransferResult(task, update, label, 0.5, 10, 0.0)

    monkeypatch.setattr(transfer, "run", fake_run)
    monkeypatch.setattr(transfer, "transfer_start", lambda task: (type("M", (), {"name": "stub"})(),))
    r = CliRunner().invoke(main, ["bench", "transfer", "--task", "mnist14", "--update", "layers:conv1,fc",
                                  "--filter-r", "auto", "--path-filter-r", "2", "--seeds", "2", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert {c for c in calls if c[0] == "int"} == {("int", 1, 1), ("int", "auto", 1), ("int", 1, 2)}
    assert "path r=2 cost" in r.output and (tmp_path / "transfer_mnist14.json").is_file()
