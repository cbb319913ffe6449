"""Where a GRPO step's peak memory is: resident set size sampled every 20 ms while
``bigthoughts train`` runs a few steps of a recipe, each sample tagged with the phase
the trainer is in (model load, LoRA wrap, rollout, reference log-probs, update, save).

    .venv/bin/python benchmarks/grpo_memory.py [--steps 3] [--config configs/gemma3-270m-cpu.yaml]
                                               [overrides ...]

Prints, per phase (its first call, which compiles, apart from the later ones): the
RSS on entry, its highest sample, and the growth it caused;
then the process peak (``ru_maxrss``). The phases are found by wrapping the trainer's
methods, so the numbers are the real run's, not a model of it. JAX's live buffers at
the end of each phase (``jax.live_arrays``) are printed beside the RSS, so the gap
between the two is what XLA's compiler and temporaries hold.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import peak_rss_gb  # noqa: E402

GB = 1024**3


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * 4096


class PhaseSampler:
    """A thread sampling RSS; ``phase(name)`` tags the samples taken inside it."""

    def __init__(self, every: float = 0.02) -> None:
        self.every, self.current = every, "start"
        self.stats: dict[str, dict] = {}
        self.calls: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _record(self, value: int) -> None:
        s = self.stats.setdefault(self.current, {"enter": value, "peak": value, "calls": 0})
        s["peak"] = max(s["peak"], value)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._record(rss_bytes())
            time.sleep(self.every)

    @contextlib.contextmanager
    def phase(self, name: str):
        import jax

        # the first call compiles: its samples are kept apart from the later calls'
        self.calls[name] = self.calls.get(name, 0) + 1
        name = name if self.calls[name] == 1 else f"{name}, later"
        outer, self.current = self.current, name
        enter = rss_bytes()
        s = self.stats.setdefault(name, {"enter": enter, "peak": enter, "calls": 0})
        s["calls"] += 1
        try:
            yield
        finally:
            s["exit"] = rss_bytes()
            s["live_jax"] = sum(a.nbytes for a in jax.live_arrays())
            self._record(s["exit"])
            self.current = outer

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def wrap(owner, attr: str, sampler: PhaseSampler, name: str) -> None:
    original = getattr(owner, attr)

    def wrapped(*args, **kwargs):
        with sampler.phase(name):
            return original(*args, **kwargs)

    setattr(owner, attr, wrapped)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--config", default=str(ROOT / "configs" / "gemma3-270m-cpu.yaml"))
    ap.add_argument("--xla-analysis", action="store_true",
                    help="also print XLA's memory plan of the update (compiles it once more)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import bigthoughts.training as training
    import bigthoughts.training.grpo_trainer as gt
    import bigthoughts.training.rollout as ro

    sampler = PhaseSampler()
    wrap(training, "load_starting_model", sampler, "load model")
    wrap(gt.GRPOTrainer, "__init__", sampler, "LoRA wrap + trainer init")
    wrap(ro, "collect", sampler, "rollout (sampling)")
    wrap(gt.GRPOTrainer, "_with_logps", sampler, "reference log-probs")
    wrap(gt.GRPOTrainer, "_updates", sampler, "update (loss + grads + AdamW)")
    wrap(gt.GRPOTrainer, "save", sampler, "checkpoint")
    wrap(gt.GRPOTrainer, "export", sampler, "export (merged + adapter)")
    analyses: dict[str, dict] = {}
    if args.xla_analysis:
        original_updates = gt.GRPOTrainer._updates

        def updates(self, batch):
            if not analyses:  # XLA's own plan for the loss + gradients: one more compile
                compiled = self.programs.update.grads.lower(self.lora, self.base, batch).compile()
                m = compiled.memory_analysis()
                analyses["loss + gradients program"] = {k: getattr(m, k) / GB for k in (
                    "argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                    "generated_code_size_in_bytes")}
            return original_updates(self, batch)

        gt.GRPOTrainer._updates = updates
    config = training.load_train_config(args.config, list(args.overrides))
    with sampler, tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        training.train(config, max_steps=args.steps, out_dir=out)
        wall = time.perf_counter() - start
        records = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()
                   if '"step_seconds"' in x]
    steps = ", ".join(f"{r['step_seconds']:.1f}" for r in records)
    print(f"{args.steps} steps of {Path(args.config).name} {' '.join(args.overrides)}: "
          f"{wall:.1f} s wall; step s: {steps}")
    print(f"{'phase':38} {'calls':>5} {'RSS in GB':>9} {'peak GB':>8} {'+GB':>6} "
          f"{'JAX live GB':>11}")
    for name, s in sampler.stats.items():
        print(f"{name:38} {s['calls']:5d} {s['enter'] / GB:9.2f} {s['peak'] / GB:8.2f} "
              f"{(s['peak'] - s['enter']) / GB:6.2f} {s.get('live_jax', 0) / GB:11.2f}")
    print(f"process peak (ru_maxrss): {peak_rss_gb():.2f} GB")
    for name, sizes in analyses.items():
        print(f"XLA plan of the {name}: " + ", ".join(f"{k.removesuffix('_in_bytes')} "
                                                      f"{v:.2f} GB" for k, v in sizes.items()))
    print(json.dumps({"peak_rss_gb": round(peak_rss_gb(), 3), "wall_s": round(wall, 1),
                      "phase_peak_gb": {name: round(s["peak"] / GB, 3)
                                        for name, s in sampler.stats.items()}}))


if __name__ == "__main__":
    main()
