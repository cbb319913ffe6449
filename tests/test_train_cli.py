"""`bigthoughts train` through the real CLI code path on a tiny random Gemma (the model
loader is swapped for the tiny model; data is a small GSM8K-shaped directory):
periodic evaluation after updates, progress lines, resume notice, and expected
failures as one-line errors that write nothing."""

import json
from pathlib import Path

import pytest

import bigthoughts.training as training
import bigthoughts.training.adapter as adapter
from bigthoughts.cli import main
from tests.train_toy import toy_loaded

RECIPE = """\
model: {name: tiny}
data: {style: zeroshot, shots: 0}
lora: {rank: 4, alpha: 8.0}
grpo: {num_generations: 2, max_new_tokens: 8, beta: 0.04}
optim: {learning_rate: 0.03, warmup_steps: 1}
prompts_per_step: 2
max_steps: 4
save_every: 2
eval_examples: 2
"""


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """(recipe path, data dir, run dir) with the model loader swapped for the tiny model."""
    data = tmp_path / "gsm8k"
    data.mkdir()
    for split in ("train", "test"):
        rows = [{"question": f"What is {i} plus 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}
                for i in range(6)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE)
    monkeypatch.setattr(adapter, "load_model", lambda *a, **k: toy_loaded())
    return recipe, data, tmp_path / "run"


def train_cli(setup, *extra):
    recipe, data, out = setup
    return main(["train", "--config", str(recipe), "--data", str(data), "--out", str(out),
                 *extra])


def records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_periodic_evaluation_after_updates_and_resume(setup, capsys):
    out = setup[2]
    assert train_cli(setup, "--max-steps", "2", "eval_every=1") == 0
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("step ")]
    assert [x.split(" | ")[0] for x in lines] == ["step 1/2", "step 2/2"], err
    assert all(" | reward " in x and " | kl " in x and " s/step | ETA " in x for x in lines)
    evals = [r for r in records(out) if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 1, 2]  # step 0: the curve's origin
    assert all(0 <= r["eval/accuracy"] <= 1 for r in evals)
    assert train_cli(setup, "--max-steps", "3", "eval_every=1") == 0
    err = capsys.readouterr().err
    assert "resuming from step 2 (" in err and "step_000002" in err, err
    assert [x.split(" | ")[0] for x in err.splitlines() if x.startswith("step ")] == ["step 3/3"]
    steps = [r["step"] for r in records(out) if "reward_mean" in r]
    assert steps == [1, 2, 3]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("extra, message", [
    (["--max-steps", "-1"], "--max-steps must be >= 0, got -1"),
    (["optim.learning_rate=-0.001"], "optim.learning_rate must be > 0"),
    (["optim.learning_rate=0"], "optim.learning_rate must be > 0"),
    (["grpo.max_new_tokens=0"], "grpo.max_new_tokens must be >= 1"),
    (["grpo.temperature=-1"], "grpo.temperature must be >= 0"),
    (["eval_every=-1"], "eval_every >= 0"),
    (["data.limit=0"], "data.limit must be >= 1"),
    (["--time-budget", "soon"], "cannot read duration 'soon'"),
])
def test_bad_values_are_refused_before_anything_is_written(setup, capsys, extra, message):
    assert train_cli(setup, *extra) == 2
    assert message in one_line_error(capsys)
    assert not setup[2].exists()


def test_missing_data_is_refused_before_anything_is_written(setup, capsys, tmp_path):
    recipe, _, out = setup
    assert main(["train", "--config", str(recipe), "--data", str(tmp_path / "nope"),
                 "--out", str(out)]) == 2
    assert "GSM8K data not found" in one_line_error(capsys)
    assert not out.exists()


def test_a_different_run_in_the_directory_names_the_key_and_both_values(setup, capsys):
    out = setup[2]
    assert train_cli(setup, "--max-steps", "0") == 0
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert train_cli(setup, "--max-steps", "1", "grpo.beta=0.0") == 2
    err = one_line_error(capsys)
    assert "grpo.beta: 0.04 (saved) != 0.0 (now)" in err
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.parametrize("exc", [MemoryError(), RuntimeError(
    "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123 bytes."),
    RuntimeError("Out of memory allocating 31525109760 bytes.")])  # XLA on the CPU
def test_out_of_memory_is_one_line_naming_the_knobs(setup, capsys, monkeypatch, exc):
    def boom(self):
        raise exc
    monkeypatch.setattr(training.GRPOTrainer, "train_step", boom)
    assert train_cli(setup, "--max-steps", "1") == 2
    err = one_line_error(capsys)
    assert "out of memory" in err and "grpo.max_new_tokens" in err


def test_a_crash_before_the_first_checkpoint_leaves_each_step_once(setup, capsys, monkeypatch):
    out = setup[2]

    def crash(self):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(training.GRPOTrainer, "save", crash)
        assert train_cli(setup, "--max-steps", "2", "save_every=5") == 130
    assert [r["step"] for r in records(out)] == [1, 2]  # logged, never checkpointed
    assert train_cli(setup, "--max-steps", "2", "save_every=5") == 0
    assert [r["step"] for r in records(out)] == [1, 2]
    samples = [json.loads(x)["step"] for x in (out / "samples.jsonl").read_text().splitlines()]
    assert samples == [1, 2]


def test_a_second_train_into_a_busy_run_directory_is_one_line(setup, capsys):
    from tests.test_run_lock import _holder

    proc = _holder(setup[2])
    try:
        assert train_cli(setup, "--max-steps", "1") == 2
    finally:
        proc.kill()
        proc.wait()
    err = one_line_error(capsys)
    assert f"(PID {proc.pid})" in err and not (setup[2] / "metrics.jsonl").exists()
    assert train_cli(setup, "--max-steps", "1") == 0  # the killed holder left no lock


def test_a_run_without_signal_exits_76_after_its_patience(setup, capsys):
    """With every reward weight 0, every group's rewards are equal.
    With grpo.guard_patience=2 the run saves step 2 and exits 76 with one error line."""
    out = setup[2]
    assert train_cli(setup, "grpo.guard_patience=2", "eval_every=0",
                     "rewards.weights={format: 0.0}") == 76  # every reward 0
    err = capsys.readouterr().err
    assert err.count("no group has reward spread") == 2 and "Traceback" not in err
    assert "error: stopped at step 2 (checkpoint saved)" in err and "guard_patience" in err
    assert (out / "checkpoints" / "step_000002").is_dir() and not (out / "export").exists()


def test_completions_longer_than_the_context_are_refused_before_the_run_dir(setup, capsys):
    """The issue's ``grpo.max_new_tokens=1000000000``: one line naming the context, no
    model loaded and no run directory created."""
    assert train_cli(setup, "--max-steps", "1", "model.name=gemma3-270m",
                     "grpo.max_new_tokens=1000000000") == 2
    err = one_line_error(capsys)
    assert "grpo.max_new_tokens=1000000000 leaves no room for a prompt in gemma3-270m's " \
           "context of 32768 tokens" in err
    assert not setup[2].exists()
