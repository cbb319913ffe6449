"""Tokens/s of our sampler vs Hugging Face transformers ``generate`` on the same
Gemma 3 270M GGUF, same prompts, same number of new tokens, side by side in one run.

    .venv/bin/pip install -r benchmarks/requirements.txt
    .venv/bin/python benchmarks/generate.py [--new-tokens 128] [--batches 1,5,20]

Both sides sample past EOS to a fixed length (so they do the same work), float32,
on the CPU threads available. Each configuration is run once to warm up (compile
for JAX, allocator for PyTorch) and then timed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import questions  # noqa: E402


def ours(batches, new_tokens, prompts):
    from bigthoughts.inference.jax_sampler import Sampler
    from bigthoughts.models.registry import load_model

    lm = load_model()
    sampler = Sampler(lm.model, lm.tokenizer)
    out = {}
    for b in batches:
        def run(b=b):
            return sampler.generate(prompts[:b], temperatures=0.7, max_new_tokens=new_tokens,
                                    seed=1, stop_at_eos=False)
        run()
        start = time.perf_counter()
        gens = run()
        seconds = time.perf_counter() - start
        out[b] = sum(g.num_tokens for g in gens) / seconds
    return out, lm.tokenizer


def huggingface(batches, new_tokens, prompts, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from bigthoughts.models.registry import embedded_gguf_path

    path = embedded_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32).eval()
    out = {}
    for b in batches:
        ids = [tokenizer.encode(p, add_bos=True) for p in prompts[:b]]
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([[0] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])

        def run(input_ids=input_ids, mask=mask):
            with torch.no_grad():
                return model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True,
                                      temperature=0.7, top_k=0, max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens, pad_token_id=0)
        run()
        start = time.perf_counter()
        res = run()
        seconds = time.perf_counter() - start
        out[b] = (res.shape[1] - width) * b / seconds
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batches", default="1,5,20")
    args = parser.parse_args()
    batches = [int(x) for x in args.batches.split(",")]
    prompts = [f"Question: {q}\nAnswer:" for q in questions(max(batches))]
    mine, tokenizer = ours(batches, args.new_tokens, prompts)
    theirs = huggingface(batches, args.new_tokens, prompts, tokenizer)
    print(f"{'batch':>5} {'bigthoughts tok/s':>18} {'HF generate tok/s':>18} {'ratio':>7}")
    for b in batches:
        print(f"{b:>5} {mine[b]:>18.1f} {theirs[b]:>18.1f} {mine[b] / theirs[b]:>6.2f}x")


if __name__ == "__main__":
    main()
