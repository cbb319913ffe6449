"""Misuse sweep: the cases of issue 31, each run for real, each judged.

    .venv/bin/python benchmarks/misuse.py [--data ../shared/data/gsm8k] [--only NAME]

Command-line cases run ``bigthoughts`` as a user would and pass when it exits non-zero
with one ``error:`` line and no traceback (or as the case says). Server cases start
``bigthoughts serve`` once and pass on the expected 4xx; the server must then answer a
normal request. Full-disk and read-only cases mount a small tmpfs (root only; skipped
otherwise). Prints one line per case and a summary; exit status 1 when any case fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EXE = str(Path(sys.executable).with_name("bigthoughts"))
BIG = "How many apples are left after the farmer sells some? " * 2400  # ~130 kB


def run(argv, *, timeout=600, cwd=None, env=None):
    start = time.monotonic()
    done = subprocess.run([EXE, *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**os.environ, **(env or {})})
    return done, time.monotonic() - start


def one_line(done, *, code=None, words=()) -> str | None:
    """None when the run ended as a one-line error (exit ``code`` or any non-zero)."""
    err = done.stderr.strip().splitlines()
    if "Traceback" in done.stderr:
        return "traceback: " + done.stderr.strip()[-300:]
    if done.returncode == 0 or (code is not None and done.returncode != code):
        return f"exit {done.returncode}: {done.stderr.strip()[-200:]}"
    errors = [x for x in err if x.startswith("error: ")]
    if len(errors) != 1:
        return f"not one error line: {done.stderr.strip()[-300:]}"
    missing = [w for w in words if w not in errors[0]]
    return f"missing {missing} in {errors[0][:200]}" if missing else None


@contextlib.contextmanager
def tmpfs(size: str, *, readonly: bool = False):
    path = Path(tempfile.mkdtemp(prefix="misuse-fs-"))
    opts = f"size={size}" + (",ro" if readonly else "")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        path.rmdir()
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)
        path.rmdir()


def fill(folder: Path, leave: int) -> None:
    """Fills a tmpfs until ``leave`` bytes are free."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    (folder / "ballast").write_bytes(b"\0" * max(0, free - leave))


# --- command-line cases: (name, function(work, data) -> None | failure) -----------------
def case_big_question(work, data):
    done, secs = run(["ask", BIG])
    return one_line(done, code=2, words=["--max-prompt-tokens"]) or (
        f"took {secs:.1f} s" if secs > 10 else None)


def case_big_question_jax(work, data):
    done, secs = run(["ask", BIG, "--engine", "jax"])
    return one_line(done, code=2, words=["--max-prompt-tokens"]) or (
        f"took {secs:.1f} s" if secs > 20 else None)


def case_seed(work, data):
    return one_line(run(["ask", "2+2?", "--seed", str(2**70)])[0], code=2, words=["--seed"])


def case_port(work, data):
    return one_line(run(["serve", "--port", "70000"])[0], code=2, words=["--port"])


def case_limit_zero(work, data):
    done, _ = run(["eval", "--data", data, "--out", str(work / "l0"), "--limit", "0"])
    return one_line(done, code=2) or ("wrote a run" if (work / "l0").exists() else None)


def case_empty_recipe(work, data):
    (work / "empty.yaml").write_text("")
    return one_line(run(["train", "--config", str(work / "empty.yaml")])[0], code=2)


def case_window(work, data):
    run_dir = work / "tr"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward_mean": 1.0}) + "\n")
    for w in ("0", "-3"):
        bad = one_line(run(["train-report", str(run_dir), "--window", w])[0], code=2)
        if bad:
            return f"--window {w}: {bad}"
    return None


def case_empty_stop(work, data):
    return one_line(run(["generate", "2+2=", "--stop", ""])[0], code=2, words=["--stop"])


def case_out_is_a_file(work, data):
    (work / "afile").write_text("x")
    done, _ = run(["eval", "--data", data, "--out", str(work / "afile"), "--limit", "2"])
    return one_line(done, code=2)


def case_out_read_only(work, data):
    with tmpfs("1m", readonly=True) as fs:
        if fs is None:
            return "skipped (no tmpfs)"
        done, _ = run(["eval", "--data", data, "--out", str(fs / "run"), "--limit", "2"])
        return one_line(done, code=74, words=["read-only"])


def _tiny_exports(work) -> tuple[Path, Path]:
    """An exported checkpoint and a Hugging Face checkpoint of a tiny random Gemma 3 (the
    tests' model), written by the project's own exporters: any checkpoint serves to
    damage."""
    if not (work / "export").exists():
        import numpy as np
        from flax import nnx

        from bigthoughts.models.export import export_checkpoint, export_hf_gemma3
        from bigthoughts.models.spec import ModelSpec
        from tests.tiny import tiny_model

        model, tok = tiny_model()
        params = {p: np.asarray(v.get_value())
                  for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
        export_checkpoint(work / "export", params, family="gemma3", config=model.config,
                          spec=ModelSpec(name="tiny", family="gemma3", instruction_tuned=False),
                          tokenizer=tok)
        export_hf_gemma3(work / "hf", params, model.config, tok)
    return work / "export", work / "hf"


def _truncate(path: Path, keep: float) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(int(os.path.getsize(path) * keep))


def case_damaged_checkpoint(work, data):
    export, _ = _tiny_exports(work)
    done, _ = run(["ask", "2+2?", "--checkpoint", str(export)])
    if done.returncode != 0:
        return f"the intact checkpoint failed: {done.stderr[-200:]}"
    _truncate(export / "params.safetensors", 0.9)
    done, _ = run(["ask", "2+2?", "--checkpoint", str(export)])
    return one_line(done, code=2, words=["not a readable safetensors file"])


def case_damaged_hf_dir(work, data):
    _, hf = _tiny_exports(work)
    _truncate(next(hf.glob("*.safetensors")), 0.5)
    done, _ = run(["ask", "2+2?", "--model", str(hf)])
    return one_line(done, code=2, words=["not a readable safetensors file"])


def case_huge_completion(work, data):
    out = work / "huge"
    done, _ = run(["train", "--config", str(ROOT / "configs/gemma3-270m-cpu.yaml"), "--data",
                   data, "--out", str(out), "--max-steps", "1",
                   "grpo.max_new_tokens=1000000000"])
    return one_line(done, code=2, words=["context"]) or (
        "created the run directory" if out.exists() else None)


def case_two_writers(work, data):
    out = work / "shared"
    argv = ["eval", "--data", data, "--out", str(out), "--limit", "6", "--quiet"]
    first = subprocess.Popen([EXE, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 120
    while not (out / ".lock").exists() and \
            time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    second, _ = run(argv)
    bad = one_line(second, code=2, words=[str(first.pid)])
    first.wait(timeout=600)
    if bad:
        return f"second writer: {bad}"
    if first.returncode != 0:
        return f"first writer exit {first.returncode}: {first.stderr[-200:]}"
    ids = [json.loads(x)["id"] for x in (out / "results.jsonl").read_text().splitlines()]
    if len(ids) != 6 or len(set(ids)) != 6:
        return f"results: {len(ids)} rows, {len(set(ids))} ids"
    return _killed_holder(work, data)


def _killed_holder(work, data):
    out = work / "killed"
    argv = ["eval", "--data", data, "--out", str(out), "--limit", "4", "--quiet"]
    proc = subprocess.Popen([EXE, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done, _ = run(argv)
    return None if done.returncode == 0 else f"rerun after kill -9: exit {done.returncode}"


def case_full_disk_eval(work, data):
    with tmpfs("2m") as fs:
        if fs is None:
            return "skipped (no tmpfs)"
        fill(fs, 6_000)  # room for run.json and a few results, not for 20
        argv = ["eval", "--data", data, "--out", str(fs / "run"), "--limit", "20", "--quiet"]
        bad = one_line(run(argv)[0], code=74, words=["no space left", "run the same command"])
        if bad:
            return bad
        kept = (fs / "run" / "results.jsonl").read_text().splitlines() \
            if (fs / "run" / "results.jsonl").exists() else []
        (fs / "ballast").unlink()
        done, _ = run(argv)
        ids = [json.loads(x)["id"] for x in (fs / "run" / "results.jsonl").read_text()
               .splitlines()]
        if done.returncode != 0 or len(ids) != 20 or len(set(ids)) != 20:
            return f"resume: exit {done.returncode}, {len(ids)} rows ({len(kept)} kept)"
    return None


def case_full_disk_train(work, data):
    with tmpfs("3g") as fs:  # the rerun writes the export (~2.2 GB)
        if fs is None:
            return "skipped (no tmpfs)"
        fill(fs, 20_000)
        argv = ["train", "--config", str(ROOT / "configs/gemma3-270m-cpu.yaml"), "--data",
                data, "--out", str(fs / "run"), "--max-steps", "1", "prompts_per_step=1",
                "grpo.max_new_tokens=16", "eval_every=0"]
        bad = one_line(run(argv, timeout=900)[0], code=74, words=["no space left"])
        if bad:
            return bad
        (fs / "ballast").unlink()
        done, _ = run(argv, timeout=900)
        steps = [json.loads(x)["step"] for x in (fs / "run" / "metrics.jsonl").read_text()
                 .splitlines()] if (fs / "run" / "metrics.jsonl").exists() else []
        return None if done.returncode == 0 and steps == [1] else \
            f"rerun with room: exit {done.returncode}, steps {steps}: {done.stderr[-200:]}"


CLI_CASES = [case_big_question, case_big_question_jax, case_seed, case_port, case_limit_zero,
             case_empty_recipe, case_window, case_empty_stop, case_out_is_a_file,
             case_out_read_only, case_damaged_checkpoint, case_damaged_hf_dir,
             case_huge_completion, case_two_writers, case_full_disk_eval, case_full_disk_train]


# --- server cases ---------------------------------------------------------------------
def server_cases():
    deep = b'{"messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    chat = "/v1/chat/completions"
    return [
        ("deep JSON", chat, deep, 400),
        ("lone surrogate", chat, b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400),
        ("30,000-token prompt", "/v1/completions",
         json.dumps({"prompt": "seven " * 30_000, "max_tokens": 8}).encode(), 400),
        ("16 kB prompt", "/v1/completions",
         json.dumps({"prompt": "1 2 3 4 " * 2000, "max_tokens": 8}).encode(), 400),
        ("path as model", chat, json.dumps({"model": "../../etc/passwd", "messages": [
            {"role": "user", "content": "hi"}]}).encode(), 404),
        ("2 MB body", "/v1/completions", b'{"prompt": "' + b"x" * 2_000_000 + b'"}', 413),
    ]


def run_server_cases(results) -> None:
    import httpx

    from benchmarks.common import server_process

    command = lambda port: [EXE, "serve", "--port", str(port)]  # noqa: E731
    with server_process(command, what="bigthoughts serve") as (_, base):
        with httpx.Client(base_url=base, timeout=120) as client:
            for name, route, body, want in server_cases():
                start = time.monotonic()
                r = client.post(route, content=body, headers={"content-type": "application/json"})
                secs = time.monotonic() - start
                bad = None if r.status_code == want and secs < 10 else \
                    f"{r.status_code} in {secs:.1f} s: {r.text[:160]}"
                results.append((f"serve: {name}", bad))
            r = client.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "What is 2 + 3?"}], "max_tokens": 48})
            text = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else ""
            results.append(("serve: a normal request after them",
                            None if text else f"{r.status_code}: {r.text[:160]}"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/gsm8k"))
    ap.add_argument("--only", default=None, help="run the cases whose name contains this")
    args = ap.parse_args()
    results: list[tuple[str, str | None]] = []
    with tempfile.TemporaryDirectory(prefix="misuse-") as tmp:
        for case in CLI_CASES:
            name = case.__name__.removeprefix("case_").replace("_", " ")
            if args.only and args.only not in name:
                continue
            start = time.monotonic()
            try:
                bad = case(Path(tmp), args.data)
            except subprocess.TimeoutExpired as exc:
                bad = f"timed out after {exc.timeout} s"
            results.append((name, bad))
            print(f"{'ok  ' if bad is None else 'SKIP' if bad.startswith('skipped') else 'FAIL'}"
                  f" {name} ({time.monotonic() - start:.1f} s){'' if bad is None else ': ' + bad}",
                  flush=True)
    if not args.only or "serve" in args.only:
        before = len(results)
        run_server_cases(results)
        for name, bad in results[before:]:
            print(f"{'ok  ' if bad is None else 'FAIL'} {name}{'' if bad is None else ': ' + bad}")
    failed = [n for n, b in results if b is not None and not b.startswith("skipped")]
    print(f"\n{len(results)} cases: {len(results) - len(failed)} as expected"
          f"{', failed: ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
