"""Writes tests/golden/tiny_hf_logits.npz: logits of tiny random Gemma 2 and Gemma 3
checkpoints computed by Hugging Face transformers (PyTorch, float32, eager attention),
an implementation independent of Tunix. ``tests/test_checkpoints.py`` loads the same
checkpoints (regenerated from the seeds in ``tests/fixtures_checkpoints.py``) with our
loader and compares.

The tiny configs make every Gemma 2 / Gemma 3 feature matter: sliding window 4 with 12
tokens, alternating local/global layers and small soft-caps (Gemma 2), five local + one
global layer with separate RoPE bases and linear RoPE scaling, q/k norms (Gemma 3).

Run in a separate environment (torch stays out of bigthoughts' dependencies):

    path/to/venv-with-torch-and-transformers/bin/python scripts/make_tiny_hf_golden.py
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import fixtures_checkpoints as fx  # noqa: E402


def hf_logits(config: dict, seed: int, ids: np.ndarray) -> tuple[np.ndarray, float]:
    tensors = fx.hf_tensors(config, seed)
    with tempfile.TemporaryDirectory() as tmp:
        fx.write_hf_checkpoint(Path(tmp), config, tensors, tokenizer=False)
        model, info = AutoModelForCausalLM.from_pretrained(
            tmp, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
        )
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"transformers did not load the tiny checkpoint cleanly: {bad}")
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(ids[None].astype(np.int64))).logits[0]
    return logits.double().numpy().astype(np.float32), fx.fingerprint(tensors)


def main() -> None:
    ids = fx.sample_ids()
    out: dict[str, np.ndarray] = {"ids": ids}
    for name, (config, seed) in fx.GOLDEN_MODELS.items():
        logits, fp = hf_logits(config, seed, ids)
        out[f"{name}_logits"] = logits
        out[f"{name}_fingerprint"] = np.float64(fp)
        print(f"{name}: logits {logits.shape}, range [{logits.min():.3f}, {logits.max():.3f}]")
    fx.GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(fx.GOLDEN, **out)
    print(f"wrote {fx.GOLDEN} ({fx.GOLDEN.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
