"""It learns: on the digits transfer task (pretrained on 0-4, trained on 5-9), the bit-exact integer
training clearly beats no training and tracks float SGD of the same layers. The full comparison,
with more data and sample orders, is `tinygen bench transfer` (README, Results)."""

from __future__ import annotations

from tinygen import transfer


def test_integer_training_learns_the_held_out_task():
    none = transfer.run("digits", "last-2", "none").accuracy
    integer = transfer.run("digits", "last-2", "int", limit=400, epochs=2).accuracy
    floating = transfer.run("digits", "last-2", "float", limit=400, epochs=2).accuracy
    assert none < 0.35
    assert integer > none + 0.25
    assert abs(integer - floating) < 0.06
