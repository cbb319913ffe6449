"""GRPO at a real model's shapes on this CPU: ``bigthoughts train`` on a randomly
initialised Gemma 3 1B (or Gemma 2 2B) at the GPU recipe's context, 2 steps, then a
resume; its measured peak RSS beside the AOT estimate of the same programs on the CPU
backend.

    .venv/bin/python scripts/cpu_scale_check.py [--model gemma3-1b] [--out DIR]
        [--steps 2] [--generations 4] [--new-tokens 768] [--keep]

1. Writes the model with normal(0, 0.02) weights as a Hugging Face checkpoint directory
   (``export_hf_gemma3``; the tokenizer is the embedded model's, the same Gemma 3
   vocabulary), so the run loads it through the real loader.
2. ``scripts/aot_memory.py`` for the recipe with the same overrides (CPU backend).
3. ``bigthoughts train`` for ``--steps`` steps (1 prompt × G completions, one group per
   micro-batch, float32: what a 2-core CPU can do at 1,024 tokens), the process's peak
   RSS sampled by ``/proc``; then the same command with one more step, which resumes.
4. Prints and writes ``DIR/cpu_scale_check.json``: per step the rollout, reference
   log-prob and update seconds; the run's peak RSS; each program's AOT peak; the ratio.

Gemma 2 2B needs about 10.5 GB for float32 weights alone, which the estimate says
whether 24 GB can hold; the 1B is the default.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

RECIPES = {"gemma3-1b": ("configs/gemma3-1b-it-gpu.yaml", "gemma3-1b-it"),
           "gemma2-2b": ("configs/gemma2-2b-it-gpu.yaml", "gemma2-2b-it")}


def write_random_checkpoint(name: str, dest: Path) -> None:
    """The named model with random weights, as a checkpoint directory ``load_model`` reads."""
    import jax
    import numpy as np
    from device_check import random_model
    from flax import nnx

    from bigthoughts.models.registry import load_model

    model, spec = random_model(name, "float32")
    params = {p: np.asarray(jax.device_get(v.get_value()))
              for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    tokenizer = load_model().tokenizer
    if spec.family == "gemma3":
        from bigthoughts.models.export import export_hf_gemma3

        export_hf_gemma3(dest, params, model.config, tokenizer)
    else:
        from bigthoughts.models.export import export_checkpoint

        export_checkpoint(dest, params, family=spec.family, config=model.config, spec=spec,
                          tokenizer=tokenizer, provenance={"random": True})


class PeakRSS:
    """The highest resident set size of a process and its children, sampled every 50 ms."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss(self) -> int:
        total = 0
        for pid in [self.pid, *self._children()]:
            try:
                with open(f"/proc/{pid}/statm", encoding="ascii") as f:
                    total += int(f.read().split()[1]) * 4096
            except OSError:
                pass
        return total

    def _children(self) -> list[int]:
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children", encoding="ascii") as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._rss())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run(cmd: list[str], log: Path) -> tuple[int, float, float]:
    """(exit code, peak RSS GB, seconds) of ``cmd``, its output appended to ``log``."""
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        sampler = PeakRSS(proc.pid)
        rc = proc.wait()
    return rc, round(sampler.stop() / 1e9, 3), round(time.perf_counter() - start, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gemma3-1b", choices=sorted(RECIPES))
    p.add_argument("--out", type=Path, default=Path("runs/cpu-scale-check"))
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=768)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--skip-aot", action="store_true")
    args = p.parse_args(argv)
    recipe, name = RECIPES[args.model]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "cpu_scale_check.log"
    ckpt = out / "checkpoint"
    py = sys.executable
    if not (ckpt / "config.json").exists() and not (ckpt / "bigthoughts.json").exists():
        t0 = time.perf_counter()
        write_random_checkpoint(name, ckpt)
        print(f"random {name} written in {time.perf_counter() - t0:.0f} s", flush=True)
    overrides = ["model.dtype=float32", "prompts_per_step=1",
                 f"grpo.num_generations={args.generations}", "grpo.micro_batch_prompts=1",
                 f"grpo.max_new_tokens={args.new_tokens}"]
    result: dict = {"model": name, "recipe": recipe, "overrides": overrides}
    if not args.skip_aot:
        aot_json = out / "aot.json"
        rc, _, secs = run([py, "scripts/aot_memory.py", recipe, *overrides, "--devices", "1",
                           "--hbm-gb", "24", "--prompt-len", str(args.prompt_len), "--json",
                           str(aot_json)], log)
        result["aot"] = json.loads(aot_json.read_text()) if aot_json.exists() else None
        result["aot_seconds"] = secs
    run_dir = out / "run"
    train = [py, "-m", "bigthoughts.cli", "train", "--config", recipe, "--out", str(run_dir),
             f"model.path={ckpt}", *overrides, "eval_every=0", "save_every=1"]
    shared = ROOT.parent / "shared" / "data" / "gsm8k"
    if not os.environ.get("BIGTHOUGHTS_DATA") and shared.is_dir():
        train[4:4] = ["--data", str(shared)]  # after "train"
    sittings = []
    for limit in (args.steps, args.steps + 1):  # the second resumes from the first's end
        rc, peak, secs = run([*train, "--max-steps", str(limit)], log)
        sittings.append({"max_steps": limit, "exit": rc, "peak_rss_gb": peak, "seconds": secs})
        print(json.dumps(sittings[-1]), flush=True)
        if rc != 0:
            break
    result["sittings"] = sittings
    metrics = run_dir / "metrics.jsonl"
    steps = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    result["steps"] = [
        {"step": s["step"], "step_seconds": round(s["step_seconds"], 1),
         "rollout_seconds": round(s["rollout_seconds"], 1),
         "update_seconds": round(s["update_seconds"], 1),
         "reference_and_rewards_seconds": round(s["step_seconds"] - s["rollout_seconds"]
                                                - s["update_seconds"], 1),
         "completion_length": s["completion_length"], "loss": s["loss"]}
        for s in steps if "loss" in s]
    if result.get("aot"):
        largest = result["aot"]["largest_gb"]
        peak = max(s["peak_rss_gb"] for s in sittings)
        result["measured_over_largest_program"] = round(peak / largest, 2)
    (out / "cpu_scale_check.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0 if sittings and all(s["exit"] == 0 for s in sittings) else 1


if __name__ == "__main__":
    sys.exit(main())
