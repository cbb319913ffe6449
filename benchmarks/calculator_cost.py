"""What the calculator costs inside the batched decode: tok/s with and without it,
side by side in one run, on the same prompts, model and seed.

    .venv/bin/python benchmarks/calculator_cost.py [--adapter adapters/gemma3-270m-sft.safetensors]

The model (by default base 270M + the SFT adapter, which writes GSM8K's ``<<48/2=``
annotations) answers the first N GSM8K test questions zero-shot, greedy, in one batch.
With the calculator, every ``<<EXPR=`` costs a host round trip and the chunk tokens
the row sampled after ``=`` (they are dropped and the row rewinds). Each side runs
once to compile and is then timed over ``--repeats`` calls (best kept). Reported:
tokens kept per second, the calculator calls answered, and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import questions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", default=str(ROOT / "adapters" / "gemma3-270m-sft.safetensors"))
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from bigthoughts.data import prompt_format
    from bigthoughts.inference.jax_sampler import Sampler
    from bigthoughts.models.adapter import with_adapter
    from bigthoughts.models.registry import load_model

    lm = load_model()
    if args.adapter:
        lm = with_adapter(lm, args.adapter)
    fmt = prompt_format("zeroshot", 0)
    prompts = [fmt.prompt(q) for q in questions(args.questions)]
    sampler = Sampler(lm.model, lm.tokenizer)
    rows = []
    for calculator in (False, True):
        kw = dict(temperatures=0.0, max_new_tokens=args.max_new_tokens, stop=fmt.stop,
                  stop_inclusive=fmt.stop_inclusive, calculator=calculator)
        sampler.generate(prompts, **kw)  # compile
        best = None
        for _ in range(args.repeats):
            start = time.perf_counter()
            outs = sampler.generate(prompts, **kw)
            seconds = time.perf_counter() - start
            best = seconds if best is None else min(best, seconds)
        tokens = sum(o.num_tokens for o in outs)
        inserted = sum(any(o.inserted) for o in outs)
        calls = sum(sum(1 for i, x in enumerate(o.inserted) if x and not (i and o.inserted[i - 1]))
                    for o in outs)  # runs of inserted tokens = answered calls
        rows.append((calculator, best, tokens, calls, inserted))
    print("| calculator | s (best) | tokens kept | tok/s | calls answered | rows with a call |")
    print("|---|---:|---:|---:|---:|---:|")
    for calculator, seconds, tokens, calls, inserted in rows:
        print(f"| {'on' if calculator else 'off'} | {seconds:.2f} | {tokens} | "
              f"{tokens / seconds:.1f} | {calls} | {inserted}/{args.questions} |")
    off, on = rows
    print(f"\ntok/s with the calculator / without: {(on[2] / on[1]) / (off[2] / off[1]):.2f}x")


if __name__ == "__main__":
    main()
