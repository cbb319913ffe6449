"""Multi-host training (``training.hosts``): two local CPU processes, each with two fake
devices, train the toy GRPO task on one 4-device mesh; their losses are those of one
process with four devices, only process 0 writes the run directory, and the run resumes
on both."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from bigthoughts.training import hosts
from tests.conftest import REPO_ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out, steps: int, devices: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.multihost_toy", str(out), str(steps), str(devices),
         *extra], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


def _result(proc: subprocess.Popen) -> tuple[list[float], list[str] | None]:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    found = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1])
             for line in out.splitlines() if line.startswith(("LOSSES ", "FILES "))}
    return found["LOSSES"], found.get("FILES")


def _two_processes(out, steps: int) -> tuple[list[float], list[str]]:
    port = _free_port()
    procs = [_launch(out, steps, 2, f"127.0.0.1:{port}", "2", str(i)) for i in range(2)]
    (losses0, files), (losses1, files1) = (_result(p) for p in procs)
    assert losses0 == losses1 and files1 is None  # the same steps; process 1 lists nothing
    return losses0, files


def test_two_processes_train_as_one_and_resume(tmp_path):
    one = _launch(tmp_path / "one", 4, 4)
    want, _ = _result(one)
    first, files = _two_processes(tmp_path / "two", 2)
    rest, _ = _two_processes(tmp_path / "two", 4)  # resumes from step 2 on both
    assert len(want) == 4 and len(first) == 2 and len(rest) == 2
    assert first + rest == pytest.approx(want, abs=1e-5)
    assert "config.json" in files and "checkpoints/LATEST" in files
    assert not any(name.endswith(".tmp") for name in files)
    metrics = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text()
               .splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4]  # one writer


def test_settings_come_from_flags_or_the_environment():
    assert hosts.settings(environ={}) is None
    got = hosts.settings("10.0.0.1:1234", 2, 1, environ={})
    assert (got.coordinator, got.num_processes, got.process_id) == ("10.0.0.1:1234", 2, 1)
    env = {"JAX_COORDINATOR_ADDRESS": "h:99", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert hosts.settings(environ=env) == hosts.Distributed("h:99", 4, 3)
    assert hosts.settings(None, None, 0, environ=env).process_id == 0  # a flag wins


@pytest.mark.parametrize("args, message", [
    (("h:1", None, 0), "--num-processes"),
    (("h:1", 2, None), "--process-id"),
    ((None, 2, 0), "coordinator"),
    (("nohost", 2, 0), "HOST:PORT"),
    (("h:1", 2, 2), "0..1"),
    (("h:1", 0, 0), ">= 1"),
])
def test_bad_settings_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        hosts.settings(*args, environ={})


def test_the_cli_refuses_half_a_setting_in_one_line(tmp_path, capsys):
    from bigthoughts.cli import main

    rc = main(["train", "--config", str(REPO_ROOT / "configs" / "gemma3-270m-cpu.yaml"),
               "--out", str(tmp_path / "run"), "--process-id", "1"])
    err = capsys.readouterr().err
    assert rc != 0 and "coordinator" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
