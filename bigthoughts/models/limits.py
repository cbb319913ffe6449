"""What a generation call may ask for: the model's context and the memory it will use.

A k-vote over B questions decodes ``rows = B * k`` sequences at once. Each row holds
a KV cache of ``2 * layers * kv_heads * head_dim`` values per cached token (prompt
bucket + new tokens) and, every step, a few float32 vectors over the whole
vocabulary (logits, scaled logits, probabilities, CDF, log-softmax). For Gemma 3 270M
that is 36 KiB per cached token and ~6 MiB of logits per row: 1,000 votes of 8 tokens
need ~25 GB, which is how ``ask --votes 1000`` once grew until the kernel killed it.

:func:`check_loaded` (and, before the weights are read, :func:`check_before_load`)
refuses such a call up front, with a message that says the
limit, instead: prompt + new tokens must fit the model's context, and the estimated
bytes must fit :data:`MEMORY_FRACTION` of the memory available (free host memory on
CPU, free device memory on an accelerator). The estimate counts the KV cache twice
(the sampler repeats the prefilled cache k times and compacts finished rows by
copying), :data:`LOGIT_COPIES` vocabulary-sized float32 vectors per row and the
prefill's attention scores (a chunk of at most ``PREFILL_CHUNK`` queries against the
cache, three float32 copies: linear in the prompt). That
errs on the safe side: on CPU, ``bigthoughts ask --votes 64 --max-new-tokens 8`` peaked
1.03 GB above ``--votes 1`` (4.11 vs 3.08 GB max RSS), where the estimate for the 63
extra rows is 1.96 GB; without the factor 2 the 1,000-vote case would be estimated at
18.7 GB, below the 24 GB at which it was killed.

Example::

    check_loaded(lm, [prompt], rows=5, max_new_tokens=256)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bigthoughts.models.spec import LoadedModel, ModelSpec

__all__ = [
    "LOGIT_COPIES",
    "MAX_ROWS",
    "MEMORY_FRACTION",
    "GenerationLimitError",
    "available_memory",
    "check_before_load",
    "check_context",
    "check_loaded",
    "check_memory",
    "check_prompt_tokens",
    "estimate_prompt_tokens",
    "generation_bytes",
    "param_bytes",
    "spec_model_config",
]

LOGIT_COPIES = 6
MEMORY_FRACTION = 0.8
MAX_ROWS = 1024
"""Hard cap on the rows (questions x votes) of one generation call, whatever the memory."""
PROMPT_BUCKET, CHUNK = 64, 16  # the sampler's prompt padding and decode chunk
PREFILL_CHUNK = 512  # a longer prompt is prefilled this many tokens at a time
DEFAULT_MAX_PROMPT_TOKENS = 8192
"""Prompt tokens ``ask``, ``generate`` and ``serve`` accept unless ``--max-prompt-tokens``
says otherwise (up to the model's context). A GSM8K few-shot prompt is under 2,000; a
8,192-token prefill takes ~15 s on 2 CPU cores on llama.cpp, and a longer one keeps a
server's engine, or a user, waiting minutes (a 30,000-token prompt: ~2 min)."""


class GenerationLimitError(ValueError):
    """A generation call that cannot fit the model's context or the available memory."""


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (at least one ``multiple``)."""
    return max(multiple, -(-n // multiple) * multiple)


def spec_model_config(spec: ModelSpec) -> Any | None:
    """The Tunix ``ModelConfig`` a registry spec names (sizes only, no weights), or None."""
    if not spec.tunix_config:
        return None
    if spec.family == "gemma3":
        from tunix.models.gemma3.model import ModelConfig
    else:
        from tunix.models.gemma.model import ModelConfig
    return getattr(ModelConfig, spec.tunix_config)()


def estimate_prompt_tokens(prompt: str) -> int:
    """A prompt's tokens before a tokenizer is at hand: one per 3 UTF-8 bytes, plus BOS.

    Gemma's tokenizer averages about 4 bytes per token on English text, so this errs
    on the large side.
    """
    return math.ceil(len(prompt.encode("utf-8", "surrogatepass")) / 3) + 1


def generation_bytes(config: Any, *, rows: int, prompt_tokens: int, max_new_tokens: int,
                     cache_bytes: int = 4, prompts: int | None = None) -> int:
    """Estimated peak bytes of a generation call (KV cache, logits, the prefill's
    attention: see the module doc); ``prompts`` prefilled (default: one per row)."""
    cache_len = round_up(prompt_tokens, PROMPT_BUCKET) + round_up(max_new_tokens, CHUNK)
    per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * cache_bytes
    per_row = 2 * per_token * cache_len + LOGIT_COPIES * config.num_embed * 4
    # the prefill's attention, one layer at a time: scores, masked scores and softmax
    # (float32) of a chunk of queries against the whole cache
    queries = min(round_up(prompt_tokens, PROMPT_BUCKET), PREFILL_CHUNK)
    attention = 3 * config.num_heads * queries * cache_len * 4
    # a call prefills at most one prompt per row (a caller may name every prompt of a
    # whole evaluation while ``rows`` is one batch's)
    return rows * per_row + (rows if prompts is None else min(prompts, rows)) * attention


def param_bytes(config: Any, dtype_bytes: int = 4) -> int:
    """Bytes of a model's weights (embedding, attention, MLP; norms neglected)."""
    d, h = config.embed_dim, config.head_dim
    attn = d * h * (2 * config.num_heads + 2 * config.num_kv_heads)
    mlp = 3 * d * config.hidden_dim
    return dtype_bytes * (config.num_embed * d + config.num_layers * (attn + mlp))


def available_memory() -> int | None:
    """Free bytes for a generation: ``$BIGTHOUGHTS_MEMORY_GB`` when set, else the
    device's free memory on an accelerator, else the host's ``MemAvailable``; None when
    neither can be read."""
    override = os.environ.get("BIGTHOUGHTS_MEMORY_GB")
    if override is not None:
        try:
            gb = float(override)
        except ValueError:
            gb = math.nan
        if not (math.isfinite(gb) and gb > 0):
            raise GenerationLimitError(f"BIGTHOUGHTS_MEMORY_GB must be a positive number of "
                                       f"GB, got {override!r}")
        return int(gb * 1e9)
    import jax

    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def check_context(spec: ModelSpec, prompt_tokens: int | None, max_new_tokens: int) -> None:
    """Refuses prompt + new tokens beyond the model's context (no silent capping);
    ``prompt_tokens`` None (not tokenized yet) counts the prompt as one token."""
    context = spec.max_context
    prompt = 1 if prompt_tokens is None else prompt_tokens
    if prompt + max_new_tokens <= context:
        return
    if prompt_tokens is None:
        raise GenerationLimitError(
            f"max_new_tokens={max_new_tokens} exceeds {spec.name}'s context of {context} "
            "tokens (prompt and new tokens together); use fewer new tokens")
    raise GenerationLimitError(
        f"max_new_tokens={max_new_tokens} plus the {prompt_tokens}-token prompt exceeds "
        f"{spec.name}'s context of {context} tokens; use at most "
        f"{max(1, context - prompt_tokens)} new tokens")


def check_prompt_tokens(tokens: int, limit: int, context: int) -> None:
    """Refuses a prompt longer than ``limit`` tokens (``--max-prompt-tokens``)."""
    if tokens > limit:
        raise GenerationLimitError(
            f"the prompt has {tokens} tokens, more than the {limit} accepted here; shorten "
            f"it, or raise --max-prompt-tokens (at most the model's context, {context})")


def check_memory(config: Any, *, rows: int, prompt_tokens: int, max_new_tokens: int,
                 cache_bytes: int = 4, loaded: bool = True,
                 available: int | None = None, prompts: int | None = None) -> None:
    """Refuses more than :data:`MAX_ROWS` rows, or rows whose estimated bytes
    (:func:`generation_bytes`; plus the weights when not ``loaded``) exceed
    :data:`MEMORY_FRACTION` of ``available`` (default :func:`available_memory`)."""
    if rows > MAX_ROWS:
        raise GenerationLimitError(
            f"{rows} sequences in one generation call (questions x votes) is over the "
            f"limit of {MAX_ROWS}; lower --votes or --batch-size")
    free = available_memory() if available is None else available
    if free is None:
        return
    need = generation_bytes(config, rows=rows, prompt_tokens=prompt_tokens,
                            max_new_tokens=max_new_tokens, cache_bytes=cache_bytes,
                            prompts=prompts)
    budget = MEMORY_FRACTION * free - (0 if loaded else param_bytes(config, cache_bytes))
    if need <= budget:
        return
    if budget <= 0:
        raise GenerationLimitError(
            f"the model's weights ({_gb(param_bytes(config, cache_bytes))}) leave no room in "
            f"the {_gb(free)} free here; use a smaller model or --dtype bfloat16")
    fit = int(budget // (need / rows))  # budget > 0 here
    if fit == 0:
        longest = _longest_prompt(config, rows, max_new_tokens, budget, cache_bytes, prompts)
        if longest == 0:
            raise GenerationLimitError(
                f"{rows} sequence(s) of up to {max_new_tokens} new tokens need about "
                f"{_gb(need)} (KV cache, logits, attention) even for a short prompt, more "
                f"than the {_gb(budget)} free for them here: lower the new tokens "
                "(--max-new-tokens, grpo.max_new_tokens) or the sequences")
        raise GenerationLimitError(
            f"a {prompt_tokens}-token prompt with {rows} sequence(s) of up to {max_new_tokens} "
            f"new tokens needs about {_gb(need)} (KV cache, logits, attention), more than the "
            f"{_gb(budget)} free for it here; at most {longest} prompt tokens fit: "
            "shorten the prompt, or lower --votes or --max-new-tokens")
    raise GenerationLimitError(
        f"{rows} sequences of up to {prompt_tokens} + {max_new_tokens} tokens need about "
        f"{_gb(need)} (KV cache, logits, attention), more than the {_gb(budget)} "
        f"free for them here; at most {fit} sequences fit: lower --votes, "
        "--batch-size or --max-new-tokens")


def _longest_prompt(config: Any, rows: int, max_new_tokens: int, budget: float,
                    cache_bytes: int, prompts: int | None) -> int:
    """The longest prompt whose generation fits ``budget`` bytes (0 if none)."""
    lo, hi = 0, 1 << 22
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if generation_bytes(config, rows=rows, prompt_tokens=mid, max_new_tokens=max_new_tokens,
                            cache_bytes=cache_bytes, prompts=prompts) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def check_before_load(spec: ModelSpec, prompts: Sequence[str], *, rows: int,
                      max_new_tokens: int, dtype_bytes: int = 4,
                      available: int | None = None,
                      max_prompt_tokens: int | None = None) -> None:
    """The checks that can run before any weights are read: the context (for at least
    a one-token prompt) and, when the spec names a Tunix config, the memory with
    estimated prompt lengths (:func:`estimate_prompt_tokens`) and the weights counted
    (``dtype_bytes`` per parameter and cached value); a prompt counts at most
    ``max_prompt_tokens`` (a longer one is refused with that limit once tokenized)."""
    check_context(spec, None, max_new_tokens)
    config = spec_model_config(spec)
    if config is not None:
        tokens = max((estimate_prompt_tokens(p) for p in prompts), default=1)
        if max_prompt_tokens is not None:  # a longer one is refused once tokenized
            tokens = min(tokens, max_prompt_tokens)
        check_memory(config, rows=rows, prompt_tokens=tokens, max_new_tokens=max_new_tokens,
                     cache_bytes=dtype_bytes, loaded=False, available=available,
                     prompts=len(prompts))


def check_loaded(lm: LoadedModel, prompts: Sequence[str], *, rows: int,
                 max_new_tokens: int, available: int | None = None) -> None:
    """Context and memory checks for a loaded model, with the prompts' exact lengths.
    An engine that holds its own weights (llama.cpp: no ``lm.model``) checks each request
    itself; here only the spec's context limit applies."""
    if lm.model is None or lm.tokenizer is None:
        check_context(lm.spec, None, max_new_tokens)
        return
    encode = lm.tokenizer.encode  # type: ignore[attr-defined]
    tokens = max((len(encode(p, add_bos=True)) for p in prompts), default=1)
    check_context(lm.spec, tokens, max_new_tokens)
    check_memory(lm.model.config, rows=rows, prompt_tokens=tokens,  # type: ignore[attr-defined]
                 max_new_tokens=max_new_tokens, available=available, prompts=len(prompts))
