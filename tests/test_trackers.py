"""Trackers (``report.to`` / ``--report-to``): an offline W&B run of the toy GRPO task
writes its files with the run's metrics, config and completion tables, and a resumed
run continues the same W&B run; the recipe key and the flag refuse what they cannot do."""

from __future__ import annotations

import dataclasses
import json
import struct
import sys

import pytest

from bigthoughts.config import ConfigError, to_dict
from bigthoughts.files import read_jsonl
from bigthoughts.training.config import TrainConfig
from bigthoughts.training.trackers import ReportSection, check_trackers, report_override

wandb = pytest.importorskip("wandb")


def _records(path):
    """The protobuf records of a ``.wandb`` file: a 7-byte header, then 32 KiB blocks of
    chunks (crc32, length, kind: 1 whole, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, part, out = path.read_bytes(), 7, 1 << 15, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # padding to the end of the block
            pos += block - pos % block
            continue
        part += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(part)
            out.append(record)
            part = b""
    return out


def _history(run_dir):
    """{step: {key: value}} of every history record in an offline run directory."""
    (wandb_file,) = run_dir.glob("run-*.wandb")
    rows = {}
    for record in _records(wandb_file):
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                     for i in record.history.item}
            rows.setdefault(items["_step"], {}).update(items)
    return rows


def test_an_offline_wandb_run_holds_the_metrics_config_and_samples(tmp_path, monkeypatch):
    from bigthoughts.training import train
    from tests.train_toy import lowercase_share, toy_setup

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    config, examples, loaded = toy_setup(str(out), max_steps=3)
    config = dataclasses.replace(config, report=ReportSection(to=("wandb",), samples_every=2))
    train(config, max_steps=2, examples=examples, loaded=loaded, reward_fns=[lowercase_share])
    run_id = (out / "wandb-id.txt").read_text().strip()
    (first,) = (out / "wandb").glob(f"offline-run-*-{run_id}")
    history = _history(first)
    metrics = {r["step"]: r for r in read_jsonl(out / "metrics.jsonl")}
    assert sorted(history) == [1, 2]
    for step, row in history.items():
        assert row["loss"] == pytest.approx(metrics[step]["loss"], rel=1e-6)
        assert row["entropy"] == pytest.approx(metrics[step]["entropy"], rel=1e-6)
    assert "samples/path" in history[2] and "samples/path" not in history[1]
    table = json.loads((first / "files" / history[2]["samples/path"]).read_text())
    assert table["columns"] == ["step", "example", "reward", "trained", "completion"]
    step2 = [c for r in read_jsonl(out / "samples.jsonl") if r["step"] == 2
             for c in r["completions"]]
    assert [row[4] for row in table["data"]] == [c["text"] for c in step2]
    runs = [r.run for r in _records(next(first.glob("run-*.wandb")))
            if r.WhichOneof("record_type") == "run"]
    config_seen = {u.key: json.loads(u.value_json) for u in runs[0].config.update}
    assert config_seen["grpo"]["num_generations"] == config.grpo.num_generations
    assert not (out / "tensorboard").exists()  # report.to named only wandb

    # the next sitting resumes the same W&B run and logs the steps after the checkpoint
    train(config, max_steps=3, examples=examples, loaded=loaded, reward_fns=[lowercase_share])
    assert (out / "wandb-id.txt").read_text().strip() == run_id
    later = [d for d in (out / "wandb").glob(f"offline-run-*-{run_id}") if d != first]
    assert len(later) == 1 and sorted(_history(later[0])) == [3]


def test_the_report_section_and_flag_refuse_what_they_cannot_do(monkeypatch):
    assert report_override("wandb") == "report.to=[wandb]"
    assert report_override("tensorboard, wandb") == "report.to=[tensorboard, wandb]"
    assert report_override("none") == "report.to=[]"
    with pytest.raises(ConfigError, match="--report-to"):
        report_override("none,wandb")
    with pytest.raises(ValueError, match="unknown tracker 'mlflow'"):
        ReportSection(to=("mlflow",))
    with pytest.raises(ValueError, match="twice"):
        ReportSection(to=("wandb", "wandb"))
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"needs the wandb package.*\[wandb\]"):
        check_trackers(ReportSection(to=("wandb",)))
    check_trackers(ReportSection(to=("tensorboard",)))


def test_changing_the_trackers_resumes_the_same_run():
    from bigthoughts.training.rundir import config_differences

    saved = to_dict(TrainConfig())
    del saved["report"]  # a run saved before the key existed
    now = to_dict(TrainConfig(report=ReportSection(to=("wandb",), samples_every=5)))
    assert config_differences(saved, now) == []
