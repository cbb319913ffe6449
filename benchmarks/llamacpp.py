"""Our llama.cpp engine vs llama.cpp's own ``llama-batched-bench`` of the same commit and
CPU flags, for the wheel's library and for the native build, side by side in one run:
the same 128-token prompt shared by 1 and 5 rows, 128 new tokens to a fixed length,
the embedded Q4_K_M GGUF, the same thread count (and our JAX sampler, for scale).

    .venv/bin/bigthoughts build-llamacpp --tools          # native: lib + batched-bench
    .venv/bin/bigthoughts build-llamacpp --tools --portable \\
        --dest ~/.cache/bigthoughts/llama.cpp-b11549-portable   # the wheel's flags
    .venv/bin/python benchmarks/llamacpp.py [--libraries wheel,portable,native] [--repeats 3]

Each repeat runs, for each library, a child process that loads our engine on it (the
wheel: ``BIGTHOUGHTS_LLAMA_NATIVE=0``; native: the build in the cache), warms up, times
one ``generate`` per row count and then that build's ``llama-batched-bench`` (the
portable build for the wheel: AVX2/FMA/F16C/BMI2, no native flags, as the wheel's
``llama_print_system_info`` says). ``portable`` runs our engine on that portable
build's own ``libllama.so``: the same machine code on both sides, so its ratio is the
engine's own cost; the wheel's library (same commit and flags, built elsewhere) decodes
a few per cent slower than the portable build here. ``llama-batched-bench -pps -kvu`` prefills the
prompt once, shares it with the rows through a unified KV cache and decodes random
tokens (no sampling); its time is prefill + decode. Ours is one ``generate`` call
(tokenize, prefill, per-row samplers at the vote's temperatures, log-probs,
detokenize, stop checks). Neither repacks weights (``-nr``; ``repack=False``). The
best of the repeats is reported, with ours / bench per library and native / wheel.
Other processes on the machine skew every side: run it quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import questions  # noqa: E402

LADDER = (0.0, 0.3, 0.5, 0.7, 1.0)


def prompt_of(engine, n_tokens: int) -> str:
    """A GSM8K-text prompt that llama.cpp tokenizes to exactly ``n_tokens`` (BOS included)."""
    words = " ".join(questions(20)).split()
    best = ""
    for i in range(1, len(words) + 1):
        text = " ".join(words[:i])
        if len(engine.tokenize(text, add_bos=True)) > n_tokens:
            break
        best = text
    # pad with single-token digits (Gemma splits digits) to the exact length
    while len(engine.tokenize(best, add_bos=True)) < n_tokens:
        best += "7"
    assert len(engine.tokenize(best, add_bos=True)) == n_tokens, "could not hit the length"
    return best


def run_batched_bench(exe: Path, gguf: Path, pp: int, tg: int, rows: list[int], threads: int):
    cmd = [str(exe), "-m", str(gguf), "-c", "4096", "-b", "2048", "-ub", "512", "-npp", str(pp),
           "-ntg", str(tg), "-npl", ",".join(map(str, rows)), "-pps", "-kvu", "-nr",
           "-t", str(threads), "-tb", str(threads), "--output-format", "jsonl"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    return {int(r["pl"]): float(r["t"]) for r in lines}


def time_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def child(args) -> None:
    """One library's measurements, as one JSON line: ours and batched-bench per row count."""
    from bigthoughts.inference.llamacpp import LlamaCppEngine
    from bigthoughts.llama_install import library_choice
    from bigthoughts.models.registry import embedded_gguf_path

    rows = [int(x) for x in args.rows.split(",")]
    gguf = embedded_gguf_path()
    engine = LlamaCppEngine(gguf, threads=args.threads)
    prompt = prompt_of(engine, args.prompt_tokens)

    def ours(n):
        return engine.generate([prompt], temperatures=temps(n), num_samples=n,
                               max_new_tokens=args.new_tokens, seed=1, stop_at_eos=False)

    for n in rows:  # warm-up: allocate the context
        assert all(g.num_tokens == args.new_tokens for g in ours(n))
    out = {"library": library_choice()[1], "ours": {n: time_call(lambda n=n: ours(n))
                                                    for n in rows}}
    engine.close()
    if args.batched_bench and Path(args.batched_bench).is_file():
        out["batched-bench"] = run_batched_bench(Path(args.batched_bench), gguf,
                                                 args.prompt_tokens, args.new_tokens, rows,
                                                 args.threads)
    print(json.dumps(out))


def temps(n):
    return [LADDER[i % len(LADDER)] for i in range(n)] if n > 1 else 0.0


def build_of(library: str) -> Path:
    """The build folder whose ``llama-batched-bench`` is the library's peer: the native
    build for ``native``, the portable build (the wheel's flags) for the others."""
    from bigthoughts.llama_install import native_dir

    return native_dir() if library == "native" else \
        native_dir().with_name(native_dir().name.replace("-native", "-portable"))


def run_child(library: str, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "BIGTHOUGHTS_LLAMA_LIB"}
    env["BIGTHOUGHTS_LLAMA_NATIVE"] = "1" if library == "native" else "0"
    if library == "portable":  # ours on the very library the portable bench runs on
        env["BIGTHOUGHTS_LLAMA_LIB"] = str(build_of(library) / "lib" / "libllama.so")
    cmd = [sys.executable, __file__, "--child", "--threads", str(args.threads),
           "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
           "--rows", args.rows,
           "--batched-bench", str(build_of(library) / "bin" / "llama-batched-bench")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if out["library"] != {"portable": "env"}.get(library, library):
        raise SystemExit(f"asked for the {library} library, the engine loaded {out['library']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--libraries", default="wheel,portable,native",
                    help="wheel: the xllamacpp wheel's library; portable: the portable "
                         "build's (the wheel's flags, built here); native: the native build")
    ap.add_argument("--batched-bench", default=None, help="(child) llama-batched-bench path")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rows", default="1,5")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-jax", action="store_true", help="skip the JAX sampler")
    args = ap.parse_args()
    if args.child:
        return child(args)
    rows = [int(x) for x in args.rows.split(",")]
    libraries = args.libraries.split(",")
    best: dict[str, dict[int, float]] = {}
    for rep in range(args.repeats):
        for library in libraries:
            got = run_child(library, args)
            for side in ("ours", "batched-bench"):
                for n, t in got.get(side, {}).items():
                    key = f"{side} ({library})"
                    best.setdefault(key, {})[int(n)] = min(t, best.get(key, {}).get(int(n), 1e9))
        print(f"repeat {rep + 1}: " + json.dumps(best), file=sys.stderr)
    if not args.no_jax:
        best["jax"] = jax_times(args, rows)
    report(best, rows, libraries, args)


def jax_times(args, rows) -> dict[int, float]:
    """Our JAX sampler on the same prompt (warmed up, best of the repeats)."""
    from bigthoughts.inference.jax_sampler import Sampler
    from bigthoughts.inference.llamacpp import LlamaCppEngine
    from bigthoughts.models.registry import embedded_gguf_path, load_model

    prompt = prompt_of(LlamaCppEngine(embedded_gguf_path(), threads=1), args.prompt_tokens)
    lm = load_model()
    sampler = Sampler(lm.model, lm.tokenizer)

    def run(n):
        return sampler.generate([prompt], temperatures=temps(n), num_samples=n,
                                max_new_tokens=args.new_tokens, seed=1, stop_at_eos=False)

    for n in rows:
        run(n)
    return {n: min(time_call(lambda n=n: run(n)) for _ in range(args.repeats)) for n in rows}


def report(best, rows, libraries, args) -> None:
    print(f"\n{args.prompt_tokens}-token shared prompt, {args.new_tokens} new tokens, "
          f"{args.threads} threads, best of {args.repeats}")
    fmt = lambda t: f"{t:.2f} s" if t else "-"  # noqa: E731
    ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "-"  # noqa: E731
    print("| library | rows | llama-batched-bench | ours | ours / bench | JAX | ours / JAX |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for library in libraries:
        for n in rows:
            bench = best.get(f"batched-bench ({library})", {}).get(n)
            ours = best.get(f"ours ({library})", {}).get(n)
            jx = best.get("jax", {}).get(n)
            print(f"| {library} | {n} | {fmt(bench)} | {fmt(ours)} | {ratio(ours, bench)} | "
                  f"{fmt(jx)} | {ratio(ours, jx)} |")
    if {"wheel", "native"} <= set(libraries):
        for n in rows:
            wheel, native = best["ours (wheel)"].get(n), best["ours (native)"].get(n)
            print(f"native build's gain over the wheel, {n} row(s): {ratio(wheel, native)}")


if __name__ == "__main__":
    main()
