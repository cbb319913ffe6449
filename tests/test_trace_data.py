"""scripts/trace_data.py: the model's own train traces as GSM8K-format SFT data."""

from __future__ import annotations

import json
import subprocess
import sys

from bigthoughts.data import load_gsm8k
from bigthoughts.training.sft_data import completion_text

SCRIPT = "scripts/trace_data.py"


def _samples(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_traces_become_gsm8k_rows_that_sft_reads_back(tmp_path, gsm8k_dir):
    first = load_gsm8k("train", gsm8k_dir, limit=2)
    right = (f"<reasoning>He has <<2*3=6>>6 and then\n<<6+1=7>>7.</reasoning>\n"
             f"<answer>{first[0].gold}</answer>")
    wrong = "<reasoning>So <<1+1=2>>2.</reasoning>\n<answer>999999</answer>"
    broken = "<reasoning>cut off at the token cap <<1+"
    grpo = _samples(tmp_path / "samples.jsonl", [
        {"step": 1, "completions": [{"example": first[0].id, "text": right},
                                    {"example": first[0].id, "text": right},  # repeated
                                    {"example": first[1].id, "text": wrong},
                                    {"example": first[1].id, "text": broken}]}])
    out = tmp_path / "traces.jsonl"
    done = subprocess.run([sys.executable, SCRIPT, "--data", str(gsm8k_dir), "--out", str(out),
                           str(grpo)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "2 distinct traces on 2 questions" in done.stdout
    rows = load_gsm8k("train", out)
    assert [r.question for r in rows] == [first[0].question, first[1].question]
    assert rows[1].gold == "999999"  # the trace's own answer, as it wrote it
    assert completion_text(rows[0]) == right  # SFT rebuilds exactly the trace

    done = subprocess.run([sys.executable, SCRIPT, "--data", str(gsm8k_dir), "--out", str(out),
                           "--right-only", str(grpo)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [r.question for r in load_gsm8k("train", out)] == [first[0].question]


def test_test_questions_and_empty_sources_are_refused(tmp_path, gsm8k_dir):
    evaluated = _samples(tmp_path / "results.jsonl", [
        {"id": "test-0001", "traces": [{"text": "<reasoning>x</reasoning><answer>1</answer>"}]}])
    out = tmp_path / "traces.jsonl"
    done = subprocess.run([sys.executable, SCRIPT, "--data", str(gsm8k_dir), "--out", str(out),
                           str(evaluated)], capture_output=True, text=True)
    assert done.returncode == 2 and "never be trained on" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
    empty = _samples(tmp_path / "empty.jsonl", [{"step": 1}])
    done = subprocess.run([sys.executable, SCRIPT, "--data", str(gsm8k_dir), "--out", str(out),
                           str(empty)], capture_output=True, text=True)
    assert done.returncode == 2 and "holds no traces" in done.stderr


def test_eval_results_are_read_checked_against_train_and_written_anywhere(tmp_path, gsm8k_dir):
    first = load_gsm8k("train", gsm8k_dir, limit=1)[0]
    trace = f"<reasoning>So <<2*3=6>>6.</reasoning>\n<answer>{first.gold}</answer>"
    evaluated = _samples(tmp_path / "results.jsonl", [
        {"id": first.id, "question": first.question,
         "traces": [{"text": trace}, {"text": trace.replace("So", "\n So")}]}])
    out = tmp_path / "new" / "folder" / "traces.jsonl"  # folders are made
    done = subprocess.run([sys.executable, SCRIPT, "--data", str(gsm8k_dir), "--out", str(out),
                           str(evaluated)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "1 distinct traces on 1 questions" in done.stdout  # same row after spacing: once
    assert [r.question for r in load_gsm8k("train", out)] == [first.question]
    # a results.jsonl whose question text is not train's (another copy, or test data)
    other = _samples(tmp_path / "other.jsonl", [
        {"id": first.id, "question": "something else", "traces": [{"text": trace}]}])
    done = subprocess.run([sys.executable, SCRIPT, "--data", str(gsm8k_dir), "--out", str(out),
                           str(other)], capture_output=True, text=True)
    assert done.returncode == 2 and "different copy of the data" in done.stderr


def test_malformed_sources_get_one_line_errors(tmp_path, gsm8k_dir):
    out = tmp_path / "traces.jsonl"
    for rows in ([{"id": 5, "traces": [{"text": "x"}]}],
                 [{"step": 1, "completions": None}],
                 [{"step": 1, "completions": ["train-0001 text"]}],
                 [{"step": 1, "completions": [{"example": "train-0001"}]}],
                 [["not", "an", "object"]]):
        bad = _samples(tmp_path / "bad.jsonl", rows)
        done = subprocess.run([sys.executable, SCRIPT, "--data", str(gsm8k_dir), "--out",
                               str(out), str(bad)], capture_output=True, text=True)
        assert done.returncode == 2, rows
        assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr, rows
        assert not out.exists()
