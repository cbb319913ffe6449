"""The command line: user mistakes give one-line errors (exit 2); the real `ask` works."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bigthoughts.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv, message", [
    (["ask", "2+2?", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["ask", "2+2?", "--model", "gemma2-2b-it"], "is not embedded: pass a path"),
    (["ask", "   "], "the question is empty"),
    (["eval", "--out", "x", "--data", "/nonexistent/gsm8k"], "GSM8K data not found"),
    (["train", "--config", "configs/gemma3-270m-cpu.yaml", "grpo.betta=1"], "unknown key"),
    (["train", "--config", "/nonexistent.yaml"], "nonexistent.yaml"),
    (["report", "/nonexistent/run"], "/nonexistent/run"),
    (["train-report", "/nonexistent/run"], "no metrics.jsonl"),
    (["train-report", "tests/golden"], "no metrics.jsonl"),
])
def test_user_mistakes_are_one_line_errors(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err


@pytest.mark.real
def test_ask_on_the_real_model_votes_over_the_ladder(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(
        [sys.executable, "-m", "bigthoughts.cli", "ask", "--json", "--max-new-tokens", "64",
         "Tom has 3 apples and buys 4 more apples. How many apples does Tom have now?"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert [t["temperature"] for t in out["traces"]] == [0.2, 0.4, 0.6, 0.8, 1.0]
    answers = [t["answer"] for t in out["traces"] if t["answer"] is not None]
    assert sum(out["counts"].values()) == len(answers)
    if answers:
        assert out["answer"] in out["counts"]
        assert out["agreement"] == out["counts"][out["answer"]] / len(answers)
    assert all(0 < t["tokens"] <= 64 for t in out["traces"])


def test_train_report_on_an_empty_log_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("")
    assert main(["train-report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds no training steps yet" in err, err
