"""Offline Gemma tokenizer rebuilt from GGUF metadata.

The GGUF file carries the whole SentencePiece vocabulary (``tokenizer.ggml.tokens``,
``scores`` and ``token_type``; GGUF token types equal SentencePiece's piece types), so
no download is needed. We rebuild a real SentencePiece ``ModelProto`` from it rather
than use Hugging Face's GGUF conversion, which builds a Unigram model and splits common
words wrongly for Gemma ("Question" -> "Qu|est|ion").

Two repairs are needed to match the original Gemma tokenizer:

* the GGUF stores the whitespace-run pieces (ids 138..167) as raw spaces, while the
  real vocabulary spells them with "▁" (SentencePiece escapes spaces before matching),
  so without the repair "end.  Next" would never use the two-space piece;
* the chat turn markers ``<start_of_turn>``/``<end_of_turn>`` are CONTROL pieces in
  the GGUF, which SentencePiece never produces from text; we make them USER_DEFINED
  so prompts written as text encode them as single ids (105/106).

Ids: PAD=0, EOS=1, BOS=2, UNK=3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from bigthoughts.data import CHAT_START, CHAT_STOP
from bigthoughts.files import atomic_write_bytes

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
CHAT_MARKERS = (CHAT_START, CHAT_STOP)  # pieces the tokenizer keeps whole
_USER_DEFINED = 4


@dataclass(frozen=True)
class Vocabulary:
    """The raw vocabulary as stored in a GGUF file."""

    pieces: tuple[str, ...]
    scores: np.ndarray
    types: np.ndarray


def vocabulary_from_gguf_fields(fields) -> Vocabulary:
    """Reads the tokenizer arrays from ``gguf.GGUFReader.fields``."""
    tok = fields["tokenizer.ggml.tokens"]
    pieces = tuple(bytes(tok.parts[i]).decode("utf-8") for i in tok.data)
    sc = fields["tokenizer.ggml.scores"]
    scores = np.array([sc.parts[i][0] for i in sc.data], dtype=np.float32)
    tt = fields["tokenizer.ggml.token_type"]
    types = np.array([tt.parts[i][0] for i in tt.data], dtype=np.int32)
    return Vocabulary(pieces=pieces, scores=scores, types=types)


def build_sentencepiece_proto(vocab: Vocabulary) -> bytes:
    """Builds a serialized SentencePiece BPE model equivalent to Gemma's tokenizer."""
    model = sp_pb2.ModelProto()
    trainer = model.trainer_spec
    trainer.model_type = sp_pb2.TrainerSpec.BPE
    trainer.vocab_size = len(vocab.pieces)
    trainer.byte_fallback = True
    trainer.split_digits = True
    trainer.allow_whitespace_only_pieces = True
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = UNK_ID, BOS_ID, EOS_ID, PAD_ID
    trainer.unk_piece, trainer.bos_piece = "<unk>", "<bos>"
    trainer.eos_piece, trainer.pad_piece = "<eos>", "<pad>"
    norm = model.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = False
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    for piece, score, kind in zip(vocab.pieces, vocab.scores, vocab.types, strict=True):
        entry = model.pieces.add()
        if piece and set(piece) == {" "}:
            piece = "▁" * len(piece)
        entry.piece = piece
        entry.score = float(score)
        entry.type = _USER_DEFINED if piece in CHAT_MARKERS else int(kind)
    return model.SerializeToString()


class Tokenizer:
    """A SentencePiece processor with Gemma's special ids and a cached model file.

    It duck-types the interface Tunix's ``TokenizerAdapter`` expects
    (``encode``/``decode``/``bos_id``/``eos_id``/``pad_id``); ``.processor`` is the
    underlying ``spm.SentencePieceProcessor`` for code that wants it directly.
    """

    def __init__(self, model_proto: bytes):
        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
        self.model_proto = model_proto

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        return cls(Path(path).read_bytes())

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        ids = self.processor.EncodeAsIds(text)
        return [BOS_ID, *ids] if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.DecodeIds([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self.processor.IdToPiece(int(token_id))

    def bos_id(self) -> int:
        return BOS_ID

    def eos_id(self) -> int:
        return EOS_ID

    def pad_id(self) -> int:
        return PAD_ID

    @property
    def vocab_size(self) -> int:
        return self.processor.GetPieceSize()


def tokenizer_from_gguf(reader, cache_dir: Path | None, key: str) -> Tokenizer:
    """Builds (or loads from ``cache_dir``) the tokenizer for a GGUF reader."""
    cached = cache_dir / f"tokenizer-{key}.model" if cache_dir else None
    if cached is not None and cached.exists():
        return Tokenizer.from_file(cached)
    proto = build_sentencepiece_proto(vocabulary_from_gguf_fields(reader.fields))
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cached, proto)
    return Tokenizer(proto)
