"""Load test of `bigthoughts serve`: concurrent clients against one-at-a-time requests.

    .venv/bin/python benchmarks/serve_load.py [--clients 1,4,16] [--requests 4] \\
        [--max-tokens 32] [--shots 2] [--vote 0] [--json out.json]

Starts the server in this process on a free 127.0.0.1 port (the embedded Gemma 3
270M, or ``--model``), then for each N in ``--clients`` runs N client threads that
each send ``--requests`` chat completions (bounded: N x requests in all), each a
different GSM8K test question, greedy, ``--max-tokens`` new tokens at most. The
largest N's questions are then sent again one at a time by a single client, and the
throughput ratio (concurrent / sequential requests per second) is printed.

Each scenario runs once untimed first with one request per client (JAX compiles per
batch shape), so the timed numbers are steady state; a batch of a size not seen in
the warm-up still compiles inside the timed run. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import questions  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return float("nan")
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, max(0, math.ceil(q / 100 * len(ranked)) - 1))]


def run_clients(base_url: str, qs: list[str], clients: int, per_client: int, args) -> dict:
    """``clients`` threads, each sending ``per_client`` requests; returns the measurements."""
    import openai

    latencies: list[float] = []
    errors: list[str] = []
    answered = [0]
    lock = threading.Lock()
    body = {"vote": {"k": args.vote}} if args.vote else {}

    def client(c: int) -> None:
        api = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=1800)
        for r in range(per_client):
            question = qs[(c * per_client + r) % len(qs)]
            start = time.perf_counter()
            try:
                out = api.chat.completions.create(
                    model="bench", messages=[{"role": "user", "content": question}],
                    temperature=0, max_tokens=args.max_tokens, extra_body=body)
                ok = out.choices[0].message.content is not None
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
                answered[0] += ok

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    return {"clients": clients, "requests": clients * per_client, "answered": answered[0],
            "errors": len(errors), "error_samples": errors[:3], "seconds": seconds,
            "rps": answered[0] / seconds, "p50_s": percentile(latencies, 50),
            "p95_s": percentile(latencies, 95),
            "mean_s": statistics.fmean(latencies) if latencies else float("nan")}


def health_delta(raw, before: dict) -> dict:
    now = raw.get("/health").json()
    return {"engine_calls": now["engine_calls"] - before["engine_calls"],
            "largest_batch": now["largest_batch"]}


def measure(base_url: str, raw, qs: list[str], label: str, clients: int, per_client: int,
            args) -> dict:
    run_clients(base_url, qs, clients, 1, args)  # warm-up: compile this batch shape
    before = raw.get("/health").json()
    row = run_clients(base_url, qs, clients, per_client, args)
    row.update(health_delta(raw, before), label=label)
    print(f"  {label}: {row['answered']}/{row['requests']} answered, {row['errors']} errors, "
          f"{row['rps']:.3f} req/s, {row['engine_calls']} engine calls", file=sys.stderr)
    return row


def print_table(rows: list[dict], ratio: float, busiest: str, args) -> None:
    print(f"\nmax_tokens={args.max_tokens}, shots={args.shots}, greedy, "
          f"{'vote k=' + str(args.vote) if args.vote else 'single pass'}, "
          f"{args.requests} requests per client\n")
    print("| scenario | requests | answered | errors | req/s | p50 s | p95 s | engine calls |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['label']} | {r['requests']} | {r['answered']} | {r['errors']} | "
              f"{r['rps']:.3f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['engine_calls']} |")
    print(f"\nthroughput ratio ({busiest} / sequential): {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--vote", type=int, default=0, help="k for a vote per request (0: none)")
    parser.add_argument("--shots", type=int, default=2,
                        help="worked examples in the base-model prompt (0: zero-shot)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]

    import httpx

    from bigthoughts.cli import enable_compilation_cache
    from bigthoughts.generate import Sampler
    from bigthoughts.models.registry import load_model
    from bigthoughts.serve.app import create_app, serving
    from bigthoughts.serve.handlers import ServeConfig

    enable_compilation_cache()
    lm = load_model(args.model)
    qs = questions(max(counts) * args.requests)
    config = ServeConfig(model_id=lm.spec.name, prompt_style=lm.spec.prompt_style,
                         shots=args.shots, pad_batches=True,
                         max_batch_rows=max(32, max(counts) * max(1, args.vote)))
    app = create_app(Sampler(lm.model, lm.tokenizer), config)
    with serving(app, host="127.0.0.1") as base_url, \
            httpx.Client(base_url=base_url.removesuffix("/v1"), timeout=60) as raw:
        rows = [measure(base_url, raw, qs, f"{n} clients", n, args.requests, args)
                for n in counts]
        total = max(counts) * args.requests
        rows.append(measure(base_url, raw, qs, "sequential", 1, total, args))
    busiest = next(r for r in rows if r["clients"] == max(counts))
    ratio = busiest["rps"] / rows[-1]["rps"] if rows[-1]["rps"] else float("nan")
    print_table(rows, ratio, busiest["label"], args)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ratio": ratio,
                                               "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
