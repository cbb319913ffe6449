"""scripts/aot_memory.py: the per-device memory XLA assigns to one compiled GRPO update,
from abstract weights. Slow (compiles the 270M update twice on fake CPU devices)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["prompts_per_step=2", "grpo.num_generations=2", "grpo.max_new_tokens=16"]


def aot(devices: int, *overrides: str) -> dict:
    res = subprocess.run(
        [sys.executable, "scripts/aot_memory.py", "configs/gemma3-270m-cpu.yaml", *SMALL,
         *overrides, "--devices", str(devices), "--prompt-len", "32", "--hbm-gb", "16"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


@pytest.mark.slow
def test_per_device_arguments_are_the_weights_split_over_the_mesh():
    one, two = aot(1), aot(2, "mesh_fsdp=2")
    assert one["base_params"] == two["base_params"] and one["devices"] == 1
    assert 260e6 < one["base_params"] < 280e6  # Gemma 3 270M, embeddings included
    weights_gb = one["base_params"] * 4 / 1e9  # float32 recipe
    arg1, arg2 = one["per_device_gb"]["arguments"], two["per_device_gb"]["arguments"]
    assert weights_gb <= arg1 < weights_gb + 0.2  # + LoRA, Adam moments, the batch
    assert weights_gb / 2 <= arg2 < weights_gb / 2 + 0.2  # fsdp=2 halves the weights
    assert one["per_device_gb"]["peak_estimate"] >= arg1 and one["fits"]
