"""Fixtures of the data tests."""

from __future__ import annotations

import pytest
from tiny_corpus import TINY_VOCAB, word_docs

from paramgolf.data.tokenizer import train_sentencepiece


@pytest.fixture(scope="session")
def tiny_tokenizers(tmp_path_factory):
    """Two different SentencePiece models of the same size (TINY_VOCAB pieces), trained on different text."""
    root = tmp_path_factory.mktemp("tiny_tokenizers")
    return tuple(train_sentencepiece(word_docs(seed=s), TINY_VOCAB, root / f"tok{s}") for s in (0, 1))
