"""Report: tables, McNemar and plots from hand-written run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bigthoughts.evaluation.evaluate import RunDirError
from bigthoughts.evaluation.report import PLOTS, load_run, make_report, single_pass_baselines


def trace(answer: str | None, temperature: float) -> dict:
    text = f"<reasoning>r</reasoning>\n<answer>{answer}</answer>" if answer else "no idea"
    return {"temperature": temperature, "text": text, "answer": answer,
            "strict_answer": answer, "format_strict": answer is not None,
            "format_lenient": answer is not None,
            "failure_bucket": None if answer else "no_answer_tag", "tokens": 20,
            "logprob": -5.0, "finish_reason": "stop"}


def record(qid: str, gold: str, answers: list[str | None], temps: list[float]) -> dict:
    votes = [a for a in answers if a is not None]
    winner = max(votes, key=votes.count) if votes else None
    return {"id": qid, "question": f"question {qid}", "gold": gold, "prompt_style": "fewshot",
            "traces": [trace(a, t) for a, t in zip(answers, temps, strict=True)],
            "vote": {"answer": winner, "agreement": votes.count(winner) / len(answers)
                     if votes else 0.0,
                     "counts": {a: votes.count(a) for a in set(votes)},
                     "samples_used": len(answers)},
            "prediction": winner, "correct": winner == gold, "seconds": 1.0}


def write_run(path: Path, records: list[dict], summary: dict) -> Path:
    path.mkdir(parents=True)
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def summary(mode: str, accuracy: float, ci: list[float], **extra) -> dict:
    return {"n": 10, "accuracy": accuracy, "accuracy_ci95": ci, "mode": mode,
            "model": {"name": "tiny", "source": "x"}, "prompt_note": "base model: 2-shot",
            **extra}


@pytest.fixture()
def runs(tmp_path) -> list[Path]:
    """Single: right on q0-q2 (3/10). Vote: right on q1-q7 (7/10), 3 traces each."""
    single = [record(f"q{i}", "1", ["1" if i < 3 else "2"], [0.0]) for i in range(10)]
    vote = []
    for i in range(10):
        if i == 0:
            answers = ["2", "2", None]
        elif i < 8:
            answers = ["1", "1", "3"] if i % 2 else ["3", "1", "1"]
        else:
            answers = ["2", "4", "5"]
        vote.append(record(f"q{i}", "1", answers, [0.2, 0.6, 1.0]))
    a = write_run(tmp_path / "single", single, summary(
        "single", 0.3, [0.1078, 0.6032], format_strict=0.45, format_lenient=0.9,
        seconds_per_question={"mean": 1.234, "p50": 1.2, "p95": 2.0},
        samples_per_question=1.0, tokens_per_second=42.5))
    b = write_run(tmp_path / "vote", vote, summary(
        "vote", 0.7, [0.3968, 0.8922], format_strict=0.9, format_lenient=0.95,
        seconds_per_question={"mean": 3.5, "p50": 3.0, "p95": 6.0},
        samples_per_question=3.0, tokens_per_second=17.25))
    return [a, b]


def test_report_table_mcnemar_and_plots(runs, tmp_path):
    out = tmp_path / "report"
    path = make_report(runs, out)
    assert path == out / "report.md"
    md = path.read_text()
    assert "| metric | single · tiny | vote · tiny |" in md
    assert "| accuracy | 30.0% (95% CI 10.8%–60.3%) | 70.0% (95% CI 39.7%–89.2%) |" in md
    assert "| strict format compliance | 45.0% | 90.0% |" in md
    assert "| lenient format compliance | 90.0% | 95.0% |" in md
    assert "| seconds per question | 1.23 | 3.50 |" in md
    assert "| samples per question | 1.00 | 3.00 |" in md
    assert "| generated tokens/s | 42.5 | 17.2 |" in md
    # b01 = q3..q7 (single wrong, vote right) = 5, b10 = q0 = 1:
    # exact p = 2 * P(X <= 1), X ~ Bin(6, 1/2) = 2 * 7/64 = 0.21875. d = 4/10.
    # Wald: var = (0.6 - 0.16) / 10 -> half width 1.96 * sqrt(0.044) = 0.4111.
    assert "| single · tiny | vote · tiny | 10 | 5 | 1 | exact | 0.2188 | " \
           "+40.0 pp (-1.1 to +81.1) |" in md
    report = json.loads((out / "report.json").read_text())
    [pair] = report["pairs"]
    assert (pair["b01"], pair["b10"]) == (5, 1)
    assert pair["p_value"] == pytest.approx(0.21875)
    assert pair["diff"] == pytest.approx(0.4)
    assert [r["accuracy"] for r in report["runs"]] == [0.3, 0.7]
    assert "### Strict format compliance of the first trace, paired" in md
    for name in PLOTS:
        assert (out / name).stat().st_size > 5_000, name
        assert f"![{name}]({name})" in md


def test_plots_without_vote_runs_are_skipped(runs, tmp_path):
    path = make_report(runs[:1], tmp_path / "one")
    md = path.read_text()
    assert "Only one run: nothing to compare." in md
    assert (tmp_path / "one" / "accuracy_ci.png").stat().st_size > 5_000
    for name in ("maj_at_k.png", "agreement_hist.png", "coverage.png"):
        assert f"`{name}` skipped: no run has more than one trace" in md
        assert not (tmp_path / "one" / name).exists()


def test_same_labels_fall_back_to_dir_names(runs, tmp_path):
    twin = tmp_path / "twin"
    twin.mkdir()
    for name in ("results.jsonl", "summary.json"):
        (twin / name).write_bytes((runs[0] / name).read_bytes())
    md = make_report([runs[0], twin], tmp_path / "r").read_text()
    assert "| metric | single | twin |" in md
    assert "| single | twin | 10 | 0 | 0 | exact | 1.0000 | +0.0 pp (+0.0 to +0.0) |" in md
    # one collision renames every run, the vote run too: one naming scheme per report
    md = make_report([runs[0], twin, runs[1]], tmp_path / "r3").read_text()
    assert "| metric | single | twin | vote |" in md
    assert "| single | vote | 10 | 5 | 1 | exact | 0.2188 |" in md


def test_runs_list_names_the_adapter_and_corrects_old_notes(runs, tmp_path):
    """An adapter run recorded as "base model" (older runs) is listed as fine-tuned."""
    md = make_report(runs, tmp_path / "plain").read_text()
    assert "- **single · tiny**: `" in md and md.count("(base model: 2-shot)") == 2
    for run, note in ((runs[0], "base model: 2-shot"),
                      (runs[1], "fine-tuned base: zero-shot instruction prompt")):
        data = json.loads((run / "summary.json").read_text())
        data["model"]["source"] = "llama.cpp:base.gguf#sha256=ab + sft.safetensors#sha256=cd"
        data["prompt_note"] = note
        data["config"] = {"calculator": run is runs[1]}
        (run / "summary.json").write_text(json.dumps(data))
    md = make_report(runs, tmp_path / "r").read_text()
    assert "(fine-tuned base: 2-shot; adapter `sft.safetensors`)" in md
    assert ("(fine-tuned base: zero-shot instruction prompt; adapter `sft.safetensors`; "
            "calculator on)") in md
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [r["adapter"] for r in report["runs"]] == ["sft.safetensors"] * 2


def test_greedy_baselines_are_taken_on_the_vote_runs_questions(runs, tmp_path):
    """A vote on the first 5 questions is set beside the greedy pass on those 5 (q0-q2
    right: 60%), not beside its accuracy on all 10 (30%)."""
    records = [json.loads(line) for line in (runs[1] / "results.jsonl").read_text().splitlines()]
    short = write_run(tmp_path / "vote5", records[:5], json.loads(
        (runs[1] / "summary.json").read_text()))
    single, vote5 = load_run(runs[0]), load_run(short)
    ids, lines = single_pass_baselines([single, vote5])
    assert ids == {f"q{i}" for i in range(5)}
    assert [(run.label, acc) for run, acc in lines] == [(single.label, 0.6)]
    # a single-pass run that misses some of those questions gives no line
    partial = write_run(tmp_path / "single3", single.records[:3], single.summary)
    assert single_pass_baselines([load_run(partial), vote5])[1] == []
    assert single_pass_baselines([single]) == (set(), [])
    # only the greedy pass of the same model: another adapter or the calculator is not one
    other = {**single.summary, "model": {"source": "m.gguf + other.safetensors#sha256=ab12"}}
    assert single_pass_baselines([load_run(write_run(tmp_path / "other", single.records,
                                                     other)), vote5])[1] == []
    calc = {**single.summary, "config": {"calculator": True}}
    assert single_pass_baselines([load_run(write_run(tmp_path / "calc", single.records,
                                                     calc)), vote5])[1] == []
    md = make_report([runs[0], short], tmp_path / "r").read_text()
    assert "![maj_at_k.png](maj_at_k.png)" in md
    assert (tmp_path / "r" / "maj_at_k.png").stat().st_size > 5_000


def test_missing_or_corrupt_run_dirs_name_the_dir(runs, tmp_path):
    with pytest.raises(RunDirError, match=r"run directory .*nowhere does not exist"):
        make_report([runs[0], tmp_path / "nowhere"], tmp_path / "r")
    (runs[1] / "summary.json").write_text("{not json")
    with pytest.raises(RunDirError, match=r"vote: summary.json is unreadable"):
        make_report(runs, tmp_path / "r")
    (runs[1] / "summary.json").unlink()
    with pytest.raises(RunDirError, match=r"vote has no summary.json"):
        make_report(runs, tmp_path / "r")


def test_paired_format_test_counts_first_traces(tmp_path):
    # A: strict first trace on q0..q3; B: on q2..q9 -> b01 = q4..q9 = 6, b10 = q0, q1 = 2
    a = write_run(tmp_path / "a", [record(f"q{i}", "1", ["1" if i < 4 else None], [0.0])
                                   for i in range(10)], summary("single", 0.4, [0.1, 0.7]))
    b = write_run(tmp_path / "b", [record(f"q{i}", "1", ["2" if i >= 2 else None, "1"],
                                          [0.0, 1.0]) for i in range(10)],
                  summary("vote", 0.0, [0.0, 0.3]))
    report = json.loads((make_report([a, b], tmp_path / "r").parent / "report.json").read_text())
    [fpair] = report["format_pairs"]
    assert (fpair["b01"], fpair["b10"]) == (6, 2)
    # exact: 2 * P(X <= 2), X ~ Bin(8, 1/2) = 2 * 37/256
    assert fpair["p_value"] == pytest.approx(74 / 256)
    assert fpair["diff"] == pytest.approx(0.4)


def test_right_answer_wrong_steps_row_next_to_accuracy(runs, tmp_path):
    summary_path = runs[1] / "summary.json"
    data = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps({**data, "right_answer_wrong_steps": 0.125}))
    md = make_report(runs, tmp_path / "r").read_text().splitlines()
    row = md.index("| right answer, wrong steps | n/a | 12.5% |")  # older run: n/a
    assert md[row - 1].startswith("| accuracy |")
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [r["right_answer_wrong_steps"] for r in report["runs"]] == [None, 0.125]


def test_a_run_whose_results_repeat_a_question_is_refused(tmp_path):
    """Two writers into one directory (or concatenated files) would count a question
    twice while the summary says otherwise: report names the id instead."""
    twice = [record("q0", "1", ["1"], [0.0]), record("q1", "1", ["2"], [0.0]),
             record("q0", "1", ["1"], [0.0])]
    run = write_run(tmp_path / "twice", twice, summary("single", 0.5, [0.1, 0.9]))
    with pytest.raises(RunDirError, match="question 'q0' appears twice"):
        load_run(run)
