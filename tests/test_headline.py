"""scripts/headline.py: the one line the GPU sitting scripts print per evaluation."""

from __future__ import annotations

import json
import subprocess
import sys


def test_headline_reads_a_summary_and_fails_quietly_without_one(tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"n": 500, "accuracy": 0.034, "format_strict": 0.998,
                                   "tokens_per_second": 1234.56, "wall_seconds": 98.76}))
    done = subprocess.run([sys.executable, "scripts/headline.py", str(summary)],
                          capture_output=True, text=True)
    assert done.returncode == 0
    assert done.stdout.split() == ["n", "500", "accuracy", "0.0340", "strict", "format",
                                   "0.9980", "tokens/s", "1234.6", "wall", "s", "98.8"]
    missing = subprocess.run([sys.executable, "scripts/headline.py", str(tmp_path / "no.json")],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and not missing.stdout and not missing.stderr
    summary.write_text('{"n": 3}')  # a partial summary: no traceback either
    partial = subprocess.run([sys.executable, "scripts/headline.py", str(summary)],
                             capture_output=True, text=True)
    assert partial.returncode == 1 and not partial.stdout and not partial.stderr
