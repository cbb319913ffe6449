"""Host-side bookkeeping of one generated row: text, stop strings, EOS, calculator.

Engine-independent and pure (no model), so its semantics are unit-tested directly.
They are the contract's (``inference.contract``): ``stop`` strings end a row and are cut
off, ``stop_inclusive`` strings end it and are kept, the earliest match wins, the
row keeps the fewest tokens whose text covers the matched string; EOS ends a row
(kept in ``token_ids``, not in the text); ``max_new_tokens`` ends it as "length".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bigthoughts.inference.contract import FinishReason, find_stop


@dataclass
class Row:
    """One output row: its tokens, their log-probs and text bytes, and its end."""

    seq: int  # the engine's sequence id
    pos: int  # position of the next token fed to the model
    temperature: float
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    sample_logprobs: list[float] = field(default_factory=list)  # at the row's temperature
    inserted: list[bool] = field(default_factory=list)  # the calculator's, not sampled
    data: bytearray = field(default_factory=bytearray)
    ends: list[int] = field(default_factory=list)  # byte length after each token
    pending: list[int] = field(default_factory=list)  # tokens to feed on the next step
    prefix: str = ""  # the prompt's tail: an annotation may open in the prompt
    result: tuple[str, int, FinishReason] | None = None

    def add(self, token: int, piece: bytes, logprob: float, *, inserted: bool = False,
            sample_logprob: float = 0.0) -> None:
        self.ids.append(int(token))
        self.logprobs.append(0.0 if inserted else float(logprob))
        self.sample_logprobs.append(0.0 if inserted else float(sample_logprob))
        self.inserted.append(inserted)
        self.data += piece
        self.ends.append(len(self.data))

    def drop_last(self) -> None:
        """Forgets the last token (one not yet fed to the model)."""
        for seq in (self.ids, self.logprobs, self.sample_logprobs, self.inserted, self.ends):
            seq.pop()
        del self.data[self.ends[-1] if self.ends else 0:]

    def text(self, n_tokens: int | None = None) -> str:
        n = len(self.ids) if n_tokens is None else n_tokens
        return bytes(self.data[: self.ends[n - 1] if n else 0]).decode("utf-8", "ignore")

    def check(self, stop: Sequence[str], stop_inclusive: Sequence[str], max_new: int,
              eos_id: int, *, force: bool = False) -> tuple[str, int, FinishReason] | None:
        """Sets and returns ``(text, tokens kept, reason)`` once the row is finished."""
        limit = min(len(self.ids), max_new)
        hit_eos = eos_id in self.ids[:limit]
        if hit_eos:
            limit = self.ids.index(eos_id) + 1
        text = self.text(limit)
        best = find_stop(text, stop, stop_inclusive)
        if best is not None:
            need = len(text[: best[2]].encode("utf-8"))
            kept = int(np.searchsorted(np.asarray(self.ends[:limit]), need)) + 1
            self.result = (text[: best[1]], min(kept, limit), "stop")
        elif hit_eos:
            self.result = (text, limit, "eos")
        elif force or len(self.ids) >= max_new:
            self.result = (text, limit, "length")
        return self.result
