"""CaseOps: a lossless case transform, and the original bytes each token of transformed text covers.

Over every maximal run of ASCII letters ``[A-Za-z]+`` (record #1729, ``lossless_caps_caseops_v1``):

- a lowercase word stays as it is;
- a TitleCase word becomes TITLE + the word lowercased;
- an all-caps word of two or more letters becomes ALLCAPS + the word lowercased;
- any other word (a single capital included) becomes TITLE if its first letter is a capital,
  then its letters lowercased, each later capital preceded by CAPNEXT.

The operators are the private-use characters U+E001..U+E004; one of them found in the text is
written ESC + the character. ``decode(encode(s)) == s`` for every string.

The tokenizer learns the operators as their own pieces (``user_defined_symbols``), and val_bpb
still counts the bytes of the original text: an operator covers 0 of them, every other character
of the transformed text the UTF-8 bytes it had in the original (an ASCII letter 1, whatever its case).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import sentencepiece as spm

from paramgolf.errors import UserError

TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)
NAME = "caseops"  # the manifest's text_transform
RECORD_NAMES = ("lossless_caps_caseops_v1", "lossless_caps_v2")  # the records' names of the same transform


class CaseOpsError(UserError):
    """Text that no ``encode`` output can be (a marker out of place, a dangling escape)."""


def _is_alpha(ch: str) -> bool:
    return "a" <= ch <= "z" or "A" <= ch <= "Z"


def _encode_word(word: str) -> str:
    lower = word.lower()
    if word == lower:
        return word
    if len(word) >= 2 and word.isupper():
        return ALLCAPS + lower
    if word[0].isupper() and word[1:].islower():
        return TITLE + lower
    out = [TITLE + lower[0] if word[0].isupper() else lower[0]]
    out += [CAPNEXT + lo if ch.isupper() else lo for ch, lo in zip(word[1:], lower[1:])]
    return "".join(out)


# A maximal ASCII letter run holding a capital (lowercase runs stay as they are), or an operator.
_TO_ENCODE = re.compile("[a-z]*[A-Z][A-Za-z]*|[" + "".join(OPERATORS) + "]")


_HAS_OPERATOR = re.compile("[" + "".join(OPERATORS) + "]").search


def _encode_match(m: re.Match) -> str:
    s = m.group()
    return ESC + s if s in OPERATORS else _encode_word(s)


def encode(text: str) -> str:
    """The CaseOps form of ``text``."""
    return _TO_ENCODE.sub(_encode_match, text)


def decode(text: str) -> str:
    """The text whose CaseOps form is ``text``; raises CaseOpsError for what ``encode`` never writes."""
    out: list[str] = []
    escaped = False  # the previous character was ESC
    word_mode = None  # TITLE or ALLCAPS seen, waiting for the word's first letter
    capnext = False  # CAPNEXT seen, waiting for its letter
    in_word = False  # the previous output character was an ASCII letter
    allcaps = False  # inside a word opened by ALLCAPS
    for ch in text:
        if escaped:
            if ch not in OPERATORS:
                raise CaseOpsError(f"ESC before {ch!r}: only the operators U+E001..U+E004 are escaped")
            out.append(ch)
            escaped = in_word = allcaps = False
            continue
        if ch == ESC:
            if word_mode or capnext:
                raise CaseOpsError("a case marker is not followed by a letter")
            escaped = True
        elif ch in (TITLE, ALLCAPS):
            if word_mode or capnext or in_word:
                raise CaseOpsError("TITLE/ALLCAPS must start a word")
            word_mode = ch
        elif ch == CAPNEXT:
            if capnext:
                raise CaseOpsError("two CAPNEXT in a row")
            capnext = True
        elif _is_alpha(ch):
            if not in_word:
                allcaps = word_mode == ALLCAPS
                upper = word_mode is not None or capnext
            else:
                upper = allcaps or capnext
            out.append(ch.upper() if upper else ch)
            word_mode, capnext, in_word = None, False, True
        else:
            if word_mode or capnext:
                raise CaseOpsError(f"a case marker is followed by {ch!r}, not by an ASCII letter")
            out.append(ch)
            in_word = allcaps = False
    if escaped or word_mode or capnext:
        raise CaseOpsError("the text ends inside an escape or a case marker")
    return "".join(out)


def original_byte_counts(surfaces: Iterable[str]) -> list[int]:
    """UTF-8 bytes of the original text behind each consecutive piece of a CaseOps text.

    ``surfaces`` are the pieces' spans of the transformed text, in order (they concatenate to
    it); an escape may end one piece and its operator start the next.
    """
    counts = []
    escaped = False
    for surface in surfaces:
        if not escaped and not _HAS_OPERATOR(surface):  # most pieces: their own UTF-8 bytes
            counts.append(len(surface.encode("utf-8")))
            continue
        n = 0
        for ch in surface:
            if escaped:
                n, escaped = n + len(ch.encode("utf-8")), False
            elif ch == ESC:
                escaped = True
            elif ch not in OPERATORS:
                n += len(ch.encode("utf-8"))
        counts.append(n)
    return counts


def encode_with_byte_counts(sp: spm.SentencePieceProcessor, text: str) -> tuple[list[int], list[int]]:
    """Token ids of ``encode(text)`` and the original UTF-8 bytes each one covers.

    A piece's bytes come from its surface (the span of input it stands for), so a
    character split into byte-fallback pieces counts all its bytes on the last of them
    and 0 on the others, and one NFKC rewrote counts its original bytes. Whitespace that
    SentencePiece drops at the text's ends is in no surface and counts 0.
    """
    return encode_batch_with_byte_counts(sp, [text])[0]


def encode_batch_with_byte_counts(
    sp: spm.SentencePieceProcessor, texts: list[str]
) -> list[tuple[list[int], list[int]]]:
    """``encode_with_byte_counts`` of several texts (SentencePiece encodes a batch on several threads)."""
    out = []
    for proto in sp.encode([encode(t) for t in texts], out_type="proto"):
        pieces = proto.pieces
        out.append(([p.id for p in pieces], original_byte_counts(p.surface for p in pieces)))
    return out


def check_tokenizer(sp: spm.SentencePieceProcessor, where: str) -> None:
    """Refuse a tokenizer that does not keep each operator as one piece of its own."""
    for op in OPERATORS:
        ids = sp.encode(op, out_type=int)
        if len(ids) != 1 or sp.id_to_piece(ids[0]) != op:
            raise UserError(
                f"tokenizer {where} does not hold the CaseOps operator U+{ord(op):04X} as a piece of its own "
                f"(it encodes to {[sp.id_to_piece(i) for i in ids]}); train it with `--transform caseops` "
                "(the operators become user_defined_symbols)"
            )


def normalize_transform(name: str | None) -> str:
    """``none`` or ``caseops`` from a config value or a record's/Hub manifest's name."""
    if name in (None, "", "none", "identity"):
        return "none"
    if name == NAME or name in RECORD_NAMES:
        return NAME
    raise UserError(f"unknown text transform {name!r}: expected none or {NAME}")


def as_uint16(counts: Iterable[int], where: str) -> np.ndarray:
    """Byte counts as the sidecar's uint16; refuse a count that does not fit."""
    arr = np.asarray(list(counts), dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= 2**16):
        raise UserError(f"{where}: a token covers {int(arr.max())} bytes, more than the uint16 sidecar holds")
    return arr.astype(np.uint16)
