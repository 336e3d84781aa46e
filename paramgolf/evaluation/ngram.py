"""N-gram backoff eval cache (`eval_cache=ngram`, seed #1185) and its hashed variant (`ngram_target_hashed`).

After each chunk of the validation stream is scored, its tokens are counted into exact n-gram
tables (orders 2..9). A scored position takes the highest order whose context (the previous
n-1 tokens) has been followed by something counted, and mixes the add-one smoothed n-gram
distribution p_ng(v) = (count(ctx, v) + 1) / (total(ctx) + V) into the model's softmax:

    p = (1 - α) p_model + α p_ng,   α = alpha_base + alpha_scale · σ(alpha_slope · (H - alpha_center))

with H the entropy (nats) of the model's own distribution there. No order matched: p = p_model.
α and the order depend on the context and the model only, so p is normalized for any target.

Storage (the seed used nested Python dicts, ~1.9 KB and ~37 µs per token): per k-gram length
k = 2..9 one `_GramTable` gives every distinct k-gram a dense int id. Its exact key is
prefix · V + last (prefix = id of its (k-1)-gram prefix, a 1-gram's id is the token), so keys
never collide. By id the table keeps the key (uint32 while keys fit, then int64) and the count
(int32); a bucketed hash index (8 slots of uint32 ids + 8 one-byte fingerprints per bucket) maps
a key to its id. Inserts and lookups are vectorized over a whole chunk (numpy only): one
fingerprint word per bucket is compared bytewise, keys are compared only where a fingerprint
matches, full buckets spill into the next. The first update sizes every index for the most grams
the stream can bring (one per token to be added, V^k at most; load ≤ 0.8), so a stream never
regrows it; without that bound the index grows ×4 by splitting buckets. Bigrams of a vocabulary
with V² ≤ 2^20 sit in a dense V² map of ids instead. total(ctx) of an m-gram is its count minus
its occurrences with no counted follower (at the very end of an update slice): one per slice and
order, kept in a small side map. Scoring computes the gram ids of every needed window position
once (the n-gram of a context and its target is in the same chain). `NGramTargetHashed` is the
closed hashed-cache pattern, for contrast. Throughput and memory: scripts/bench_ngram.py.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch import Tensor

from paramgolf.errors import UserError
from paramgolf.evaluation.compliance import RULES
from paramgolf.evaluation.identity import Identity

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: key · 2^64/φ; a bijection of uint64
_GOLDEN_INV = np.uint64(pow(0x9E3779B97F4A7C15, -1, 1 << 64))
_WAYS = 8  # slots per bucket: one row of 8 ids (32 B) and 8 fingerprints (8 B)
_MAX_LOAD = 0.8
_ONES = np.uint64(0x0101010101010101)
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_HIGH = np.uint64(0x8080808080808080)
_U1, _U24, _U32, _U56, _U255 = np.uint64(1), np.uint64(24), np.uint64(32), np.uint64(56), np.uint64(255)
_GROWTH = 4  # the index grows ×4
_DENSE_BIGRAMS = 1 << 20  # bigrams get a dense V² map of ids when V² is at most this (4 MB)
_END_MARKS = 4096  # bitmap size of the end-correction prefilter (a power of 2)
assert sys.byteorder == "little", "the fingerprint words are read byte by byte"


def _nonzero_bytes(x: np.ndarray) -> np.ndarray:
    """0x80 in every byte of the uint64s `x` that is not zero, 0 elsewhere (exact, no carries across bytes)."""
    return (((x & _LOW7) + _LOW7) | x) & _HIGH


def _unique(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(h, return_inverse=True) for uint64 hashes, by one value sort (argsort is ~10x slower).

    Sorts (top 32 bits of h, position); distinct hashes sharing their top 32 bits are rare and
    handled by the exact np.unique.
    """
    packed = np.sort(((h >> np.uint64(32)) << np.uint64(32)) | np.arange(h.size, dtype=np.uint64))
    order = (packed & np.uint64(0xFFFFFFFF)).astype(np.intp)
    hs = h[order]
    step = hs[1:] != hs[:-1]
    if (step & ((packed[1:] >> np.uint64(32)) == (packed[:-1] >> np.uint64(32)))).any():
        return np.unique(h, return_inverse=True)
    first = np.r_[True, step]
    inverse = np.empty(h.size, np.intp)
    inverse[order] = np.cumsum(first) - 1
    return hs[first], inverse


def _zero_bytes(x: np.ndarray) -> np.ndarray:
    return _nonzero_bytes(x) ^ _HIGH


class _GramTable:
    """The distinct k-grams of one length k, each with a dense int id (its insertion rank).

    A k-gram's exact key is prefix · V + last (prefix = id of its (k-1)-gram prefix, last = its last
    token); by id the table keeps `keys` (uint32 while every key fits, int64 from the first that does
    not) and `counts` (int32). The index is a bucketed hash: h = key · 2^64/φ picks bucket
    ⌊h · buckets / 2^64⌋ (any number of buckets), whose 8 slots hold id + 1 (uint32, 0 = empty) and
    an 8-bit fingerprint of h, so a lookup reads one row and compares keys only where the fingerprint
    matches. A full bucket spills into the next; a lookup goes on while buckets are full. `presize`
    sizes an empty index for a known bound; past load 0.8 it grows ×4: bucket b's keys move to
    buckets 4b..4b+3, so a growth moves rows and never sorts.
    """

    def __init__(self, vocab_size: int) -> None:
        self.V = vocab_size
        self.size = 0
        self.keys = np.zeros(16, np.uint32)
        self.counts = np.zeros(16, np.int32)
        self.limit = None  # the most grams the stream can bring (presize), if known
        self._alloc(8)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.keys, self.counts, self.slots, self.fps))

    def _alloc(self, buckets: int) -> None:
        """An empty index of `buckets` buckets (any number: h's top 32 bits are scaled to it)."""
        self.buckets = buckets
        self.slots = np.zeros(_WAYS * buckets, np.uint32)
        self.fps = np.zeros(buckets, np.uint64)

    def _full(self) -> bool:
        return self.size > _MAX_LOAD * _WAYS * self.buckets

    def key(self, prefix: np.ndarray, last: np.ndarray) -> np.ndarray:
        """The exact int64 keys of the k-grams (prefix id, last token)."""
        return prefix.astype(np.int64) * self.V + last

    def _bucket_fp(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bucket ⌊h · buckets / 2^64⌋ (from h's top 32 bits: monotone in h) and fingerprint in 1..255.

        The fingerprint is bits 24..31 of h, 0 raised to 1 (0 marks an empty slot).
        """
        bucket = (((h >> _U32) * np.uint64(self.buckets)) >> _U32).astype(np.intp)
        return bucket, np.maximum((h >> _U24) & _U255, _U1)

    def lookup(self, prefix: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Ids of the keys (prefix[i], last[i]); -1 where absent."""
        return self.find(self.key(prefix, last))

    def find(self, key: np.ndarray) -> np.ndarray:
        """Ids of the int64 keys; -1 where absent.

        One full-width pass settles nearly every key (its first fingerprint match is it, or no
        match in a bucket that is not full); the rest (fingerprint collisions, spills) go round
        the general loop.
        """
        key = np.ascontiguousarray(key, np.int64)
        if not key.size or not self.size:
            return np.full(key.size, -1, np.int64)
        h = key.view(np.uint64) * _GOLDEN
        bucket, fp = self._bucket_fp(h)
        row = self.fps[bucket]
        match = _zero_bytes(row ^ (fp * _ONES))  # 0x80 in each byte whose fingerprint equals ours
        low = match & (~match + _U1)  # the first match: 0x80 << 8·way (0: none)
        way = (np.bitwise_count(low - _U1) >> np.uint8(3)) & np.uint8(_WAYS - 1)
        cand = self.slots[bucket * _WAYS + way].astype(np.int64) - 1
        hit = (self.keys[cand] == key) & (match != 0)
        ids = np.where(hit, cand, -1)
        rest = np.flatnonzero(~hit & (((match ^ low) != 0) | ((row >> _U56) != 0)))
        if rest.size:
            ids[rest] = self._find_slow(key[rest], h[rest])
        return ids

    def _find_slow(self, key: np.ndarray, h: np.ndarray) -> np.ndarray:
        """`find` for any keys: every fingerprint match in the bucket, then on while the bucket is full."""
        ids = np.full(key.size, -1, np.int64)
        bucket, fp = self._bucket_fp(h)
        todo, nb = np.arange(key.size), self.buckets
        while todo.size:
            row = self.fps[bucket]
            match = _zero_bytes(row ^ (fp * _ONES))
            spill = (row >> _U56) != 0  # the last slot is taken: the key may have spilled on
            live = np.flatnonzero(match)
            while live.size:  # the matching slots, lowest first (usually one)
                m = match[live]
                low = m & (~m + _U1)
                way = (np.bitwise_count(low - _U1) >> np.uint8(3)).astype(np.intp)
                cand = self.slots[bucket[live] * _WAYS + way].astype(np.int64) - 1
                q = todo[live]
                same = self.keys[cand] == key[q]
                ids[q[same]] = cand[same]
                match[live] = m ^ low
                live = live[~same & (match[live] != 0)]
            go_on = spill & (ids[todo] < 0)
            todo, bucket, fp = todo[go_on], (bucket[go_on] + 1) % nb, fp[go_on]
        return ids

    def count_of(self, prefix: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Counts of the keys (0 where absent), int64."""
        ids = self.lookup(prefix, last)
        return np.where(ids >= 0, self.counts[np.maximum(ids, 0)], 0).astype(np.int64)

    def add(self, prefix: np.ndarray, last: np.ndarray, new_from: int | None = None) -> np.ndarray:
        """Count one occurrence of every key (repeats count repeatedly); returns their ids.

        `new_from`: prefix ids ≥ it were created by this update, so their keys cannot be here yet.
        """
        return self.add_keys(self.key(prefix, last), None if new_from is None else prefix >= new_from)

    def add_keys(self, key: np.ndarray, absent: np.ndarray | None = None) -> np.ndarray:
        """`add` for int64 keys; `absent`: a mask of keys known not to be in the table (not looked up)."""
        key = np.ascontiguousarray(key, np.int64)
        if absent is None:
            ids = self.find(key)
        else:
            ids = np.full(key.size, -1, np.int64)
            old = np.flatnonzero(~absent)
            ids[old] = self.find(key[old])
        miss = np.flatnonzero(ids < 0)
        if miss.size:
            h, inverse = _unique(key[miss].view(np.uint64) * _GOLDEN)  # h: sorted, so by bucket
            keys = (h * _GOLDEN_INV).view(np.int64)  # h is a bijection of the key
            start = self.size
            new = start + np.arange(h.size)
            self._reserve(start + h.size, int(keys.max()))
            self.keys[start : start + h.size] = keys
            self.size += h.size
            if self._full():
                self._grow(start)
            else:
                self._place(new, h)
            ids[miss] = new[inverse]
        np.add.at(self.counts, ids, np.int32(1))
        return ids

    def _reserve(self, need: int, max_key: int) -> None:
        if max_key >= 1 << 32 and self.keys.dtype == np.uint32:
            self.keys = self.keys.astype(np.int64)
        if need > self.counts.size:
            cap = max(need, int(self.counts.size * 1.25))
            if self.limit is not None:  # no room beyond the most the stream can bring
                cap = max(need, min(cap, self.limit))
            grow = lambda a: np.concatenate([a[: self.size], np.zeros(cap - self.size, a.dtype)])  # noqa: E731
            self.keys, self.counts = grow(self.keys), grow(self.counts)

    def presize(self, grams: int) -> None:
        """Size the empty index for `grams` keys at most: no growth on the way there."""
        assert self.size == 0, "presize an empty table"
        self.limit = grams
        self._alloc(max(self.buckets, -(-grams // int(_MAX_LOAD * _WAYS))))

    def _hash_ids(self, ids: np.ndarray) -> np.ndarray:
        return self.keys[ids].astype(np.uint64) * _GOLDEN

    def _place(self, ids: np.ndarray, h: np.ndarray) -> None:
        """Put absent, distinct keys (ids, hashes h sorted by bucket, or nearly) in the first free slots."""
        bucket, fp = self._bucket_fp(h)
        nb = self.buckets
        while ids.size:
            if (bucket[1:] < bucket[:-1]).any():  # sorted already but for spills past the last bucket (and growth)
                order = np.sort((bucket.astype(np.int64) << 32) | np.arange(bucket.size)) & 0xFFFFFFFF
                ids, bucket, fp = ids[order], bucket[order], fp[order]
            ar = np.arange(bucket.size)
            rank = ar - np.maximum.accumulate(np.where(np.r_[True, bucket[1:] != bucket[:-1]], ar, 0))
            slot = np.bitwise_count(_nonzero_bytes(self.fps[bucket])).astype(np.intp) + rank  # slots fill in order
            spill = slot >= _WAYS
            if not spill.any():  # the usual case: every key fits in its bucket
                at = bucket * _WAYS + slot
                self.slots[at] = ids + 1
                self.fps.view(np.uint8)[at] = fp  # byte `slot` of the bucket's word (little-endian)
                return
            fits = ~spill
            at = bucket[fits] * _WAYS + slot[fits]
            self.slots[at] = ids[fits] + 1
            self.fps.view(np.uint8)[at] = fp[fits]
            ids, bucket, fp = ids[spill], (bucket[spill] + 1) % nb, fp[spill]

    def _grow(self, fresh: int) -> None:
        """Enlarge the index past the load limit; ids ≥ `fresh` are not in it yet.

        By ×4 (or more at once) so that there are few growths. The keys in their own bucket b
        move to buckets b·4 .. b·4+3 (the next bits of h), way by way: at most 8 per new bucket and
        one per old row at a time, so they need neither search nor sort. The spilled ones and the
        fresh ones are then placed as usual.
        """
        nb_old, old_slots, old_fps = self.buckets, self.slots, self.fps
        factor = _GROWTH
        while self.size > _MAX_LOAD * _WAYS * nb_old * factor:
            factor *= _GROWTH
        self._alloc(nb_old * factor)
        if factor > _GROWTH or fresh < nb_old:  # a small index grown a lot: place everything afresh
            ids = np.arange(self.size)
            self._place(ids, self._hash_ids(ids))
            return
        ids = old_slots.reshape(nb_old, _WAYS).astype(np.int64) - 1  # -1: empty
        bucket = self._bucket_fp(self._hash_ids(ids))[0]
        home = (bucket // factor == np.arange(nb_old)[:, None]) & (ids >= 0)
        fill = np.zeros(self.buckets, np.intp)  # keys moved into each new bucket so far
        fp_bytes, new_fp_bytes = old_fps.view(np.uint8).reshape(nb_old, _WAYS), self.fps.view(np.uint8)
        for way in range(_WAYS):  # one slot per old row: the rows' new buckets are distinct
            rows = np.flatnonzero(home[:, way])
            b = bucket[rows, way]
            to = b * _WAYS + fill[b]
            self.slots[to] = ids[rows, way] + 1
            new_fp_bytes[to] = fp_bytes[rows, way]
            fill[b] += 1
        rest = np.concatenate([ids[~home & (ids >= 0)], np.arange(fresh, self.size)])
        self._place(rest, self._hash_ids(rest))


class _DenseGramTable(_GramTable):
    """Bigrams over a small vocabulary (V² ≤ 2^20): a key t1·V + t2 indexes a V² map of ids (int32, -1 absent).

    No hashing and no keys by id: a lookup is one read; new bigrams get their ids by writing
    their positions into the map and reading back which one stayed (no sort).
    """

    def __init__(self, vocab_size: int) -> None:
        self.V = vocab_size
        self.size = 0
        self.limit = None
        self.map = np.full(vocab_size * vocab_size, -1, np.int32)
        self.keys = np.zeros(0, np.uint32)
        self.counts = np.zeros(16, np.int32)
        self._alloc(0)

    @property
    def nbytes(self) -> int:
        return self.map.nbytes + self.counts.nbytes

    def _full(self) -> bool:
        return False

    def find(self, key: np.ndarray) -> np.ndarray:
        return self.map[key].astype(np.int64)

    def add_keys(self, key: np.ndarray, absent: np.ndarray | None = None) -> np.ndarray:
        ids = self.find(key)
        miss = np.flatnonzero(ids < 0)
        if miss.size:
            mkey = key[miss]
            self.map[mkey] = np.arange(mkey.size)  # one writer per new bigram stays
            first = np.flatnonzero(self.map[mkey] == np.arange(mkey.size))
            self._reserve(self.size + first.size, 0)
            self.map[mkey[first]] = self.size + np.arange(first.size)
            self.size += first.size
            ids[miss] = self.map[mkey]
        np.add.at(self.counts, ids, np.int32(1))
        return ids

    def _reserve(self, need: int, max_key: int) -> None:
        if need > self.counts.size:
            cap = max(need, int(self.counts.size * 1.25))
            if self.limit is not None:
                cap = max(need, min(cap, self.limit))
            self.counts = np.concatenate([self.counts[: self.size], np.zeros(cap - self.size, np.int32)])

    def presize(self, grams: int) -> None:
        self.limit = grams


class NGramCache(Identity):
    """Exact n-gram backoff cache over the scored tokens, mixed with entropy-adaptive α (seed #1185).

    `min_order`..`max_order`: n-gram orders (context = previous n-1 tokens); `chunk_tokens`: the
    stream's chunk size (each update counts the seed's slice val[c·C:(c+1)·C]); `cross_chunk`:
    also count the n-grams whose context starts in an earlier slice (the seed counts only n-grams
    inside a slice); `alpha_*`: α = alpha_base + alpha_scale · σ(alpha_slope · (H - alpha_center)).
    """

    name = "ngram"

    def __init__(
        self,
        min_order: int = 2,
        max_order: int = 9,
        chunk_tokens: int = 32_768,
        cross_chunk: bool = False,
        alpha_base: float = 0.08,
        alpha_scale: float = 0.65,
        alpha_slope: float = 2.0,
        alpha_center: float = 3.5,
    ) -> None:
        if not 2 <= min_order <= max_order:
            raise UserError(f"eval_cache: min_order={min_order}, max_order={max_order}: need 2 ≤ min_order ≤ max_order")
        if chunk_tokens < 1:
            raise UserError(f"eval_cache.chunk_tokens={chunk_tokens} must be ≥ 1")
        if not (0 <= alpha_base and 0 <= alpha_scale and alpha_base + alpha_scale < 1):
            raise UserError(
                f"eval_cache: alpha_base={alpha_base}, alpha_scale={alpha_scale}: need both ≥ 0 and "
                "alpha_base + alpha_scale < 1 (α must stay in [0, 1))"
            )
        self.min_order, self.max_order, self.chunk_tokens, self.cross_chunk = (
            min_order,
            max_order,
            chunk_tokens,
            cross_chunk,
        )
        self.alpha_base, self.alpha_scale, self.alpha_slope, self.alpha_center = (
            alpha_base,
            alpha_scale,
            alpha_slope,
            alpha_center,
        )
        self.vocab_size: int | None = None

    def rules_kept(self) -> dict[str, bool]:
        return dict.fromkeys(RULES, True)

    # ------------------------------------------------------------------ state
    def begin(self, vocab_size: int | None = None, *args) -> None:
        """Fresh, empty tables for a stream over a vocabulary of `vocab_size` tokens."""
        if vocab_size is None or vocab_size < 1:
            raise UserError(f"eval_cache={self.name} needs the model's vocab_size (got {vocab_size})")
        self.vocab_size = int(vocab_size)
        self.tokens_added = 0
        self._counted_end = 0  # the stream position after the last counted slice
        self._count1 = np.zeros(self.vocab_size, np.int64)  # 1-gram occurrences; a 1-gram's id is its token
        self._tables = {k: _GramTable(self.vocab_size) for k in range(2, self.max_order + 1)}
        if self.vocab_size**2 <= _DENSE_BIGRAMS:
            self._tables[2] = _DenseGramTable(self.vocab_size)
        # per context length m: {id: occurrences with no counted follower}, and the same as sorted arrays
        self._ends: dict[int, dict[int, int]] = {m: {} for m in range(1, self.max_order)}
        self._end_arrays: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # ids, counts, marks

    @property
    def nbytes(self) -> int:
        """Bytes of every array the cache holds (tables, indexes, 1-gram counts, end corrections)."""
        total = self._count1.nbytes + sum(t.nbytes for t in self._tables.values())
        return total + sum(a.nbytes for arrays in self._end_arrays.values() for a in arrays)

    def _require_begun(self) -> int:
        if self.vocab_size is None:
            raise RuntimeError(f"{type(self).__name__}.begin(vocab_size) must be called before use")
        return self.vocab_size

    # ------------------------------------------------------------------ update
    def update(self, seen, chunk) -> None:
        """Count the n-grams of chunk `chunk`'s slice val[c·C:(c+1)·C] (read through `seen`, never beyond)."""
        V = self._require_begun()
        start = chunk.first - 1
        if start != chunk.index * self.chunk_tokens:
            raise UserError(
                f"eval_cache.chunk_tokens={self.chunk_tokens} does not match the stream's chunks (chunk "
                f"{chunk.index} starts at target {chunk.first}); set the stream's chunk_tokens to the cache's"
            )
        # The slice ends at the chunk's own end at the latest (= len(seen) in the stream); a view
        # revealing less raises ReadAheadError instead of silently counting fewer tokens.
        stop = min(start + self.chunk_tokens, chunk.end)
        lo = max(0, start - (self.max_order - 1)) if self.cross_chunk else start
        if self.cross_chunk and start != self._counted_end:
            raise RuntimeError(f"cross_chunk update of [{start}:{stop}) after [0:{self._counted_end}): not contiguous")
        if self.tokens_added == 0:  # every order holds at most one gram per token the stream will add
            expected = (chunk.count - 1 - chunk.index) * self.chunk_tokens
            for k, table in self._tables.items():
                table.presize(min(expected, V**k))
        tokens = seen[lo:stop].to("cpu", torch.int64).numpy()
        if tokens.size and (tokens.min() < 0 or tokens.max() >= V):
            raise UserError(f"eval_cache={self.name}: token ids must lie in [0, {V}) (the model's vocab_size)")
        self._count(tokens, start - lo)
        self.tokens_added += stop - start
        self._counted_end = stop

    def _count(self, t: np.ndarray, fresh: int) -> None:
        """Count the k-grams of `t` ending at index ≥ `fresh` (k = 1..max_order); note those with no follower."""
        V, L = self.vocab_size, t.size
        if self.cross_chunk:  # only the grams ending at the very end lack a follower; earlier ones now have one
            for ends in self._ends.values():
                ends.clear()
        self._count1 += np.bincount(t[fresh:], minlength=V)
        self._note_end(1, int(t[-1]) if L else None)
        prev = t  # ids of the (k-1)-grams starting at 0..L-k+1
        prefix_size_before = None  # 1-gram ids are tokens: none is new
        for k in range(2, self.max_order + 1):
            n = L - k + 1
            if n <= 0:
                break
            table = self._tables[k]
            key = table.key(prev[:n], t[k - 1 :])
            old = max(0, fresh - k + 1)  # grams starting before `old` end before `fresh`: counted already
            size_before = table.size
            absent = None if prefix_size_before is None else prev[old:n] >= prefix_size_before
            new = table.add_keys(key[old:], absent)
            ids = np.concatenate([table.find(key[:old]), new]) if old else new
            assert (ids >= 0).all(), "a gram counted by an earlier update is missing"
            if k < self.max_order:
                self._note_end(k, int(ids[-1]))
            prev, prefix_size_before = ids, size_before
        self._end_arrays = {}
        for m, e in self._ends.items():
            if e:
                end_ids = np.array(sorted(e), np.int64)
                marks = np.zeros(_END_MARKS, bool)  # a cheap first test: id mod _END_MARKS is marked
                marks[end_ids % _END_MARKS] = True
                self._end_arrays[m] = (end_ids, np.array([e[i] for i in sorted(e)], np.int64), marks)

    def _note_end(self, m: int, gram_id: int | None) -> None:
        if gram_id is not None:
            self._ends[m][gram_id] = self._ends[m].get(gram_id, 0) + 1

    # ------------------------------------------------------------------ queries
    def _count_m(self, m: int, ids: np.ndarray) -> np.ndarray:
        """Counts of the m-grams with ids `ids` (0 where id < 0)."""
        safe = np.maximum(ids, 0)
        c = self._count1[safe] if m == 1 else self._tables[m].counts[safe].astype(np.int64)
        return np.where(ids >= 0, c, 0)

    def _totals(self, m: int, ids: np.ndarray) -> np.ndarray:
        """total(ctx) for m-gram contexts: occurrences followed by a counted token."""
        tot = self._count_m(m, ids)
        if m in self._end_arrays:
            end_ids, end_counts, marks = self._end_arrays[m]
            maybe = np.flatnonzero(marks[ids & (_END_MARKS - 1)])
            if maybe.size:
                i = ids[maybe]
                pos = np.minimum(np.searchsorted(end_ids, i), end_ids.size - 1)
                tot[maybe] -= np.where(end_ids[pos] == i, end_counts[pos], 0)
        return tot

    def _contexts(self, x: np.ndarray, qb: np.ndarray, qj: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(order n, total(ctx), ctx id) of the backoff choice at each query (qb, qj) of windows `x` [B, T].

        The context of order n at j is x[j-n+2 .. j]. Order 0 means no order matched.
        """
        return self._backoff(x, qb, qj)[:3]

    def _backoff(self, x: np.ndarray, qb: np.ndarray, qj: np.ndarray, y: np.ndarray | None = None) -> tuple:
        """`_contexts`, and with targets `y` [B, T] also count(ctx, y) of each query (0 where no order matched).

        Gram ids are computed once per start position: the m-gram starting at s extends the
        (m-1)-gram at s. Where the target is the window's next token (y[j] = x[j+1]; the last
        column's targets are appended to x), the n-gram (ctx, target) starts where the context
        does: its id is in the same chain. Orders are tried upwards: a context with a counted
        follower has a suffix with one (the same follower), so the matched orders of a query are
        min_order..n and a query whose order n fails is done.
        """
        if y is not None:
            yq = y.reshape(-1)[qb * y.shape[1] + qj]  # the targets of the queries
            x = np.concatenate([x, y[:, -1:]], axis=1)
        B, T = x.shape
        top = self.max_order if y is not None else self.max_order - 1  # the longest gram needed
        xf, q = x.reshape(-1), qb * T + qj  # flat positions
        marked = np.zeros((B, T), bool)
        marked.reshape(-1)[q] = True
        need = marked.copy()  # start positions of the grams the contexts need: q - d, d < max_order - 1
        for d in range(1, min(self.max_order - 1, T)):
            need[:, :-d] |= marked[:, d:]
        s = np.flatnonzero(need)
        room = np.broadcast_to(T - np.arange(T), (B, T)).reshape(-1)[s]  # tokens from s to the end of its window
        where = np.full(B * T, -1, np.int64)
        where[s] = np.arange(s.size)
        ids = {1: xf[s]}
        for m in range(2, top + 1):
            prev, out = ids[m - 1], np.full(s.size, -1, np.int64)
            ok = np.flatnonzero((prev >= 0) & (room >= m))
            if ok.size:
                table = self._tables[m]
                out[ok] = table.find(table.key(prev[ok], xf[s[ok] + m - 1]))
            ids[m] = out
        Q = qb.size
        order, total = np.zeros(Q, np.int64), np.zeros(Q, np.int64)
        ctx, pair = np.full(Q, -1, np.int64), np.zeros(Q, np.int64)
        r = np.flatnonzero(qj >= self.min_order - 2)  # the queries still matching, with room for order n's context
        for n in range(self.min_order, self.max_order + 1):
            m = n - 1
            at = where[q[r] - m + 1]  # the start of the context (and of the n-gram)
            cid = ids[m][at]
            seen = np.flatnonzero(cid >= 0)
            r, at, cid = r[seen], at[seen], cid[seen]
            tot = self._totals(m, cid)
            take = np.flatnonzero(tot > 0)
            r, at = r[take], at[take]
            order[r], total[r], ctx[r] = n, tot[take], cid[take]
            if y is not None:
                gid = ids[n][at]
                pair[r] = np.where(gid >= 0, self._tables[n].counts[np.maximum(gid, 0)], 0)
            r = r[qj[r] >= n - 1]
            if not r.size:
                break
        if y is not None:
            other = np.flatnonzero((order > 0) & (yq != xf[q + 1]))  # targets that do not continue x
            if other.size:
                pair[other] = self._pair_counts(order[other], ctx[other], yq[other])
        return order, total, ctx, pair

    def _choices(self, x: np.ndarray, y: np.ndarray, qb: np.ndarray, qj: np.ndarray) -> tuple:
        """(order, total(ctx), ctx, count(ctx, target)) at each query of windows x, targets y [B, T]."""
        return self._backoff(x, qb, qj, y)

    def _pair_counts(self, order: np.ndarray, ctx: np.ndarray, v: np.ndarray) -> np.ndarray:
        """count(ctx, v) for each query with a matched order (0 elsewhere)."""
        out = np.zeros(order.size, np.int64)
        for n in np.unique(order[order > 0]):
            sel = order == n
            out[sel] = self._tables[int(n)].count_of(ctx[sel], v[sel])
        return out

    def _ngram_log_probs(self, order, total, ctx, v) -> np.ndarray:
        """log p_ng(v | ctx) per query (order > 0); seed: (count + 1) / (total + V)."""
        counts = self._pair_counts(order, ctx, v)
        return np.log((counts + 1.0) / (total + float(self.vocab_size)))

    # ------------------------------------------------------------------ mixing
    def alpha(self, log_probs: Tensor) -> Tensor:
        """α per row of model log-probabilities [..., V]: from the model's entropy, never from the target."""
        p = log_probs.exp()
        entropy = -torch.linalg.vecdot(p, torch.where(p > 0, log_probs, torch.zeros_like(log_probs)))
        return self.alpha_base + self.alpha_scale * torch.sigmoid(self.alpha_slope * (entropy - self.alpha_center))

    @staticmethod
    def _mix(model_lp: Tensor, alpha: Tensor, ngram_lp: Tensor) -> Tensor:
        """log((1-α) p_model + α p_ng), elementwise."""
        return torch.logaddexp(torch.log1p(-alpha) + model_lp, torch.log(alpha) + ngram_lp)

    def score(self, x: Tensor, y: Tensor, log_probs: Tensor, mask: Tensor) -> Tensor:
        """log p_mixed(y[b, j]) at every masked position (elsewhere the model's log-prob), float64 [B, T].

        The context of y[b, j] is x[b, :j+1]; y only picks the entry of the distribution.
        """
        rows = log_probs.reshape(-1, log_probs.shape[-1]) if bool(mask.all()) else log_probs[mask]
        model_lp = log_probs.gather(-1, y[..., None]).squeeze(-1)
        return self.score_with_alpha(x, y, model_lp, self.alpha(rows), mask)

    def score_with_alpha(self, x: Tensor, y: Tensor, model_lp: Tensor, alpha: Tensor, mask: Tensor) -> Tensor:
        """`score` given the model's log-prob of each target [B, T] and α of each masked position [Q]."""
        V = self._require_begun()
        xs, ys, ms = (t.detach().to("cpu", torch.int64).numpy() for t in (x, y, mask))
        qb, qj = np.nonzero(ms)
        if xs.size and (xs.min() < 0 or xs.max() >= V):
            raise UserError(f"eval_cache={self.name}: token ids must lie in [0, {V}) (the model's vocab_size)")
        order, total, _, pair = self._choices(xs, ys, qb, qj)
        hit = order > 0
        ngram_lp = np.log((pair[hit] + 1.0) / (total[hit] + float(V)))
        out = model_lp.clone()
        dev = model_lp.device
        hb, hj = torch.from_numpy(qb[hit]).to(dev), torch.from_numpy(qj[hit]).to(dev)
        hit_t = torch.from_numpy(hit).to(dev)
        out[hb, hj] = self._mix(model_lp[hb, hj], alpha.to(dev)[hit_t], torch.from_numpy(ngram_lp).to(dev))
        return out

    def distribution(self, x_row: Tensor, j: int, log_probs_row: Tensor) -> Tensor:
        """The full mixed next-token log-distribution [V] at window position j of `x_row`."""
        V = self._require_begun()
        xs = x_row.detach().to("cpu", torch.int64).numpy()[None]
        order, total, ctx = self._contexts(xs, np.zeros(1, np.int64), np.array([j], np.int64))
        if order[0] == 0:
            return log_probs_row.clone()
        v = np.arange(V, dtype=np.int64)
        ngram_lp = self._ngram_log_probs(np.repeat(order, V), np.repeat(total, V), np.repeat(ctx, V), v)
        alpha = self.alpha(log_probs_row[None])[0]
        return self._mix(log_probs_row, alpha, torch.from_numpy(ngram_lp).to(log_probs_row.device))

    # ------------------------------------------------------------------ inspection (tests, reports)
    def probability(self, context: list[int], v: int) -> tuple[int, float] | None:
        """(order, p_ng(v | context)) of the backoff choice for a context given as a token list; None: no match."""
        if not context:
            return None
        x = np.asarray(context, np.int64)[None]
        order, total, ctx = self._contexts(x, np.zeros(1, np.int64), np.array([x.shape[1] - 1]))
        if order[0] == 0:
            return None
        counts = self._pair_counts(order, ctx, np.array([v], np.int64))
        return int(order[0]), (int(counts[0]) + 1) / (int(total[0]) + self.vocab_size)


class NGramTargetHashed(NGramCache):
    """The hashed-cache pattern the challenge closed: per order, context and (context, target) counts in
    fixed-size hash buckets; p(v) = (pair[h(ctx, v)] + 1) / (ctx[h(ctx)] + V) for each v on its own.

    Collisions inflate the counts and the values over v do not sum to 1 (normalization broken).
    `buckets`: buckets per order and per kind (two int32 arrays each).
    """

    name = "ngram_target_hashed"
    _P = np.uint64(0x100000001B3)  # FNV prime: the rolling gram hash h(g·t) = h(g)·P + t + 1

    def __init__(
        self,
        min_order: int = 2,
        max_order: int = 9,
        chunk_tokens: int = 32_768,
        cross_chunk: bool = False,
        alpha_base: float = 0.08,
        alpha_scale: float = 0.65,
        alpha_slope: float = 2.0,
        alpha_center: float = 3.5,
        buckets: int = 2**20,
    ) -> None:
        super().__init__(
            min_order, max_order, chunk_tokens, cross_chunk, alpha_base, alpha_scale, alpha_slope, alpha_center
        )
        if buckets < 1:
            raise UserError(f"eval_cache.buckets={buckets} must be ≥ 1")
        self.buckets = buckets

    def rules_kept(self) -> dict[str, bool]:
        return {**dict.fromkeys(RULES, True), "normalization": False}

    def begin(self, vocab_size: int | None = None, *args) -> None:
        super().begin(vocab_size)
        self._tables = {}
        self._ctx_buckets = {n: np.zeros(self.buckets, np.int32) for n in range(self.min_order, self.max_order + 1)}
        self._pair_buckets = {n: np.zeros(self.buckets, np.int32) for n in range(self.min_order, self.max_order + 1)}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (*self._ctx_buckets.values(), *self._pair_buckets.values()))

    def _bucket(self, h: np.ndarray) -> np.ndarray:
        return ((h.view(np.uint64) * _GOLDEN) % np.uint64(self.buckets)).astype(np.int64)

    def _hash1(self, tok: np.ndarray) -> np.ndarray:
        return (tok.astype(np.uint64) + np.uint64(1)).view(np.int64)

    def _hash_extend(self, prev: np.ndarray, tok: np.ndarray) -> np.ndarray:
        return (prev.view(np.uint64) * self._P + tok.astype(np.uint64) + np.uint64(1)).view(np.int64)

    def _count(self, t: np.ndarray, fresh: int) -> None:
        h = self._hash1(t)  # hashes of the grams starting at 0..L-k+1, for k = 1, 2, ...
        for n in range(2, self.max_order + 1):
            L = t.size - n + 1
            if L <= 0:
                break
            ctx, h = h[:L], self._hash_extend(h[:L], t[n - 1 :])
            if n >= self.min_order:
                new = slice(max(0, fresh - n + 1), L)
                np.add.at(self._ctx_buckets[n], self._bucket(ctx[new]), np.int32(1))
                np.add.at(self._pair_buckets[n], self._bucket(h[new]), np.int32(1))

    def _contexts(self, x, qb, qj):
        """As the exact cache, with a context's 'id' its gram hash and its total the context bucket's count."""
        order = np.zeros(qb.size, np.int64)
        total = np.zeros(qb.size, np.int64)
        ctx = np.zeros(qb.size, np.int64)
        hashes = {m: self._gram_hash(x, qb, qj, m) for m in range(1, self.max_order)}
        for n in range(self.max_order, self.min_order - 1, -1):
            m = n - 1
            ok = (qj >= m - 1) & (order == 0)
            tot = np.where(ok, self._ctx_buckets[n][self._bucket(hashes[m])], 0)
            take = ok & (tot > 0)
            order[take], total[take], ctx[take] = n, tot[take], hashes[m][take]
        return order, total, ctx

    def _gram_hash(self, x: np.ndarray, qb: np.ndarray, qj: np.ndarray, m: int) -> np.ndarray:
        """Rolling hash of the m tokens ending at (qb, qj); starts before 0 are clipped (callers mask them out)."""
        s = np.maximum(qj - m + 1, 0)
        h = self._hash1(x[qb, s])
        for i in range(1, m):
            h = self._hash_extend(h, x[qb, np.minimum(s + i, qj)])
        return h

    def _choices(self, x: np.ndarray, y: np.ndarray, qb: np.ndarray, qj: np.ndarray) -> tuple:
        order, total, ctx = self._contexts(x, qb, qj)
        return order, total, ctx, self._pair_counts(order, ctx, y[qb, qj])

    def _pair_counts(self, order: np.ndarray, ctx: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The (context, v) bucket's count for each query with a matched order."""
        out = np.zeros(order.size, np.int64)
        for n in np.unique(order[order > 0]):
            sel = order == n
            out[sel] = self._pair_buckets[int(n)][self._bucket(self._hash_extend(ctx[sel], v[sel]))]
        return out
