"""Supervised warm start: data, batching, the loss against a NumPy reference, learning
and exact resume on a tiny random Gemma, adapters."""

import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigthoughts.answers import extract_answer
from bigthoughts.data import Example, load_gsm8k, prompt_format
from bigthoughts.models.lora import LoraSection
from bigthoughts.rewards import is_exact_format
from bigthoughts.training.config import OptimSection
from bigthoughts.training.sft_config import SFTConfig, SFTDataSection
from bigthoughts.training.sft_data import (
    BucketedOrder,
    completion_text,
    pad_batch,
    split_validation,
    tokenize,
)
from tests.train_toy import toy_loaded


@pytest.fixture(scope="module")
def gsm8k_train(gsm8k_dir):
    return load_gsm8k("train", gsm8k_dir)


def test_every_train_solution_becomes_a_well_formed_completion(gsm8k_train):
    for e in gsm8k_train:
        for notes in (True, False):
            text = completion_text(e, annotations=notes)
            assert is_exact_format(text), text
            assert extract_answer(text, strict=True) == e.gold
            assert ("<<" in text) == (notes and "<<" in e.answer)


def test_validation_split_is_disjoint_and_seeded(gsm8k_train):
    train, held = split_validation(gsm8k_train, 200, seed=3)
    assert len(held) == 200 and len(train) == len(gsm8k_train) - 200
    assert not {e.id for e in train} & {e.id for e in held}
    again, _ = split_validation(gsm8k_train, 200, seed=3)
    assert [e.id for e in again] == [e.id for e in train]
    with pytest.raises(ValueError, match="validation size"):
        split_validation(gsm8k_train[:5], 5, seed=0)


def test_bucketed_order_covers_each_example_once_per_epoch_and_resumes():
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 400, size=103).tolist()
    order = BucketedOrder(lengths, batch_size=8, seed=1, window=4)
    epoch = [order.next() for _ in range(13)]  # ceil(103 / 8) batches
    assert sorted(i for b in epoch for i in b) == list(range(103))
    resumed = BucketedOrder(lengths, batch_size=8, seed=1, window=4, position=5)
    fresh = BucketedOrder(lengths, batch_size=8, seed=1, window=4)
    for _ in range(5):
        fresh.next()
    assert [resumed.next() for _ in range(20)] == [fresh.next() for _ in range(20)]
    # sorting within windows pads far less than random batches of the same size
    def padding(batches):
        return np.mean([max(lengths[i] for i in b) - np.mean([lengths[i] for i in b])
                        for b in batches])
    random_batches = [list(range(i, min(i + 8, 103))) for i in range(0, 103, 8)]
    assert padding(epoch) < 0.5 * padding(random_batches)


def test_pad_batch_masks_exactly_the_completion_targets():
    toks = toy_loaded().tokenizer
    examples = [Example(id=str(i), question="q" * (i + 1), answer=f"a {i}\n#### {i}",
                        gold=str(i)) for i in range(3)]
    pairs, dropped = tokenize(examples, toks, prompt_format("zeroshot", 0).prompt,
                              annotations=True, max_length=4096)
    assert dropped == 0
    tokens, valid, mask = pad_batch(pairs, toks.pad_id(), multiple=64)
    length, window = tokens.shape[1], mask.shape[1]
    for row, pair in enumerate(pairs):
        seq = list(pair.prompt_ids + pair.completion_ids)
        assert tokens[row][valid[row]].tolist() == seq
        targets = tokens[row, length - window:][mask[row] == 1].tolist()
        assert targets == list(pair.completion_ids)
        assert pair.completion_ids[-1] == toks.eos_id()


def test_tokenize_skips_pairs_over_max_length():
    toks = toy_loaded().tokenizer
    examples = [Example(id="a", question="short", answer="x\n#### 1", gold="1"),
                Example(id="b", question="long " * 200, answer="x\n#### 2", gold="2")]
    pairs, dropped = tokenize(examples, toks, lambda q: q, annotations=True, max_length=300)
    assert [p.id for p in pairs] == ["a"] and dropped == 1


def test_sft_loss_equals_numpy_reference():
    from bigthoughts.training.sft import sft_loss

    lm = toy_loaded()
    toks = lm.tokenizer
    examples = [Example(id=str(i), question=f"question {i}" * (i + 1),
                        answer=f"step {i}\n#### {i}", gold=str(i)) for i in range(3)]
    pairs, _ = tokenize(examples, toks, lambda q: q, annotations=True, max_length=4096)
    tokens, valid, mask = pad_batch(pairs, toks.pad_id(), multiple=16)
    loss, aux = sft_loss(lm.model, jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(mask))
    nll = []
    for pair in pairs:  # unpadded full forward per sequence
        seq = list(pair.prompt_ids + pair.completion_ids)
        n = len(seq)
        logits, _ = lm.model(jnp.asarray([seq]), jnp.arange(n)[None], None,
                             jnp.tril(jnp.ones((1, n, n), dtype=bool)))
        lp = np.asarray(jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1))
        start = len(pair.prompt_ids)
        nll += [-lp[t - 1, seq[t]] for t in range(start, n)]
    np.testing.assert_allclose(float(loss), np.mean(nll), rtol=1e-5)
    assert float(aux["count"]) == len(nll)


def toy_sft(out, *, max_steps, horizon=None, full=False):
    from bigthoughts.training.sft import SFTStage, prepare_data

    lm = toy_loaded()
    examples = [Example(id=f"t{i}", question=f"q{i % 3}", answer=f"ab{i % 3}\n#### {i % 3}",
                        gold=str(i % 3)) for i in range(24)]
    config = SFTConfig(data=SFTDataSection(validation_size=4, style="zeroshot"),
                       lora=LoraSection(rank=4, alpha=8.0),
                       optim=OptimSection(learning_rate=3e-2, warmup_steps=1),
                       batch_size=4, max_steps=horizon or max_steps, save_every=2,
                       eval_examples=2, eval_max_new_tokens=8, full_finetune=full,
                       out_dir=str(out))
    train, val, held, _ = prepare_data(config, lm.tokenizer, examples)
    out.mkdir(parents=True, exist_ok=True)
    return SFTStage(config, out, train=train, validation=val, held_out=held, loaded=lm)


def run(stage, steps):
    from bigthoughts.training.loop import run_stage
    from bigthoughts.training.progress import Progress
    from bigthoughts.training.relay import Deadline

    return run_stage(stage, limit=steps, save_every=2, eval_every=0, deadline=Deadline(None),
                     progress=Progress(io.StringIO()))


def test_sft_learns_the_completions_and_validation_loss_falls(tmp_path):
    stage = toy_sft(tmp_path / "learn", max_steps=24)
    before = stage.validation_loss()
    result = run(stage, 24)
    losses = [h["loss"] for h in result.history]
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:2]), losses
    stage = toy_sft(tmp_path / "learn", max_steps=24)  # resumed at step 24
    assert stage.step == 24 and stage.validation_loss() < 0.5 * before
    record = stage.evaluate()
    assert {"eval/loss", "eval/accuracy", "eval/format_compliance"} <= set(record)


def test_sft_resumes_exactly(tmp_path):
    straight = toy_sft(tmp_path / "a", max_steps=4)
    run(straight, 4)
    first = toy_sft(tmp_path / "b", max_steps=4)
    run(first, 2)
    second = toy_sft(tmp_path / "b", max_steps=4)
    assert second.step == 2 and second.resumed_from is not None
    run(second, 4)
    a = jax.tree_util.tree_leaves(toy_sft(tmp_path / "a", max_steps=4).params)
    b = jax.tree_util.tree_leaves(toy_sft(tmp_path / "b", max_steps=4).params)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    logged = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text()
              .splitlines()]
    assert logged == [1, 2, 3, 4]


def test_adapter_round_trip_reproduces_the_trained_model(tmp_path):
    from flax import nnx

    from bigthoughts.models import forward
    from bigthoughts.models.adapter import AdapterError, read_adapter, with_adapter

    stage = toy_sft(tmp_path / "ad", max_steps=6)
    run(stage, 6)
    stage = toy_sft(tmp_path / "ad", max_steps=6)
    stage.export(tmp_path / "export")
    path = tmp_path / "export" / "adapter.safetensors"
    arrays, lora, provenance = read_adapter(path)
    assert lora.rank == 4 and provenance["step"] == 6
    trained = nnx.merge(stage.graphdef, stage.params, stage.frozen)
    merged = with_adapter(toy_loaded(), path).model
    ids = jnp.asarray([[2, 70, 71, 72, 73]])
    mask = jnp.tril(jnp.ones((1, 5, 5), dtype=bool))

    def logits(model):  # through hidden_states: the method qwix's LoRA intercepts
        hidden, _ = forward.hidden_states(model, ids, jnp.arange(5)[None], None, mask)
        return forward.logits(model, hidden)

    want, got, base = logits(trained), logits(merged), logits(toy_loaded().model)
    # bf16 storage of A and B: close to the trained model, far from the base
    err = float(jnp.max(jnp.abs(got - want)))
    assert err < 0.05 * float(jnp.max(jnp.abs(want - base))), err
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="not a readable"):
        read_adapter(tmp_path / "bad.safetensors")


def test_full_finetune_updates_the_base_weights(tmp_path):
    from flax import nnx

    stage = toy_sft(tmp_path / "full", max_steps=6, full=True)
    before = {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(stage.params)}
    assert not any("lora" in ".".join(map(str, k)) for k in before)  # no adapter at all
    result = run(stage, 6)
    after = {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(stage.params)}
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert len(changed) == len(before)  # every weight is trained
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    stage.export(tmp_path / "full-export")
    assert (tmp_path / "full-export" / "params.safetensors").is_file()
    assert not (tmp_path / "full-export" / "adapter.safetensors").exists()


def _target_runs(ids, targets, toks) -> list[str]:
    """The text of each run of consecutive target tokens."""
    runs, run = [], []
    for i, t in zip((*ids, None), (*targets, 0), strict=True):
        if t:
            run.append(i)
        elif run:
            runs.append(toks.decode(run))
            run = []
    return runs


def test_results_loss_targets_only_the_calculator_checked_results():
    from bigthoughts.training.sft_data import result_targets

    toks = toy_loaded().tokenizer
    text = ("<reasoning>a <<2*3=6>>6 b <<6+1=8>>8 c <<7/2=3.5>>3.5 d <<1+1= 2>>2 "
            "e <<x*y=5>>5</reasoning>\n<answer>8</answer>")
    ids, targets = result_targets(text, toks)
    # the pieces join back into the trace
    assert toks.decode(list(ids)) == toks.decode(toks.encode(text))
    # 6+1=8 is wrong, " 2" is not how the calculator writes 2, x*y has no value
    assert _target_runs(ids, targets, toks) == ["=6>>", "=3.5>>"]

    examples = [Example(id="a", question="q", answer="x <<2*3=6>>6\n#### 6", gold="6"),
                Example(id="b", question="q", answer="no notes here\n#### 1", gold="1"),
                Example(id="c", question="q", answer="x <<1+1=3>>3\n#### 3", gold="3")]
    pairs, dropped = tokenize(examples, toks, lambda q: q, annotations=True,
                              max_length=4096, loss_on="results")
    assert [p.id for p in pairs] == ["a"] and dropped == 2
    tokens, valid, mask = pad_batch(pairs, toks.pad_id(), multiple=16)
    window = mask.shape[1]
    assert toks.decode(tokens[0, tokens.shape[1] - window:][mask[0] == 1].tolist()) == "=6>>"
    with pytest.raises(ValueError, match="loss_on"):
        tokenize(examples, toks, lambda q: q, annotations=True, max_length=99, loss_on="x")
    with pytest.raises(ValueError, match="annotations"):
        tokenize(examples, toks, lambda q: q, annotations=False, max_length=99,
                 loss_on="results")
    with pytest.raises(ValueError, match="data.loss_on"):
        SFTDataSection(loss_on="answers")
    with pytest.raises(ValueError, match="data.annotations"):
        SFTDataSection(loss_on="results", annotations=False)


def test_results_targets_are_the_tokens_the_calculator_inserts(real_model):
    """On Gemma's tokenizer the target piece is what decoding inserts: ``6>>`` after
    the model's ``=`` token, or ``=-3>>`` where ``=-`` is one token."""
    from bigthoughts.training.sft_data import result_targets

    toks = real_model.tokenizer
    assert toks.encode("=6>>") == toks.encode("=") + toks.encode("6>>")  # no merge
    ids, targets = result_targets("So 5-8 = <<5-8=-3>>-3 and <<2*3=6>>6.", toks)
    assert [list(toks.encode(s)) for s in _target_runs(ids, targets, toks)] == [
        toks.encode("=-3>>"), toks.encode("=6>>")]
    assert len(toks.encode("=-3>>")) == 3  # '=-' is one token: the sign is learnt with it
    assert toks.decode(list(ids)) == "So 5-8 = <<5-8=-3>>-3 and <<2*3=6>>6."


def test_the_arithmetic_recipe_loads_and_learns_only_results():
    from pathlib import Path

    from bigthoughts.training.sft_config import load_sft_config

    root = Path(__file__).resolve().parents[1]
    config = load_sft_config(root / "configs" / "gemma3-270m-arith.yaml")
    assert config.data.loss_on == "results" and not config.calculator
    assert (root / config.model.adapter).is_file()  # continues the committed stage-4 adapter


def test_the_reference_solution_recipe_continues_stage_4_on_whole_completions():
    from pathlib import Path

    from bigthoughts.training.sft_config import load_sft_config

    root = Path(__file__).resolve().parents[1]
    config = load_sft_config(root / "configs" / "gemma3-270m-sft2.yaml")
    assert config.data.loss_on == "completion" and config.data.annotations
    assert config.data.path is None  # GSM8K train itself, not the model's traces
    assert config.model.adapter == "adapters/gemma3-270m-grpo4.safetensors"
    assert (root / config.model.adapter).is_file()
