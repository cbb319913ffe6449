"""The keep-learning relay's pieces: the dev split never trains, and a run's carry
through git (scripts/relay_carry.py) restores a checkpoint that resumes."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from bigthoughts.data import read_ids
from bigthoughts.training import _data, load_train_config
from bigthoughts.training.relay import CheckpointStore

ROOT = Path(__file__).resolve().parents[1]


def test_the_dev_split_is_held_out_and_never_trained_on(tmp_path, gsm8k_dir):
    train_ids = [f"train-{i:04d}" for i in range(40)]
    dev_ids = train_ids[5:15]
    (tmp_path / "train.txt").write_text("\n".join(train_ids))
    (tmp_path / "dev.txt").write_text("\n".join(reversed(dev_ids)))
    config = load_train_config(None, [
        f"data.path={gsm8k_dir}", f"data.ids_file={tmp_path / 'train.txt'}",
        f"data.dev_ids_file={tmp_path / 'dev.txt'}", "eval_every=5", "eval_examples=4"])
    train_set, held = _data(config, None)
    assert len(train_set) == 30 and not {e.id for e in train_set} & set(dev_ids)
    assert [e.id for e in held] == dev_ids[:4]  # dataset order, the first eval_examples
    quiet = load_train_config(None, [f"data.path={gsm8k_dir}",
                                     f"data.dev_ids_file={tmp_path / 'dev.txt'}"])
    train_set, held = _data(quiet, None)  # no periodic evaluation: still never trained on
    assert held == [] and not {e.id for e in train_set} & set(dev_ids)
    assert len(train_set) == 7473 - 10


def test_the_committed_relay_recipe_keeps_its_dev_split_apart():
    config = load_train_config(ROOT / "configs" / "gemma3-270m-grpo-relay.yaml")
    dev = set(read_ids(ROOT / config.data.dev_ids_file))
    train = set(read_ids(ROOT / config.data.ids_file))
    assert len(dev) == config.eval_examples == 300 and not dev & train
    assert config.grpo.calculator is False and config.eval_every > 0


def _carry(*argv):
    """``scripts/relay_carry.py ARGV`` in this process: (exit status, stdout, stderr)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import relay_carry

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = relay_carry.main(list(argv))
        except SystemExit as stop:  # its one-line errors
            code = 1
            print(stop, file=sys.stderr)
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_a_carried_run_restores_its_checkpoint_within_two_bytes(tmp_path):
    rng = np.random.default_rng(0)
    weights = (rng.standard_normal((64, 16)) * 0.05).astype(np.float32)
    mu = (rng.standard_normal((64, 16)) * 1e-5).astype(np.float32)
    nu = (rng.standard_normal((64, 16)) ** 2 * 1e-10).astype(np.float32)  # below float16
    mu[0, :3] = 0.0
    tree = {"lora": weights, "opt": {"a_count": np.int32(37), "mu": mu, "nu": nu}}
    run = tmp_path / "run"
    CheckpointStore(run / "checkpoints").save(35, tree, {"data_position": 81, "seed": 28})
    (run / "config.json").write_text("{}")
    evals = [{"step": 0, "eval/correct": 8}, {"step": 30, "eval/correct": 11},
             {"step": 35, "eval/correct": 11}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    assert "Adam's update direction" in _carry("pack", str(run), str(tmp_path / "c0")).stdout
    (run / "evals").mkdir()
    for step in (0, 30, 35):
        (run / "evals" / f"step_{step:06d}.safetensors").write_bytes(b"adapter %d" % step)
        (run / "evals" / f"step_{step:06d}.jsonl").write_text("{}\n")
    done = _carry("pack", str(run), str(tmp_path / "carry"))
    assert done.returncode == 0, done.stderr
    carried = sorted(p.name for p in (tmp_path / "carry" / "evals").iterdir())
    assert carried == ["step_000000.jsonl", "step_000030.jsonl", "step_000030.safetensors",
                       "step_000035.jsonl"]  # the best evaluation's adapter, the earliest
    done = _carry("unpack", str(tmp_path / "carry"), str(tmp_path / "again"))
    assert done.returncode == 0, done.stderr
    restored, meta = CheckpointStore(tmp_path / "again" / "checkpoints").restore(35, tree)
    assert meta["data_position"] == 81 and meta["carried"] is True
    assert restored["opt"]["a_count"] == 37
    np.testing.assert_allclose(restored["lora"], weights, rtol=2 ** -11)  # float16, scaled
    for name, exact in (("mu", mu), ("nu", nu)):  # one byte: log2 to half a level
        got = restored["opt"][name]
        assert ((got == 0) == (exact == 0)).all() and (np.sign(got) == np.sign(exact)).all()
        span = np.ptp(np.log2(np.abs(exact[exact != 0])))
        np.testing.assert_allclose(np.log2(np.abs(got[exact != 0])),
                                   np.log2(np.abs(exact[exact != 0])), atol=span / 252 + 1e-6)
    info = json.loads((tmp_path / "carry" / "state.json").read_text())
    assert 0 < info["adam_direction_error"] < 0.05
    assert not np.array_equal(restored["lora"], weights)  # it is 2 bytes, not exact
    again = _carry("unpack", str(tmp_path / "carry"), str(tmp_path / "again"))
    assert again.returncode != 0 and "has checkpoints already" in again.stderr


def test_packing_nothing_or_unpacking_nothing_is_one_line(tmp_path):
    done = _carry("pack", str(tmp_path), str(tmp_path / "carry"))
    assert done.returncode != 0 and done.stderr.strip().startswith("error:")
    assert "no checkpoint" in done.stderr and "Traceback" not in done.stderr
    done = _carry("unpack", str(tmp_path / "nowhere"), str(tmp_path / "run"))
    assert done.returncode != 0 and "holds no carry" in done.stderr


@pytest.mark.parametrize("values", [[0.0, 1.5, -2.25], [1e-12, 3e-9, 0.0], [7e4, -1e5]])
def test_two_bytes_keeps_eleven_bits_at_any_scale(values):
    sys.path.insert(0, str(ROOT / "scripts"))
    from relay_carry import two_bytes

    x = np.asarray(values, np.float32)
    packed, scale = two_bytes(x)
    assert packed.dtype == np.float16 and np.isfinite(packed).all()
    np.testing.assert_allclose(packed.astype(np.float32) * scale, x, rtol=2 ** -11)


def test_the_dev_curve_counts_informative_groups_up_to_each_evaluation(tmp_path):
    from bigthoughts.evaluation.train_report import dev_curve, plot_dev_curve

    rows = [{"step": 0, "eval/correct": 8, "eval/questions": 300}]
    rows += [{"step": s, "reward_mean": 1.0, "groups_informative": s % 2} for s in range(1, 7)]
    rows += [{"step": 4, "eval/correct": 10, "eval/questions": 300},
             {"step": 6, "eval/correct": 9, "eval/questions": 300}]
    assert dev_curve(rows) == [(0, 0, 8, 300), (2, 4, 10, 300), (3, 6, 9, 300)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = plot_dev_curve(tmp_path, tmp_path / "out")
    assert path.name == "dev_curve.png" and path.read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[1]) + "\n")
    assert plot_dev_curve(tmp_path, tmp_path / "out2") is None  # no evaluation: no curve
