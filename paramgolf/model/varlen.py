"""Document-independent ("varlen") causal attention over a packed sequence (PR #1530, in record #1855).

A packed row holds several documents back to back; `cu_seqlens` (int32, N+1 cumulative boundaries
0 = b0 < b1 < ... < bN = T) says where each one starts, and a token attends only to the earlier
tokens of its own segment. The boundaries may be padded at the end with repeated T (empty
segments, harmless) so that their count, and with it a compiled graph's shapes, changes rarely.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from paramgolf.model.attention import fa3_applies, fa3_dtype

try:  # FlashAttention-3 (Hopper); absent on CPU machines.
    from flash_attn_interface import flash_attn_varlen_func as _fa3_varlen_func
except ImportError:  # pragma: no cover - depends on the machine
    _fa3_varlen_func = None


def cu_seqlens_from_bos(ids: Tensor, bos_id: int = 1, max_doc_len: int | None = None, bucket: int = 64) -> Tensor:
    """Segment boundaries of a packed 1-D token sequence, as `varlen_causal_attention` takes them.

    A segment starts at position 0, at every `bos_id` token, and every `max_doc_len` tokens inside a
    document (None: documents are never cut). The boundaries end with len(ids) and are padded with it
    to a multiple of `bucket` entries. int32, on ids' device.
    """
    assert ids.dim() == 1 and ids.numel() > 0, f"ids must be a non-empty 1-D tensor, got shape {tuple(ids.shape)}"
    assert max_doc_len is None or max_doc_len > 0, f"max_doc_len={max_doc_len} must be positive or None"
    assert bucket > 0, f"bucket={bucket} must be positive"
    total = ids.numel()
    starts = torch.nonzero(ids == bos_id).squeeze(1)
    if starts.numel() == 0 or starts[0] != 0:  # tokens before the first BOS (a document cut by the span)
        starts = torch.cat([starts.new_zeros(1), starts])
    if max_doc_len is not None:  # document d of length n_d starts ceil(n_d / max_doc_len) segments
        lengths = torch.diff(starts, append=starts.new_tensor([total]))
        counts = (lengths + max_doc_len - 1) // max_doc_len
        first = torch.cumsum(counts, 0) - counts
        piece = torch.arange(int(counts.sum()), device=ids.device) - first.repeat_interleave(counts)
        starts = starts.repeat_interleave(counts) + piece * max_doc_len
    bounds = torch.cat([starts, starts.new_tensor([total])]).to(torch.int32)
    cu = torch.full((-(-bounds.numel() // bucket) * bucket,), total, dtype=torch.int32, device=ids.device)
    cu[: bounds.numel()] = bounds
    return cu


def varlen_causal_attention(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, use_fa3: bool | None = None
) -> Tensor:
    """Causal attention inside each segment of `cu_seqlens`. q: (1, T, H, D); k, v: (1, T, Hkv, D), H % Hkv == 0.

    `max_seqlen`: an upper bound on the segment lengths (FA3 sizes its grid by it). Uses FA3's varlen
    kernel on CUDA when it is importable; otherwise PyTorch SDPA, run per segment in eager mode (the
    same numbers as running each document alone) and with a block-diagonal causal mask under
    torch.compile (no host sync; memory grows as T²).
    """
    assert q.size(0) == 1, f"varlen attention takes one packed row, got batch {q.size(0)}"
    if use_fa3 is None:
        use_fa3 = fa3_applies(_fa3_varlen_func, q)
    if use_fa3:
        half = fa3_dtype(q)
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
        out = _fa3_varlen_func(
            q[0].to(half),
            k[0].to(half),
            v[0].to(half),
            cu_seqlens_q=cu,
            cu_seqlens_k=cu,
            max_seqlen_q=max_seqlen,
            max_seqlen_k=max_seqlen,
            causal=True,
        )
        return (out[0] if isinstance(out, tuple) else out)[None]
    if torch.compiler.is_compiling():
        return masked_varlen_attention(q, k, v, cu_seqlens)
    return per_segment_attention(q, k, v, cu_seqlens, max_seqlen)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, **kw) -> Tensor:
    """SDPA on (B, T, H, D) tensors with grouped KV heads."""
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), enable_gqa=k.size(2) != q.size(2), **kw
    )
    return y.transpose(1, 2)


def per_segment_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
    """Causal SDPA on each segment alone, concatenated (reads the boundaries on the host)."""
    bounds = cu_seqlens.tolist()
    T = q.size(1)
    assert bounds[0] == 0 and bounds[-1] == T, f"cu_seqlens must run from 0 to T={T}, got {bounds[0]}..{bounds[-1]}"
    pairs = [(s, e) for s, e in zip(bounds[:-1], bounds[1:]) if e != s]
    assert all(0 < e - s <= max_seqlen for s, e in pairs), (
        f"cu_seqlens must be non-decreasing with segments of at most max_seqlen={max_seqlen} tokens"
    )
    return torch.cat([_sdpa(q[:, s:e], k[:, s:e], v[:, s:e], is_causal=True) for s, e in pairs], dim=1)


def masked_varlen_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor) -> Tensor:
    """One SDPA call with a (T, T) mask: same segment and not in the future."""
    T = q.size(1)
    pos = torch.arange(T, device=q.device)
    segment = torch.searchsorted(cu_seqlens.to(device=q.device, dtype=torch.int64), pos, right=True)
    mask = (segment[:, None] == segment[None, :]) & (pos[:, None] >= pos[None, :])
    return _sdpa(q, k, v, attn_mask=mask)
