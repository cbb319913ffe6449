"""What a k-vote costs next to a single pass, on the default model, same questions,
measured side by side in one run.

    .venv/bin/python benchmarks/vote_cost.py [--questions 8] [--votes 5] [--batch 8]

* latency: one question at a time (what `bigthoughts ask` does): a single greedy pass
  vs a k-vote over the temperature ladder drawn in ONE batched call (prompt prefilled
  once, cache shared by the k rows), plus a naive vote of k separate calls for scale;
* throughput: the same questions in batches (what `bigthoughts eval` does);
* adaptive voting: mean samples per question and seconds per question.

Every configuration runs once untimed first (JAX compiles per shape) and is then
timed over the same questions. Generation stops at the answer as in real use, so
the numbers include the length differences between greedy and sampled traces:
the token counts are printed next to the times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import questions  # noqa: E402


def timed(solver, batches):
    """Runs every batch once to compile, then times all of them. Returns (s, solutions)."""
    for batch in batches:
        solver.solve(batch)
    start = time.perf_counter()
    out = [s for batch in batches for s in solver.solve(batch)]
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--votes", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="questions per call (throughput)")
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()

    from bigthoughts.inference.jax_sampler import Sampler
    from bigthoughts.inference.solve import Solver
    from bigthoughts.inference.voting import VoteConfig
    from bigthoughts.models.registry import load_model

    qs = questions(args.questions)
    lm = load_model()
    sampler = Sampler(lm.model, lm.tokenizer)
    mk = dict(max_new_tokens=args.max_new_tokens)
    single = Solver(sampler, vote=VoteConfig(votes=1, temperatures=(0.0,), **mk))
    vote = Solver(sampler, vote=VoteConfig(votes=args.votes, **mk))
    ladder = VoteConfig(votes=args.votes).schedule()
    separate = [Solver(sampler, vote=VoteConfig(votes=1, temperatures=(t,), **mk))
                for t in ladder]
    adaptive = Solver(sampler, vote=VoteConfig(votes=args.votes, strategy="adaptive", **mk))

    one_at_a_time = [[q] for q in qs]
    batched = [qs[i:i + args.batch] for i in range(0, len(qs), args.batch)]
    rows = {}

    def record(name, solvers, batches):
        """Times ``solvers`` one after the other on the same questions (summed)."""
        seconds, tokens, samples = 0.0, 0, 0
        for solver in solvers if isinstance(solvers, list) else [solvers]:
            s_, sols = timed(solver, batches)
            seconds += s_
            tokens += sum(g.num_tokens for s in sols for g in s.generations)
            samples += sum(len(s.generations) for s in sols)
        rows[name] = {"s_per_question": seconds / len(qs), "tokens": tokens,
                      "tok_per_s": tokens / seconds, "samples_per_question": samples / len(qs)}

    record("latency: single pass (greedy)", single, one_at_a_time)
    record(f"latency: {args.votes}-vote, one batched call", vote, one_at_a_time)
    # the naive vote: one call per ladder temperature, one after the other
    record(f"latency: {args.votes}-vote as {args.votes} separate calls", separate,
           one_at_a_time)
    record(f"latency: adaptive (max {args.votes})", adaptive, one_at_a_time)
    record(f"throughput: single pass, batch {args.batch}", single, batched)
    record(f"throughput: {args.votes}-vote, batch {args.batch}", vote, batched)
    record(f"throughput: adaptive (max {args.votes}), batch {args.batch}", adaptive, batched)

    base_lat = rows["latency: single pass (greedy)"]["s_per_question"]
    base_thr = rows[f"throughput: single pass, batch {args.batch}"]["s_per_question"]
    print(f"{len(qs)} GSM8K test questions, Gemma 3 270M (GGUF, f32), "
          f"max {args.max_new_tokens} new tokens\n")
    print(f"{'configuration':48} {'s/question':>10} {'vs single':>9} {'tokens':>7} "
          f"{'tok/s':>7} {'samples/q':>9}")
    for name, r in rows.items():
        base = base_thr if name.startswith("throughput") else base_lat
        print(f"{name:48} {r['s_per_question']:>10.2f} {r['s_per_question'] / base:>8.2f}x "
              f"{r['tokens']:>7d} {r['tok_per_s']:>7.1f} {r['samples_per_question']:>9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
