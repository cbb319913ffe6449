"""Soak test of ``bigthoughts serve``: minutes of mixed traffic on the embedded model.

    .venv/bin/python benchmarks/serve_soak.py [--minutes 3] [--engine llama.cpp]

Starts ``bigthoughts serve`` as its own process (a small queue, so bursts overflow it)
and sends, from several client threads at once, a mix of:

* normal requests (completions, chat, a 3-vote, a streamed chat), each checked: 200
  with text, or 503 with Retry-After when the queue is full;
* malformed ones (bad JSON, JSON nested 10,000 deep, a lone surrogate, wrong types,
  unknown model, no messages), which must get 4xx;
* oversized ones (a 300 kB body: 413; a prompt over ``--max-prompt-tokens``: 400);
* streams the client drops after the first event;
* bursts of 24 requests at once (beyond the queue of 8: some 503).

Prints answered / 4xx / 5xx / 503 counts, p50/p95 latency of the answered normal
requests and the server's resident memory (VmRSS) after warm-up and at the end, and
its peak (VmHWM). Exit status 1 when a 5xx other than 503 came back, a well-formed
request got anything but 200 or 503 + Retry-After, or the end RSS is more than 10%
above the warm-up RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import percentile, questions, server_process  # noqa: E402

MALFORMED = [
    b"{not json", b"[1, 2]", b'{"messages": "hi"}',
    b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"model": "../../etc/passwd", "messages": [{"role": "user", "content": "hi"}]}',
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "8"}',
    b"[" * 10_000 + b"]" * 10_000,
]


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


class Tally:
    """Thread-safe counts and latencies."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.latency: list[float] = []
        self.bad: list[str] = []

    def add(self, kind: str, status: int, seconds: float, ok: bool, why: str = "") -> None:
        with self.lock:
            self.counts[(kind, status)] += 1
            if kind == "normal" and status == 200:
                self.latency.append(seconds)
            if not ok:
                self.bad.append(f"{kind} -> {status} {why}"[:200])


def normal(client: httpx.Client, rng: random.Random, qs: list[str]) -> tuple[int, bool, str]:
    q = rng.choice(qs)
    kind = rng.choice(["completion", "chat", "vote", "stream"])
    if kind == "completion":
        r = client.post("/v1/completions", json={"prompt": f"Question: {q}\nAnswer:",
                                                 "max_tokens": 24})
    elif kind == "chat":
        r = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": q}], "max_tokens": 32})
    elif kind == "vote":
        r = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": q}], "max_tokens": 32, "vote": {"k": 3}})
    else:
        with client.stream("POST", "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": q}], "max_tokens": 24,
                "stream": True}) as r:
            body = r.read().decode("utf-8", "replace")
        ok = r.status_code == 200 and "[DONE]" in body or _retry(r)
        return r.status_code, ok, body[:80]
    if r.status_code == 200:
        data = r.json()
        choice = data["choices"][0]
        text = choice.get("text") if "text" in choice else choice["message"]["content"]
        return 200, isinstance(text, str), ""
    return r.status_code, _retry(r), r.text[:80]


def _retry(r) -> bool:
    return r.status_code == 503 and "retry-after" in {k.lower() for k in r.headers}


def misuse(client: httpx.Client, rng: random.Random, limit: int) -> tuple[str, int, bool]:
    pick = rng.randrange(len(MALFORMED) + 3)
    if pick < len(MALFORMED):
        r = client.post("/v1/chat/completions", content=MALFORMED[pick],
                        headers={"content-type": "application/json"})
        return "malformed", r.status_code, 400 <= r.status_code < 500
    if pick == len(MALFORMED):
        r = client.post("/v1/completions", content=b'{"prompt": "' + b"x" * 300_000 + b'"}',
                        headers={"content-type": "application/json"})
        return "oversized", r.status_code, r.status_code == 413
    if pick == len(MALFORMED) + 1:
        r = client.post("/v1/completions", json={"prompt": "seven " * (limit + 100),
                                                 "max_tokens": 8})
        return "oversized", r.status_code, r.status_code == 400
    with client.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Count to one hundred."}],
            "max_tokens": 64, "stream": True}) as r:
        status = r.status_code
        for _ in r.iter_bytes():  # the first event, then hang up
            break
    return "dropped", status, status in (200, 503)


def worker(base: str, until: float, tally: Tally, seed: int, qs: list[str], limit: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base, timeout=300) as client:
        while time.monotonic() < until:
            start = time.monotonic()
            if rng.random() < 0.6:
                status, ok, why = normal(client, rng, qs)
                tally.add("normal", status, time.monotonic() - start, ok, why)
            else:
                kind, status, ok = misuse(client, rng, limit)
                tally.add(kind, status, time.monotonic() - start, ok)


def burst(base: str, tally: Tally, qs: list[str], size: int = 24) -> None:
    def one(i):
        with httpx.Client(base_url=base, timeout=300) as client:
            start = time.monotonic()
            status, ok, why = normal(client, random.Random(i), qs)
            tally.add("normal", status, time.monotonic() - start, ok, why)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--engine", default="llama.cpp", choices=["llama.cpp", "jax"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-prompt-tokens", type=int, default=2048)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    exe = Path(sys.executable).with_name("bigthoughts")

    def command(port: int) -> list[str]:
        return [str(exe), "serve", "--port", str(port), "--engine", args.engine, "--threads",
                str(args.threads), "--queue-size", "8", "--max-batch-rows", "16",
                "--max-prompt-tokens", str(args.max_prompt_tokens)]

    qs = questions(200)
    tally = Tally()
    with server_process(command, what="bigthoughts serve") as (server, base):
        with httpx.Client(base_url=base, timeout=300) as client:  # warm-up
            for i in range(4):
                normal(client, random.Random(i), qs)
        start_mem = memory(server.pid)
        until = time.monotonic() + args.minutes * 60
        timeline: list[tuple[float, int]] = []  # (seconds, RSS) every 15 s

        def sample() -> None:
            t0 = time.monotonic()
            while time.monotonic() < until:
                timeline.append((time.monotonic() - t0, memory(server.pid)["VmRSS"]))
                time.sleep(15)
        threading.Thread(target=sample, daemon=True).start()
        workers = [threading.Thread(target=worker, args=(base, until, tally, s, qs,
                                                          args.max_prompt_tokens))
                   for s in range(args.clients)]
        for t in workers:
            t.start()
        while time.monotonic() < until - 20:
            time.sleep(min(30.0, max(0.0, until - 20 - time.monotonic())))
            burst(base, tally, qs)
        for t in workers:
            t.join()
        end_mem = memory(server.pid)
        alive = server.poll() is None and httpx.get(f"{base}/health").status_code == 200
    return report(tally, start_mem, end_mem, alive, args, timeline)


def report(tally: Tally, start_mem, end_mem, alive: bool, args, timeline) -> int:
    counts = tally.counts
    total = sum(counts.values())
    answered = sum(n for (k, s), n in counts.items() if k == "normal" and s == 200)
    busy = sum(n for (k, s), n in counts.items() if s == 503)
    fours = sum(n for (k, s), n in counts.items() if 400 <= s < 500)
    fives = sum(n for (k, s), n in counts.items() if s >= 500 and s != 503)
    growth = end_mem["VmRSS"] / start_mem["VmRSS"]
    gb = lambda b: f"{b / 1e9:.2f} GB"  # noqa: E731
    print(f"\n{args.minutes:g} min, {args.clients} clients + bursts of 24, engine {args.engine}")
    print("| requests | answered (200) | 4xx | 503 + Retry-After | other 5xx | p50 | p95 |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {total} | {answered} | {fours} | {busy} | {fives} | "
          f"{percentile(tally.latency, 50):.2f} s | {percentile(tally.latency, 95):.2f} s |")
    print(f"server RSS after warm-up {gb(start_mem['VmRSS'])}, at the end "
          f"{gb(end_mem['VmRSS'])} ({growth:.3f}x), peak {gb(end_mem['VmHWM'])}; "
          f"alive at the end: {alive}")
    print("RSS every 15 s (GB): " + " ".join(f"{r / 1e9:.2f}" for _, r in timeline))
    print("by kind and status: " + ", ".join(f"{k} {s}: {n}" for (k, s), n in
                                            sorted(counts.items())))
    for line in tally.bad[:10]:
        print(f"unexpected: {line}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "counts": {f"{k} {s}": n for (k, s), n in counts.items()}, "answered": answered,
            "p50_s": percentile(tally.latency, 50), "p95_s": percentile(tally.latency, 95),
            "rss_start": start_mem["VmRSS"], "rss_end": end_mem["VmRSS"],
            "rss_peak": end_mem["VmHWM"], "rss_timeline": timeline,
            "unexpected": tally.bad}, indent=2))
    return 0 if alive and not fives and not tally.bad and growth <= 1.10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
