"""The ``bigthoughts`` command line's arguments: one parser, one sub-command each.

``cli.py`` runs the command that ``args.command`` names.
"""

from __future__ import annotations

import argparse


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


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="auto", choices=["auto", "jax", "llama.cpp"],
                   help="inference engine (auto: llama.cpp for a GGUF model on a CPU when the "
                        "llamacpp extra is installed, else jax)")
    p.add_argument("--lora", default=None,
                   help="a GGUF LoRA adapter for the llama.cpp engine")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all)")


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


def _prompt_limit_arg(p: argparse.ArgumentParser) -> None:
    from bigthoughts.models.limits import DEFAULT_MAX_PROMPT_TOKENS

    p.add_argument("--max-prompt-tokens", type=int, default=DEFAULT_MAX_PROMPT_TOKENS,
                   help="refuse longer prompts (default %(default)s; at most the model's "
                        "context)")


def _calculator_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calculator", action=argparse.BooleanOptionalAction, default=None,
                   help="answer <<expr= calculator calls inside the decode (GSM8K's notes); "
                        "default: on for the shipped model, off otherwise")


def _add_inference_commands(sub) -> None:
    p = sub.add_parser("ask", help="answer one question by consensus vote")
    p.add_argument("question")
    _add_model_args(p)
    _add_engine_args(p)
    _vote_args(p, 5)
    p.add_argument("--traces", action="store_true", help="print every trace")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _prompt_limit_arg(p)
    _calculator_arg(p)

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
    _prompt_limit_arg(p)
    _calculator_arg(p)

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


def _add_other_commands(sub) -> None:
    p = sub.add_parser("report", help="compare eval runs: table, significance, plots")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default="report")

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
        p.add_argument("--report-to", default=None, metavar="TRACKERS",
                       help="tensorboard (default), wandb, both comma-separated, or none "
                            "(= override report.to; W&B offline: WANDB_MODE=offline)")
        p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="multi-host: process 0's address (or $JAX_COORDINATOR_ADDRESS)")
        p.add_argument("--num-processes", type=int, default=None,
                       help="multi-host: processes in the run (or $JAX_NUM_PROCESSES)")
        p.add_argument("--process-id", type=int, default=None,
                       help="multi-host: this process, 0.. (or $JAX_PROCESS_ID)")
        p.add_argument("overrides", nargs="*", help=f"config overrides like {example}")

    p = sub.add_parser("train-report", help="plot training curves of a train run")
    p.add_argument("run")
    p.add_argument("--out", default=None, help="folder for the PNG (default: the run dir)")
    p.add_argument("--window", type=int, default=10, help="moving-average window")

    _add_serve_command(sub)

    p = sub.add_parser("export", help="write an exported checkpoint as a GGUF file")
    p.add_argument("--checkpoint", required=True, help="a directory written by `train` (export/)")
    p.add_argument("--gguf", required=True, help="output .gguf file")
    p.add_argument("--gguf-type", default="f16", choices=["f16", "q8_0", "f32"])
    p.add_argument("--tokenizer-from", default=None,
                   help="GGUF whose tokenizer/metadata to copy (default: the embedded 270M)")

    p = sub.add_parser("download", help="download GSM8K (checksummed) into the cache")
    p.add_argument("--dest", default=None)
    _add_build_command(sub)


def _add_serve_command(sub) -> None:
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
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY on "
                   "every route but /health (or $BIGTHOUGHTS_API_KEY)")
    _prompt_limit_arg(p)
    p.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds a request may run before it is stopped (504)")
    p.set_defaults(style=None)


def _add_build_command(sub) -> None:
    p = sub.add_parser("build-llamacpp", help="build llama.cpp for this CPU (-march=native) "
                       "into the cache; the llama.cpp engine then uses it (opt-in)")
    p.add_argument("--jobs", type=int, default=None, help="parallel compile jobs (default: "
                   "all cores)")
    p.add_argument("--source", default=None, help="the xllamacpp sdist (.tar.gz) if pip "
                   "cannot download it here")
    p.add_argument("--tools", action="store_true", help="also llama-batched-bench and "
                   "llama-server (benchmarks/llamacpp.py, benchmarks/serve_load.py)")
    p.add_argument("--portable", action="store_true", help="the wheel's instruction sets "
                   "(AVX2/FMA), not this CPU's, into --dest (for benchmarks)")
    p.add_argument("--dest", default=None, help="folder (default: the cache's native build)")


def build_parser() -> argparse.ArgumentParser:
    from bigthoughts import __version__

    parser = argparse.ArgumentParser(
        prog="bigthoughts",
        description="Teach small Gemma models to reason on GSM8K; answer by consensus vote.")
    parser.add_argument("--version", action="version", version=f"bigthoughts {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_inference_commands(sub)
    _add_other_commands(sub)
    return parser
