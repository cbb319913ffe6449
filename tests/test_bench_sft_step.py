"""benchmarks/sft_step.py: its bookkeeping (no model is loaded here)."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.sft_step import _FixedOrder, _summary
from bigthoughts.training.sft_data import SFTExample

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sft_step.py"


def _pair(prompt: int, completion: int) -> SFTExample:
    return SFTExample(id="x", prompt_ids=(2,) * prompt, completion_ids=(5,) * completion)


def test_fixed_order_gives_the_prepared_batches_in_order():
    order = _FixedOrder(6, 2)
    assert [order.next() for _ in range(3)] == [[0, 1], [2, 3], [4, 5]]
    assert order.position == 3


def test_summary_counts_real_tokens_of_the_timed_steps_only():
    batches = [[_pair(100, 100)], [_pair(10, 5), _pair(20, 15)], [_pair(30, 20)]]
    out = _summary([99.0, 2.0, 3.0], [50.0, 1.0, 2.0], batches, [1.5, 1.2, 1.1])
    # timed: steps 2 and 3 -> (15 + 35 + 50) tokens, (5 + 15 + 20) completion, 5 s, 3 CPU s
    assert out["steps"] == 2
    assert out["step_s"] == pytest.approx(2.5)
    assert out["cpu_s_per_step"] == pytest.approx(1.5)
    assert out["tokens_per_s"] == pytest.approx(100 / 5)
    assert out["completion_tokens_per_s"] == pytest.approx(40 / 5)
    assert out["first_step_s"] == 99.0 and out["first_loss"] == 1.5


def test_summary_refuses_a_step_count_that_does_not_match_the_batches():
    with pytest.raises(RuntimeError, match="timed 2 steps for 3 batches"):
        _summary([1.0, 2.0], [1.0, 2.0], [[_pair(1, 1)]] * 3, [])


@pytest.mark.parametrize("argv, message", [(["--sides", "ours,nope"], "unknown side"),
                                           (["--steps", "0"], "--steps must be >= 1")])
def test_bad_arguments_end_in_one_usage_error(argv, message):
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
