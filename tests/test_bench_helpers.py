"""The bench's shared helpers (bench/common.py): a goal written once gives the same Row as the op,
target and goal written out; paired samples alternate their order."""

from __future__ import annotations

import pytest

from bench.common import Row, alternating, goal_row


def test_a_goal_written_once_makes_the_row_written_out():
    assert goal_row("36.api_share", "f", [0.9], ">= 0.8", note="n") == Row(
        "36.api_share", "f", values=[0.9], op=">=", target=0.8, goal=">= 0.8", note="n"
    )
    assert goal_row("3.4", "f", [1.0], "<= 1.10 (reference)", unit="x") == Row(
        "3.4", "f", unit="x", values=[1.0], op="<=", target=1.10, goal="<= 1.10 (reference)"
    )
    assert goal_row("9.1", "f", [2.0], "< 5 s", unit="s").finish().status == "pass"
    mark = goal_row("36.mark_share", "f", [0.0], "= 0")  # a share that cannot go below 0
    assert (mark.op, mark.target, mark.goal) == ("<=", 0.0, "= 0")
    with pytest.raises(ValueError, match="does not start with an operator"):
        goal_row("x", "f", [1.0], "well under the ~500 MB of a loaded model")


def test_paired_samples_alternate_their_order():
    order: list[str] = []

    def sample(side: str) -> str:
        order.append(side)
        return side.upper()

    pairs = alternating(3, sample)
    assert pairs == [{"1x": "1X", "10x": "10X"}] * 3
    assert order == ["1x", "10x", "10x", "1x", "1x", "10x"]
