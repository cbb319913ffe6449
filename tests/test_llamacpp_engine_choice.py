"""Which engine ``--engine``/``make_engine`` picks, and its one-line user errors."""

import pytest

from bigthoughts.cli import _choice, build_parser, main
from bigthoughts.models.registry import ModelLoadError
from bigthoughts.models.resolve import engine_kind, gguf_source, llamacpp_available, resolve_kind


def test_resolve_kind():
    # auto: llama.cpp for a GGUF model on a CPU when llama-cpp-python is installed
    assert resolve_kind("auto", gguf=True, jax_backend="cpu", llamacpp=True) == "llama.cpp"
    assert resolve_kind("auto", gguf=True, jax_backend="gpu", llamacpp=True) == "jax"
    assert resolve_kind("auto", gguf=True, jax_backend="tpu", llamacpp=True) == "jax"
    assert resolve_kind("auto", gguf=True, jax_backend="cpu", llamacpp=False) == "jax"
    assert resolve_kind("auto", gguf=False, jax_backend="cpu", llamacpp=True) == "jax"
    assert resolve_kind("jax", gguf=True, jax_backend="cpu", llamacpp=True) == "jax"
    # a GGUF LoRA adapter runs only on llama.cpp; without a GGUF model it cannot
    assert resolve_kind("auto", gguf=True, jax_backend="gpu", lora=True) == "llama.cpp"
    assert resolve_kind("auto", gguf=False, jax_backend="cpu", llamacpp=True, lora=True) == "jax"
    assert resolve_kind("llama.cpp", gguf=False, jax_backend="tpu") == "llama.cpp"
    # unset: looked up on this machine (a CPU-only JAX here)
    installed = llamacpp_available()
    assert resolve_kind("auto", gguf=True) == ("llama.cpp" if installed else "jax")
    with pytest.raises(ModelLoadError, match="unknown engine"):
        resolve_kind("vllm", gguf=True)


@pytest.mark.parametrize("extra, expected", [
    ([], "auto"),  # resolve_kind decides
    (["--engine", "jax"], "jax"),
    (["--dtype", "float32"], "jax"),  # a JAX dtype asks for the JAX engine
    (["--lora", "a.gguf"], "llama.cpp"),  # a GGUF LoRA runs only on llama.cpp
    (["--checkpoint", "."], "jax"),  # not a GGUF model
    (["--engine", "llama.cpp", "--dtype", "bfloat16"], "llama.cpp"),  # explicit wins
])
def test_cli_engine_kind(extra, expected):
    args = build_parser().parse_args(["ask", "2+2?", *extra])
    want = resolve_kind("auto", gguf=True) if expected == "auto" else expected
    assert engine_kind(_choice(args)) == want


def test_gguf_source(tmp_path):
    path, spec = gguf_source(None)  # the embedded default
    assert path.suffix == ".gguf" and spec.name == "gemma3-270m" and not spec.instruction_tuned
    assert gguf_source("gemma2-2b-it") is None  # a registry model that needs a checkpoint
    assert gguf_source(str(tmp_path)) is None  # a checkpoint directory
    f = tmp_path / "my-model-it.gguf"
    f.write_bytes(b"")
    path, spec = gguf_source(str(f))
    assert path == f and spec.instruction_tuned


@pytest.mark.parametrize("argv, message", [
    (["ask", "2+2?", "--engine", "llama.cpp", "--checkpoint", "."], "needs a GGUF model"),
    (["generate", "x", "--engine", "jax", "--lora", "a.gguf"], "needs the llama.cpp engine"),
])
def test_engine_mistakes_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err


def test_missing_adapter_is_a_one_line_error(capsys, tmp_path):
    if not llamacpp_available():
        pytest.skip("needs the llamacpp extra")
    argv = ["generate", "x", "--engine", "llama.cpp", "--lora", str(tmp_path / "no.gguf")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "LoRA adapter not found" in err, err
