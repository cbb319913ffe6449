"""``train-report``'s figure: the panels a GRPO run gets, with the rollout-engine
mismatch panel only when the run recorded it, and the PNG written."""

from __future__ import annotations

import json

from bigthoughts.evaluation.train_report import _panels, plot_training


def _rows(mismatch: bool) -> list[dict]:
    rows = []
    for step in range(1, 6):
        row = {"step": step, "reward_mean": 1.0 + step, "reward/format": 2.0, "kl": 0.01 * step,
               "entropy": 0.2, "completion_length": 80, "format_compliance": 1.0,
               "accuracy": 0.0}
        if mismatch:
            row.update({"mismatch/abs_mean": 0.02, "mismatch/ratio_outside": 0.001})
        rows.append(row)
    return rows


def test_the_mismatch_panel_appears_only_when_recorded(tmp_path):
    kind, plain = _panels(_rows(False))
    assert kind == "GRPO training" and len(plain) == 4
    assert ["kl", "entropy"] in [keys for _, keys, _ in plain]
    _, with_engine = _panels(_rows(True))
    assert with_engine[:4] == plain
    assert with_engine[4][1] == ["mismatch/abs_mean", "mismatch/ratio_outside"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(True)))
    png = plot_training(run, tmp_path / "out", window=2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
