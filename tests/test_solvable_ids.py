"""Choosing GRPO's training questions by how often a model solves them:
scripts/solvable_ids.py, ``read_ids``/``select_ids`` and ``data.ids_file``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bigthoughts.config import ConfigError, from_dict
from bigthoughts.data import DataError, Example, read_ids, select_ids
from bigthoughts.training import _data
from bigthoughts.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gsm8k"


def vote_run(path: Path, answers: dict[str, list[str | None]], gold: str = "18") -> Path:
    path.mkdir(parents=True)
    with (path / "results.jsonl").open("w") as fh:
        for qid, traces in answers.items():
            fh.write(json.dumps({"id": qid, "gold": gold,
                                 "traces": [{"answer": a} for a in traces]}) + "\n")
    return path


def script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/solvable_ids.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_keeps_the_questions_solved_sometimes(tmp_path):
    run = vote_run(tmp_path / "probe", {
        "train-0001": ["18", "18", "18"],      # always: no signal left
        "train-0002": ["18", "7", None],       # sometimes: kept
        "train-0003": ["5", None, "6"],        # never: no signal
        "train-0004": ["18.0", "18", "9"],     # 18.0 is 18
    })
    out = tmp_path / "ids.txt"
    done = script(str(run), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert read_ids(out) == ["train-0002", "train-0004"]
    assert "0: 1, 1: 1, 2: 1, 3: 1" in done.stdout and "kept 2" in done.stdout
    assert out.read_text().startswith("# 2 of 4 questions")
    done = script(str(run), "--out", str(out), "--min-correct", "2", "--max-correct", "3")
    assert done.returncode == 0 and read_ids(out) == ["train-0001", "train-0004"]


def test_traces_of_several_runs_are_pooled(tmp_path):
    a = vote_run(tmp_path / "a", {"train-0001": ["18", "18"], "train-0002": ["1", "2"]})
    b = vote_run(tmp_path / "b", {"train-0001": ["3", "4"], "train-0002": ["1", "2"]})
    done = script(str(a), str(b), "--out", str(tmp_path / "ids.txt"))
    assert done.returncode == 0 and read_ids(tmp_path / "ids.txt") == ["train-0001"]


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "ids.txt"
    done = script(str(tmp_path / "missing"), "--out", str(out))
    assert done.returncode == 2 and done.stderr.startswith("error:")
    assert "results.jsonl" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
    done = script(str(tmp_path), "--out", str(out), "--min-correct", "3", "--max-correct", "1")
    assert done.returncode == 2 and not out.exists()


@pytest.mark.parametrize("text, message", [
    ("", "names no questions"), ("# only a comment\n\n", "names no questions"),
    ("train-0001\ntrain-0001\n", "repeats train-0001"),
])
def test_read_ids_refuses_empty_or_repeated_lists(tmp_path, text, message):
    (tmp_path / "ids.txt").write_text(text)
    with pytest.raises(DataError, match=message):
        read_ids(tmp_path / "ids.txt")
    with pytest.raises(DataError, match="could not read"):
        read_ids(tmp_path / "nope.txt")


def test_select_ids_keeps_dataset_order_and_names_unknown_ids():
    pool = [Example(f"train-{i:04d}", f"q{i}", "#### 1", "1") for i in range(4)]
    assert [e.id for e in select_ids(pool, ["train-0003", "train-0001"])] == [
        "train-0001", "train-0003"]
    with pytest.raises(DataError, match="test-0001.*right split"):
        select_ids(pool, ["train-0001", "test-0001"])


@pytest.mark.skipif(not (DATA / "train.jsonl").is_file(), reason="needs ../shared GSM8K")
def test_grpo_trains_only_on_the_listed_questions(tmp_path):
    (tmp_path / "ids.txt").write_text("# chosen\ntrain-0100\ntrain-0007\ntrain-7000\n")

    def config(**data):
        return from_dict(TrainConfig, {"data": {"path": str(DATA),
                                                "ids_file": str(tmp_path / "ids.txt"), **data}})

    train, _ = _data(config(), None)
    assert [e.id for e in train] == ["train-0007", "train-0100", "train-7000"]
    train, _ = _data(config(limit=2), None)  # the limit applies to the chosen questions
    assert [e.id for e in train] == ["train-0007", "train-0100"]
    (tmp_path / "ids.txt").write_text("train-9999\n")
    with pytest.raises(DataError, match="train-9999"):
        _data(config(), None)
    with pytest.raises((ConfigError, DataError)):
        _data(config(ids_file=str(tmp_path / "missing.txt")), None)


def test_eval_ids_picks_the_listed_questions(monkeypatch, tmp_path, gsm8k_dir):
    from types import SimpleNamespace

    from bigthoughts import cli

    (tmp_path / "ids.txt").write_text("train-0009\ntrain-0002\ntrain-0005\n")
    seen = {}

    def fake_run_eval(lm, examples, config, out, **kwargs):
        seen.update(ids=[e.id for e in examples], config=config)
        return {"accuracy": 0.0}

    monkeypatch.setattr("bigthoughts.evaluation.evaluate.run_eval", fake_run_eval)
    monkeypatch.setattr(cli, "_engine", lambda args: SimpleNamespace(engine=None, loaded=None))
    argv = ["eval", "--split", "train", "--ids", str(tmp_path / "ids.txt"), "--limit", "2",
            "--data", str(gsm8k_dir), "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 0
    assert seen["ids"] == ["train-0002", "train-0005"]  # dataset order, then --limit
    assert seen["config"].ids_file == str(tmp_path / "ids.txt")


@pytest.mark.parametrize("listed, message", [
    ("test-0001\n", "no question has the id test-0001"), (None, "could not read the id list")])
def test_eval_ids_mistakes_are_one_line(listed, message, capsys, tmp_path, gsm8k_dir):
    from bigthoughts import cli

    ids = tmp_path / "ids.txt"
    if listed is not None:
        ids.write_text(listed)
    argv = ["eval", "--split", "train", "--ids", str(ids), "--data", str(gsm8k_dir),
            "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_question_ids_lists_short_solutions(tmp_path, gsm8k_dir):
    out = tmp_path / "short.txt"
    done = subprocess.run([sys.executable, "scripts/question_ids.py", "--split", "test",
                           "--data", str(gsm8k_dir), "--max-steps", "2", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from bigthoughts.data import load_gsm8k

    def steps(example) -> int:  # lines of worked solution before "#### N"
        return len([x for x in example.answer.split("####")[0].split("\n") if x.strip()])

    ids = read_ids(out)
    by_id = {e.id: e for e in load_gsm8k("test", gsm8k_dir)}
    assert ids and max(steps(by_id[i]) for i in ids) == 2 and len(ids) < len(by_id)
    assert sum(1 for e in by_id.values() if steps(e) <= 2) == len(ids)
    later = tmp_path / "later.txt"
    done = subprocess.run([sys.executable, "scripts/question_ids.py", "--split", "test",
                           "--data", str(gsm8k_dir), "--max-steps", "2", "--skip", "5",
                           "--out", str(later)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert read_ids(later) == ids[5:]
    assert "after the first 5" in later.read_text().splitlines()[0]
    drawn = tmp_path / "samples.jsonl"  # a GRPO run drew ids[1] and ids[3]
    drawn.write_text("".join(json.dumps({"step": s, "completions": [
        {"example": i, "text": "t", "reward": 2.0}]}) + "\n"
        for s, i in ((1, ids[1]), (2, ids[3]))))
    listed = tmp_path / "listed.txt"
    listed.write_text(f"# seen\n{ids[0]}\n")
    answered = tmp_path / "results.jsonl"  # an evaluation answered ids[4]
    answered.write_text(json.dumps({"id": ids[4], "correct": False}) + "\n")
    rest = tmp_path / "rest.txt"
    done = subprocess.run([sys.executable, "scripts/question_ids.py", "--split", "test",
                           "--data", str(gsm8k_dir), "--max-steps", "2", "--exclude", str(drawn),
                           "--exclude", str(listed), "--exclude", str(answered),
                           "--out", str(rest)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert read_ids(rest) == [ids[2]] + ids[5:]
    bad = subprocess.run([sys.executable, "scripts/question_ids.py", "--split", "test",
                          "--data", str(gsm8k_dir), "--max-steps", "2", "--exclude",
                          str(tmp_path / "missing.txt"), "--out", str(rest)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: could not read the id list")


def test_an_edited_id_list_is_refused_on_resume(tmp_path):
    from bigthoughts.training import _run_record
    from bigthoughts.training.rundir import check_run_dir, prepare_run_dir

    ids = tmp_path / "ids.txt"
    ids.write_text("train-0001\ntrain-0002\n")
    config = from_dict(TrainConfig, {"data": {"ids_file": str(ids)}})
    prepare_run_dir(tmp_path / "run", _run_record(config))
    check_run_dir(tmp_path / "run", _run_record(config))  # same list: resumes
    ids.write_text("train-0001\ntrain-0003\n")
    with pytest.raises(ConfigError, match="data.ids_sha256"):
        check_run_dir(tmp_path / "run", _run_record(config))
