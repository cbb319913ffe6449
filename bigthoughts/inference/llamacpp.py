"""A CPU inference engine on llama.cpp's batched low-level C API (our binding: ``llama_lib``).

Same contract as ``bigthoughts.inference.jax_sampler.Sampler.generate`` (see ``inference.engine``),
on the GGUF file itself (the embedded Q4_K_M by default), optionally with a GGUF
LoRA adapter written by ``bigthoughts.models.gguf_export``.

How one call runs:

* each prompt is tokenized by llama.cpp (BOS added, ``<start_of_turn>`` parsed as a
  special token), prefilled ONCE as sequence ``p*k``, and its KV cache is copied to
  the k sequences of its rows with ``llama_memory_seq_cp`` (a unified KV cache, so the
  copy shares the cells: nothing is recomputed or duplicated);
* every row has its own sampler: greedy at T=0 (the argmax of its logits); at T > 0 a
  seeded draw (seed derived from ``seed`` and the row) from softmax(logits / T), made
  on the host from the logits we read anyway (``_host_draw``). With
  ``top_k``/``top_p`` it is a llama.cpp sampler chain (top-k -> top-p -> temperature ->
  draw). llama.cpp's own chain rebuilds and scans the 262k-token candidate list per
  row and step: 2.5 ms a call, 1.6 s of a 5-row, 128-token vote (measured);
* all live rows advance together: ONE ``llama_decode`` per step, one token per row
  (plus any calculator tokens inserted into that row);
* the host detokenizes each row (token pieces as bytes), cuts stop strings exactly as
  the JAX sampler does, ends rows on EOS, and drops finished rows from the batch;
* reported log-probs are the model's own log-softmax (temperature 1) of each sampled
  token, from the row's logits, and ``sample_logprobs`` that of softmax(logits / T), the
  distribution it was drawn from (the trainer compares them with its own); calculator
  tokens carry log-prob 0.0 (the model did not choose them);
* ``calculator=True``: when a row's text ends with ``<<EXPR=`` (GSM8K's calculator
  annotation), ``bigthoughts.steps.calculate(EXPR)`` is evaluated and ``RESULT>>`` is
  decoded into that row only (nothing when it returns None); also when the prompt
  itself ends with ``<<EXPR=``. A sampled token that joins the ``=`` to more text
  (Gemma's ``=-``) is replaced by ``=RESULT>>``, as the JAX sampler does.

Example::

    engine = LlamaCppEngine(embedded_gguf_path(), threads=2)
    [g] = engine.generate(["Question: 2+3?\\nAnswer:"], max_new_tokens=32, stop=["\\n"])
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bigthoughts.inference import llama_lib
from bigthoughts.inference.contract import (
    Generation,
    calculator_insert,
    calculator_text,
    check_request,
)
from bigthoughts.inference.llamacpp_batch import (
    _BATCH,
    _MAX_INSERT,
    RunningBatch,
    cells_needed,
    step_tokens,
)
from bigthoughts.inference.rows import Row

_CTX_MULTIPLE = 256


class LlamaCppError(RuntimeError):
    """llama.cpp refused a model, an adapter or a batch."""


def _lib():
    try:
        return llama_lib.load()
    except llama_lib.LlamaLibError as exc:
        raise LlamaCppError(str(exc)) from exc


class LlamaCppEngine:
    """Batched generation on llama.cpp (see the module docstring)."""

    def __init__(self, gguf_path: str | Path, *, lora: str | Path | None = None,
                 lora_scale: float = 1.0, threads: int | None = None, spec=None,
                 repack: bool = False, verbose: bool = False):
        ll = _lib()
        self._ll = ll
        self.path, self.spec = Path(gguf_path), spec
        self.threads = threads or os.cpu_count() or 1
        if not self.path.is_file():
            raise LlamaCppError(f"GGUF file not found: {self.path}")
        if not verbose:
            _quiet(ll)
        ll.llama_backend_init()
        params = ll.llama_model_default_params()
        # llama.cpp's "extra buffer types" (weight repacking, AMX) segfault in
        # llama_decode on the Q4_K_M 270M on our AVX-512/AMX CPUs (llama-cpp-python
        # 0.3.36, its own high-level Llama class too); off unless asked for
        params.use_extra_bufts = repack
        self._model = ll.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._model:
            raise LlamaCppError(f"llama.cpp could not load {self.path}")
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self._vocab))
        self._weights = np.empty(self.n_vocab, np.float32)  # host draws (``_host_draw``)
        self.eos_id = int(ll.llama_vocab_eos(self._vocab))
        self._adapter = None
        self.lora_scale = lora_scale
        self._ctx = None
        if lora is not None:
            self.set_lora(lora)
        self._ctx_size = self._ctx_seqs = 0
        self._piece_cache: dict[int, bytes] = {}

    # --- llama.cpp plumbing ---------------------------------------------------------
    def _context(self, n_ctx: int, n_seq: int):
        """A context with room for ``n_ctx`` cells and ``n_seq`` sequences (reused)."""
        ll = self._ll
        if self._ctx is not None and n_ctx <= self._ctx_size and n_seq <= self._ctx_seqs:
            ll.llama_memory_clear(ll.llama_get_memory(self._ctx), True)
            return self._ctx
        self.close_context()
        n_ctx = -(-n_ctx // _CTX_MULTIPLE) * _CTX_MULTIPLE
        params = ll.llama_context_default_params()
        params.n_ctx, params.n_seq_max = n_ctx, max(1, n_seq)
        params.n_batch = step_tokens(max(1, n_seq))
        params.n_ubatch = 512
        params.n_threads = params.n_threads_batch = self.threads
        params.kv_unified = True  # a copied prompt shares its cells between sequences
        params.no_perf = True
        ctx = ll.llama_init_from_model(self._model, params)
        if not ctx:
            raise LlamaCppError(f"llama.cpp could not create a context of {n_ctx} tokens")
        if self._adapter is not None:
            adapters = (ll.llama_adapter_lora_p_ctypes * 1)(self._adapter)
            scales = (ctypes.c_float * 1)(self.lora_scale)
            if ll.llama_set_adapters_lora(ctx, adapters, 1, scales) != 0:
                raise LlamaCppError("llama.cpp could not apply the LoRA adapter")
        self._ctx, self._ctx_size, self._ctx_seqs = ctx, n_ctx, max(1, n_seq)
        return ctx

    def set_lora(self, lora: str | Path | None) -> None:
        """Answers with the GGUF LoRA adapter ``lora`` from now on (None: the bare
        model). The model stays loaded; GRPO rollouts swap in each update's adapter."""
        ll = self._ll
        if lora is not None and not Path(lora).is_file():
            raise LlamaCppError(f"LoRA adapter not found: {lora}")
        self.close_context()  # a context holds the adapter it was made with
        if self._adapter is not None:
            ll.llama_adapter_lora_free(self._adapter)
            self._adapter = None
        if lora is not None:
            self._adapter = ll.llama_adapter_lora_init(self._model, str(lora).encode())
            if not self._adapter:
                raise LlamaCppError(f"llama.cpp could not load the LoRA adapter {lora}")

    def close_context(self) -> None:
        if self._ctx is not None:
            self._ll.llama_free(self._ctx)
            self._ctx = None

    def close(self) -> None:
        """Frees the context, adapter and model (the engine is unusable after)."""
        self.close_context()
        if getattr(self, "_model", None):
            self._ll.llama_model_free(self._model)
            self._model = None

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        ll = self._ll
        raw = text.encode("utf-8")
        cap = len(raw) + 8  # enough unless byte fallback spells a character in bytes
        for _ in range(2):
            buf = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self._vocab, raw, len(raw), buf, cap, add_bos, True)
            if n >= 0:
                return list(buf[:n])
            cap = -n  # too small: llama.cpp says how many tokens it needs
        raise LlamaCppError(f"could not tokenize a prompt of {len(raw)} bytes")

    def piece(self, token: int) -> bytes:
        """The token's text as bytes (special tokens spelled out, EOS empty)."""
        got = self._piece_cache.get(token)
        if got is None:
            if token == self.eos_id:
                got = b""
            else:
                buf = ctypes.create_string_buffer(64)
                n = self._ll.llama_token_to_piece(self._vocab, token, buf, 64, 0, True)
                if n < 0:
                    buf = ctypes.create_string_buffer(-n)
                    n = self._ll.llama_token_to_piece(self._vocab, token, buf, -n, 0, True)
                got = buf.raw[:n]
            self._piece_cache[token] = got
        return got

    def _decode(self, batch, feeds: list[tuple[int, int, list[int]]]) -> None:
        """Feeds ``(seq, first position, tokens)`` with logits for each feed's last token."""
        n = 0
        for seq, pos, tokens in feeds:
            for j, tok in enumerate(tokens):
                batch.token[n], batch.pos[n] = tok, pos + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = j == len(tokens) - 1
                n += 1
        batch.n_tokens = n
        status = self._ll.llama_decode(self._ctx, batch)
        if status != 0:
            raise LlamaCppError(f"llama_decode failed with status {status}")

    def _logits(self, n_outputs: int) -> np.ndarray:
        ptr = self._ll.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_outputs, self.n_vocab))

    def _chain(self, temperature: float, seed: int, top_k: int | None, top_p: float | None):
        """The row's sampler: a numpy generator (drawn on the host, ``_host_draw``) unless
        ``top_k``/``top_p`` ask for llama.cpp's chain."""
        if top_k is None and top_p is None:
            return np.random.default_rng(seed)
        ll = self._ll
        params = ll.llama_sampler_chain_default_params()
        params.no_perf = True
        chain = ll.llama_sampler_chain_init(params)
        if temperature <= 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
            return chain
        if top_k is not None:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(top_k))
        if top_p is not None:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(top_p, 1))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(temperature))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed))
        return chain

    def prompt_logits(self, text: str) -> np.ndarray:
        """The model's next-token logits after ``text`` (BOS added), float32 [vocab]."""
        tokens = self.tokenize(text, add_bos=True)
        self._context(len(tokens) + 1, 1)
        batch = self._ll.llama_batch_init(_BATCH, 0, 1)
        try:
            for start in range(0, len(tokens), _BATCH):
                self._decode(batch, [(0, start, tokens[start:start + _BATCH])])
            return np.array(self._logits(1)[0])
        finally:
            self._ll.llama_batch_free(batch)

    # --- generation -----------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str],
        *,
        temperatures: float | Sequence[float] = 0.0,
        num_samples: int = 1,
        max_new_tokens: int = 256,
        stop: Sequence[str] = (),
        stop_inclusive: Sequence[str] = (),
        seed: int = 0,
        top_k: int | None = None,
        top_p: float | None = None,
        calculator: bool = False,
        stop_at_eos: bool = True,
    ) -> list[Generation]:
        """``num_samples`` continuations per prompt, prompt-major (see the module doc).

        ``stop_at_eos=False`` keeps sampling past EOS (fixed-length benchmarks), as in
        the JAX sampler.
        """
        if not prompts:
            return []
        check_request(len(prompts) * num_samples, temperatures, num_samples, max_new_tokens,
                      top_k, top_p)
        # room for each prompt and a calculator insertion at its end (at most _MAX_INSERT)
        lengths = [len(self.tokenize(p, add_bos=True)) + _MAX_INSERT for p in prompts]
        batch = RunningBatch(self, n_seq=len(prompts) * num_samples,
                             n_ctx=cells_needed(lengths, num_samples, max_new_tokens),
                             hold=False)  # one call: no later request to share with
        try:
            ticket = batch.add(prompts, temperatures=temperatures, num_samples=num_samples,
                               max_new_tokens=max_new_tokens, stop=stop,
                               stop_inclusive=stop_inclusive, seed=seed, top_k=top_k,
                               top_p=top_p, calculator=calculator, stop_at_eos=stop_at_eos)
            assert ticket is not None  # the batch was sized for it
            while True:
                for _, gens in batch.step():
                    return gens
        finally:
            batch.close()

    def open_batch(self, *, n_seq: int, n_ctx: int) -> RunningBatch:
        """A running batch that requests join between steps (continuous batching for
        ``bigthoughts serve``); it owns this engine's context until closed."""
        return RunningBatch(self, n_seq=n_seq, n_ctx=n_ctx)

    def _insertion(self, text: str, calculate) -> list[int]:
        found = calculator_text(text, calculate) if calculate is not None else None
        return self._insert_ids(found) if found else []

    def _insert_ids(self, found: str) -> list[int]:
        """The tokens of calculator text, at most ``_MAX_INSERT`` of them."""
        return self.tokenize(found, add_bos=False)[:_MAX_INSERT]

    def _take(self, row: Row, chain, index: int, logits, lse, ends, calculate) -> None:
        """Samples the row's next token from batch output ``index`` and books it."""
        if isinstance(chain, np.random.Generator):
            tok, drawn = _host_draw(logits, row.temperature, chain, self._weights)
        else:  # llama.cpp's chain (top_k / top_p): the untruncated softmax(logits / T)
            tok = int(self._ll.llama_sampler_sample(chain, self._ctx, index))
            drawn = sample_logprob(logits, tok, row.temperature)
        piece = self.piece(tok)
        row.add(tok, piece, float(logits[tok] - lse), sample_logprob=drawn)
        row.pending = [tok]
        if row.check(*ends) is not None or calculate is None:
            return
        drop, found = calculator_insert(row.prefix + row.text(),
                                        piece.decode("utf-8", "ignore"), calculate)
        if found is None:
            return
        if drop:  # the token ran past the "=": it is replaced, never fed
            row.drop_last()
            row.pending = []
        for extra in self._insert_ids(found):
            row.add(extra, self.piece(extra), 0.0, inserted=True)
            row.pending.append(extra)
        row.check(*ends)

    def _generation(self, row: Row, prompt_tokens: int) -> Generation:
        assert row.result is not None  # every row ends: at the latest by its length
        text, n, reason = row.result
        return Generation(text=text, token_ids=tuple(row.ids[:n]),
                          logprobs=tuple(row.logprobs[:n]), finish_reason=reason,
                          prompt_tokens=prompt_tokens, temperature=row.temperature,
                          inserted=tuple(row.inserted[:n]),
                          sample_logprobs=tuple(row.sample_logprobs[:n]))


def _quiet(ll) -> None:
    """Silences llama.cpp's log (its warnings would follow our one-line errors). The
    ctypes callback is kept on this function: llama.cpp holds it for the process."""
    callback = getattr(_quiet, "callback", None)
    if callback is None:
        callback = _quiet.callback = ll.llama_log_callback(lambda level, text, data: None)
    ll.llama_log_set(callback, ctypes.c_void_p(0))


_BLOCK = 1024  # tokens per block of the two-level inverse-CDF search


def _host_draw(logits: np.ndarray, temperature: float, rng: np.random.Generator,
               scratch: np.ndarray | None = None) -> tuple[int, float]:
    """A token from softmax(logits / T) over the whole vocabulary (argmax at T <= 0) and
    its log-prob under that distribution (0 at T <= 0), from the same sums.

    The inverse CDF is searched in two levels: block sums (float32 pairwise, accumulated
    in float64), then a running sum inside the one block the draw falls in. A float64
    running sum over all 262k tokens costs 2.2 ms a row (numpy's cumsum is not
    vectorised); this costs about 0.2 ms. ``scratch`` (float32, as long as ``logits``)
    receives the weights: fresh arrays each step are page faults (``_logsumexp``)."""
    if temperature <= 0:
        return int(np.argmax(logits)), 0.0
    top = logits.max()
    weights = np.empty_like(logits) if scratch is None else scratch[:len(logits)]
    np.subtract(logits, top, out=weights)
    np.multiply(weights, np.float32(1.0 / temperature), out=weights)
    np.exp(weights, out=weights)
    blocks = np.add.reduceat(weights, np.arange(0, len(weights), _BLOCK)).astype(np.float64)
    ends = np.cumsum(blocks)
    u = rng.random() * ends[-1]
    b = min(int(np.searchsorted(ends, u, side="right")), len(blocks) - 1)
    inner = np.cumsum(weights[b * _BLOCK:(b + 1) * _BLOCK], dtype=np.float64)
    # the block's float32 sum and its float64 running sum differ by ~1e-7: the target is
    # rescaled to the running sum, so it never lands past it (on a token of weight 0)
    target = (u - (ends[b] - blocks[b])) * (inner[-1] / blocks[b])
    i = min(int(np.searchsorted(inner, target, side="right")), len(inner) - 1)
    tok = b * _BLOCK + i
    return tok, float((logits[tok] - top) / temperature - np.log(ends[-1]))


def sample_logprob(logits: np.ndarray, token: int, temperature: float) -> float:
    """log softmax(logits / T)[token]: the distribution a row at T draws from (0 at
    T <= 0, where the draw is the argmax)."""
    if temperature <= 0:
        return 0.0
    scaled = logits.astype(np.float64) / temperature
    top = scaled.max()
    return float(scaled[token] - top - np.log(np.exp(scaled - top).sum()))
