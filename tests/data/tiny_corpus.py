"""A small generated corpus for data tests that must run without ../shared."""

from __future__ import annotations

import json

import numpy as np

TINY_VOCAB = 300  # reachable by a SentencePiece model trained on word_docs()


def word_docs(n: int = 120, seed: int = 0) -> list[str]:
    """``n`` documents of 40 random lower-case pseudo-words."""
    rng = np.random.default_rng(seed)
    letters = list("abcdefghjklmnop")
    return [" ".join("".join(rng.choice(letters, size=rng.integers(1, 6))) for _ in range(40)) for _ in range(n)]


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path
