"""The logits part of a GRPO gradient program, before and after the fused log-probs,
compiled ahead of time at a recipe's shapes (no weights, no accelerator).

    .venv/bin/python benchmarks/logprob_memory.py [--model gemma3-1b-it] [--rows 64]
                                                  [--tokens 384] [--dtype bfloat16]

Both programs take the final hidden states [rows, tokens, D] and the tied embedding
[V, D] and return the gradient of Σ log p_T(target) with respect to the hidden states
(what flows back into the layers and the LoRA weights):

* chunk scan (what training ran until the fused log-probs, kept here as the baseline):
  a ``lax.scan`` over 32-position chunks under ``jax.checkpoint``, each chunk
  materialising its [rows, 32, V] float32 logits, their softmax and its gradient;
* fused: ``models.fused_logprobs`` (rows × vocabulary tiles, online logsumexp,
  recomputed in a custom VJP), as ``models.forward.token_logprobs`` calls it.

Printed: XLA's per-device temporaries, arguments and peak (arguments + outputs −
aliased + temporaries) for each, and the ratio. The defaults are the 1B GPU recipe's
shapes as shipped before (8 prompts × G = 8 rows, 384 new tokens, one batch); pass
``--rows 16 --tokens 768`` for today's recipe's micro-batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def chunk_scan_logprobs(hidden, embedding, targets, chunk: int = 32, temperature: float = 0.9):
    """The baseline: 32 positions × all rows of full-vocabulary logits per scan step."""
    import jax
    import jax.numpy as jnp

    b, length, d = hidden.shape
    pad = (-length) % chunk
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, -1, chunk, d)
    t = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, -1, chunk)

    def one(carry, xs):
        hc, tc = xs
        lg = jnp.dot(hc, embedding.T).astype(jnp.float32) / temperature
        lse = jax.nn.logsumexp(lg, axis=-1)
        picked = jnp.take_along_axis(lg, tc[..., None], axis=-1)[..., 0]
        return carry, picked - lse

    _, out = jax.lax.scan(jax.checkpoint(one), None,
                          (jnp.moveaxis(h, 1, 0), jnp.moveaxis(t, 1, 0)))
    return jnp.moveaxis(out, 0, 1).reshape(b, -1)[:, :length]


def fused(hidden, embedding, targets, temperature: float = 0.9):
    from bigthoughts.models.forward import ROW_TILE, VOCAB_TILE
    from bigthoughts.models.fused_logprobs import fused_logprobs

    b, length, d = hidden.shape
    out = fused_logprobs(hidden.reshape(-1, d), embedding, targets.reshape(-1),
                         temperature=temperature, row_tile=ROW_TILE, vocab_tile=VOCAB_TILE,
                         embedding_grad=False)
    return out.reshape(b, length)


def measure(fn, rows: int, tokens: int, width: int, vocab: int, dtype) -> dict:
    import jax
    import jax.numpy as jnp

    s = jax.ShapeDtypeStruct
    grad = jax.jit(jax.grad(lambda h, e, t: fn(h, e, t).sum()))
    compiled = grad.lower(s((rows, tokens, width), dtype), s((vocab, width), dtype),
                          s((rows, tokens), jnp.int32)).compile()
    m = compiled.memory_analysis()
    gb = 1e9
    return {"temporaries_gb": round(m.temp_size_in_bytes / gb, 3),
            "arguments_gb": round(m.argument_size_in_bytes / gb, 3),
            "peak_gb": round((m.argument_size_in_bytes + m.output_size_in_bytes
                              - m.alias_size_in_bytes + m.temp_size_in_bytes) / gb, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gemma3-1b-it")
    p.add_argument("--rows", type=int, default=64, help="completions in the program")
    p.add_argument("--tokens", type=int, default=384, help="completion tokens per row")
    p.add_argument("--dtype", default="bfloat16")
    args = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax.numpy as jnp

    from bigthoughts.models.registry import REGISTRY

    spec = REGISTRY[args.model]
    if spec.family == "gemma3":
        from tunix.models.gemma3.model import ModelConfig
    else:
        from tunix.models.gemma.model import ModelConfig
    config = getattr(ModelConfig, spec.tunix_config)()
    dtype = jnp.dtype(args.dtype)
    shapes = (args.rows, args.tokens, config.embed_dim, config.num_embed, dtype)
    before = measure(chunk_scan_logprobs, *shapes)
    after = measure(fused, *shapes)
    result = {"model": args.model, "rows": args.rows, "tokens": args.tokens,
              "embed_dim": config.embed_dim, "vocab": config.num_embed, "dtype": args.dtype,
              "chunk_scan": before, "fused": after,
              "temporaries_ratio": round(before["temporaries_gb"]
                                         / max(after["temporaries_gb"], 1e-9), 1)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
