"""``bigthoughts`` command line: parses, calls the library, prints.

    bigthoughts ask "A farmer has 12 cows and buys 30 more. How many cows?"
    bigthoughts generate "Question: 2 + 3?\\nAnswer:" --temperature 0
    bigthoughts eval --mode vote --limit 20 --out runs/vote
    bigthoughts report runs/single runs/vote --out runs/report
    bigthoughts train --config configs/gemma3-270m-cpu.yaml --max-steps 2
    bigthoughts download --dest ~/.cache/bigthoughts/gsm8k

User mistakes (a bad path, an unknown model, a malformed config) end with a one-line
``error: ...`` message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

EXIT_USAGE = 2


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit status 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from bigthoughts.config import ConfigError
    from bigthoughts.data import DataError
    from bigthoughts.models.gguf import GGUFError
    from bigthoughts.models.gguf_export import GGUFExportError
    from bigthoughts.models.registry import ModelLoadError

    return (UserError, ConfigError, DataError, GGUFError, GGUFExportError, ModelLoadError,
            FileNotFoundError)


def enable_compilation_cache() -> None:
    """Persist XLA compilations across runs (the 270M decode step compiles in ~10 s)."""
    import jax

    from bigthoughts.models.registry import cache_dir

    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="registry name or path (.gguf, HF or Kaggle checkpoint dir); "
                        "default: the embedded Gemma 3 270M base")
    p.add_argument("--checkpoint", default=None,
                   help="a checkpoint exported by `bigthoughts train` (overrides --model weights)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])


def _load(args):
    from bigthoughts.models.registry import load_model

    if getattr(args, "checkpoint", None):
        from bigthoughts.export import load_exported

        return load_exported(args.checkpoint, dtype=args.dtype)
    model = args.model
    if model is not None and Path(model).exists():
        return load_model(path=model, dtype=args.dtype)
    return load_model(model, dtype=args.dtype)


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="auto", choices=["auto", "jax", "llama.cpp"],
                   help="inference engine; auto: llama.cpp on a CPU when the llamacpp extra "
                        "is installed and the model is a GGUF file, else jax")
    p.add_argument("--lora", default=None,
                   help="a GGUF LoRA adapter (`bigthoughts export --gguf-lora`; llama.cpp)")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all)")


def _engine(args):
    """(engine, LoadedModel) for --engine/--model/--checkpoint."""
    from bigthoughts.inference.engine import make_engine

    chosen = make_engine(args.engine, model=args.checkpoint or args.model, lora=args.lora,
                         threads=args.threads, load_jax=lambda: _load(args))
    return chosen.engine, chosen.loaded


def _vote_config(args):
    from bigthoughts.config import VoteConfig
    from bigthoughts.voting import DEFAULT_LADDER, ladder

    temps = DEFAULT_LADDER if args.votes == len(DEFAULT_LADDER) else ladder(args.votes)
    return VoteConfig(votes=args.votes, temperatures=temps, strategy=args.strategy,
                      max_new_tokens=args.max_new_tokens)


def cmd_ask(args) -> int:
    from bigthoughts.solve import Solver

    if not args.question.strip():
        raise UserError("the question is empty")
    engine, lm = _engine(args)
    style = args.style or lm.spec.prompt_style
    solver = Solver(engine, style=style, shots=args.shots,
                    vote=_vote_config(args), seed=args.seed)
    start = time.perf_counter()
    [sol] = solver.solve([args.question])
    seconds = time.perf_counter() - start
    vote = sol.vote
    if args.json:
        print(json.dumps({
            "question": args.question, "answer": vote.answer, "agreement": vote.agreement,
            "counts": vote.counts, "samples_used": vote.votes_used, "seconds": seconds,
            "traces": [{"temperature": g.temperature, "text": g.text, "tokens": g.num_tokens,
                        "logprob": g.logprob, "answer": s.answer}
                       for g, s in zip(sol.generations, sol.samples, strict=True)],
        }, indent=2))
        return 0
    if args.traces:
        for i, (g, s) in enumerate(zip(sol.generations, sol.samples, strict=True)):
            print(f"--- trace {i + 1} (T={g.temperature:g}, {g.num_tokens} tokens, "
                  f"answer={s.answer}) ---\n{g.text.strip()}\n")
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(vote.counts.items(), key=lambda kv: -kv[1]))
    print(f"answer: {vote.answer if vote.answer is not None else '(no answer)'}")
    print(f"votes: {counts or 'none'} (agreement {vote.agreement:.0%}, "
          f"{vote.votes_used} samples, {args.strategy})")
    print(f"time: {seconds:.2f} s")
    return 0


def cmd_generate(args) -> int:
    sampler, _ = _engine(args)
    start = time.perf_counter()
    outs = sampler.generate([args.prompt], temperatures=args.temperature,
                            num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                            stop=args.stop or (), seed=args.seed, top_k=args.top_k,
                            top_p=args.top_p)
    seconds = time.perf_counter() - start
    for out in outs:
        print(out.text)
        print(f"[{out.num_tokens} tokens, {out.finish_reason}, "
              f"mean log-prob {out.mean_logprob:.3f}]", file=sys.stderr)
    total = sum(o.num_tokens for o in outs)
    print(f"[{seconds:.2f} s, {total / max(seconds, 1e-9):.1f} tok/s]", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from bigthoughts.data import load_gsm8k
    from bigthoughts.evaluate import EvalConfig, run_eval

    config = EvalConfig(mode=args.mode, split=args.split, limit=args.limit, votes=args.votes,
                        strategy=args.strategy, batch_size=args.batch_size,
                        max_new_tokens=args.max_new_tokens, style=args.style, shots=args.shots,
                        seed=args.seed)
    examples = load_gsm8k(args.split, args.data, limit=args.limit)
    engine, lm = _engine(args)
    summary = run_eval(lm, examples, config, Path(args.out), progress=not args.quiet,
                       sampler=engine)
    print(json.dumps({k: summary[k] for k in ("accuracy", "accuracy_ci95", "format_strict",
                                              "format_lenient", "seconds_per_question")
                      if k in summary}, indent=2))
    return 0


def cmd_report(args) -> int:
    from bigthoughts.report import make_report

    path = make_report([Path(p) for p in args.runs], Path(args.out))
    print(path.read_text())
    print(f"report written to {path.parent}", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from bigthoughts.train import EXIT_RELAY, load_train_config, train

    overrides = list(args.overrides or [])
    if args.data:
        overrides.append(f"data.path={args.data}")
    config = load_train_config(args.config, overrides)
    result = train(config, max_steps=args.max_steps, time_budget=args.time_budget,
                   out_dir=args.out)
    print(json.dumps(result.summary(), indent=2))
    return EXIT_RELAY if result.stopped_for_deadline else 0


def cmd_train_report(args) -> int:
    from bigthoughts.train_report import plot_training

    print(f"wrote {plot_training(Path(args.run), Path(args.out or args.run), window=args.window)}")
    return 0


def cmd_export(args) -> int:
    """An exported checkpoint (merged weights) -> one GGUF file for llama.cpp / Ollama."""
    from bigthoughts.export import load_exported
    from bigthoughts.models.build import flat_params
    from bigthoughts.models.gguf import open_gguf
    from bigthoughts.models.gguf_export import write_model_gguf
    from bigthoughts.models.registry import embedded_gguf_path

    lm = load_exported(args.checkpoint)
    if lm.spec.family != "gemma3":
        raise UserError(f"GGUF export supports Gemma 3 models, not {lm.spec.family}")
    base = open_gguf(args.tokenizer_from or embedded_gguf_path())
    out = write_model_gguf(args.gguf, flat_params(lm.model), lm.model.config, base=base,
                           ftype=args.gguf_type)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.0f} MiB, {args.gguf_type})")
    return 0


def cmd_download(args) -> int:
    from bigthoughts.data import download

    path = download(Path(args.dest) if args.dest else None)
    print(f"GSM8K is in {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from bigthoughts import __version__

    parser = argparse.ArgumentParser(prog="bigthoughts", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"bigthoughts {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def vote_args(p, votes: int):
        p.add_argument("--votes", type=int, default=votes, help="samples per question (k)")
        p.add_argument("--strategy", default="majority",
                       choices=["majority", "weighted", "adaptive"])
        p.add_argument("--max-new-tokens", type=int, default=256)
        p.add_argument("--style", default=None, choices=["chat", "fewshot", "zeroshot"],
                       help="prompt style (default: chat for IT models, fewshot for base)")
        p.add_argument("--shots", type=int, default=2, help="worked examples in fewshot prompts")
        p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("ask", help="answer one question by consensus vote")
    p.add_argument("question")
    _add_model_args(p)
    _add_engine_args(p)
    vote_args(p, 5)
    p.add_argument("--traces", action="store_true", help="print every trace")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("generate", help="sample a continuation of a raw prompt")
    p.add_argument("prompt")
    _add_model_args(p)
    _add_engine_args(p)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("eval", help="evaluate on GSM8K; resumable")
    _add_model_args(p)
    _add_engine_args(p)
    p.add_argument("--mode", default="single", choices=["zero-shot", "single", "vote"])
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--data", default=None, help="GSM8K dir or .jsonl (default: $BIGTHOUGHTS_DATA)")
    p.add_argument("--out", required=True, help="run directory (results.jsonl, summary.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    vote_args(p, 5)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="compare eval runs: table, significance, plots")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default="report")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("train", help="GRPO fine-tuning with relay checkpoints")
    p.add_argument("--config", required=True)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--time-budget", default=None, help="e.g. 8h45m: checkpoint and exit before")
    p.add_argument("--out", default=None, help="run directory (default from the config)")
    p.add_argument("--data", default=None, help="GSM8K dir (default: $BIGTHOUGHTS_DATA)")
    p.add_argument("overrides", nargs="*", help="config overrides like grpo.beta=0.02")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-report", help="plot training curves of a train run")
    p.add_argument("run")
    p.add_argument("--out", default=None, help="folder for the PNG (default: the run dir)")
    p.add_argument("--window", type=int, default=10, help="moving-average window")
    p.set_defaults(func=cmd_train_report)

    p = sub.add_parser("export", help="write an exported checkpoint as a GGUF file")
    p.add_argument("--checkpoint", required=True, help="a directory written by `train` (export/)")
    p.add_argument("--gguf", required=True, help="output .gguf file")
    p.add_argument("--gguf-type", default="f16", choices=["f16", "q8_0", "f32"])
    p.add_argument("--tokenizer-from", default=None,
                   help="GGUF whose tokenizer/metadata to copy (default: the embedded 270M)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("download", help="download GSM8K (checksummed) into the cache")
    p.add_argument("--dest", default=None)
    p.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Tunix 0.1.7 reads ``Variable.value``, deprecated in flax 0.12: one warning per
    # parameter access would bury our output.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        if args.command not in ("report", "download", "train-report"):
            enable_compilation_cache()
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
