"""``bigthoughts`` command line: parses, calls the library, prints.

    bigthoughts ask "A farmer has 12 cows and buys 30 more. How many cows?"
    bigthoughts generate "Question: 2 + 3?\\nAnswer:" --temperature 0
    bigthoughts eval --mode vote --limit 20 --out runs/vote
    bigthoughts report runs/single runs/vote --out runs/report
    bigthoughts train --config configs/gemma3-270m-cpu.yaml --max-steps 2
    bigthoughts sft --config configs/gemma3-270m-sft.yaml --time-budget 1h
    bigthoughts download --dest ~/.cache/bigthoughts/gsm8k
    bigthoughts serve --port 8000        # OpenAI-compatible HTTP, consensus via extra_body

User mistakes (a bad path, an unknown model, a malformed config) end with a one-line
``error: ...`` message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    from bigthoughts.models.adapter import AdapterError
    from bigthoughts.models.build import ParameterMismatch
    from bigthoughts.models.gguf import GGUFError
    from bigthoughts.models.gguf_export import GGUFExportError
    from bigthoughts.models.limits import GenerationLimitError
    from bigthoughts.models.spec import ModelLoadError
    from bigthoughts.training.loop import OutOfMemory

    return (UserError, ConfigError, DataError, GGUFError, GGUFExportError, ModelLoadError,
            ParameterMismatch, GenerationLimitError, FileNotFoundError, OutOfMemory,
            AdapterError)


def enable_compilation_cache() -> None:
    """Persist XLA compilations across runs (the 270M decode step compiles in ~10 s)."""
    import jax

    from bigthoughts.models.spec import cache_dir

    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="registry name or path (.gguf, HF or Kaggle checkpoint dir); default: "
                        "the embedded Gemma 3 270M with the GSM8K adapter shipped in the "
                        "package (gemma3-270m-gsm8k); gemma3-270m-base for the raw base")
    p.add_argument("--checkpoint", default=None,
                   help="a checkpoint exported by `bigthoughts train` (overrides --model weights)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="JAX weights dtype (default float32; naming one picks the JAX engine "
                        "under --engine auto)")
    p.add_argument("--adapter", default=None,
                   help="a LoRA adapter (.safetensors from `bigthoughts sft`/`train`) to fold "
                        "into the model's weights")


def _utf8(what: str, text: str) -> str:
    """``text`` if it encodes as UTF-8; argv bytes that are not UTF-8 arrive as lone
    surrogates (PEP 383) and are refused here, before any tokenizer sees them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise UserError(f"the {what} is not valid UTF-8 text (byte "
                        f"{ord(text[err.start]) & 0xFF:#04x} at position {err.start})") from None
    return text


def _config(cls, **kwargs):
    """``cls(**kwargs)`` with its validation error as a one-line user error."""
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise UserError(str(err)) from None


def _spec_before_load(args):
    """The spec of the model ``args`` name, when it is known without loading (else None);
    a ``--model`` or ``--checkpoint`` path that does not exist is refused here."""
    from bigthoughts.models.registry import DEFAULT_MODEL, REGISTRY, looks_like_path

    if getattr(args, "checkpoint", None):
        if not Path(args.checkpoint).expanduser().exists():
            raise UserError(f"checkpoint path does not exist: {args.checkpoint}")
        return None
    if args.model is None:
        return REGISTRY[DEFAULT_MODEL]
    if args.model in REGISTRY:  # a name that needs a path fails in load_model, not here
        return REGISTRY[args.model] if REGISTRY[args.model].embedded else None
    if looks_like_path(args.model) and not Path(args.model).expanduser().exists():
        raise UserError(f"model path does not exist: {args.model}")
    return None


def _preflight(args, spec, prompts: list[str], *, rows: int, max_new_tokens: int) -> None:
    """Context and memory checks before the weights load, when the spec is known."""
    from bigthoughts.models.limits import check_before_load

    if spec is not None:
        check_before_load(spec, prompts, rows=rows, max_new_tokens=max_new_tokens,
                          dtype_bytes=2 if args.dtype == "bfloat16" else 4)


def _load(args):
    from bigthoughts.models.registry import load_model

    if getattr(args, "adapter", None) and not Path(args.adapter).expanduser().is_file():
        raise UserError(f"adapter file does not exist: {args.adapter}")
    if getattr(args, "checkpoint", None):
        from bigthoughts.models.export import load_exported

        lm = load_exported(args.checkpoint, dtype=args.dtype or "float32")
    else:
        lm = load_model(args.model, dtype=args.dtype or "float32")
    if getattr(args, "adapter", None):
        from bigthoughts.models.adapter import with_adapter

        lm = with_adapter(lm, Path(args.adapter).expanduser())
    return lm


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="auto", choices=["auto", "jax", "llama.cpp"],
                   help="inference engine (auto: llama.cpp for a GGUF model on a CPU when the "
                        "llamacpp extra is installed, else jax)")
    p.add_argument("--lora", default=None,
                   help="a GGUF LoRA adapter for the llama.cpp engine")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all)")


def _engine(args):
    """The ``ChosenEngine`` (engine, kind, LoadedModel) for --engine/--model/--checkpoint/
    --adapter."""
    from bigthoughts.inference.engine import make_engine

    kind = _engine_kind(args)
    lora = args.lora
    if args.adapter and kind == "llama.cpp":  # the same adapter, as a GGUF LoRA
        lora = _adapter_as_gguf(args)
    chosen = make_engine(kind, model=args.checkpoint or args.model, lora=lora,
                         threads=args.threads, load_jax=lambda: _load(args))
    if lora is not None and args.adapter:
        from bigthoughts.models.adapter import adapter_label

        chosen = dataclasses.replace(chosen, loaded=dataclasses.replace(
            chosen.loaded, source=f"{chosen.loaded.source} + {adapter_label(args.adapter)}"))
    return chosen


def _engine_kind(args) -> str:
    """--engine, with "auto" settled: a GGUF LoRA (--lora) needs llama.cpp, a JAX dtype
    (--dtype) or a checkpoint needs JAX, else ``resolve_kind`` decides."""
    from bigthoughts.inference.engine import gguf_source, resolve_kind

    if args.engine != "auto":
        return args.engine
    gguf = not args.checkpoint and gguf_source(args.model) is not None
    if args.dtype is not None and not (gguf and args.lora):
        return "jax"
    return resolve_kind("auto", gguf=gguf, lora=bool(args.lora))


def _adapter_as_gguf(args) -> Path:
    from bigthoughts.inference.engine import gguf_source
    from bigthoughts.models.adapter import adapter_gguf

    if args.lora:
        raise UserError("give the adapter once: --adapter (safetensors) or --lora (GGUF)")
    if not Path(args.adapter).expanduser().is_file():
        raise UserError(f"adapter file does not exist: {args.adapter}")
    source = gguf_source(args.checkpoint or args.model)
    if source is None:
        raise UserError("the llama.cpp engine needs a GGUF model (the embedded default or a "
                        ".gguf path)")
    return adapter_gguf(args.adapter, source[0])


def cmd_ask(args) -> int:
    from bigthoughts.data import prompt_format
    from bigthoughts.inference.solve import Solver
    from bigthoughts.inference.voting import VoteConfig
    from bigthoughts.models.limits import check_loaded

    question = _utf8("question", args.question)
    if not question.strip():
        raise UserError("the question is empty")
    vote = _config(VoteConfig, votes=args.votes, strategy=args.strategy,
                   max_new_tokens=args.max_new_tokens)
    spec = _spec_before_load(args)
    fmt = _config(prompt_format, style=args.style or (spec.prompt_style if spec else "fewshot"),
                  shots=args.shots)
    _preflight(args, spec, [fmt.prompt(question)], rows=vote.votes,
               max_new_tokens=vote.max_new_tokens)
    chosen = _engine(args)
    engine, lm = chosen.engine, chosen.loaded
    fmt = prompt_format(args.style or lm.spec.prompt_style, args.shots)
    check_loaded(lm, [fmt.prompt(question)], rows=vote.votes, max_new_tokens=vote.max_new_tokens)
    solver = Solver(engine, format=fmt, vote=vote, seed=args.seed, calculator=args.calculator)
    start = time.perf_counter()
    [sol] = solver.solve([question])
    _print_solution(args, sol, time.perf_counter() - start,
                    model=f"{args.shipped or lm.spec.name} ({lm.source}; {chosen.kind} engine)")
    return 0


def _print_solution(args, sol, seconds: float, *, model: str) -> None:
    vote = sol.vote
    if args.json:
        print(json.dumps({
            "question": args.question, "model": model, "answer": vote.answer,
            "agreement": vote.agreement,
            "counts": vote.counts, "samples_used": vote.votes_used, "seconds": seconds,
            "traces": [{"temperature": g.temperature, "text": g.text, "tokens": g.num_tokens,
                        "logprob": g.logprob, "answer": s.answer}
                       for g, s in zip(sol.generations, sol.samples, strict=True)],
        }, indent=2))
        return
    if args.traces:
        for i, (g, s) in enumerate(zip(sol.generations, sol.samples, strict=True)):
            print(f"--- trace {i + 1} (T={g.temperature:g}, {g.num_tokens} tokens, "
                  f"answer={s.answer}) ---\n{g.text.strip()}\n")
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(vote.counts.items(), key=lambda kv: -kv[1]))
    print(f"answer: {vote.answer if vote.answer is not None else '(no answer)'}")
    print(f"votes: {counts or 'none'} (agreement {vote.agreement:.0%}, "
          f"{vote.votes_used} samples, {args.strategy})")
    print(f"time: {seconds:.2f} s")
    print(f"model: {model}")


def _check_generate_args(args) -> None:
    import math

    _utf8("prompt", args.prompt)
    for stop in args.stop or ():
        _utf8("stop string", stop)
    if args.num_samples < 1 or args.max_new_tokens < 1:
        raise UserError(f"--num-samples and --max-new-tokens must be >= 1, got "
                        f"{args.num_samples} and {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UserError(f"--temperature must be finite and >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")


def cmd_generate(args) -> int:
    from bigthoughts.models.limits import check_loaded

    _check_generate_args(args)
    _preflight(args, _spec_before_load(args), [args.prompt], rows=args.num_samples,
               max_new_tokens=args.max_new_tokens)
    chosen = _engine(args)
    sampler, lm = chosen.engine, chosen.loaded
    check_loaded(lm, [args.prompt], rows=args.num_samples, max_new_tokens=args.max_new_tokens)
    start = time.perf_counter()
    outs = sampler.generate([args.prompt], temperatures=args.temperature,
                            num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                            stop=args.stop or (), seed=args.seed, top_k=args.top_k,
                            top_p=args.top_p, calculator=args.calculator)
    seconds = time.perf_counter() - start
    for out in outs:
        print(out.text)
        print(f"[{out.num_tokens} tokens, {out.finish_reason}, "
              f"mean log-prob {out.mean_logprob:.3f}]", file=sys.stderr)
    total = sum(o.num_tokens for o in outs)
    print(f"[{seconds:.2f} s, {total / max(seconds, 1e-9):.1f} tok/s]", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from bigthoughts.data import load_gsm8k, prompt_format, read_ids
    from bigthoughts.evaluation.evaluate import EvalConfig, run_eval

    config = _config(EvalConfig, mode=args.mode, split=args.split, limit=args.limit,
                     votes=args.votes, strategy=args.strategy, batch_size=args.batch_size,
                     max_new_tokens=args.max_new_tokens, style=args.style, shots=args.shots,
                     seed=args.seed, calculator=args.calculator, ids_file=args.ids)
    examples = load_gsm8k(args.split, args.data, limit=args.limit,
                          ids=read_ids(args.ids) if args.ids else None)
    spec = _spec_before_load(args)
    fmt = prompt_format(args.style or (spec.prompt_style if spec else "fewshot"), args.shots)
    _preflight(args, spec, [fmt.prompt(e.question) for e in examples],
               rows=min(config.batch_size, max(1, len(examples))) * config.samples_per_question,
               max_new_tokens=config.max_new_tokens)
    chosen = _engine(args)
    engine, lm = chosen.engine, chosen.loaded
    summary = run_eval(lm, examples, config, Path(args.out), progress=not args.quiet,
                       sampler=engine)
    print(json.dumps({k: summary[k] for k in ("accuracy", "accuracy_ci95", "format_strict",
                                              "format_lenient", "seconds_per_question")
                      if k in summary}, indent=2))
    return 0


def cmd_report(args) -> int:
    from bigthoughts.evaluation.report import make_report

    path = make_report([Path(p) for p in args.runs], Path(args.out))
    print(path.read_text())
    print(f"report written to {path.parent}", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    """``train`` (GRPO) and ``sft`` (supervised warm start): same relay, same output."""
    from bigthoughts.training import EXIT_RELAY, load_sft_config, load_train_config, sft, train

    overrides = list(args.overrides or [])
    if args.data:
        overrides.append(f"data.path={args.data}")
    load, run = (load_sft_config, sft) if args.command == "sft" else (load_train_config, train)
    config = load(args.config, overrides)
    out = Path(args.out or config.out_dir)
    result = run(config, max_steps=args.max_steps, time_budget=args.time_budget, out_dir=out)
    print(json.dumps({"step": result.step, "stopped_for_deadline": result.stopped_for_deadline,
                      "out_dir": str(out), "last": result.history[-1] if result.history else {},
                      "evaluations": result.evaluations,
                      "exported": str(result.exported) if result.exported else None}, indent=2))
    if result.stopped_for_deadline:
        print(f"stopped before the time budget ends at step {result.step}: run the same "
              f"command again to resume", file=sys.stderr)
    return EXIT_RELAY if result.stopped_for_deadline else 0


def cmd_train_report(args) -> int:
    from bigthoughts.evaluation.train_report import plot_training

    print(f"wrote {plot_training(Path(args.run), Path(args.out or args.run), window=args.window)}")
    return 0


def cmd_export(args) -> int:
    """An exported checkpoint (merged weights) -> one GGUF file for llama.cpp / Ollama."""
    from bigthoughts.models.build import flat_params
    from bigthoughts.models.export import load_exported
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


def cmd_serve(args) -> int:
    import socket

    from bigthoughts.data import check_shots
    from bigthoughts.serve.app import create_app, run_server
    from bigthoughts.serve.handlers import ServeConfig
    from bigthoughts.serve.schema import Limits

    try:
        with socket.socket() as sock:  # fail before the model loads, in one line
            sock.bind((args.host, args.port))
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    if min(args.max_batch_rows, args.queue_size) < 1 or args.batch_wait_ms < 0:
        raise UserError("--max-batch-rows and --queue-size must be >= 1, --batch-wait-ms >= 0")
    try:
        check_shots(args.shots)
    except ValueError as err:
        raise UserError(f"--{err}") from None
    chosen = _engine(args)
    lm = chosen.loaded
    context = lm.spec.max_context
    config = ServeConfig(
        model_id=args.shipped or lm.spec.name, prompt_style=args.style or lm.spec.prompt_style,
        shots=args.shots, calculator=args.calculator,
        limits=Limits(max_n=min(16, args.max_batch_rows), context_length=context),
        max_batch_rows=args.max_batch_rows, queue_size=args.queue_size,
        batch_wait_s=args.batch_wait_ms / 1000,
        pad_batches=chosen.kind == "jax")  # JAX compiles per batch shape: fewer shapes
    app = create_app(chosen.engine, config)
    print(f"serving {config.model_id} on http://{args.host}:{args.port}/v1", file=sys.stderr)
    run_server(app, host=args.host, port=args.port)
    return 0


def _vote_args(p: argparse.ArgumentParser, votes: int) -> None:
    from bigthoughts.data import PROMPT_STYLES
    from bigthoughts.inference.voting import MAX_VOTES, STRATEGIES

    p.add_argument("--votes", type=int, default=votes,
                   help=f"samples per question (k), 1 to {MAX_VOTES}")
    p.add_argument("--strategy", default="majority", choices=list(STRATEGIES))
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--style", default=None, choices=list(PROMPT_STYLES),
                   help="prompt style (default: chat for IT models, fewshot for base)")
    p.add_argument("--shots", type=int, default=2, help="worked examples in fewshot prompts")
    p.add_argument("--seed", type=int, default=0)


def _calculator_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calculator", action=argparse.BooleanOptionalAction, default=None,
                   help="answer <<expr= calculator calls inside the decode (GSM8K's notes); "
                        "default: on for the shipped model, off otherwise")


def _apply_shipped(args) -> None:
    """Settles which model answers: with no --model, --checkpoint, --adapter or --lora,
    the package's shipped adapter on the embedded base, prompted (style, calculator) as
    it was trained, unless a flag says otherwise; ``gemma3-270m-base`` is the raw base."""
    from bigthoughts.models.registry import DEFAULT_MODEL
    from bigthoughts.models.shipped import BASE_ALIAS, shipped_default

    args.shipped = None
    shipped = shipped_default()
    named = args.model is not None and shipped is not None and args.model == shipped.name
    if args.model == BASE_ALIAS:
        args.model = DEFAULT_MODEL
    elif args.model is None or named:
        given = [flag for flag, value in (("--checkpoint", args.checkpoint),
                                          ("--adapter", args.adapter),
                                          ("--lora", getattr(args, "lora", None))) if value]
        if named and given:
            raise UserError(f"--model {shipped.name} is the base plus its shipped adapter; "
                            f"with {given[0]} use --model {BASE_ALIAS}")
        if shipped is not None and not given:
            args.model = None if shipped.base == DEFAULT_MODEL else shipped.base
            args.adapter = str(shipped.adapter_path())
            args.shipped = shipped.name
            if getattr(args, "style", None) is None:
                args.style = shipped.style
            if getattr(args, "calculator", None) is None:
                args.calculator = shipped.calculator
    if getattr(args, "calculator", None) is None:
        args.calculator = False


def _add_inference_commands(sub) -> None:
    p = sub.add_parser("ask", help="answer one question by consensus vote")
    p.add_argument("question")
    _add_model_args(p)
    _add_engine_args(p)
    _vote_args(p, 5)
    p.add_argument("--traces", action="store_true", help="print every trace")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _calculator_arg(p)
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
    _calculator_arg(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("eval", help="evaluate on GSM8K; resumable")
    _add_model_args(p)
    _add_engine_args(p)
    p.add_argument("--mode", default="single", choices=["zero-shot", "single", "vote"])
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--ids", default=None,
                   help="text file of question ids (train-0042), one per line: only those")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--data", default=None, help="GSM8K dir or .jsonl (default: $BIGTHOUGHTS_DATA)")
    p.add_argument("--out", required=True, help="run directory (results.jsonl, summary.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _vote_args(p, 5)
    _calculator_arg(p)
    p.set_defaults(func=cmd_eval)


def _add_other_commands(sub) -> None:
    p = sub.add_parser("report", help="compare eval runs: table, significance, plots")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default="report")
    p.set_defaults(func=cmd_report)

    for name, text, example in (
            ("train", "GRPO fine-tuning with relay checkpoints", "grpo.beta=0.02"),
            ("sft", "supervised warm start on GSM8K train solutions", "batch_size=4")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=True)
        p.add_argument("--max-steps", type=int, default=None)
        p.add_argument("--time-budget", default=None,
                       help="e.g. 8h45m: checkpoint and exit (75) before it ends")
        p.add_argument("--out", default=None, help="run directory (default from the config)")
        p.add_argument("--data", default=None, help="GSM8K dir (default: $BIGTHOUGHTS_DATA)")
        p.add_argument("overrides", nargs="*", help=f"config overrides like {example}")
        p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-report", help="plot training curves of a train run")
    p.add_argument("run")
    p.add_argument("--out", default=None, help="folder for the PNG (default: the run dir)")
    p.add_argument("--window", type=int, default=10, help="moving-average window")
    p.set_defaults(func=cmd_train_report)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (votes via extra_body)")
    _add_model_args(p)
    _add_engine_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-rows", type=int, default=32,
                   help="most rows (prompts x samples) decoded in one engine call")
    p.add_argument("--queue-size", type=int, default=64,
                   help="most requests waiting for the engine; beyond: 503 + Retry-After")
    p.add_argument("--batch-wait-ms", type=float, default=50.0,
                   help="how long a free engine waits for concurrent requests to join")
    p.add_argument("--shots", type=int, default=2,
                   help="worked examples in base-model prompts (0: zero-shot)")
    p.add_argument("--calculator", action=argparse.BooleanOptionalAction, default=None,
                   help="the calculator for requests that do not say (default: on for the "
                        "shipped model)")
    p.set_defaults(func=cmd_serve, style=None)

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


def build_parser() -> argparse.ArgumentParser:
    from bigthoughts import __version__

    parser = argparse.ArgumentParser(prog="bigthoughts", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"bigthoughts {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_inference_commands(sub)
    _add_other_commands(sub)
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
        if args.command in ("ask", "eval", "generate", "serve"):
            _apply_shipped(args)
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
