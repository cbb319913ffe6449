"""Tests for bigthoughts.data: loading, errors, download (offline, no network), prompts."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest

from bigthoughts import data
from bigthoughts.answers import extract
from bigthoughts.data import (
    ANSWER_STOP,
    FEWSHOT_EXAMPLES,
    FEWSHOT_STOP,
    GSM8K_SHA256,
    SYSTEM_PROMPT,
    DataError,
    Example,
    build_prompt,
    chat_prompt,
    default_cache_dir,
    download,
    fewshot_prompt,
    load_gsm8k,
    prompt_format,
    resolve_data_dir,
    solution_to_reasoning,
)
from bigthoughts.rewards import is_exact_format


def write_jsonl(path: Path, rows: list[object]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def row(q: str, n: str) -> dict[str, str]:
    return {"question": q, "answer": f"work\n#### {n}"}


# --- loading -------------------------------------------------------------------------


def test_load_real_test_split(gsm8k_dir: Path) -> None:
    examples = load_gsm8k("test", gsm8k_dir)
    assert len(examples) == 1319
    first = examples[0]
    assert first.id == "test-0000"
    assert first.question.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert first.gold == "18"
    assert examples[-1].id == "test-1318"
    assert len({e.id for e in examples}) == 1319


def test_load_real_train_split_with_limit(gsm8k_dir: Path) -> None:
    examples = load_gsm8k("train", gsm8k_dir, limit=3)
    assert [e.id for e in examples] == ["train-0000", "train-0001", "train-0002"]
    assert examples[0].gold == "72"  # Natalia: 48 + 24 clips
    assert len(load_gsm8k("train", gsm8k_dir)) == 7473


def test_load_from_file_and_env(tmp_path: Path) -> None:
    file = write_jsonl(tmp_path / "test.jsonl", [row("a?", "1,200"), "", row("b?", "-3")])
    expected = [
        Example("test-0000", "a?", "work\n#### 1,200", "1200"),
        Example("test-0001", "b?", "work\n#### -3", "-3"),
    ]
    assert load_gsm8k("test", file) == expected
    assert load_gsm8k("test", env={"BIGTHOUGHTS_DATA": str(tmp_path)}) == expected
    assert load_gsm8k("test", tmp_path, limit=0) == []


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "test.jsonl", [row("a", "1"), row("b", "2"), '{"question": '])
    with pytest.raises(DataError, match=r"test\.jsonl:3: malformed JSON"):
        load_gsm8k("test", tmp_path)


def test_missing_key_names_file_and_line(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [row("a", "1"), {"question": "b"}])
    with pytest.raises(DataError, match=r"train\.jsonl:2: missing or non-string key 'answer'"):
        load_gsm8k("train", tmp_path)


def test_non_object_row(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "test.jsonl", ["[1, 2]"])
    with pytest.raises(DataError, match=r"test\.jsonl:1: expected a JSON object"):
        load_gsm8k("test", tmp_path)


def test_missing_final_answer_is_skipped_with_a_counted_warning(tmp_path: Path) -> None:
    rows = [
        row("a", "1"),
        {"question": "b", "answer": "no marker"},
        row("c", "3"),
        {"question": "d", "answer": "#### lots"},
        {"question": "e", "answer": ""},
    ]
    file = write_jsonl(tmp_path / "test.jsonl", rows)
    with pytest.warns(UserWarning, match=r"skipped 3 rows without a '#### N' answer in .*test"):
        examples = load_gsm8k("test", tmp_path)
    assert [(e.id, e.gold) for e in examples] == [("test-0000", "1"), ("test-0002", "3")]
    with pytest.raises(DataError, match=rf"{file.name}:2: GSM8K answer has no final"):
        load_gsm8k("test", tmp_path, strict=True)


def test_clean_file_gives_no_warning(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "test.jsonl", [row("a", "1")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_gsm8k("test", tmp_path)) == 1


@pytest.mark.parametrize("split", ["dev", "TEST", ""])
def test_bad_split(tmp_path: Path, split: str) -> None:
    with pytest.raises(DataError, match="unknown GSM8K split"):
        load_gsm8k(split, tmp_path)


def test_missing_split_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"GSM8K file not found: .*train\.jsonl"):
        load_gsm8k("train", tmp_path)


def test_negative_limit(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="limit"):
        load_gsm8k("test", tmp_path, limit=-1)


# --- locating the data ---------------------------------------------------------------


def test_resolve_order(tmp_path: Path) -> None:
    explicit, from_env, cache = tmp_path / "x", tmp_path / "env", tmp_path / "xdg"
    for d in (explicit, from_env, cache / "bigthoughts" / "gsm8k"):
        d.mkdir(parents=True)
    env = {"BIGTHOUGHTS_DATA": str(from_env), "XDG_CACHE_HOME": str(cache)}
    assert resolve_data_dir(explicit, env=env) == explicit
    assert resolve_data_dir(env=env) == from_env
    assert resolve_data_dir(env={"XDG_CACHE_HOME": str(cache)}) == cache / "bigthoughts" / "gsm8k"


def test_default_cache_dir_without_xdg() -> None:
    assert default_cache_dir({}) == Path.home() / ".cache" / "bigthoughts" / "gsm8k"


def test_resolve_error_says_how_to_fix(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path / "nowhere")}
    with pytest.raises(DataError) as err:
        resolve_data_dir(env=env)
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "bigthoughts" / "gsm8k") in message
    for hint in ("--data", "BIGTHOUGHTS_DATA", "bigthoughts download"):
        assert hint in message
    with pytest.raises(DataError, match=r"\$BIGTHOUGHTS_DATA"):
        resolve_data_dir(env={"BIGTHOUGHTS_DATA": str(tmp_path / "missing")})


# --- download (no network: urllib is replaced) ---------------------------------------


class FakeResponse(io.BytesIO):
    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def served(gsm8k_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Serve the local official files in place of raw.githubusercontent.com."""
    requested: list[str] = []

    def fake_urlopen(url: str, timeout: float) -> FakeResponse:
        requested.append(url)
        split = url.rsplit("/", 1)[-1]
        return FakeResponse((gsm8k_dir / split).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return requested


def test_checksums_match_official_files(gsm8k_dir: Path) -> None:
    for split, digest in GSM8K_SHA256.items():
        assert hashlib.sha256((gsm8k_dir / f"{split}.jsonl").read_bytes()).hexdigest() == digest


def test_download_success_then_skip(tmp_path: Path, gsm8k_dir: Path, served: list[str]) -> None:
    dest = tmp_path / "cache"
    assert download(dest) == dest
    assert served == [data.GSM8K_URL.format(split=s) for s in ("train", "test")]
    for split in ("train", "test"):
        assert (dest / f"{split}.jsonl").read_bytes() == (gsm8k_dir / f"{split}.jsonl").read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == ["test.jsonl", "train.jsonl"]  # no tmp left
    download(dest)
    assert len(served) == 2  # already present with the right hash: nothing fetched
    (dest / "test.jsonl").write_text("corrupted")
    download(dest, splits=("test",))
    assert served[-1].endswith("/test.jsonl") and len(served) == 3
    assert hashlib.sha256((dest / "test.jsonl").read_bytes()).hexdigest() == GSM8K_SHA256["test"]


def test_download_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, timeout: float) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as err:
        download(tmp_path, splits=("test",))
    message = str(err.value)
    assert "could not download GSM8K from https://raw.githubusercontent.com/" in message
    assert "name resolution" in message and "offline" in message
    assert str(tmp_path) in message and "BIGTHOUGHTS_DATA" in message
    assert list(tmp_path.iterdir()) == []


def test_download_http_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found(url: str, timeout: float) -> None:
        raise urllib.error.HTTPError(url, 404, "Not Found", None, None)  # type: ignore[arg-type]

    monkeypatch.setattr(urllib.request, "urlopen", not_found)
    with pytest.raises(DataError, match="HTTP 404 Not Found"):
        download(tmp_path, splits=("train",))


def test_download_checksum_mismatch_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: FakeResponse(b"evil"))
    with pytest.raises(DataError, match="checksum mismatch") as err:
        download(tmp_path, splits=("test",))
    assert hashlib.sha256(b"evil").hexdigest() in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_download_bad_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown GSM8K split"):
        download(tmp_path, splits=("dev",))


# --- prompts ---------------------------------------------------------------------------


def test_chat_prompt_exact() -> None:
    assert chat_prompt("What is 2 + 2?", system="Be brief.") == (
        "<start_of_turn>user\nBe brief.\n\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\n"
    )
    assert chat_prompt("Q").startswith(f"<start_of_turn>user\n{SYSTEM_PROMPT}\n\nQ")


def test_system_prompt_names_the_format() -> None:
    for tag in ("<reasoning>", "</reasoning>", "<answer>", "</answer>"):
        assert tag in SYSTEM_PROMPT


def test_fewshot_prompt_exact() -> None:
    one = FEWSHOT_EXAMPLES[0]
    assert fewshot_prompt("Q?", shots=1, system="S") == (
        f"S\n\nQuestion: {one.question}\nAnswer: <reasoning>{one.reasoning}</reasoning>\n"
        f"<answer>{one.answer}</answer>\n\nQuestion: Q?\nAnswer:"
    )
    assert fewshot_prompt("Q?", shots=0, system="S") == "S\n\nQuestion: Q?\nAnswer:"
    assert fewshot_prompt("Q?").count("Question:") == 3


@pytest.mark.parametrize("shots", [-1, len(FEWSHOT_EXAMPLES) + 1])
def test_fewshot_bad_shots(shots: int) -> None:
    with pytest.raises(ValueError, match="shots"):
        fewshot_prompt("Q", shots=shots)


def test_worked_examples_are_correct_and_well_formed(gsm8k_dir: Path) -> None:
    # each demonstration's final arithmetic step states its answer, in the rewarded format
    for shot in FEWSHOT_EXAMPLES:
        completion = f"<reasoning>{shot.reasoning}</reasoning>\n<answer>{shot.answer}</answer>"
        assert is_exact_format(completion)
        assert extract(completion).value == shot.answer
        equations = re.findall(r"((?:\d+ [-+*/] )+\d+) = (\d+)", shot.reasoning)
        assert equations and equations[-1][1] == shot.answer
        for expression, result in equations:
            assert eval(expression) == int(result), expression  # our own constant strings
    # hand-written, not copied from the test set
    test_questions = {e.question for e in load_gsm8k("test", gsm8k_dir)}
    assert not test_questions & {s.question for s in FEWSHOT_EXAMPLES}


def test_prompt_format_owns_prompt_and_stops() -> None:
    chat = prompt_format("chat")
    assert (chat.style, chat.stop, chat.stop_inclusive) == (
        "chat", ("<end_of_turn>",), ("</answer>",))
    assert chat.prompt("Q") == (
        "<start_of_turn>user\n" + SYSTEM_PROMPT + "\n\nQ<end_of_turn>\n<start_of_turn>model\n")
    few = prompt_format("fewshot", shots=1)
    assert (few.shots, few.stop, few.stop_inclusive) == (1, ("\nQuestion:",), ("</answer>",))
    shot = FEWSHOT_EXAMPLES[0]
    assert few.prompt("Q") == (
        f"{SYSTEM_PROMPT}\n\nQuestion: {shot.question}\nAnswer: <reasoning>{shot.reasoning}"
        f"</reasoning>\n<answer>{shot.answer}</answer>\n\nQuestion: Q\nAnswer:")
    zero = prompt_format("zeroshot", shots=3)
    assert zero.shots == 0 and zero.stop == ("\nQuestion:",)
    assert zero.prompt("Q") == f"{SYSTEM_PROMPT}\n\nQuestion: Q\nAnswer:"
    with pytest.raises(ValueError, match="unknown prompt style 'system'") as err:
        prompt_format("system")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="shots must be between 0 and 3"):
        prompt_format("fewshot", shots=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        few.style = "chat"  # type: ignore[misc]
    with pytest.raises(ValueError, match="not valid UTF-8 text"):
        few.prompt("caf\udce9")


def test_stops_and_build_prompt() -> None:
    assert FEWSHOT_STOP == "\nQuestion:" and ANSWER_STOP == "</answer>"
    assert build_prompt("Q", "chat") == chat_prompt("Q")
    assert build_prompt("Q", "fewshot", shots=3) == fewshot_prompt("Q", shots=3)
    assert build_prompt("Q", "zeroshot") == fewshot_prompt("Q", shots=0)
    with pytest.raises(ValueError, match="unknown prompt style"):
        build_prompt("Q", "system")  # type: ignore[arg-type]


def test_solution_to_reasoning() -> None:
    solution = (
        "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
        "She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18"
    )
    assert solution_to_reasoning(solution) == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day."
    )


def test_solution_to_reasoning_on_all_test_rows(gsm8k_dir: Path) -> None:
    for example in load_gsm8k("test", gsm8k_dir):
        text = solution_to_reasoning(example.answer)
        assert "<<" not in text and "####" not in text and text


def test_docstring_examples_run() -> None:
    import doctest

    import bigthoughts.data as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_line_separator_inside_a_string_is_not_a_line_break(tmp_path: Path) -> None:
    raw = json.dumps({"question": "a\u2028b", "answer": "#### 4"}, ensure_ascii=False)
    assert "\u2028" in raw
    write_jsonl(tmp_path / "test.jsonl", [raw, row("c", "5")])
    examples = load_gsm8k("test", tmp_path)
    assert [(e.question, e.gold) for e in examples] == [("a\u2028b", "4"), ("c", "5")]
