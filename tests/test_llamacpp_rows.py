"""Host-side row bookkeeping shared by the llama.cpp engine: stops, EOS, length,
calculator. Expected values are worked out by hand from the token pieces."""

import numpy as np
import pytest

from bigthoughts.inference.contract import calculator_insert, calculator_text, check_request
from bigthoughts.inference.rows import Row

EOS = 1


def row_of(pieces: list[str], eos_at: int | None = None) -> Row:
    row = Row(seq=0, pos=0, temperature=0.0)
    for i, p in enumerate(pieces):
        token = EOS if i == eos_at else 100 + i
        row.add(token, b"" if token == EOS else p.encode(), -0.5)
    return row


def test_stop_is_cut_and_keeps_the_tokens_covering_it():
    row = row_of(["The", " answer", " is 4", ".\nQu", "estion:", " more"])
    text, kept, reason = row.check(["\nQuestion:"], [], 99, EOS)
    assert (text, kept, reason) == ("The answer is 4.", 5, "stop")


def test_inclusive_stop_is_kept_and_earliest_stop_wins():
    row = row_of(["<answer>", "7", "</answer>", "\n", "</answer>"])
    assert row.check(["\n"], ["</answer>"], 99, EOS) == ("<answer>7</answer>", 3, "stop")
    row = row_of(["a", "\n", "</answer>"])
    assert row.check(["\n"], ["</answer>"], 99, EOS) == ("a", 2, "stop")


def test_eos_ends_the_row_kept_in_tokens_not_in_text():
    row = row_of(["x", "y", "", "z"], eos_at=2)
    assert row.check([], [], 99, EOS) == ("xy", 3, "eos")


def test_length_and_unfinished():
    row = row_of(["a", "b"])
    assert row.check([], [], 3, EOS) is None and row.result is None
    row.add(7, b"c", 0.0)
    assert row.check([], [], 3, EOS) == ("abc", 3, "length")
    longer = row_of(["a", "b", "c", "d"])  # a calculator insertion may overshoot
    assert longer.check([], [], 2, EOS) == ("ab", 2, "length")


def test_multibyte_text_split_across_tokens():
    row = Row(seq=0, pos=0, temperature=0.0)
    euro = "€".encode()
    row.add(5, euro[:1], 0.0)
    assert row.text() == ""  # an incomplete character is not shown yet
    row.add(6, euro[1:], 0.0)
    row.add(7, b" = 3|", 0.0)
    assert row.check(["|"], [], 99, EOS) == ("€ = 3", 3, "stop")


def test_calculator_text():
    def calc(expr):
        return {"48/2": "24", "3*4": "12"}.get(expr)

    assert calculator_text("so <<48/2=", calc) == "24>>"
    assert calculator_text("so <<3*4=", calc) == "12>>"
    assert calculator_text("so <<1/0=", calc) is None  # the calculator declines
    assert calculator_text("so <<48/2=24>>24", calc) is None  # already closed
    assert calculator_text("a = 3", calc) is None
    # the same expression pattern as the JAX sampler: no line break, at most 160 chars
    assert calculator_text("<<48/\n2=", lambda e: "24") is None
    assert calculator_text("<<" + "1+" * 80 + "1=", lambda e: "81") is None


def test_calculator_insert_replaces_a_token_that_runs_past_the_equals():
    def calc(expr):
        return {"5-8": "-3", "48/2": "24"}.get(expr)

    assert calculator_insert("so <<48/2=", "=", calc) == (False, "24>>")
    assert calculator_insert("so <<5-8=-", "=-", calc) == (True, "=-3>>")  # Gemma's "=-"
    assert calculator_insert("so <<5-8=-", "8=-", calc) == (True, "8=-3>>")
    assert calculator_insert("so <<1/0=-", "=-", calc) == (False, None)  # declined
    assert calculator_insert("so 5-8 =-", "=-", calc) == (False, None)  # no annotation open
    assert calculator_insert("so <<48/22", "2", calc) == (False, None)


def test_drop_last_forgets_exactly_one_token():
    row = row_of(["so ", "<<5-8", "=-"])
    row.drop_last()
    assert row.ids == [100, 101] and row.text() == "so <<5-8"
    assert len(row.logprobs) == len(row.inserted) == len(row.ends) == 2
    row.add(7, b"=-3>>", 0.0, inserted=True)
    assert row.text() == "so <<5-8=-3>>" and row.inserted == [False, False, True]
    row.drop_last()
    row.drop_last()
    row.drop_last()
    assert row.ids == [] and row.text() == "" and not row.data


def test_check_request():
    assert check_request(4, 0.7, 2, 8, None, None) == [0.7] * 4
    assert check_request(2, [0.0, 1.0], 1, 8, 5, 0.9) == [0.0, 1.0]
    for args, msg in [((2, [0.1], 1, 8, None, None), "need 1 or 2"),
                      ((1, -1.0, 1, 8, None, None), ">= 0"),
                      ((1, 0.0, 0, 8, None, None), ">= 1"),
                      ((1, 0.0, 1, 8, 0, None), "top_k"),
                      ((1, 0.0, 1, 8, None, 1.5), "top_p")]:
        with pytest.raises(ValueError, match=msg):
            check_request(*args)


def test_host_draw_follows_softmax_at_temperature():
    from bigthoughts.inference.llamacpp import _host_draw, sample_logprob

    logits = np.array([2.0, 1.0, 0.5, -1.0, -60.0], dtype=np.float32)
    for t in (0.5, 1.0):
        rng = np.random.default_rng(0)
        drawn = [_host_draw(logits, t, rng) for _ in range(20000)]
        draws = np.bincount([tok for tok, _ in drawn], minlength=5)
        want = np.exp(logits / t) / np.exp(logits / t).sum()
        np.testing.assert_allclose(draws / draws.sum(), want, atol=0.01)
        assert draws[4] == 0  # 60 nats below the top: probability e^-60 of the top's
        # each draw's log-prob is that of softmax(logits / T), as the full pass gives it
        for tok, logprob in drawn[:50]:
            np.testing.assert_allclose(logprob, np.log(want[tok]), rtol=1e-6)
            np.testing.assert_allclose(sample_logprob(logits, tok, t), np.log(want[tok]),
                                       rtol=1e-6)
    assert _host_draw(logits, 0.0, np.random.default_rng(0)) == (0, 0.0)  # greedy: argmax
    a = [_host_draw(logits, 1.0, np.random.default_rng(7)) for _ in range(3)]
    b = [_host_draw(logits, 1.0, np.random.default_rng(7)) for _ in range(3)]
    assert a == b  # a row's draws follow its seed


def test_host_draw_block_search_equals_a_full_running_sum():
    """The two-level search picks the token a float64 running sum over the whole
    vocabulary picks for the same uniform number, across block edges and a last
    partial block (5,000 tokens: blocks of 1024 and one of 904)."""
    from bigthoughts.inference.llamacpp import _host_draw

    logits = (np.random.default_rng(3).standard_normal(5000) * 4).astype(np.float32)
    logits[[1023, 1024, 4999]] = logits.max() + 1.0  # heavy tokens at a block's edges
    for t in (0.3, 1.0):
        weights = np.exp((logits - logits.max()) * np.float32(1.0 / t)).astype(np.float64)
        running = np.cumsum(weights)
        hits = set()
        for seed in range(400):
            u = np.random.default_rng(seed).random() * running[-1]
            want = int(np.searchsorted(running, u, side="right"))
            tok, logprob = _host_draw(logits, t, np.random.default_rng(seed))
            assert tok == want
            np.testing.assert_allclose(logprob, np.log(weights[tok] / running[-1]), rtol=1e-5)
            hits.add(tok // 1024)
        assert len(hits) >= 3 if t == 1.0 else {0, 1, 4} <= hits
