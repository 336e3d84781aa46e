"""Per-document LoRA test-time training (`ttt=lora_doc`, `ttt=lora_doc_published`; seed #620).

The validation stream is cut into documents at BOS tokens: document i holds the tokens
[start_i, start_{i+1}] (its last target is the next document's BOS; the first document starts at
position 0, the last one ends at the stream's end). Each document gets its own fresh rank-`rank`
LoRA on c_q and c_v of every attention module (fed the module's input, the block's attn_norm output)
and on the LM head (added to the logits before the softcap). The document is read in chunks of
`chunk_len` targets with up to `context_len` tokens of in-document context, never across documents.
A forward hook on each c_q / c_v adds x @ A @ B per batch row; with depth recurrence a shared core is
one module, so its uses share one adapter. The base weights stay frozen (restored afterwards).

`LoRADocPublished` is #620 as published (docs/records/pr620.md §5): short documents scored by the base
model, long ones sorted by chunk count and batched, three epochs, scores taken in the last one, after
training on every chunk of the document. It reads ahead and depends on later tokens; the legality
check flags it. `LoRADocTTT` is the compliant form: one pass, each chunk scored, then one Adam step on
it, with every decision about a position taken from earlier tokens only (see its docstring).

Both plug into `paramgolf.evaluation.stream.run_stream` through `run`: documents are split
contiguously over the ranks, each rank scores its own, and the recorder sums the ranks at the end
(adapters are per document: there is nothing else to share).
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from paramgolf.errors import UserError
from paramgolf.evaluation.compliance import RULES
from paramgolf.evaluation.identity import Identity
from paramgolf.evaluation.stream import Recorder, autocast


def find_documents(tokens: Tensor, bos_id: int) -> list[tuple[int, int]]:
    """(start, last) of each document: inputs tokens[start:last], targets tokens[start+1:last+1].

    A document starts at position 0 and at every BOS; it ends at the next start (inclusive: the next
    document's BOS is its last target) or at the stream's last token. Every target position
    1..n-1 belongs to exactly one document.
    """
    n = tokens.numel()
    starts = sorted({0, *(tokens == bos_id).nonzero().flatten().tolist()})
    ends = starts[1:] + [n - 1]
    return [(s, e) for s, e in zip(starts, ends) if e > s]


def rank_share(docs: list, rank: int, world_size: int) -> list:
    """This rank's contiguous share of the documents (as the seed splits them)."""
    return docs[len(docs) * rank // world_size : len(docs) * (rank + 1) // world_size]


def _adapted_linears(model: nn.Module) -> list[nn.Module]:
    """c_q and c_v of every attention module, each once (a shared recurrence core is one module)."""
    out = []
    for m in model.modules():
        if hasattr(m, "c_q") and hasattr(m, "c_v"):
            out += [m.c_q, m.c_v]
    if not out:
        raise UserError("ttt=lora_doc needs attention modules with c_q and c_v projections (arch.attention=gqa)")
    return out


class BatchedLoRA:
    """Rank-r adapters for `slots` batch rows: on every c_q / c_v (forward hooks) and on the LM head.

    Row b of a batch uses A[b] [in, r] and B[b] [r, out]; the delta is x @ A @ B. `on`: the hooks add
    their deltas (off: the base model). Parameters are float32 (float64 for a float64 model).
    """

    def __init__(self, model: nn.Module, slots: int, rank: int, device: torch.device):
        param = next(model.parameters())
        self.dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
        self.linears = _adapted_linears(model)
        dim = model.tok_emb.weight.shape[1]
        shapes = [(lin.weight.shape[1], lin.weight.shape[0]) for lin in self.linears] + [(dim, model.vocab_size)]
        self.A = [torch.zeros(slots, i, rank, device=device, dtype=self.dtype, requires_grad=True) for i, _ in shapes]
        self.B = [torch.zeros(slots, rank, o, device=device, dtype=self.dtype, requires_grad=True) for _, o in shapes]
        self.on = False
        self._hooks = [lin.register_forward_hook(self._hook(k)) for k, lin in enumerate(self.linears)]

    def params(self) -> list[Tensor]:
        return self.A + self.B

    def _hook(self, k: int):
        def add_delta(module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
            if not self.on:
                return None
            return out + self.delta(k, inputs[0]).to(out.dtype)

        return add_delta

    def delta(self, k: int, x: Tensor) -> Tensor:
        """Adapter k's output for x [slots, T, in] (k = len(linears) is the head)."""
        return (x @ self.A[k].to(x.dtype)) @ self.B[k].to(x.dtype)

    def head(self, model: nn.Module, hidden: Tensor) -> Tensor:
        """Softcapped logits from the final hidden state with the head adapter added before the softcap."""
        return model.head_logits(hidden, extra=self.delta(len(self.linears), hidden))

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


@contextlib.contextmanager
def frozen(model: nn.Module):
    """The base weights frozen (no gradients) and the model in eval mode; both restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


def _gather_rows(t: Tensor, offsets: Tensor, length: int) -> Tensor:
    """t[b, offsets[b] + j] for j < length (indices clamped to the last position) → [B, length, ...]."""
    j = (offsets[:, None] + torch.arange(length, device=t.device)[None, :]).clamp(max=t.size(1) - 1)
    return t[torch.arange(t.size(0), device=t.device)[:, None], j]


class _LoRADocBase(Identity):
    """Knobs and checks shared by both variants."""

    def __init__(
        self,
        rank: int = 8,
        lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.95,
        eps: float = 1e-10,
        chunk_len: int = 256,
        context_len: int = 1024,
        batch_docs: int = 64,
        bos_id: int = 1,
        seed: int = 0,
    ) -> None:
        for key, value in (("rank", rank), ("chunk_len", chunk_len), ("batch_docs", batch_docs)):
            if value < 1:
                raise UserError(f"ttt.{key}={value} must be ≥ 1")
        if context_len < chunk_len:
            raise UserError(f"ttt.context_len={context_len} must be ≥ ttt.chunk_len={chunk_len}")
        if lr <= 0 or not (0 <= beta1 < 1 and 0 <= beta2 < 1) or eps < 0:
            raise UserError(f"ttt: need lr={lr} > 0, beta1={beta1} and beta2={beta2} in [0, 1), eps={eps} ≥ 0")
        self.rank, self.lr, self.betas, self.eps = rank, lr, (beta1, beta2), eps
        self.chunk_len, self.context_len, self.batch_docs = chunk_len, context_len, batch_docs
        self.bos_id, self.seed = bos_id, seed
        self.chunk_tokens = chunk_len  # the stream's chunking is unused (run plans its own windows)
        self.last_stats: dict[str, int] = {}

    def for_probe(self, seq_len: int, slots: int = 4):
        """A copy sized for the legality check's short float64 CPU probe (windows of `seq_len`): chunks of
        seq_len // 2 with seq_len of context and at most `slots` documents at a time. Same code paths, same
        decisions; at full size ([64, 1024] forward and backward per step) the probe would take hours."""
        probe = copy.deepcopy(self)
        probe.chunk_len = probe.chunk_tokens = max(1, min(self.chunk_len, seq_len // 2))
        probe.context_len = max(probe.chunk_len, min(self.context_len, seq_len))
        probe.batch_docs = min(self.batch_docs, slots)
        if hasattr(probe, "min_doc_len"):  # else every document of a short probe may count as short
            probe.min_doc_len = min(self.min_doc_len, 2 * probe.chunk_len)
        return probe

    def _init_A(self, lora: BatchedLoRA, rows: int, gen: torch.Generator) -> list[Tensor]:
        """Fresh A per adapter, uniform in ±1/sqrt(in): [rows, in, r] drawn on the CPU (device-independent)."""
        out = []
        for a in lora.A:
            bound = 1.0 / math.sqrt(a.shape[1])
            out.append((torch.rand(rows, *a.shape[1:], generator=gen, dtype=torch.float64) * 2 - 1) * bound)
        return out


class LoRADocTTT(_LoRADocBase):
    """Per-document LoRA, score-first: each chunk is scored, then one Adam step trains on it.

    Compliant by construction, with every decision about target position p taken from tokens < p:
    - documents: p belongs to the document of the last BOS before p (or to the first document);
    - window: chunk ci of a document holds its targets [ci·L, ci·L + L) (L = `chunk_len`); its context
      starts at max(0, ci·L + L − `context_len`), fixed by the chunk's start, not by its end (the seed
      ends the window at the chunk's end, which for a document's last chunk is the next BOS);
    - batching: `batch_docs` slots, each running one document; a document takes the first free slot
      when the one before it in this rank's order has taken one, so its slot and its fresh adapter are
      fixed by earlier documents. Every forward has the fixed shape [batch_docs, context_len] (rows
      padded with token 0 after the document's end or the chunk's end), so a row's computation never
      depends on the other rows or on how long its document turns out to be (padding after p only
      follows p in the causal attention);
    - the fresh adapter is the same for every document: one draw of A (uniform ±1/sqrt(in), from
      `seed`) and B = 0, so a document's chunk 0 is scored by the base model exactly;
    - Adam (`lr`, `beta1`, `beta2`, `eps`) per row with its own step count: a row's update depends on
      its own gradient only. A document's last chunk (the one holding its last target) is not trained on.
    - min_doc_len: not used. #620 scores documents shorter than it by the base model alone, a decision
      taken from the document's future length; here a document shorter than `chunk_len` is one chunk,
      scored with B = 0, i.e. by the base model, anyway.
    Training targets are read through the recorder's view after the chunk is scored (the document's own
    BOS, at its start, is known to be `bos_id` and is not re-read: it is the previous document's last
    target, which a parallel slot may still be scoring).
    """

    name = "lora_doc"

    def rules_kept(self) -> dict[str, bool]:
        return dict.fromkeys(RULES, True)

    def run(
        self,
        model: nn.Module,
        tokens: Tensor,
        recorder: Recorder,
        *,
        seq_len: int,
        batch_seqs: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        device = torch.device(device)
        docs = rank_share(find_documents(tokens, self.bos_id), rank, world_size)
        S, L, C = self.batch_docs, self.chunk_len, self.context_len
        beta1, beta2 = self.betas
        with frozen(model):
            lora = BatchedLoRA(model, S, self.rank, device)
            try:
                fresh_A = [
                    a[0].to(device, lora.dtype) for a in self._init_A(lora, 1, torch.Generator().manual_seed(self.seed))
                ]
                m = [torch.zeros_like(p) for p in lora.params()]
                v = [torch.zeros_like(p) for p in lora.params()]
                steps = torch.zeros(S, dtype=torch.float64, device=device)
                slot: list[list[int] | None] = [None] * S  # [start, last, chunk index] of the document in each slot
                queue = iter(docs)
                lora.on = True
                forwards = 0
                while True:
                    for b in range(S):  # refill free slots, in order, with fresh adapters
                        if slot[b] is None and (doc := next(queue, None)) is not None:
                            slot[b] = [doc[0], doc[1], 0]
                            with torch.no_grad():
                                for k, a in enumerate(lora.A):
                                    a[b] = fresh_A[k]
                                for p in lora.B:
                                    p[b] = 0
                                for t in m + v:
                                    t[b] = 0
                                steps[b] = 0
                    active = [b for b in range(S) if slot[b] is not None]
                    if not active:
                        break
                    x = torch.zeros(S, C, dtype=torch.int64)
                    idx = torch.zeros(S, L + 1, dtype=torch.int64)
                    mask = torch.zeros(S, L, dtype=torch.bool)
                    offsets = torch.zeros(S, dtype=torch.int64)
                    spans, train_pos, trained = [], [], torch.zeros(S, dtype=torch.bool)
                    for b in active:
                        s, e, ci = slot[b]
                        cs, ws = ci * L, max(0, ci * L + L - C)
                        ce = min(cs + L, e - s)  # the chunk's scored targets are doc-relative [cs, ce)
                        x[b, : ce - ws] = tokens[s + ws : s + ce]
                        idx[b, : ce - cs + 1] = s + cs + torch.arange(ce - cs + 1)
                        mask[b, : ce - cs] = True
                        offsets[b] = cs - ws
                        spans.append((s + cs + 1, s + ce + 1))
                        if s + ce < e:  # the document goes on: train on this chunk once it is scored
                            trained[b] = True
                            train_pos.append((b, s + ws + 1 if (ws == 0 and s > 0) else s + ws, s + cs + 1, s + ce))
                    x, offsets = x.to(device), offsets.to(device)
                    with autocast(device, autocast_dtype):
                        _, hidden = model(x, return_hidden=True)
                        logits = lora.head(model, _gather_rows(hidden, offsets, L))
                    log_probs = F.log_softmax(logits.double(), dim=-1)
                    y = tokens[idx[:, 1:]].to(device)
                    target_logp = log_probs.gather(-1, y[..., None]).squeeze(-1)
                    recorder.add(idx, target_logp.detach(), mask.to(device), spans, self, log_probs.detach())
                    forwards += 1
                    if train_pos:
                        self._step(lora, log_probs, recorder, train_pos, trained.to(device), m, v, steps, beta1, beta2)
                    for b in active:  # advance, or free the slot after the document's last chunk
                        s, e, ci = slot[b]
                        slot[b] = None if s + min(ci * L + L, e - s) >= e else [s, e, ci + 1]
                self.last_stats = {"docs": len(docs), "forwards": forwards}
            finally:
                lora.on = False
                lora.remove()

    def _step(self, lora, log_probs, recorder, train_pos, trained, m, v, steps, beta1, beta2) -> None:
        """One Adam step per trained row on Σ_rows mean NLL of its chunk, targets read from the view."""
        view = recorder.view()
        L = log_probs.size(1)
        targets = torch.zeros(log_probs.size(0), L, dtype=torch.int64)
        for b, lo, t0, t1 in train_pos:
            view.take(torch.arange(lo, t0))  # the window's inputs: this document's scored tokens
            targets[b, : t1 - t0 + 1] = view.take(torch.arange(t0, t1 + 1))
        targets = targets.to(log_probs.device)
        nll = -log_probs.gather(-1, targets[..., None]).squeeze(-1)  # every trained chunk is a full L
        loss = (nll.mean(dim=1) * trained).sum()
        params = lora.params()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            steps += trained.double()
            t = steps.clamp(min=1)
            bc1, bc2 = 1 - beta1**t, 1 - beta2**t
            for p, g, m_, v_ in zip(params, grads, m, v):
                keep = trained.view(-1, *[1] * (p.dim() - 1))
                shape = (-1, *[1] * (p.dim() - 1))
                m_.copy_(torch.where(keep, m_ * beta1 + g * (1 - beta1), m_))
                v_.copy_(torch.where(keep, v_ * beta2 + (g * g) * (1 - beta2), v_))
                denom = v_.sqrt() / bc2.sqrt().to(p.dtype).view(shape) + self.eps
                update = m_ / denom * (self.lr / bc1).to(p.dtype).view(shape)
                p.copy_(torch.where(keep, p - update, p))


class LoRADocPublished(_LoRADocBase):
    """#620's per-document LoRA TTT as published (docs/records/pr620.md §5), three epochs, scored in the last.

    Documents shorter than `min_doc_len` tokens (BOS to next BOS inclusive) are scored by one base-model
    forward over the whole document. The others are sorted by chunk count and run in batches of
    `batch_docs`, each row its own fresh LoRA (A uniform ±1/sqrt(in), B = 0) and one torch Adam over the
    batch (lr 0.01, betas (0.9, 0.95), eps 1e-10; every row stepped, as in the seed). For each of
    `epochs` epochs, for each chunk of `chunk_len` targets: forward the last ≤ `context_len` tokens
    ending at the chunk's end; in the last epoch only, record the chunk's scores; if it is not the
    document's last chunk, one Adam step on Σ_docs mean NLL over the chunk. Epochs 1..E−1 train on
    chunks not yet scored (read through the view, so the stream logs the read-ahead): breaks score-first,
    causality and single pass. Results also depend on the batch composition, hence on `world_size`.
    """

    name = "lora_doc_published"

    def __init__(
        self,
        epochs: int = 3,
        min_doc_len: int = 512,
        rank: int = 8,
        lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.95,
        eps: float = 1e-10,
        chunk_len: int = 256,
        context_len: int = 1024,
        batch_docs: int = 64,
        bos_id: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(rank, lr, beta1, beta2, eps, chunk_len, context_len, batch_docs, bos_id, seed)
        if epochs < 1 or min_doc_len < 0:
            raise UserError(f"ttt: need epochs={epochs} ≥ 1 and min_doc_len={min_doc_len} ≥ 0")
        self.epochs, self.min_doc_len = epochs, min_doc_len

    def rules_kept(self) -> dict[str, bool]:
        kept = dict.fromkeys(RULES, True)
        kept.update(causality=False, score_before_update=False, single_pass=False)
        return kept

    def run(
        self,
        model: nn.Module,
        tokens: Tensor,
        recorder: Recorder,
        *,
        seq_len: int,
        batch_seqs: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        device = torch.device(device)
        docs = rank_share(find_documents(tokens, self.bos_id), rank, world_size)
        short = [d for d in docs if d[1] - d[0] + 1 < self.min_doc_len]
        long = sorted(
            (d for d in docs if d[1] - d[0] + 1 >= self.min_doc_len), key=lambda d: (d[1] - d[0] - 1) // self.chunk_len
        )
        with frozen(model):
            with torch.no_grad():
                for s, e in short:  # one base-model forward over the document, alone
                    x = tokens[s:e][None].to(device)
                    with autocast(device, autocast_dtype):
                        logits = model(x)
                    log_probs = F.log_softmax(logits.double(), dim=-1)
                    y = tokens[s + 1 : e + 1][None].to(device)
                    target_logp = log_probs.gather(-1, y[..., None]).squeeze(-1)
                    mask = torch.ones_like(target_logp, dtype=torch.bool)
                    recorder.add(torch.arange(s, e + 1)[None], target_logp, mask, [(s + 1, e + 1)], self, log_probs)
            gen = torch.Generator().manual_seed(self.seed)
            for i in range(0, len(long), self.batch_docs):
                self._batch(model, tokens, recorder, long[i : i + self.batch_docs], gen, device, autocast_dtype)
        self.last_stats = {"docs": len(docs), "short_docs": len(short), "long_docs": len(long)}

    def _batch(self, model, tokens, recorder, batch, gen, device, autocast_dtype) -> None:
        L, C = self.chunk_len, self.context_len
        bsz = len(batch)
        lora = BatchedLoRA(model, bsz, self.rank, device)
        try:
            with torch.no_grad():
                for a, init in zip(lora.A, self._init_A(lora, bsz, gen)):
                    a.copy_(init)
            opt = torch.optim.Adam(lora.params(), lr=self.lr, betas=self.betas, eps=self.eps)
            pred = [e - s for s, e in batch]
            chunks = [math.ceil(p / L) for p in pred]
            lora.on = True
            for epoch in range(self.epochs):
                scoring = epoch == self.epochs - 1
                for ci in range(max(chunks)):
                    cs = ci * L
                    width = (ci + 1) * L - max(0, (ci + 1) * L - C)  # the window of a full chunk ci
                    x = torch.zeros(bsz, width, dtype=torch.int64)
                    idx = torch.zeros(bsz, L + 1, dtype=torch.int64)
                    mask = torch.zeros(bsz, L, dtype=torch.bool)
                    offsets = torch.zeros(bsz, dtype=torch.int64)
                    spans, train_pos = [], []
                    for b, (s, _) in enumerate(batch):
                        if ci >= chunks[b]:
                            continue
                        ce = min(cs + L, pred[b])
                        ws = max(0, ce - C)
                        x[b, : ce - ws] = tokens[s + ws : s + ce]
                        idx[b, : ce - cs + 1] = s + cs + torch.arange(ce - cs + 1)
                        mask[b, : ce - cs] = True
                        offsets[b] = cs - ws
                        spans.append((s + cs + 1, s + ce + 1))
                        if ci < chunks[b] - 1:
                            train_pos.append((b, s + ws, s + cs + 1, s + ce))
                    x, offsets = x.to(device), offsets.to(device)
                    with torch.set_grad_enabled(bool(train_pos)), autocast(device, autocast_dtype):
                        _, hidden = model(x, return_hidden=True)
                        logits = lora.head(model, _gather_rows(hidden, offsets, L))
                    log_probs = F.log_softmax(logits.double(), dim=-1)
                    if scoring:
                        y = tokens[idx[:, 1:]].to(device)
                        target_logp = log_probs.gather(-1, y[..., None]).squeeze(-1)
                        recorder.add(idx, target_logp.detach(), mask.to(device), spans, self, log_probs.detach())
                    if train_pos:
                        view = recorder.view()  # in epochs before the last these targets are not scored yet
                        targets = torch.zeros(bsz, L, dtype=torch.int64)
                        rows = torch.zeros(bsz, dtype=torch.bool)
                        for b, lo, t0, t1 in train_pos:
                            view.take(torch.arange(lo, t0))
                            targets[b, : t1 - t0 + 1] = view.take(torch.arange(t0, t1 + 1))
                            rows[b] = True
                        nll = -log_probs.gather(-1, targets.to(device)[..., None]).squeeze(-1)
                        loss = (nll.mean(dim=1) * rows.to(device)).sum()  # a trained chunk is a full L
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
        finally:
            lora.on = False
            lora.remove()
