"""One writer per run directory: a second process is refused with the holder's PID, a
killed holder leaves no lock behind, and eval / train take the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bigthoughts.rundir import LOCK_NAME, RunDirBusy, lock_run_dir

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time; from pathlib import Path; from bigthoughts.rundir import "
        "lock_run_dir\nwith lock_run_dir(Path(sys.argv[1])):\n    print('held', flush=True)\n"
        "    time.sleep(60)\n")


def _holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    proc = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunDirBusy, match=f"PID {proc.pid}"), lock_run_dir(tmp_path / "run"):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)  # kill -9: the kernel drops the lock
        proc.wait()
    with lock_run_dir(tmp_path / "run") as path:  # no stale lock blocks the rerun
        assert path.name == LOCK_NAME and path.read_text().strip() == str(os.getpid())
    with lock_run_dir(tmp_path / "run"):  # released on exit: taken again
        pass


def test_a_second_eval_into_the_same_directory_is_one_line(tmp_path, gsm8k_dir):
    proc = _holder(tmp_path / "run")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bigthoughts.cli", "eval", "--limit", "1", "--engine",
             "llama.cpp", "--out", str(tmp_path / "run"), "--data", str(gsm8k_dir)],
            cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert done.returncode != 0, done.stdout
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'run'} is in use by another bigthoughts process (PID {proc.pid}); "
        "wait for it to finish or use another --out"], done.stderr
    assert not (tmp_path / "run" / "results.jsonl").exists()


def test_taking_the_lock_removes_what_a_killed_writer_left(tmp_path):
    """A kill -9 during an atomic write (an export, a checkpoint) leaves `.NAME*.tmp`
    files; the next writer deletes them, and nothing else."""
    from bigthoughts.files import atomic_write_text
    from bigthoughts.rundir import lock_run_dir

    out = tmp_path / "run"
    (out / "export").mkdir(parents=True)
    stale = [out / "export" / ".adapter.safetensors.x1y2.tmp", out / ".metrics.jsonl.tmp"]
    for path in stale:
        path.write_text("half")
    keep = [out / "export" / "adapter.safetensors", out / "notes.tmp"]
    for path in keep:
        path.write_text("whole")
    with lock_run_dir(out):
        atomic_write_text(out / "summary.json", "{}")
    assert not any(p.exists() for p in stale)
    assert all(p.read_text() == "whole" for p in keep)
    assert (out / "summary.json").read_text() == "{}"


def test_an_out_that_is_a_file_is_one_line_and_left_alone(tmp_path, gsm8k_dir, capsys):
    from bigthoughts.cli import main

    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    assert main(["eval", "--limit", "1", "--engine", "llama.cpp", "--out", str(afile),
                 "--data", str(gsm8k_dir)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {afile} exists and is not a directory; use another --out\n"
    assert afile.read_text() == "mine"
