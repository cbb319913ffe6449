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

import json
import os
import sys
import time
import warnings
from pathlib import Path

from bigthoughts.cli_args import build_parser
from bigthoughts.cli_checks import (
    EXIT_IO,
    EXIT_USAGE,
    MEMORY_KNOBS,
    UserError,
    check_args,
    check_generate_args,
    check_prompt_limit,
    disk_error,
    user_errors,
    utf8,
)


def enable_compilation_cache() -> None:
    """Persist XLA compilations across runs under the cache dir (the 270M decode step
    compiles in ~10 s; the ~150 small programs of loading and sampling in ~0.1 s each,
    so every program is kept, however quick). ``BIGTHOUGHTS_XLA_CACHE=0`` turns it off."""
    if os.environ.get("BIGTHOUGHTS_XLA_CACHE", "1") == "0":
        return
    import jax

    from bigthoughts.models.spec import cache_dir

    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _config(cls, **kwargs):
    """``cls(**kwargs)`` with its validation error as a one-line user error."""
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise UserError(str(err)) from None


def _choice(args):
    """The model the flags ask for, with the shipped defaults settled (``models.resolve``)."""
    from bigthoughts.models.resolve import ModelChoice, settle

    return settle(ModelChoice(
        model=args.model, checkpoint=args.checkpoint, adapter=args.adapter,
        lora=getattr(args, "lora", None), dtype=args.dtype, engine=args.engine,
        threads=args.threads, style=getattr(args, "style", None),
        calculator=getattr(args, "calculator", None)))


def _preflight(choice, prompts: list[str], *, rows: int, max_new_tokens: int,
               max_prompt_tokens: int | None = None):
    """Context and memory checks before the weights load, when the spec is known; the
    spec (or None)."""
    from bigthoughts.models.limits import check_before_load
    from bigthoughts.models.resolve import spec_before_load

    spec = spec_before_load(choice)
    if spec is not None:
        check_before_load(spec, prompts, rows=rows, max_new_tokens=max_new_tokens,
                          dtype_bytes=2 if choice.dtype == "bfloat16" else 4,
                          max_prompt_tokens=max_prompt_tokens)
    return spec


def _engine(choice):
    from bigthoughts.inference.engine import make_engine

    return make_engine(choice)


def _check_prompt(chosen, prompt: str, limit: int) -> None:
    """Refuses a prompt over ``--max-prompt-tokens`` (counted by the engine's tokenizer)."""
    from bigthoughts.inference.engine import token_counter
    from bigthoughts.models.limits import check_prompt_tokens

    check_prompt_tokens(token_counter(chosen.engine)(prompt), limit,
                        chosen.loaded.spec.max_context)


def cmd_ask(args) -> int:
    from bigthoughts.inference.solve import Solver
    from bigthoughts.inference.voting import VoteConfig
    from bigthoughts.models import resolve
    from bigthoughts.models.limits import check_loaded

    question = utf8("question", args.question)
    if not question.strip():
        raise UserError("the question is empty")
    vote = _config(VoteConfig, votes=args.votes, strategy=args.strategy,
                   max_new_tokens=args.max_new_tokens)
    choice = args.choice
    spec = resolve.spec_before_load(choice)
    fmt = _config(resolve.prompt_format_for, style=choice.style, spec=spec, shots=args.shots)
    check_prompt_limit(args.max_prompt_tokens, spec)
    _preflight(choice, [fmt.prompt(question)], rows=vote.votes,
               max_new_tokens=vote.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens)
    chosen = _engine(choice)
    engine, lm = chosen.engine, chosen.loaded
    fmt = resolve.prompt_format_for(choice.style, lm.spec, args.shots)
    _check_prompt(chosen, fmt.prompt(question), args.max_prompt_tokens)
    check_loaded(lm, [fmt.prompt(question)], rows=vote.votes, max_new_tokens=vote.max_new_tokens)
    solver = Solver(engine, format=fmt, vote=vote, seed=args.seed, calculator=choice.calculator)
    start = time.perf_counter()
    [sol] = solver.solve([question])
    _print_solution(args, sol, time.perf_counter() - start,
                    model=f"{choice.shipped or lm.spec.name} ({lm.source}; {chosen.kind} engine)")
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


def cmd_generate(args) -> int:
    from bigthoughts.models.limits import check_loaded

    check_generate_args(args)
    spec = _preflight(args.choice, [args.prompt], rows=args.num_samples,
                      max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens)
    check_prompt_limit(args.max_prompt_tokens, spec)
    chosen = _engine(args.choice)
    sampler, lm = chosen.engine, chosen.loaded
    _check_prompt(chosen, args.prompt, args.max_prompt_tokens)
    check_loaded(lm, [args.prompt], rows=args.num_samples, max_new_tokens=args.max_new_tokens)
    start = time.perf_counter()
    outs = sampler.generate([args.prompt], temperatures=args.temperature,
                            num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                            stop=args.stop or (), seed=args.seed, top_k=args.top_k,
                            top_p=args.top_p, calculator=args.choice.calculator)
    seconds = time.perf_counter() - start
    for out in outs:
        print(out.text)
        print(f"[{out.num_tokens} tokens, {out.finish_reason}, "
              f"mean log-prob {out.mean_logprob:.3f}]", file=sys.stderr)
    total = sum(o.num_tokens for o in outs)
    print(f"[{seconds:.2f} s, {total / max(seconds, 1e-9):.1f} tok/s]", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from bigthoughts.data import load_gsm8k, read_ids
    from bigthoughts.evaluation.evaluate import EvalConfig, run_eval
    from bigthoughts.models.resolve import prompt_format_for, spec_before_load

    choice = args.choice
    config = _config(EvalConfig, mode=args.mode, split=args.split, limit=args.limit,
                     votes=args.votes, strategy=args.strategy, batch_size=args.batch_size,
                     max_new_tokens=args.max_new_tokens, style=choice.style, shots=args.shots,
                     seed=args.seed, calculator=choice.calculator, ids_file=args.ids)
    examples = load_gsm8k(args.split, args.data, limit=args.limit,
                          ids=read_ids(args.ids) if args.ids else None)
    fmt = prompt_format_for(choice.style, spec_before_load(choice), args.shots)
    _preflight(choice, [fmt.prompt(e.question) for e in examples],
               rows=min(config.batch_size, max(1, len(examples))) * config.samples_per_question,
               max_new_tokens=config.max_new_tokens)
    chosen = _engine(choice)
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
    from bigthoughts.config import ConfigError
    from bigthoughts.training import (
        EXIT_NO_SIGNAL,
        EXIT_RELAY,
        hosts,
        load_sft_config,
        load_train_config,
        sft,
        train,
    )
    from bigthoughts.training.trackers import report_override

    overrides = list(args.overrides or [])
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.report_to is not None:
        overrides.append(report_override(args.report_to))
    load, run = (load_sft_config, sft) if args.command == "sft" else (load_train_config, train)
    config = load(args.config, overrides)
    try:
        distributed = hosts.settings(args.coordinator, args.num_processes, args.process_id)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    hosts.start(distributed)  # before JAX computes anything
    out = Path(args.out or config.out_dir)
    result = run(config, max_steps=args.max_steps, time_budget=args.time_budget, out_dir=out)
    print(json.dumps({"step": result.step, "stopped_for_deadline": result.stopped_for_deadline,
                      "stopped_no_signal": result.stopped_no_signal, "out_dir": str(out),
                      "last": result.history[-1] if result.history else {},
                      "evaluations": result.evaluations,
                      "exported": str(result.exported) if result.exported else None}, indent=2))
    if result.stopped_for_deadline:
        print(f"stopped before the time budget ends at step {result.step}: run the same "
              f"command again to resume", file=sys.stderr)
        return EXIT_RELAY
    if result.stopped_no_signal:
        print(f"error: stopped at step {result.step} (checkpoint saved): "
              f"{result.stopped_no_signal}", file=sys.stderr)
        return EXIT_NO_SIGNAL
    return 0


def cmd_train_report(args) -> int:
    from bigthoughts.evaluation.train_report import plot_dev_curve, plot_training

    out = Path(args.out or args.run)
    print(f"wrote {plot_training(Path(args.run), out, window=args.window)}")
    curve = plot_dev_curve(Path(args.run), out)
    if curve is not None:
        print(f"wrote {curve}")
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


def cmd_build_llamacpp(args) -> int:
    from bigthoughts.inference.llama_build import BuildError, build

    if args.portable and not args.dest:
        raise UserError("--portable needs --dest: the cache's build is the native one")
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    try:
        dest = build(Path(args.dest) if args.dest else None, native=not args.portable,
                     tools=args.tools, jobs=args.jobs,
                     source=Path(args.source) if args.source else None)
    except BuildError as err:
        raise UserError(str(err)) from err
    print(f"llama.cpp built in {dest}; the llama.cpp engine uses it from now on"
          if not args.dest else f"llama.cpp built in {dest}")
    return 0


def cmd_serve(args) -> int:
    import socket

    from bigthoughts.data import check_shots
    from bigthoughts.models.resolve import prompt_format_for
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
    key = args.api_key if args.api_key is not None else os.environ.get("BIGTHOUGHTS_API_KEY")
    if key is not None and not key.strip():
        raise UserError("--api-key (or BIGTHOUGHTS_API_KEY) must be a non-empty key")
    if key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host} without an API key: anyone who can reach "
              f"this port can use it (--api-key KEY)", file=sys.stderr)
    choice = args.choice
    chosen = _engine(choice)
    lm = chosen.loaded
    context = lm.spec.max_context
    check_prompt_limit(args.max_prompt_tokens, lm.spec)
    config = ServeConfig(
        model_id=choice.shipped or lm.spec.name,
        prompt_style=prompt_format_for(choice.style, lm.spec, args.shots).style,
        shots=args.shots, calculator=choice.calculator,
        limits=Limits(max_n=min(16, args.max_batch_rows), context_length=context,
                      max_prompt_tokens=args.max_prompt_tokens),
        request_timeout_s=args.request_timeout,
        max_batch_rows=args.max_batch_rows, queue_size=args.queue_size,
        batch_wait_s=args.batch_wait_ms / 1000, api_key=key,
        aliases=tuple(dict.fromkeys(n for n in (lm.spec.name, choice.model) if n)),
        pad_batches=chosen.kind == "jax")  # JAX compiles per batch shape: fewer shapes
    app = create_app(chosen.engine, config)
    print(f"serving {config.model_id} on http://{args.host}:{args.port}/v1", file=sys.stderr)
    run_server(app, host=args.host, port=args.port)
    return 0


COMMANDS = {"ask": cmd_ask, "generate": cmd_generate, "eval": cmd_eval, "report": cmd_report,
            "train": cmd_train, "sft": cmd_train, "train-report": cmd_train_report,
            "export": cmd_export, "download": cmd_download, "serve": cmd_serve,
            "build-llamacpp": cmd_build_llamacpp}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Tunix 0.1.7 reads ``Variable.value``, deprecated in flax 0.12: one warning per
    # parameter access would bury our output.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        check_args(args)
        if args.command not in ("report", "download", "train-report", "build-llamacpp"):
            enable_compilation_cache()
        if args.command in ("ask", "eval", "generate", "serve"):
            args.choice = _choice(args)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        message = disk_error(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_IO
    except (MemoryError, RuntimeError) as exc:  # an allocation outside training's handler
        from bigthoughts.training.loop import is_out_of_memory, out_of_memory

        if not is_out_of_memory(exc):
            raise
        print(f"error: {out_of_memory(exc, MEMORY_KNOBS)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
