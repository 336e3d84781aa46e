"""A synthetic English-like language with a known entropy, for runs without network.

The source is a seeded word-level Markov chain over a lexicon of pseudo-words:

* the lexicon holds distinct lower-case words built from syllables; shorter words get
  the higher Zipf ranks, like in natural language;
* the first word of a document is drawn from the Zipf unigram; every next word from
  ``successor_weight * successors(prev) + (1 - successor_weight) * zipf``, where each
  word has ``num_successors`` favourite followers with weights proportional to 1/(j+1);
* after each word a separator is drawn: ", " (from the 2nd word of a sentence on),
  ". " / end of document (from the ``min_sentence_words``-th word on) or " ";
  after a period the document ends with probability ``end_prob``;
* the first word of each sentence is capitalised; a document ends with ".".

The text is uniquely decodable: words are distinct strings of a-z, separators are
visible and capitalisation only marks sentence starts, so distinct choice sequences
give distinct texts (``SyntheticLanguage.parse`` inverts ``sample`` and the tests
check it). Tokenization is a deterministic function of the text and the text
survives SentencePiece normalization unchanged, so -log2 P_source(doc) is the loss of
the best possible model: ``entropy_bits_per_byte`` is a true floor for val_bpb.

It counts what is scored on the validation stream [BOS d1 BOS d2 ... BOS dn]: every
choice of every document, including each first word and the end-of-document decision
that the next BOS reveals (0 bytes), except the last document's end, which no token
scores. The denominator is the stream's scored byte count from the ByteTable.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paramgolf.data.build import TOKENIZER_FILENAME, clear_shards, export_split
from paramgolf.data.byte_table import build_byte_table
from paramgolf.data.manifest import write_manifest
from paramgolf.data.tokenizer import file_sha256, load_tokenizer, train_sentencepiece
from paramgolf.errors import UserError
from paramgolf.fsio import publish

# Bump when the generator changes, so cached datasets from older code are not reused.
GENERATOR_VERSION = 1
INFO_FILENAME = "synthetic.json"

_ONSETS = [
    "",
    "b",
    "c",
    "d",
    "f",
    "g",
    "h",
    "j",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "w",
    "z",
    "br",
    "ch",
    "cl",
    "dr",
    "fl",
    "gr",
    "pl",
    "pr",
    "sh",
    "sl",
    "st",
    "th",
    "tr",
]
_NUCLEI = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "oo", "y"]
_CODAS = ["", "", "", "", "n", "r", "s", "t", "l", "m", "nd", "st"]
_SYLLABLE_COUNT_PROBS = [0.3, 0.45, 0.25]  # 1, 2 or 3 syllables

# Separator events drawn after each word.
SPACE, COMMA, PERIOD = 0, 1, 2
_SEPARATORS = {SPACE: " ", COMMA: ", ", PERIOD: ". "}
_TOKEN_RE = re.compile(r"([A-Za-z]+)(, |\. | |\.$)")


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines a synthetic dataset (its hash names the cache entry)."""

    seed: int = 0
    vocab_size: int = 512
    lexicon_size: int = 1000
    train_docs: int = 12000
    val_docs: int = 400
    zipf_exponent: float = 1.1
    num_successors: int = 4
    successor_weight: float = 0.7
    comma_prob: float = 0.08
    period_prob: float = 0.15
    min_sentence_words: int = 3
    end_prob: float = 0.2
    shard_tokens: int = 1_000_000
    tokenizer_train_docs: int = 2000  # 0: train the tokenizer on every training document

    def validate(self) -> None:
        checks = {
            "lexicon_size": self.lexicon_size >= 2,
            "train_docs": self.train_docs >= 1,
            "val_docs": self.val_docs >= 1,
            "num_successors": 1 <= self.num_successors <= self.lexicon_size,
            "successor_weight": 0.0 <= self.successor_weight < 1.0,
            "comma_prob": 0.0 <= self.comma_prob and self.comma_prob + self.period_prob < 1.0,
            "period_prob": 0.0 < self.period_prob < 1.0,
            "min_sentence_words": self.min_sentence_words >= 1,
            "end_prob": 0.0 < self.end_prob <= 1.0,
            "shard_tokens": self.shard_tokens > 0,
            "tokenizer_train_docs": self.tokenizer_train_docs >= 0,
            "zipf_exponent": self.zipf_exponent > 0.0,
        }
        for key, ok in checks.items():
            if not ok:
                raise UserError(f"synthetic data: invalid {key}={getattr(self, key)!r}")

    def digest(self) -> str:
        payload = json.dumps({"generator": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class SyntheticLanguage:
    """The source distribution of a spec: sample documents, parse them, score them."""

    def __init__(self, spec: SyntheticSpec):
        spec.validate()
        self.spec = spec
        lex_seq, self._train_seq, self._val_seq = np.random.SeedSequence(spec.seed).spawn(3)
        rng = np.random.default_rng(lex_seq)
        self.words = _make_lexicon(spec.lexicon_size, rng)
        self.index = {w: i for i, w in enumerate(self.words)}
        n = spec.lexicon_size
        ranks = np.arange(1, n + 1, dtype=np.float64)
        self.unigram = ranks**-spec.zipf_exponent
        self.unigram /= self.unigram.sum()
        k = spec.num_successors
        self.successors = np.stack([rng.choice(n, size=k, replace=False) for _ in range(n)])
        self.successor_probs = 1.0 / np.arange(1, k + 1)
        self.successor_probs /= self.successor_probs.sum()

    # --- probabilities -------------------------------------------------------------
    def separator_probs(self, words_in_sentence: int) -> tuple[float, float, float]:
        """P(" "), P(", "), P(". " or end) after the n-th word of a sentence."""
        s = self.spec
        comma = s.comma_prob if words_in_sentence >= 2 else 0.0
        period = s.period_prob if words_in_sentence >= s.min_sentence_words else 0.0
        return 1.0 - comma - period, comma, period

    def next_word_probs(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """P(next word | previous word) for arrays of word ids."""
        s = self.spec
        hit = self.successors[prev] == nxt[:, None]
        return s.successor_weight * (hit * self.successor_probs).sum(1) + (1 - s.successor_weight) * self.unigram[nxt]

    # --- sampling --------------------------------------------------------------------
    def sample(self, num_docs: int, split: str) -> tuple[list[str], np.ndarray]:
        """``num_docs`` documents of a split and each one's -log2 probability (end included)."""
        seq = {"train": self._train_seq, "val": self._val_seq}[split]
        rng = np.random.default_rng(seq)
        draws = _Draws(self, rng)
        end_prob = self.spec.end_prob
        texts: list[str] = []
        bits = np.zeros(num_docs)
        for d in range(num_docs):
            ids: list[int] = [draws.first_word()]
            parts: list[str] = [self.words[ids[0]].capitalize()]
            doc_bits = 0.0
            n_in_sentence = 1
            while True:
                sep = draws.separator(n_in_sentence)
                doc_bits -= math.log2(self.separator_probs(n_in_sentence)[sep])
                if sep == PERIOD:
                    stop = draws.stop()
                    doc_bits -= math.log2(end_prob if stop else 1.0 - end_prob)
                    if stop:
                        parts.append(".")
                        break
                nxt = draws.next_word(ids[-1])
                ids.append(nxt)
                parts.append(_SEPARATORS[sep])
                if sep == PERIOD:
                    parts.append(self.words[nxt].capitalize())
                    n_in_sentence = 1
                else:
                    parts.append(self.words[nxt])
                    n_in_sentence += 1
            arr = np.asarray(ids)
            doc_bits += -math.log2(self.unigram[arr[0]])
            doc_bits += float(-np.log2(self.next_word_probs(arr[:-1], arr[1:])).sum())
            texts.append("".join(parts))
            bits[d] = doc_bits
        return texts, bits

    # --- decoding --------------------------------------------------------------------
    def parse(self, text: str) -> tuple[list[int], list[int]]:
        """Word ids and separator events of a document; raises ValueError if it is not one."""
        words, seps, pos = [], [], 0
        for m in _TOKEN_RE.finditer(text):
            if m.start() != pos:
                break
            pos = m.end()
            word, sep = m.group(1), m.group(2)
            at_start = not seps or seps[-1] == PERIOD
            lower = word.lower()
            if lower not in self.index or word != (lower.capitalize() if at_start else lower):
                raise UserError(f"not a word of this language here: {word!r}")
            words.append(self.index[lower])
            seps.append({" ": SPACE, ", ": COMMA, ". ": PERIOD, ".": PERIOD}[sep])
        if pos != len(text) or not text.endswith("."):
            raise UserError(f"not a document of this language: cannot parse at character {pos}")
        return words, seps

    def log2_prob(self, text: str) -> float:
        """-log2 P(document), from its text alone (independent of how it was sampled)."""
        words, seps = self.parse(text)
        bits = -math.log2(self.unigram[words[0]])
        n = 1
        for i, sep in enumerate(seps):
            p = self.separator_probs(n)[sep]
            if p <= 0:
                raise UserError(f"separator {sep} is impossible after word {n} of a sentence")
            bits -= math.log2(p)
            if sep == PERIOD:
                last = i == len(seps) - 1
                bits -= math.log2(self.spec.end_prob if last else 1 - self.spec.end_prob)
                n = 1
            else:
                n += 1
        arr = np.asarray(words)
        return bits + float(-np.log2(self.next_word_probs(arr[:-1], arr[1:])).sum())


class _Draws:
    """Random choices drawn in vectorised blocks, handed out one at a time (fast)."""

    BLOCK = 1 << 16

    def __init__(self, lang: SyntheticLanguage, rng: np.random.Generator):
        self.lang, self.rng = lang, rng
        self.succ = lang.successors.tolist()
        self._refill()

    def _refill(self) -> None:
        s, rng, n = self.lang.spec, self.rng, self.BLOCK
        self.zipf = rng.choice(s.lexicon_size, size=n, p=self.lang.unigram).tolist()
        self.slot = rng.choice(s.num_successors, size=n, p=self.lang.successor_probs).tolist()
        self.use_succ = (rng.random(n) < s.successor_weight).tolist()
        self.u_sep = rng.random(n).tolist()
        self.u_stop = rng.random(n).tolist()
        self.i = 0

    def _tick(self) -> int:
        if self.i == self.BLOCK:
            self._refill()
        self.i += 1
        return self.i - 1

    def first_word(self) -> int:
        return self.zipf[self._tick()]

    def next_word(self, prev: int) -> int:
        i = self._tick()
        return self.succ[prev][self.slot[i]] if self.use_succ[i] else self.zipf[i]

    def separator(self, n_in_sentence: int) -> int:
        space, comma, _ = self.lang.separator_probs(n_in_sentence)
        u = self.u_sep[self._tick()]
        return SPACE if u < space else COMMA if u < space + comma else PERIOD

    def stop(self) -> bool:
        return self.u_stop[self._tick()] < self.lang.spec.end_prob


def _make_lexicon(size: int, rng: np.random.Generator) -> list[str]:
    """``size`` distinct pseudo-words, shortest first (they get the top Zipf ranks)."""
    words: set[str] = set()
    attempts = 0
    while len(words) < size:
        attempts += 1
        if attempts > 1000 * size:
            raise UserError(f"synthetic data: cannot make {size} distinct words; lower lexicon_size")
        n_syl = 1 + int(rng.choice(len(_SYLLABLE_COUNT_PROBS), p=_SYLLABLE_COUNT_PROBS))
        word = "".join(
            _ONSETS[rng.integers(len(_ONSETS))]
            + _NUCLEI[rng.integers(len(_NUCLEI))]
            + _CODAS[rng.integers(len(_CODAS))]
            for _ in range(n_syl)
        )
        words.add(word)
    ordered = sorted(words)  # set order is not deterministic; sorting is
    keys = rng.random(len(ordered))
    return [w for _, _, w in sorted(zip((len(w) for w in ordered), keys, ordered))]


# --- dataset building --------------------------------------------------------------


def _build_into(spec: SyntheticSpec, out_dir: Path) -> dict:
    """Generate, tokenize and write one synthetic dataset into ``out_dir``; return its info."""
    lang = SyntheticLanguage(spec)
    train_texts, _ = lang.sample(spec.train_docs, "train")
    val_texts, val_bits = lang.sample(spec.val_docs, "val")
    tok_docs = train_texts[: spec.tokenizer_train_docs] if spec.tokenizer_train_docs else train_texts
    model_path = train_sentencepiece(tok_docs, spec.vocab_size, out_dir / Path(TOKENIZER_FILENAME).stem)
    sp = load_tokenizer(model_path)
    if sp.vocab_size() != spec.vocab_size:
        raise UserError(
            f"synthetic data: the tokenizer only reached {sp.vocab_size()} pieces for vocab_size="
            f"{spec.vocab_size}; raise tokenizer_train_docs or lower vocab_size"
        )
    bos = sp.bos_id()
    clear_shards(out_dir)
    train_tokens = sp.encode(train_texts, out_type=int)
    val_tokens = sp.encode(val_texts, out_type=int)
    # The floor argument needs every text to survive the tokenizer unchanged.
    for text, toks in zip(val_texts, val_tokens):
        if sp.decode(toks) != text:
            raise RuntimeError(f"synthetic text does not round-trip through the tokenizer: {text[:80]!r}")
    train = export_split(out_dir, "train", train_tokens, bos, spec.shard_tokens)
    val = export_split(out_dir, "val", val_tokens, bos, spec.shard_tokens)
    val_stream = np.concatenate([np.concatenate([[bos], t]) for t in val_tokens]).astype(np.int64)
    val_bytes = build_byte_table(sp).count_stream(val_stream)
    # The last document's end is never scored: no BOS follows it.
    val_entropy_bits = float(val_bits.sum()) + math.log2(spec.end_prob)
    info = {
        "spec": dataclasses.asdict(spec),
        "generator_version": GENERATOR_VERSION,
        "entropy_bits_per_byte": val_entropy_bits / val_bytes,
        "entropy_bits_per_token": val_entropy_bits / (len(val_stream) - 1),
        "val_entropy_bits": val_entropy_bits,
        "val_bytes": val_bytes,
        "val_text_bytes": sum(len(t.encode("utf-8")) for t in val_texts),
        "tokens_train": train["tokens"],
        "tokens_val": val["tokens"],
        "files_train": train["files"],
        "files_val": val["files"],
        "tokenizer_vocab_size": int(sp.vocab_size()),
        "tokenizer_sha256": file_sha256(model_path),
    }
    (out_dir / INFO_FILENAME).write_text(json.dumps(info, indent=2) + "\n")
    write_manifest(out_dir, model_path)  # so that the directory can also be read as a plain dataset
    return info


def build_synthetic_dataset(spec: SyntheticSpec, cache_root: str | Path) -> Path:
    """The dataset directory for ``spec`` under ``cache_root``, built on first use.

    Concurrent callers (e.g. torchrun ranks) are serialised by a file lock; the data is
    built in a temporary directory and renamed into place, so a reader never sees a
    half-written dataset.
    """
    spec.validate()
    cache_root = Path(cache_root).expanduser()
    final = cache_root / f"synthetic-{spec.digest()}"
    if (final / INFO_FILENAME).is_file():
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (final / INFO_FILENAME).is_file():  # another process finished it meanwhile
                return final
            if final.exists():  # not ours to trust: no info file means not a finished build
                shutil.rmtree(final)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_root))
            try:
                _build_into(spec, tmp)
                publish(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return final
