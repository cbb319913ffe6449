"""GRPO rollouts on llama.cpp: the policy samples on the CPU engine, JAX trains.

On a 2-core CPU a GRPO step of the 270M recipe spent about 35 of its 57 s sampling 8
completions with the JAX sampler; llama.cpp decodes the same rows about twice as fast
(``benchmarks/llamacpp.py``). With ``grpo.rollout_engine: llama.cpp`` the trainer keeps
its JAX model for log-probs and updates, and after every update writes the current
LoRA matrices as a GGUF LoRA adapter for the unchanged base GGUF and swaps it into a
llama.cpp engine that stays loaded (TRL does the same with a vLLM server). The
sampling policy is then the same weights computed by llama.cpp's quantised kernels
rather than our float32 forward: a small, documented off-policy gap, as between a
bfloat16 vLLM and a float32 trainer. Calculator insertions are flagged by the engine
(``Generation.inserted``) and masked out of the loss as on the JAX path.

Needs a GGUF model (the embedded default or a ``.gguf`` path) and a LoRA on the
unchanged base: an adapter folded into the weights (``model.adapter_mode: merge``)
changes the base llama.cpp would sample from, and is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from flax import nnx

from bigthoughts.config import ConfigError
from bigthoughts.inference.contract import Generation

__all__ = ["LlamaCppRollouts", "rollout_gguf"]


def rollout_gguf(config) -> Path:
    """The base GGUF the llama.cpp rollouts load, or a ConfigError saying why not."""
    from bigthoughts.models.resolve import gguf_source, llamacpp_available

    if not llamacpp_available():
        raise ConfigError("grpo.rollout_engine=llama.cpp needs the llamacpp extra: "
                          "pip install 'bigthoughts[llamacpp]'")
    model = config.model
    if model.adapter and model.adapter_mode == "merge":
        raise ConfigError("grpo.rollout_engine=llama.cpp needs the LoRA on the unchanged base: "
                          "use model.adapter_mode=continue (merge folds the adapter into "
                          "the weights llama.cpp would not have)")
    source = gguf_source(model.path or model.name)
    if source is None:
        raise ConfigError("grpo.rollout_engine=llama.cpp needs a GGUF model (the embedded "
                          f"default or a .gguf model.path); {model.path or model.name} is not")
    return source[0]


class LlamaCppRollouts:
    """A sampler with the JAX ``Sampler.generate`` signature, on llama.cpp."""

    def __init__(self, gguf_path: str | Path, *, alpha: float, work_dir: str | Path,
                 threads: int | None = None):
        from bigthoughts.inference.llamacpp import LlamaCppEngine
        from bigthoughts.models.gguf import open_gguf

        self.engine = LlamaCppEngine(gguf_path, threads=threads)
        self._base = open_gguf(gguf_path)  # the adapter names its architecture from it
        self.alpha = alpha
        self.adapter_path = Path(work_dir) / "rollout-lora.gguf"
        self.adapter_path.parent.mkdir(parents=True, exist_ok=True)

    def sync(self, lora_state) -> None:
        """Samples with these LoRA matrices (an ``nnx.State`` of LoRAParams) from now on."""
        from bigthoughts.models.gguf_export import write_lora_adapter

        arrays = {path: np.asarray(v.get_value() if hasattr(v, "get_value") else v,
                                   dtype=np.float32)
                  for path, v in nnx.to_flat_state(lora_state)}
        write_lora_adapter(self.adapter_path, arrays, alpha=self.alpha, base=self._base)
        self.engine.set_lora(self.adapter_path)

    def generate(self, prompts: Sequence[str], **kwargs) -> list[Generation]:
        return self.engine.generate(prompts, **kwargs)

    def close(self) -> None:
        self.engine.close()
