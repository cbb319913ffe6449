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


def _tfrecords(path):
    """The payloads of a TFRecord file (length, its CRC, data, its CRC; CRCs unchecked)."""
    import struct

    raw, out, at = path.read_bytes(), [], 0
    while at < len(raw):
        (n,) = struct.unpack("<Q", raw[at:at + 8])
        out.append(raw[at + 12:at + 12 + n])
        at += 12 + n + 4
    return out


def test_tensorboard_events_are_written_in_the_callers_thread(tmp_path, monkeypatch):
    """Each step's scalars are one event, flushed at once and readable; a write the disk
    refuses raises in the caller (one line, exit 74), not in a thread of tensorboardX."""
    import errno

    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto import event_pb2

    from bigthoughts.training.trackers import TensorBoard

    board = TensorBoard(tmp_path)
    board.scalars(1, {"loss": 0.5, "reward_mean": 2.0})
    board.scalars(2, {"loss": 0.25, "reward_mean": 3.0})
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    got = [event_pb2.Event.FromString(r) for r in _tfrecords(events)][1:]  # 0: the header
    assert [(e.step, {v.tag: round(v.simple_value, 3) for v in e.summary.value})
            for e in got] == [(1, {"loss": 0.5, "reward_mean": 2.0}),
                              (2, {"loss": 0.25, "reward_mean": 3.0})]

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(events))
    monkeypatch.setattr(EventsWriter, "_write_serialized_event", full)
    with pytest.raises(OSError) as err:
        board.scalars(3, {"loss": 0.1})
    assert err.value.errno == errno.ENOSPC
    board.close()
