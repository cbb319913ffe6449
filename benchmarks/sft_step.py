"""Supervised fine-tuning throughput on this CPU: our SFT step vs TRL's ``SFTTrainer``,
side by side in one run (each side in its own process, so peak memory is its own).

    .venv/bin/pip install -r benchmarks/requirements.txt
    BIGTHOUGHTS_DATA=path/to/gsm8k .venv/bin/python benchmarks/sft_step.py [--steps 8] [--work DIR]

* ours: ``bigthoughts.training.sft.SFTStage`` with configs/gemma3-270m-sft.yaml (LoRA r16,
  α 32 on q/kv/o and gate/up/down via qwix, f32, left-padded batches, vocabulary logits
  only over the completion window);
* trl: ``trl.SFTTrainer`` with a PEFT LoRA r16 (α 32, dropout 0, q/k/v/o_proj and
  gate/up/down_proj) on a Hugging Face ``Gemma3ForCausalLM`` in f32 holding the SAME
  weights (written by ``bigthoughts.models.export.export_hf_gemma3`` from the embedded GGUF),
  ``torch.set_num_threads(2)``, AdamW (``adamw_torch``) with the recipe's η, betas,
  warm-up, clipping and weight decay, ``completion_only_loss`` on a pre-tokenized
  prompt-completion dataset (``input_ids`` + ``completion_mask``), gradient
  checkpointing off as in our recipe (``trl-gc``: on, TRL's default).

Both sides run the SAME batches in the SAME order: ``steps + 1`` batches of the recipe's
length-bucketed order over GSM8K train pairs (our tokenizer, zero-shot prompt, tagged
completion), kept only when they pad to one shape (the most common one), so the first
step is the only one that compiles; it is not counted on either side. tokens/s counts
real (non-pad) prompt+completion tokens; completion tokens/s the tokens under the loss.
The loss of the first step (before any update) is printed for both sides: the same
weights and batch give the same number, a check that both do the same work. CPU s/step
is the process's CPU time per step, a second view when other work shares the CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import peak_rss_gb  # noqa: E402

RECIPE = ROOT / "configs" / "gemma3-270m-sft.yaml"
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def prepare(steps: int, work: Path) -> dict:
    """Writes ``work/pairs.json`` (the batches both sides run) and ``work/hf`` (weights)."""
    from bigthoughts.models.build import flat_params
    from bigthoughts.models.export import export_hf_gemma3
    from bigthoughts.models.registry import load_model
    from bigthoughts.training.sft import prepare_data
    from bigthoughts.training.sft_config import load_sft_config
    from bigthoughts.training.sft_data import BucketedOrder, pad_batch

    config = load_sft_config(RECIPE)
    lm = load_model(config.model.name, dtype=config.model.dtype)
    if not (work / "hf" / "model.safetensors").exists():
        export_hf_gemma3(work / "hf", flat_params(lm.model), lm.model.config, lm.tokenizer)
    pairs, _, _, _ = prepare_data(config, lm.tokenizer)
    order = BucketedOrder([x.length for x in pairs], config.batch_size, config.seed)
    epoch = [order.next() for _ in range(-(-len(pairs) // config.batch_size))]

    def shape(batch):
        tokens, _, mask = pad_batch([pairs[i] for i in batch], lm.tokenizer.pad_id(),
                                    config.data.pad_multiple)
        return tokens.shape[1], mask.shape[1]

    shapes = [shape(b) for b in epoch if len(b) == config.batch_size]
    common = Counter(shapes).most_common(1)[0][0]
    chosen = [b for b, s in zip(epoch, shapes, strict=False) if s == common][:steps + 1]
    batches = [[{"id": pairs[i].id, "prompt_ids": list(pairs[i].prompt_ids),
                 "completion_ids": list(pairs[i].completion_ids)} for i in b] for b in chosen]
    info = {"steps": steps, "shape": list(common),
            "share_of_epoch": shapes.count(common) / len(shapes), "batches": batches}
    (work / "pairs.json").write_text(json.dumps(info))
    return {"shape": common, "share_of_epoch": info["share_of_epoch"]}


def _load_batches(work: Path):
    from bigthoughts.training.sft_data import SFTExample

    info = json.loads((work / "pairs.json").read_text())
    return [[SFTExample(id=x["id"], prompt_ids=tuple(x["prompt_ids"]),
                        completion_ids=tuple(x["completion_ids"])) for x in b]
            for b in info["batches"]]


class _FixedOrder:
    """Stands in for ``BucketedOrder``: the prepared batches, in order."""

    def __init__(self, size: int, batch_size: int):
        self.batches = [list(range(i, i + batch_size)) for i in range(0, size, batch_size)]
        self.position = 0

    def next(self) -> list[int]:
        self.position += 1
        return self.batches[self.position - 1]


def ours(work: Path) -> dict:
    from bigthoughts.models.registry import load_model
    from bigthoughts.training.sft import SFTStage
    from bigthoughts.training.sft_config import load_sft_config

    batches = _load_batches(work)
    config = load_sft_config(RECIPE, [f"max_steps={len(batches)}"])
    items = [x for b in batches for x in b]
    lm = load_model(config.model.name, dtype=config.model.dtype)
    with tempfile.TemporaryDirectory() as out:
        stage = SFTStage(config, Path(out), train=items, validation=[], held_out=[], loaded=lm)
        del lm
        stage.order = _FixedOrder(len(items), config.batch_size)
        records, cpu = [], []
        for _ in batches:
            start = time.process_time()
            records.append(stage.train_step())
            cpu.append(time.process_time() - start)
            print(f"ours step {len(records)}: {records[-1]['step_seconds']:.1f} s, "
                  f"loss {records[-1]['loss']:.4f}", flush=True)
        stage.close()
    return _summary([r["step_seconds"] for r in records], cpu, batches,
                    [r["loss"] for r in records])


def trl(work: Path, gc: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from bigthoughts.training.sft_config import load_sft_config

    torch.set_num_threads(2)
    batches = _load_batches(work)
    config = load_sft_config(RECIPE)
    rows = [{"input_ids": list(x.prompt_ids + x.completion_ids),
             "completion_mask": [0] * len(x.prompt_ids) + [1] * len(x.completion_ids)}
            for b in batches for x in b]
    model = AutoModelForCausalLM.from_pretrained(str(work / "hf"), dtype=torch.float32,
                                                 attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(str(work / "hf"))
    o = config.optim
    args = SFTConfig(
        output_dir=str(work / "trl-out"), per_device_train_batch_size=config.batch_size,
        max_steps=len(batches), learning_rate=o.learning_rate, warmup_steps=o.warmup_steps,
        lr_scheduler_type="cosine", adam_beta1=o.b1, adam_beta2=o.b2,
        weight_decay=o.weight_decay, max_grad_norm=o.max_grad_norm, optim="adamw_torch",
        max_length=config.data.max_length, completion_only_loss=True,
        gradient_checkpointing=gc, train_sampling_strategy="sequential",
        dataloader_num_workers=0, use_cpu=True, bf16=False, fp16=False, logging_steps=1,
        save_strategy="no", report_to="none", seed=config.seed, dataset_num_proc=None)
    lora = LoraConfig(r=config.lora.rank, lora_alpha=config.lora.alpha, lora_dropout=0.0,
                      target_modules=LORA_MODULES, task_type="CAUSAL_LM")
    stamps: list[float] = []
    cpu: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *_, **__):
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())

        def on_step_end(self, *_, **__):
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())
            print(f"trl step {len(stamps) - 1}: {stamps[-1] - stamps[-2]:.1f} s", flush=True)

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=lora, callbacks=[Clock()])
    trainer.train()
    def deltas(xs):
        return [b - a for a, b in zip(xs, xs[1:], strict=False)]

    return _summary(deltas(stamps), deltas(cpu), batches, losses)


def _summary(seconds: list[float], cpu: list[float], batches, losses: list[float]) -> dict:
    """Totals over the timed steps (all but the first, which compiles)."""
    if len(seconds) != len(batches):
        raise RuntimeError(f"timed {len(seconds)} steps for {len(batches)} batches")
    tokens = sum(x.length for b in batches[1:] for x in b)
    completion = sum(len(x.completion_ids) for b in batches[1:] for x in b)
    timed = sum(seconds[1:])
    return {"steps": len(seconds) - 1, "step_s": timed / (len(seconds) - 1),
            "cpu_s_per_step": sum(cpu[1:]) / (len(cpu) - 1),
            "tokens_per_s": tokens / timed, "completion_tokens_per_s": completion / timed,
            "first_step_s": seconds[0], "first_loss": losses[0] if losses else None,
            "peak_rss_gb": peak_rss_gb()}


SIDES = {"ours": ours, "trl": trl, "trl-gc": lambda work: trl(work, gc=True)}
COLUMNS = (("steps", "steps", "{:d}"), ("step_s", "s/step", "{:.2f}"),
           ("cpu_s_per_step", "CPU s/step", "{:.2f}"),
           ("tokens_per_s", "tokens/s", "{:.1f}"),
           ("completion_tokens_per_s", "completion tokens/s", "{:.1f}"),
           ("peak_rss_gb", "peak RSS GB", "{:.2f}"), ("first_step_s", "first step s", "{:.1f}"),
           ("first_loss", "first loss", "{:.4f}"))


def _prepared(work: Path, steps: int) -> dict | None:
    """The prepared batches in ``work`` when they are for ``steps`` (a rerun skips ``prepare``)."""
    path = work / "pairs.json"
    if not (path.exists() and (work / "hf" / "model.safetensors").exists()):
        return None
    info = json.loads(path.read_text())
    if info.get("steps") != steps:
        return None
    return {"shape": info["shape"], "share_of_epoch": info["share_of_epoch"]}


def _run_side(side: str, steps: int, work: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--side", side, "--steps", str(steps),
                           "--work", str(work)], capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode in (-9, 137):  # SIGKILL: on Linux, the out-of-memory killer
        return {"error": "killed by SIGKILL (out of memory?) after:\n" + proc.stdout[-1500:]}
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout)[-1500:]}
    return json.loads(lines[-1][len("RESULT "):])


def _print_table(results: dict, prep: dict) -> None:
    length, window = prep["shape"]
    print(f"\nSFT step, Gemma 3 270M f32, LoRA r16, batch 4, padded length {length} "
          f"(completion window {window}; {prep['share_of_epoch']:.0%} of the epoch's "
          "batches), CPU\n")
    print(f"{'side':8}" + "".join(f"{label:>21}" for _, label, _ in COLUMNS))
    for side, r in results.items():
        if "error" in r:
            print(f"{side:8} failed:\n{r['error']}")
            continue
        cells = ["n/a" if r.get(k) is None else f.format(r[k]) for k, _, f in COLUMNS]
        print(f"{side:8}" + "".join(f"{c:>21}" for c in cells))
    base = results.get("ours", {})
    for side, r in results.items():
        if side != "ours" and "tokens_per_s" in r and "tokens_per_s" in base:
            print(f"ours/{side}: {base['tokens_per_s'] / r['tokens_per_s']:.2f}x the tokens/s, "
                  f"{base['peak_rss_gb'] / r['peak_rss_gb']:.2f}x the peak RSS")
    print("\n" + json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side "
                        "(one more runs first, compiles and is not timed)")
    parser.add_argument("--sides", default="ours,trl",
                        help="comma-separated subset of: " + ", ".join(SIDES))
    parser.add_argument("--work", type=Path, default=None, help="keep the HF weights and "
                        "batches here (reused by a rerun); default: a temporary directory")
    parser.add_argument("--side", choices=[*SIDES, "prepare"], default=None,
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    sides = [x.strip() for x in args.sides.split(",")]
    if unknown := [x for x in sides if x not in SIDES]:
        parser.error(f"unknown side(s) {unknown}; choose from {list(SIDES)}")
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.side:
        run = prepare if args.side == "prepare" else SIDES[args.side]
        result = run(args.steps, args.work) if args.side == "prepare" else run(args.work)
        print("RESULT " + json.dumps(result), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        prep = _prepared(work, args.steps) or _run_side("prepare", args.steps, work)
        if "error" in prep:
            sys.exit(f"error: preparing the batches failed:\n{prep['error']}")
        results = {side: _run_side(side, args.steps, work) for side in sides}
    _print_table(results, prep)


if __name__ == "__main__":
    main()
