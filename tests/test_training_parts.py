"""The training package's small parts, without a model: progress lines, run-directory
identity and logs, the generic relay loop (over a fake stage), advantages, padding."""

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from bigthoughts.config import ConfigError
from bigthoughts.training.grpo_loss import group_advantages
from bigthoughts.training.loop import OutOfMemory, run_stage
from bigthoughts.training.progress import Progress, format_duration, step_line, where
from bigthoughts.training.relay import Deadline
from bigthoughts.training.rollout import pad_left, pad_right
from bigthoughts.training.rundir import MetricsLog, config_differences, prepare_run_dir


def test_step_line_formats_what_the_stage_reports():
    record = {"step": 3, "reward_mean": 4.2149, "format_compliance": 0.625, "accuracy": 0.125,
              "kl": 0.00312, "loss": 0.5}
    assert step_line(record, total=200, seconds_per_step=38.2) == (
        "step 3/200 | reward 4.21 | format 62% | acc 12% | kl 0.0031 | 38.2 s/step | ETA 2h05m")
    # a supervised stage reports a loss and nothing else: 8 steps left x 2.5 s = 20 s
    assert step_line({"step": 2, "loss": 1.23456}, total=10, seconds_per_step=2.5) == \
        "step 2/10 | loss 1.2346 | 2.5 s/step | ETA 20s"
    assert step_line({"step": 1}, total=1, seconds_per_step=None) == "step 1/1"


def test_durations_and_paths(tmp_path, monkeypatch):
    assert [format_duration(s) for s in (0, 7, 125, 3725, 90000)] == \
        ["0s", "7s", "2m05s", "1h02m", "25h00m"]
    monkeypatch.chdir(tmp_path)
    assert where(tmp_path / "run" / "checkpoints") == os.path.join("run", "checkpoints")
    assert where(Path("/elsewhere/x")) == "/elsewhere/x"


def test_config_differences_name_each_key_with_both_values():
    saved = {"grpo": {"beta": 0.04, "remat_layers": False, "epsilon": 0.2}, "seed": 0,
             "out_dir": "a", "rewards": {"weights": {"format": 2.0}}, "eval_every": 0}
    now = {"grpo": {"beta": 0.0, "remat_layers": True, "epsilon": 0.2}, "seed": 1,
           "out_dir": "b", "rewards": {"weights": {"format": 1.0}}, "eval_every": 5}
    assert config_differences(saved, now) == [
        "grpo.beta: 0.04 (saved) != 0.0 (now)",
        'rewards.weights: {"format": 2.0} (saved) != {"format": 1.0} (now)',
        "seed: 0 (saved) != 1 (now)"]
    assert config_differences({"seed": 0}, {"seed": 0, "new": 1}) == \
        ['new: "(absent)" (saved) != 1 (now)']


def test_prepare_run_dir_writes_once_and_refuses_another_run(tmp_path):
    out = tmp_path / "run"
    prepare_run_dir(out, {"grpo": {"beta": 0.04}})
    assert json.loads((out / "config.json").read_text()) == {"grpo": {"beta": 0.04}}
    assert [p.name for p in out.iterdir()] == ["config.json"]  # no temporary left
    prepare_run_dir(out, {"grpo": {"beta": 0.04}})  # the same run: fine
    with pytest.raises(ConfigError, match=r"grpo\.beta: 0\.04 \(saved\) != 0\.0 \(now\)"):
        prepare_run_dir(out, {"grpo": {"beta": 0.0}})
    (out / "config.json").write_text("{torn")
    with pytest.raises(ConfigError, match="unreadable"):
        prepare_run_dir(out, {"grpo": {"beta": 0.04}})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        prepare_run_dir(tmp_path / "file", {})


def test_truncation_keeps_earlier_steps_and_replaces_the_file(tmp_path):
    log = MetricsLog(tmp_path, trackers=())
    for step in (1, 2, 3):
        log.append({"step": step, "reward_mean": float(step)})
        log.append_samples(step, [{"text": "t", "reward": 0.0}])
    with open(log.metrics_path, "a") as fh:
        fh.write('{"step": 4, "rew')  # torn by a kill
    inode = log.metrics_path.stat().st_ino
    log.truncate_after(2)
    assert [json.loads(x)["step"] for x in log.metrics_path.read_text().splitlines()] == [1, 2]
    assert [json.loads(x)["step"] for x in log.samples_path.read_text().splitlines()] == [1, 2]
    assert log.metrics_path.stat().st_ino != inode  # a new file renamed over the old one
    log.truncate_after(0)
    assert log.metrics_path.read_text() == "" and log.samples_path.read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "samples.jsonl"]


class FakeStage:
    memory_knobs = "batch_size"

    def __init__(self, step=0, resumed_from=None, fail=None):
        self.step, self.resumed_from, self.fail = step, resumed_from, fail
        self.calls: list[str] = []

    def train_step(self):
        if self.fail:
            raise self.fail
        self.step += 1
        self.calls.append(f"step{self.step}")
        return {"step": self.step, "loss": 1.0 / self.step}

    def save(self):
        self.calls.append(f"save{self.step}")

    def evaluate(self):
        self.calls.append(f"eval{self.step}")
        return {"step": self.step}

    def export(self, dest):
        self.calls.append("export")
        return dest

    def close(self):
        self.calls.append("close")


def test_a_fresh_run_evaluates_once_before_its_first_step(tmp_path):
    stage = FakeStage()
    run_stage(stage, limit=3, save_every=3, eval_every=2, deadline=Deadline(None),
              progress=Progress(io.StringIO()))
    assert stage.calls == ["eval0", "step1", "step2", "eval2", "step3", "save3", "close"]
    resumed = FakeStage(step=0, resumed_from=tmp_path / "ck")  # step 0's eval is logged
    run_stage(resumed, limit=1, save_every=1, eval_every=2, deadline=Deadline(None),
              progress=Progress(io.StringIO()))
    assert resumed.calls == ["step1", "save1", "close"]


def test_the_loop_saves_evaluates_exports_and_says_where_it_resumed(tmp_path):
    stage, stream = FakeStage(step=1, resumed_from=tmp_path / "ck"), io.StringIO()
    result = run_stage(stage, limit=5, save_every=2, eval_every=3, deadline=Deadline(None),
                       progress=Progress(stream), export_dir=tmp_path / "export")
    assert stage.calls == ["step2", "save2", "step3", "eval3", "step4", "save4", "step5",
                           "save5", "export", "close"]
    assert result.step == 5 and not result.stopped_for_deadline
    assert [r["step"] for r in result.history] == [2, 3, 4, 5]
    assert result.exported == tmp_path / "export"
    lines = stream.getvalue().splitlines()
    assert lines[0] == f"resuming from step 1 ({where(tmp_path / 'ck')})"
    assert [x.split(" | ")[:2] for x in lines[1:]] == [
        ["step 2/5", "loss 0.5000"], ["step 3/5", "loss 0.3333"], ["step 4/5", "loss 0.2500"],
        ["step 5/5", "loss 0.2000"]]


def test_the_loop_stops_for_the_deadline_and_maps_out_of_memory():
    stage = FakeStage()
    result = run_stage(stage, limit=5, save_every=2, eval_every=0, deadline=Deadline(0.0),
                       progress=Progress(io.StringIO()))
    assert result.stopped_for_deadline and stage.calls == ["save0", "close"]
    for exc in (MemoryError(), RuntimeError("RESOURCE_EXHAUSTED: out of HBM")):
        stage = FakeStage(fail=exc)
        with pytest.raises(OutOfMemory, match="lower batch_size"):
            run_stage(stage, limit=1, save_every=1, eval_every=0, deadline=Deadline(None),
                      progress=Progress(io.StringIO()))
        assert stage.calls == ["close"]
    with pytest.raises(RuntimeError, match="other"):
        run_stage(FakeStage(fail=RuntimeError("other")), limit=1, save_every=1, eval_every=0,
                  deadline=Deadline(None), progress=Progress(io.StringIO()))


def test_group_advantages_by_hand():
    # group 1: mean 0.25, std (ddof 1) 0.5; group 2: all equal -> 0
    adv = group_advantages(np.array([1.0, 0.0, 0.0, 0.0, 3.0, 3.0, 3.0, 3.0]), 4)
    np.testing.assert_allclose(adv, [1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0], rtol=1e-5)


def test_padding_by_hand():
    tokens, valid = pad_left([[5, 6, 7], [8]], 4, 0)
    np.testing.assert_array_equal(tokens, [[0, 5, 6, 7], [0, 0, 0, 8]])
    np.testing.assert_array_equal(valid, [[0, 1, 1, 1], [0, 0, 0, 1]])
    assert pad_left([[1] * 5], 4, 0)[0].shape == (1, 8)
    tokens, mask = pad_right([[5, 6, 7], [8]], 2, 0)
    np.testing.assert_array_equal(tokens, [[5, 6], [8, 0]])
    np.testing.assert_array_equal(mask, [[1, 1], [1, 0]])
