"""Load test of `bigthoughts serve`: concurrent clients against one-at-a-time requests,
and against llama.cpp's own server on the same requests.

    .venv/bin/python benchmarks/serve_load.py [--clients 1,4,16] [--requests 4] \\
        [--max-tokens 32] [--shots 2] [--vote 0] [--engine llama.cpp|jax] \\
        [--threads 2] [--peer PATH/llama-server] [--json out.json]

Starts the server in this process on a free 127.0.0.1 port (the embedded Gemma 3
270M base, or ``--model``; the llama.cpp engine by default, continuous batching), then
for each N in ``--clients`` runs N client threads that each send ``--requests``
completions (bounded: N x requests in all), each a different GSM8K test question in
the base model's few-shot prompt (built here, so both servers get the same text and
stop string), greedy, ``--max-tokens`` new tokens at most. ``--vote K`` sends chat
requests with a K-trace vote instead (ours only).

The peer (``--peer``, default: the ``llama-server`` of ``bigthoughts build-llamacpp
--tools`` when present): llama.cpp's server of the same commit, started on the same
GGUF with the same threads, ``-np`` = the largest N (one slot per client, continuous
batching, a unified KV cache), sent the same requests by the same clients (largest N
only, after a warm-up round). Our engine then loads the library of the same build (the
native build when present, else the wheel: say which when you quote it).

The largest N is compared with one-at-a-time requests in ``--requests`` interleaved
rounds: round r sends question r of every client concurrently (N clients, one
request each), then the same N questions one at a time from one client. Summed over
the rounds both modes answer the same N x requests questions, and a change in the
machine's load (shared CPUs) hits both; the throughput ratio (concurrent /
sequential requests per second) is printed.

Every scenario runs once untimed first (JAX compiles per batch shape; the server
pads batches to powers of two, so few shapes exist). All traffic goes to 127.0.0.1.
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

from benchmarks.common import percentile, questions, server_process  # noqa: E402


def run_clients(base_url: str, plan: list[list[str]], args) -> dict:
    """One thread per client; client c sends ``plan[c]`` in order. Raw measurements."""
    import openai

    from bigthoughts.data import FEWSHOT_STOP, build_prompt

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    body = {"vote": {"k": args.vote}} if args.vote else {}

    def client(mine: list[str]) -> None:
        api = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=1800)
        for question in mine:
            start = time.perf_counter()
            try:
                if args.vote:
                    out = api.chat.completions.create(
                        model=args.served_model,
                        messages=[{"role": "user", "content": question}],
                        temperature=0, max_tokens=args.max_tokens, extra_body=body)
                    assert out.choices[0].message.content is not None
                else:
                    out = api.completions.create(
                        model=args.served_model,
                        prompt=build_prompt(question, "fewshot", args.shots),
                        temperature=0, max_tokens=args.max_tokens, stop=[FEWSHOT_STOP])
                    assert out.choices[0].text is not None
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(mine,)) for mine in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"requests": sum(len(m) for m in plan), "latencies": latencies, "errors": errors,
            "seconds": time.perf_counter() - start}


def summarize(label: str, clients: int, parts: list[dict], engine_calls: int) -> dict:
    """One table row from one or more :func:`run_clients` results."""
    lat = [x for p in parts for x in p["latencies"]]
    errors = [e for p in parts for e in p["errors"]]
    seconds = sum(p["seconds"] for p in parts)
    row = {"label": label, "clients": clients, "requests": sum(p["requests"] for p in parts),
           "answered": len(lat), "errors": len(errors), "error_samples": errors[:3],
           "seconds": seconds, "rps": len(lat) / seconds, "p50_s": percentile(lat, 50),
           "p95_s": percentile(lat, 95), "mean_s": statistics.fmean(lat) if lat else math.nan,
           "engine_calls": engine_calls}
    print(f"  {label}: {row['answered']}/{row['requests']} answered, {row['errors']} errors, "
          f"{row['rps']:.3f} req/s, {engine_calls} engine calls", file=sys.stderr)
    return row


def scenario(base_url: str, raw, qs: list[str], clients: int, args) -> dict:
    """``clients`` free-running clients, ``args.requests`` each (after a warm-up round)."""
    plan = [[qs[c * args.requests + r] for r in range(args.requests)] for c in range(clients)]
    run_clients(base_url, [mine[:1] for mine in plan], args)  # warm-up: compile the shapes
    before = engine_calls(raw)
    part = run_clients(base_url, plan, args)
    return summarize(f"{clients} clients", clients, [part], engine_calls(raw) - before)


def compare(base_url: str, raw, qs: list[str], clients: int, args) -> list[dict]:
    """The same ``clients x requests`` questions concurrently and one at a time,
    interleaved in ``requests`` rounds so that a change in machine load hits both."""
    run_clients(base_url, [[qs[c * args.requests]] for c in range(clients)], args)  # warm-up
    run_clients(base_url, [[qs[0]]], args)
    together, alone, calls = [], [], [0, 0]
    for r in range(args.requests):
        batch = [qs[c * args.requests + r] for c in range(clients)]
        before = engine_calls(raw)
        together.append(run_clients(base_url, [[q] for q in batch], args))
        middle = engine_calls(raw)
        alone.append(run_clients(base_url, [batch], args))
        calls[0] += middle - before
        calls[1] += engine_calls(raw) - middle
    return [summarize(f"{clients} clients (interleaved)", clients, together, calls[0]),
            summarize("sequential (interleaved)", 1, alone, calls[1])]


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


def engine_calls(raw) -> int:
    """Our server's engine calls so far (0 for the peer, which has no such counter)."""
    try:
        return raw.get("/health").json().get("engine_calls", 0)
    except ValueError:
        return 0


def default_peer() -> Path | None:
    from bigthoughts.llama_install import native_dir

    found = native_dir() / "bin" / "llama-server"
    return found if found.is_file() else None


def peer_rows(peer: Path, gguf: Path, qs: list[str], clients: int, args) -> list[dict]:
    """llama-server on the same GGUF, threads and requests: N clients, then one at a time
    (interleaved rounds, as ours)."""
    import httpx

    def command(port: int) -> list[str]:
        return [str(peer), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                "-t", str(args.threads), "-tb", str(args.threads), "-np", str(clients),
                "-c", str(clients * 1024), "-kvu", "-ngl", "0"]

    with server_process(command, what="llama-server", timeout_s=120) as (_, base), \
            httpx.Client(base_url=base, timeout=60) as raw:
        rows = compare(f"{base}/v1", raw, qs, clients, args)
    for row in rows:
        row["label"] = "llama-server: " + row["label"]
    return rows


def our_engine(args):
    """(engine, its GGUF or None, the model's spec)."""
    if args.engine == "jax":
        from bigthoughts.inference.jax_sampler import Sampler
        from bigthoughts.models.registry import load_model

        lm = load_model(args.model)
        return Sampler(lm.model, lm.tokenizer), None, lm.spec
    from bigthoughts.inference.llamacpp import LlamaCppEngine
    from bigthoughts.models.resolve import gguf_source

    gguf = gguf_source(args.model or "gemma3-270m")
    if gguf is None:
        raise SystemExit("--engine llama.cpp needs a GGUF --model (default: the embedded one)")
    return LlamaCppEngine(gguf[0], threads=args.threads, spec=gguf[1]), gguf[0], gguf[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--vote", type=int, default=0, help="k for a vote per request (0: none)")
    parser.add_argument("--shots", type=int, default=2,
                        help="worked examples in the base-model prompt (0: zero-shot)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--engine", choices=["llama.cpp", "jax"], default="llama.cpp")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peer", default=None, help="llama-server to compare with "
                        "(default: build-llamacpp --tools's; 'none' to skip)")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]

    import httpx

    from bigthoughts.cli import enable_compilation_cache
    from bigthoughts.llama_install import library_choice
    from bigthoughts.serve.app import create_app, serving
    from bigthoughts.serve.handlers import ServeConfig

    enable_compilation_cache()
    engine, gguf, spec = our_engine(args)
    args.served_model = spec.name
    peer = None if args.peer == "none" else Path(args.peer) if args.peer else default_peer()
    qs = questions(max(counts) * args.requests)
    config = ServeConfig(model_id=spec.name, prompt_style=spec.prompt_style,
                         shots=args.shots, pad_batches=args.engine == "jax",
                         max_batch_rows=max(32, max(counts) * max(1, args.vote)))
    app = create_app(engine, config)
    with serving(app, host="127.0.0.1") as base_url, \
            httpx.Client(base_url=base_url.removesuffix("/v1"), timeout=60) as raw:
        rows = [scenario(base_url, raw, qs, n, args) for n in counts if n != max(counts)]
        rows += compare(base_url, raw, qs, max(counts), args)
    ratio = rows[-2]["rps"] / rows[-1]["rps"] if rows[-1]["rps"] else math.nan
    if gguf is not None and peer is not None and not args.vote:
        engine.close()  # its threads would compete with the peer's
        rows += peer_rows(peer, gguf, qs, max(counts), args)
        ours, theirs = rows[-4]["rps"], rows[-2]["rps"]
        print(f"\nours / llama-server at {max(counts)} clients: {ours / theirs:.2f}x "
              f"requests/s (our engine on the {library_choice()[1]} llama.cpp library, the "
              f"peer {peer.parent.parent.name}/bin/{peer.name})")
    print_table(rows, ratio, rows[-2]["label"] if not peer else f"{max(counts)} clients", args)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ratio": ratio,
                                               "args": vars(args)}, indent=2, default=str))


if __name__ == "__main__":
    main()
