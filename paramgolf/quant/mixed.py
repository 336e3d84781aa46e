"""The records' export quantizer: a readable name → scheme table, optional pruning, GPTQ.

`quant.quantizer.table` is a list of rules; the first rule that matches a tensor decides how it
is stored (same first-match semantics as the optimizer's parameter rules). A rule matches when
every condition it sets holds: `pattern` (regex searched in the name), `min_numel`,
`max_numel`, `ndim`, `dtypes` (the tensor's dtype is one of these names). Schemes:

* `fp32`, `fp16`, `bf16`: kept as floats (cast back to the original dtype on load);
* `raw`: kept exactly as it is, in its own dtype;
* `int`: symmetric per-row integers at `bits` (2..8) with one fp16 scale per row (dim 0; other
  dims flattened). The clip value per row comes from `clip`:
  - `rowmax`: the row's max |w| (#537);
  - `quantile`: the `clip_quantile` of the row's |w| (the baseline's int8, #620's int6);
  - `search`: GPTQ-lite — the candidate quantile (`clip_candidates`) with the lowest
    reconstruction error, one per tensor (#549, #754, #1185) or per row (`search_per_row`);
  - `gptq`: full GPTQ (#1263) with a Hessian from calibration activations; tensors without a
    Hessian fall back to `search`;
  - `sdclip`: SDClip (#1394, #1855), no clip at all: scale = fp16(`clip_sigmas` · std(row) / qmax),
    q = clamp(round(w / scale), ±qmax).
  `gptq: true` runs full GPTQ on the rule's fixed grid (rowmax, quantile or sdclip scales) instead
  of plain rounding (#1855: GPTQ + SDClip); without a Hessian the tensor is plainly rounded.
  `scale_floor` reproduces the records' floor on the scale (1/qmax), off by default.
  `scale_rounding`: `before` (default) rounds the scale to fp16 before quantizing, so the codes
  sit on the stored grid; `after` quantizes with the fp32 scale and stores it rounded to fp16,
  as the official int8 baseline does (plain rounding only: `clip` rowmax or quantile).
  `record`: the stored record. `intn_row` (default) keeps the codes as [rows, cols] with `bits`
  in the metadata; `int8_row` and `int8_tensor` are the official baseline's int8 records (bits 8):
  per row, or one fp32 scale for the whole tensor (clip rowmax or quantile over all of |w|).

`conf/quant/quantizer/int8_row.yaml` reproduces the official baseline's export record for record.

`lqer` (`paramgolf.quant.lqer`, #1797/#1855) adds a low-rank correction of the quantization error to
the `top_k` GPTQ tensors with the largest ‖W − Q·s‖_F, stored on their records.

Non-float tensors are stored exactly. Magnitude pruning (#537 per tensor, #620 global) zeroes
the smallest `prune_fraction` of |w| in the tensors it covers before quantization.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from paramgolf.errors import UserError
from paramgolf.quant.intn import (
    SCALE_ROUNDINGS,
    abs_quantile_with_plan,
    qmax,
    quantile_plan,
    quantize_rows,
    round_trip_rows,
    row_abs_max,
    row_scales_fp32,
    sdclip_scales_fp32,
    store_scales,
)
from paramgolf.quant.lqer import LQER, lqer_factors
from paramgolf.quant.schemes import DEQUANTIZERS, DTYPES, QuantizedTensor, Quantizer, dequantize_state, dtype_name

FLOAT_SCHEMES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SCHEMES = ("fp32", "fp16", "bf16", "raw", "int")
CLIPS = ("rowmax", "quantile", "search", "gptq", "sdclip")
RECORDS = ("intn_row", "int8_row", "int8_tensor")
# Name parts of the official baseline's control tensors (INT8_KEEP_FLOAT_FP32_NAME_PATTERNS).
CONTROL_TENSOR_PATTERNS: tuple[str, ...] = (
    "attn_scale",
    "attn_scales",
    "mlp_scale",
    "mlp_scales",
    "resid_mix",
    "resid_mixes",
    "q_gain",
    "skip_weight",
    "skip_weights",
)
DEFAULT_CANDIDATES = (0.999, 0.9995, 0.9999, 0.99999, 1.0)


@dataclass
class QuantRule:
    """One row of the table: which tensors (conditions) and how they are stored."""

    name: str
    scheme: str
    pattern: str | None = None
    min_numel: int | None = None
    max_numel: int | None = None
    ndim: int | None = None
    bits: int = 8
    clip: str = "quantile"
    clip_quantile: float = 0.9999984
    clip_candidates: Sequence[float] = DEFAULT_CANDIDATES
    search_per_row: bool = False
    scale_floor: float | None = None
    dtypes: Sequence[str] | None = None
    record: str = "intn_row"
    scale_rounding: str = "before"
    role: str | None = None  # condition: the parameter's declared role (control, embedding, matrix, head)
    clip_sigmas: float | None = None  # clip sdclip: k in scale = k · std(row) / qmax (required there)
    gptq: bool = False  # full GPTQ on this rule's fixed grid (clip rowmax, quantile or sdclip)

    def __post_init__(self) -> None:
        where = f"quant.quantizer.table rule {self.name!r}"
        if self.scheme not in SCHEMES:
            raise UserError(f"{where}: scheme={self.scheme!r} is not one of {', '.join(SCHEMES)}")
        if self.scheme == "int":
            if not 2 <= self.bits <= 8:
                raise UserError(f"{where}: bits={self.bits} must be between 2 and 8")
            if self.clip not in CLIPS:
                raise UserError(f"{where}: clip={self.clip!r} is not one of {', '.join(CLIPS)}")
            if not 0.0 < self.clip_quantile <= 1.0:
                raise UserError(f"{where}: clip_quantile={self.clip_quantile} must be in (0, 1]")
            if not self.clip_candidates or not all(0.0 < q <= 1.0 for q in self.clip_candidates):
                raise UserError(f"{where}: clip_candidates={list(self.clip_candidates)} must be quantiles in (0, 1]")
            if self.record not in RECORDS:
                raise UserError(f"{where}: record={self.record!r} is not one of {', '.join(RECORDS)}")
            if self.record != "intn_row" and self.bits != 8:
                raise UserError(f"{where}: record={self.record} holds int8 codes, needs bits=8 (got {self.bits})")
            if self.scale_rounding not in SCALE_ROUNDINGS:
                raise UserError(
                    f"{where}: scale_rounding={self.scale_rounding!r} is not one of {', '.join(SCALE_ROUNDINGS)}"
                )
            if (self.clip == "sdclip") != (self.clip_sigmas is not None):
                raise UserError(f"{where}: clip_sigmas goes with clip=sdclip (k in k·std/qmax), and only there")
            if self.clip_sigmas is not None and not self.clip_sigmas > 0:
                raise UserError(f"{where}: clip_sigmas={self.clip_sigmas} must be > 0")
            if self.gptq and self.clip in ("search", "gptq"):
                raise UserError(
                    f"{where}: gptq=true takes a fixed grid (clip rowmax, quantile or sdclip), got "
                    f"clip={self.clip}; clip=gptq is GPTQ with the clip search"
                )
            if self.record == "int8_tensor" and self.clip not in ("rowmax", "quantile"):
                raise UserError(f"{where}: record=int8_tensor needs clip rowmax or quantile, got clip={self.clip}")
            plain = self.clip in ("rowmax", "quantile", "sdclip") and not self.gptq
            if not plain and (self.scale_rounding == "after" or self.record == "int8_tensor"):
                what = "scale_rounding=after" if self.scale_rounding == "after" else "record=int8_tensor"
                raise UserError(
                    f"{where}: {what} needs plain rounding (clip rowmax, quantile or sdclip without gptq), "
                    f"got clip={self.clip}, gptq={self.gptq}"
                )
        if self.dtypes is not None:
            if isinstance(self.dtypes, str) or any(d not in DTYPES for d in self.dtypes):
                raise UserError(f"{where}: dtypes={self.dtypes!r} must be a list of dtype names from {sorted(DTYPES)}")
            self.dtypes = tuple(self.dtypes)
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise UserError(f"{where}: pattern {self.pattern!r} is not a valid regex ({e})") from e

    def matches(self, name: str, t: Tensor, role: str | None = None) -> bool:
        return (
            (self.role is None or role == self.role)
            and (self.pattern is None or re.search(self.pattern, name) is not None)
            and (self.min_numel is None or t.numel() >= self.min_numel)
            and (self.max_numel is None or t.numel() <= self.max_numel)
            and (self.ndim is None or t.dim() == self.ndim)
            and (self.dtypes is None or str(t.dtype).removeprefix("torch.") in self.dtypes)
        )

    @property
    def runs_gptq(self) -> bool:
        """Full GPTQ: needs a Hessian from calibration."""
        return self.scheme == "int" and (self.clip == "gptq" or self.gptq)

    @property
    def label(self) -> str:
        return f"int{self.bits}/{self.clip}{'+gptq' if self.gptq else ''}" if self.scheme == "int" else self.scheme


def as_quant_rule(r: QuantRule | Mapping[str, Any]) -> QuantRule:
    if isinstance(r, QuantRule):
        return r
    known = {f for f in QuantRule.__dataclass_fields__}
    unknown = sorted(set(r) - known)
    if unknown:
        raise UserError(
            f"quant.quantizer.table rule {r.get('name')!r}: unknown key(s) {unknown}; known: {sorted(known)}"
        )
    return QuantRule(**dict(r))


@dataclass
class QuantReport:
    """Per-tensor decisions of the last `quantize()` call (for results.json and tests)."""

    rule_of: dict[str, str] = field(default_factory=dict)
    pruned: dict[str, int] = field(default_factory=dict)  # zeroed elements per tensor
    clipped: dict[str, int] = field(default_factory=dict)  # elements beyond qmax · scale per tensor
    info: dict[str, dict[str, Any]] = field(default_factory=dict)  # clip search / GPTQ details


class MixedQuantizer:
    """Quantize a state dict by the first matching rule of `table` (see the module docstring)."""

    def __init__(
        self,
        table: Sequence[QuantRule | Mapping[str, Any]],
        prune_fraction: float = 0.0,
        prune_scope: Literal["per_tensor", "global"] = "per_tensor",
        prune_min_numel: int = 65537,
        prune_ndim: int = 2,
        gptq_block_size: int = 128,
        gptq_damp: float = 0.01,
        gptq_act_order: bool = True,
        lqer: LQER | None = None,
    ) -> None:
        """`lqer`: the low-rank error correction of the largest GPTQ errors (rank, top_k, group); None: off."""
        self.table = [as_quant_rule(r) for r in table]
        if not self.table:
            raise UserError("quant.quantizer.table is empty: add rules, ending with a catch-all (no conditions)")
        names = [r.name for r in self.table]
        if len(set(names)) != len(names):
            raise UserError(f"quant.quantizer.table has duplicate rule names: {names}")
        if not 0.0 <= prune_fraction < 1.0:
            raise UserError(f"quant.quantizer.prune_fraction={prune_fraction} must be in [0, 1)")
        if prune_scope not in ("per_tensor", "global"):
            raise UserError(f"quant.quantizer.prune_scope={prune_scope!r} must be per_tensor or global")
        if gptq_block_size < 1 or gptq_damp < 0:
            raise UserError("quant.quantizer.gptq_block_size must be >= 1 and gptq_damp >= 0")
        self.prune_fraction, self.prune_scope = prune_fraction, prune_scope
        self.prune_min_numel, self.prune_ndim = prune_min_numel, prune_ndim
        self.gptq_block_size, self.gptq_damp, self.gptq_act_order = gptq_block_size, gptq_damp, gptq_act_order
        self.lqer = _as_lqer(lqer)
        self.report = QuantReport()

    # ------------------------------------------------------------------ rules
    def rule_for(self, name: str, t: Tensor, role: str | None = None) -> QuantRule:
        for rule in self.table:
            if rule.matches(name, t, role):
                return rule
        raise UserError(
            f"tensor {name!r} (shape {tuple(t.shape)}) matches no rule of quant.quantizer.table "
            f"{[r.name for r in self.table]}; end the table with a catch-all rule (no conditions)"
        )

    @property
    def needs_hessians(self) -> bool:
        return any(r.runs_gptq for r in self.table)

    def gptq_names(self, state: Mapping[str, Tensor], roles: Mapping[str, str] | None = None) -> set[str]:
        """Tensors whose rule asks for full GPTQ: the calibration collects Hessians for these."""
        roles = self._check_roles(roles)
        return {
            n
            for n, t in state.items()
            if t.is_floating_point() and t.dim() == 2 and self.rule_for(n, t, roles.get(n)).runs_gptq
        }

    def _check_roles(self, roles: Mapping[str, str] | None) -> Mapping[str, str]:
        if roles is None and any(r.role is not None for r in self.table):
            raise UserError(
                f"quant.quantizer.table rules {[r.name for r in self.table if r.role]} match by role, "
                f"but no parameter roles were given (the model declares them: GPT.parameter_roles())"
            )
        return roles or {}

    # ------------------------------------------------------------------ pruning
    def _prunable(self, name: str, t: Tensor) -> bool:
        return t.is_floating_point() and t.dim() == self.prune_ndim and t.numel() >= self.prune_min_numel

    def prune(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Zero the smallest `prune_fraction` of |w| (per tensor, or one global threshold)."""
        out = dict(state)
        if self.prune_fraction <= 0:
            return out
        names = [n for n, t in state.items() if self._prunable(n, t)]
        if self.prune_scope == "global" and names:
            flat = torch.cat([state[n].detach().float().abs().reshape(-1) for n in names])
            k = max(1, int(self.prune_fraction * flat.numel()))
            threshold = float(flat.kthvalue(k).values)
            thresholds = dict.fromkeys(names, threshold)
        else:
            thresholds = {}
            for n in names:
                a = state[n].detach().float().abs().reshape(-1)
                thresholds[n] = float(a.kthvalue(max(1, int(self.prune_fraction * a.numel()))).values)
        for n in names:
            t = state[n]
            mask = t.detach().float().abs() < thresholds[n]
            out[n] = t.masked_fill(mask, 0)
            self.report.pruned[n] = int(mask.sum())
        return out

    # ------------------------------------------------------------------ quantize
    def quantize(
        self,
        state_dict: Mapping[str, Tensor],
        hessians: Mapping[str, Tensor] | None = None,
        roles: Mapping[str, str] | None = None,
    ) -> dict[str, QuantizedTensor]:
        """Quantize every tensor (same keys, same order). `hessians` feeds `clip: gptq` rules; `roles`
        (parameter name → declared role) feeds rules with a `role` condition."""
        roles = self._check_roles(roles)
        self.report = QuantReport()
        pruned = self.prune({n: t.detach().to("cpu") for n, t in state_dict.items()})
        qstate = {
            name: self.quantize_tensor(name, t, (hessians or {}).get(name), roles.get(name))
            for name, t in pruned.items()
        }
        if self.lqer is not None:
            self.add_lqer(qstate, pruned, roles)
        return qstate

    def add_lqer(
        self, qstate: dict[str, QuantizedTensor], weights: Mapping[str, Tensor], roles: Mapping[str, str]
    ) -> list[str]:
        """LQER (paramgolf.quant.lqer): attach the low-rank correction to the `top_k` GPTQ tensors (intn_row
        records) with the largest ‖W − Q·s‖_F, in place; returns their names, largest error first."""
        lq = self.lqer
        errors = {}
        for name, qt in qstate.items():
            t = weights[name]
            if qt.scheme == "intn_row" and t.dim() >= 1 and self.rule_for(name, t, roles.get(name)).runs_gptq:
                errors[name] = float(_residual(t, qt).norm())
        chosen = sorted(errors, key=lambda n: -errors[n])[: lq.top_k]  # stable: ties keep the state order
        for name in chosen:
            qt = qstate[name]
            E = _residual(weights[name], qt)
            parts = lqer_factors(E, lq.rank, lq.group)
            qt.tensors.update(parts)
            qt.meta.update({"lqer_rank": int(parts["lqer_a"].shape[1]), "lqer_group": lq.group})
            corrected = float(_residual(weights[name], qt).norm())
            self.report.info.setdefault(name, {}).update(
                {"lqer_residual_fro": errors[name], "lqer_corrected_fro": corrected}
            )
        return chosen

    def quantize_tensor(
        self, name: str, t: Tensor, hessian: Tensor | None = None, role: str | None = None
    ) -> QuantizedTensor:
        t = t.detach().to("cpu").contiguous()
        shape, dtype = tuple(t.shape), dtype_name(t.dtype)
        if not t.is_floating_point():
            self.report.rule_of[name] = "raw"
            return QuantizedTensor("raw", shape, dtype, {"w": t})
        rule = self.rule_for(name, t, role)
        self.report.rule_of[name] = rule.name
        if rule.scheme in FLOAT_SCHEMES:
            return QuantizedTensor(rule.scheme, shape, dtype, {"w": t.to(FLOAT_SCHEMES[rule.scheme])})
        if rule.scheme == "raw":
            return QuantizedTensor("raw", shape, dtype, {"w": t})
        if not bool(torch.isfinite(t).all()):
            raise UserError(f"tensor {name!r} has NaN or inf values; cannot quantize it")
        if rule.record == "int8_tensor":
            q, scale = rtn_tensor(t, rule)
            self.report.clipped[name] = _count_clipped(t.float().reshape(1, -1), q.reshape(1, -1), scale.reshape(1))
            return QuantizedTensor("int8_tensor", shape, dtype, {"q": q, "scale": scale})
        if rule.record == "int8_row" and t.dim() == 0:
            raise UserError(
                f"tensor {name!r} has no rows for record=int8_row (rule {rule.name!r}); use record=int8_tensor"
            )
        rows = t.float().reshape(t.shape[0], -1) if t.dim() >= 1 else t.float().reshape(1, 1)
        q, scale, grid = self._int_rows(name, rows, rule, hessian)
        self.report.clipped[name] = _count_clipped(rows, q, grid)
        if rule.record == "int8_row":
            return QuantizedTensor("int8_row", shape, dtype, {"q": q.reshape(shape), "scale": scale})
        return QuantizedTensor("intn_row", shape, dtype, {"q": q, "scale": scale}, {"bits": rule.bits})

    def _int_rows(
        self, name: str, rows: Tensor, rule: QuantRule, hessian: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(codes, stored scales, the scales the codes were rounded with)."""
        if (rule.gptq or rule.clip == "gptq") and hessian is not None:
            from paramgolf.quant.gptq import gptq_quantize

            if rule.gptq:  # GPTQ on the grid plain rounding would use (sdclip, rowmax, quantile)
                grid, method = {"scale": _rtn_rows(rows, rule)[1]}, f"gptq/{rule.clip}"
            else:  # GPTQ with its own clip search
                grid = {"quantiles": tuple(rule.clip_candidates), "scale_floor": rule.scale_floor}
                method = "gptq"
            q, scale, info = gptq_quantize(
                rows,
                hessian.float(),
                rule.bits,
                block_size=self.gptq_block_size,
                damp=self.gptq_damp,
                act_order=self.gptq_act_order,
                **grid,
            )
            self.report.info[name] = {"method": method, **_jsonable(info)}
            return q, scale, scale
        if rule.gptq:
            self.report.info[name] = {"method": f"{rule.clip} (no Hessian for gptq)"}
        if rule.clip in ("search", "gptq"):
            from paramgolf.quant.gptq import clip_search

            q, scale, info = clip_search(
                rows,
                rule.bits,
                quantiles=tuple(rule.clip_candidates),
                scale_floor=rule.scale_floor,
                per_row=rule.search_per_row,
            )
            method = "search" if rule.clip == "search" else "search (no Hessian for gptq)"
            self.report.info[name] = {"method": method, **_jsonable(info)}
            return q, scale, scale
        return _rtn_rows(rows, rule)

    def fake_quantizer(self, name: str, w: Tensor, role: str | None = None):
        """QAT for `name`: a function w -> the weight the exported model will hold, with a
        straight-through gradient; None when its rule keeps it as a float.

        Same function and same fp16 scales as the export's plain rounding (`rtn_rows`), so the
        forward equals the dequantized model's forward exactly. Rules with `clip: search/gptq`
        are fake-quantized with their rounding at `clip_quantile` (their search runs at export).
        Everything that depends only on the shape is computed here, once, outside any compiled graph.
        """
        rule = self.rule_for(name, w, role)
        if rule.scheme != "int":
            return None
        if rule.record == "int8_tensor":
            tplan = None if rule.clip == "rowmax" else quantile_plan(rule.clip_quantile, w.numel())

            def fake_tensor(weight: Tensor) -> Tensor:
                q, scale = rtn_tensor(weight.detach(), rule, tplan)
                return _STE.apply(weight, (q.float() * scale).to(weight.dtype))

            return fake_tensor
        rows, cols = w.shape[0], w.numel() // max(w.shape[0], 1)
        plan = None if rule.clip == "rowmax" else quantile_plan(rule.clip_quantile, cols)

        def fake(weight: Tensor) -> Tensor:
            r = weight.detach().float().reshape(rows, cols)
            q, scale = rtn_rows(r, rule, plan)
            return _STE.apply(weight, (q.float() * scale.float()[:, None]).reshape(weight.shape).to(weight.dtype))

        return fake


def rtn_rows(rows: Tensor, rule: QuantRule, plan: tuple[int, int, float] | None = None) -> tuple[Tensor, Tensor]:
    """Plain rounding of W [rows, cols] under `rule`: clip per row (row max or quantile), fp16 scale
    (rounded before or after quantizing, `rule.scale_rounding`), round. (codes, stored scales)."""
    q, scale, _ = _rtn_rows(rows, rule, plan)
    return q, scale


def _rtn_rows(
    rows: Tensor, rule: QuantRule, plan: tuple[int, int, float] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """`rtn_rows` plus the scales the codes were rounded with (fp32 under scale_rounding=after)."""
    if rule.clip == "sdclip":  # no clipping: the grid's reach is clip_sigmas standard deviations
        s32 = sdclip_scales_fp32(rows, rule.clip_sigmas, rule.bits, rule.scale_floor)
        scale = store_scales(s32)
        grid = scale if rule.scale_rounding == "before" else s32
        return quantize_rows(rows, grid, rule.bits), scale, grid
    if rule.clip == "rowmax":
        clip = row_abs_max(rows)
    else:
        clip = abs_quantile_with_plan(rows, plan or quantile_plan(rule.clip_quantile, rows.shape[1]))[0]
    clipped = torch.maximum(torch.minimum(rows, clip[:, None]), -clip[:, None])
    q, scale, _ = round_trip_rows(clipped, clip, rule.bits, rule.scale_floor, scale_rounding=rule.scale_rounding)
    grid = scale if rule.scale_rounding == "before" else row_scales_fp32(clip, rule.bits, rule.scale_floor)
    return q, scale, grid


def rtn_tensor(t: Tensor, rule: QuantRule, plan: tuple[int, int, float] | None = None) -> tuple[Tensor, Tensor]:
    """Plain rounding of a whole tensor with one fp32 scale (the official baseline's non-matrix int8):
    clip at the quantile (or max) of all of |w|, scale = clip / qmax (1 for an all-zero tensor),
    codes round(clamp(w, ±clip) / scale) in the tensor's shape."""
    flat = t.float().reshape(1, -1)
    if flat.numel() == 0:
        clip = 0.0
    elif rule.clip == "rowmax":
        clip = float(flat.abs().max())
    else:
        clip = float(abs_quantile_with_plan(flat, plan or quantile_plan(rule.clip_quantile, flat.shape[1]))[0][0])
    s = clip / qmax(rule.bits) if clip > 0 else 1.0
    if rule.scale_floor:
        s = max(s, rule.scale_floor)
    scale = torch.tensor(s, dtype=torch.float32)
    m = qmax(rule.bits)
    q = torch.clamp(torch.round(torch.clamp(t.float(), -clip, clip) / scale), -m, m).to(torch.int8)
    return q.contiguous(), scale


def _residual(t: Tensor, qt: QuantizedTensor) -> Tensor:
    """W − (what the record restores) as [rows, cols] fp32, before the cast to the tensor's dtype."""
    rows = t.float().reshape(t.shape[0], -1)
    return rows - DEQUANTIZERS[qt.scheme](qt).float().reshape(rows.shape)


def _as_lqer(lqer: LQER | Mapping[str, int] | None) -> LQER | None:
    if lqer is None or isinstance(lqer, LQER):
        return lqer
    unknown = sorted(set(lqer) - set(LQER.__dataclass_fields__))
    if unknown:
        raise UserError(f"quant.quantizer.lqer: unknown key(s) {unknown}; known: {sorted(LQER.__dataclass_fields__)}")
    return LQER(**dict(lqer))


def _count_clipped(rows: Tensor, q: Tensor, scale: Tensor) -> int:
    """Elements more than half a step from their code on the grid they were rounded on: clipped
    ones (and, under GPTQ, those its error compensation moved off their nearest grid point)."""
    s = scale.float()[:, None]
    return int(((rows - q.float() * s).abs() > s * (0.5 + 1e-5)).sum())


def quantize_dequantize(quantizer: Quantizer, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The state dict a model sees after an in-memory quantization round trip."""
    return dequantize_state(quantizer.quantize(state_dict))


class _STE(torch.autograd.Function):
    """Forward: the quantized value exactly; backward: the gradient passes to w unchanged."""

    @staticmethod
    def forward(ctx, w: Tensor, quantized: Tensor) -> Tensor:  # noqa: D102
        return quantized

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return grad, None


def _jsonable(info: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in info.items():
        if isinstance(v, Tensor):
            out[k] = v.item() if v.numel() == 1 else None
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and len(v) <= 16:
            out[k] = [x.item() if isinstance(x, Tensor) else x for x in v]
    return {k: v for k, v in out.items() if v is not None}


def pack_state(qstate: Mapping[str, QuantizedTensor]) -> dict[str, QuantizedTensor]:
    """The same records with every `intn_row` code tensor bit-packed (lossless)."""
    from paramgolf.quant.pack import pack_codes

    out = {}
    for name, qt in qstate.items():
        if qt.scheme == "intn_row" and int(qt.meta.get("bits", 8)) < 8:
            bits = int(qt.meta["bits"])
            out[name] = QuantizedTensor(
                "intn_row_packed",
                qt.shape,
                qt.dtype,
                {"packed": pack_codes(qt.tensors["q"], bits), **{k: v for k, v in qt.tensors.items() if k != "q"}},
                dict(qt.meta),
            )
        else:
            out[name] = qt
    return out
