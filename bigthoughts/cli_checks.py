"""The command line's input checks and its one-line error wording (``bigthoughts.cli``).

Every check here runs before a model loads; each failure is a :class:`UserError` (one
line, exit 2). :func:`disk_error` words a write the file system refused (exit 74).
"""

from __future__ import annotations

import math

EXIT_USAGE = 2


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit status 2."""


def user_errors() -> tuple[type[BaseException], ...]:
    from bigthoughts.config import ConfigError
    from bigthoughts.data import DataError
    from bigthoughts.models.adapter import AdapterError
    from bigthoughts.models.build import ParameterMismatch
    from bigthoughts.models.gguf import GGUFError
    from bigthoughts.models.gguf_export import GGUFExportError
    from bigthoughts.models.limits import GenerationLimitError
    from bigthoughts.models.spec import ModelLoadError
    from bigthoughts.rundir import NotARunDir, RunDirBusy
    from bigthoughts.training.loop import OutOfMemory

    return (UserError, ConfigError, DataError, GGUFError, GGUFExportError, ModelLoadError,
            ParameterMismatch, GenerationLimitError, FileNotFoundError, OutOfMemory,
            AdapterError, RunDirBusy, NotARunDir)


def utf8(what: str, text: str) -> str:
    """``text`` if it encodes as UTF-8; argv bytes that are not UTF-8 arrive as lone
    surrogates (PEP 383) and are refused here, before any tokenizer sees them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise UserError(f"the {what} is not valid UTF-8 text (byte "
                        f"{ord(text[err.start]) & 0xFF:#04x} at position {err.start})") from None
    return text


def check_args(args) -> None:
    """The numeric and string flags every command may have, checked before anything
    loads: one line each instead of a traceback (or a silent empty run) later."""
    from bigthoughts.inference.contract import SEED_MAX

    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise UserError(f"--seed must be between 0 and {SEED_MAX}, got {seed}")
    port = getattr(args, "port", None)
    if port is not None and not 0 <= port <= 65535:  # 0: any free port
        raise UserError(f"--port must be between 0 and 65535, got {port}")
    limit = getattr(args, "limit", None)
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1 (omit it for every question), got {limit}")
    window = getattr(args, "window", None)
    if window is not None and window < 1:
        raise UserError(f"--window must be >= 1, got {window}")
    if any(stop == "" for stop in getattr(args, "stop", None) or ()):
        raise UserError("--stop must not be empty (an empty string would stop at once)")
    prompt_limit = getattr(args, "max_prompt_tokens", None)
    if prompt_limit is not None and prompt_limit < 1:
        raise UserError(f"--max-prompt-tokens must be >= 1, got {prompt_limit}")
    timeout = getattr(args, "request_timeout", None)
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise UserError(f"--request-timeout must be a positive number of seconds, got "
                        f"{timeout}")


def check_prompt_limit(limit: int, spec) -> None:
    """``--max-prompt-tokens`` within the model's context (once ``spec`` is known; its
    lower bound is :func:`check_args`'s)."""
    if spec is not None and limit > spec.max_context:
        raise UserError(f"--max-prompt-tokens {limit} is beyond {spec.name}'s context of "
                        f"{spec.max_context} tokens")


def check_generate_args(args) -> None:
    """``generate``'s own flags (text as UTF-8, sampling settings in range)."""
    utf8("prompt", args.prompt)
    for stop in args.stop or ():
        utf8("stop string", stop)
    if args.num_samples < 1 or args.max_new_tokens < 1:
        raise UserError(f"--num-samples and --max-new-tokens must be >= 1, got "
                        f"{args.num_samples} and {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UserError(f"--temperature must be finite and >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")


MEMORY_KNOBS = ("--votes, --batch-size, --max-new-tokens or the prompt's length "
                 "(--max-prompt-tokens)")


EXIT_IO = 74  # sysexits' EX_IOERR: the disk refused a write


def disk_error(exc: OSError) -> str | None:
    """One line for a write the file system refused (full, read-only, not allowed); None
    for any other OSError (a bug: its traceback is worth seeing)."""
    import errno

    where = f" while writing {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device{where}. Everything written before it is "
                f"kept (atomic files, checkpoints): free some space and run the same "
                f"command again to resume")
    if exc.errno == errno.EROFS:
        return f"the file system is read-only{where}: choose another --out"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}: choose a folder you can write (--out)"
    return None
