"""Readable rules that send each parameter to an optimizer group (first match wins).

A rule matches a parameter when every condition it sets holds: `pattern` (a regex searched in
the parameter's name), `ndim`, `min_ndim`, `max_ndim`. A rule that sets none is a catch-all.
Rules see names and shapes only, never the model class, so new modules only need new rules.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields

from torch import Tensor

# "none" freezes: the parameters get gradients but no optimizer (PR #620's BigramHash/SmearGate).
OPTIMIZERS = ("muon", "adam", "none")

# Substrings of the official baseline's control tensors (gains, mixes, skip weights): they are
# 2-D or 1-D but must stay on Adam, so these rules come before the `ndim == 2` Muon rule.
CONTROL_PATTERN = r"attn_scale|mlp_scale|resid_mix|q_gain|skip_weight"

NamedParams = list[tuple[str, Tensor]]


@dataclass
class ParamRule:
    """One optimizer group: which parameters it takes, which optimizer and what lr."""

    name: str
    optimizer: str  # "muon" | "adam" | "none"
    lr: float
    pattern: str | None = None  # regex, searched (not full-matched) in the parameter name
    ndim: int | None = None
    min_ndim: int | None = None
    max_ndim: int | None = None
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"parameter rule {self.name!r}: optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"
            )
        if self.lr < 0:
            raise ValueError(f"parameter rule {self.name!r}: lr must be >= 0, got {self.lr}")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as err:
                raise ValueError(f"parameter rule {self.name!r}: bad regex pattern {self.pattern!r}: {err}") from None

    @property
    def is_catch_all(self) -> bool:
        return self.pattern is None and self.ndim is None and self.min_ndim is None and self.max_ndim is None

    def matches(self, name: str, param: Tensor) -> bool:
        """True when every condition this rule sets holds for (name, param)."""
        if self.pattern is not None and re.search(self.pattern, name) is None:
            return False
        if self.ndim is not None and param.ndim != self.ndim:
            return False
        if self.min_ndim is not None and param.ndim < self.min_ndim:
            return False
        if self.max_ndim is not None and param.ndim > self.max_ndim:
            return False
        return True


def as_rule(rule: ParamRule | Mapping) -> ParamRule:
    """A ParamRule from itself or from a mapping (a YAML dict / DictConfig)."""
    if isinstance(rule, ParamRule):
        return rule
    if not isinstance(rule, Mapping):
        raise ValueError(f"parameter rule must be a mapping with keys name/optimizer/lr/..., got {rule!r}")
    known = {f.name for f in fields(ParamRule)}
    unknown = sorted(set(rule) - known)
    if unknown:
        raise ValueError(f"parameter rule {dict(rule)!r}: unknown key(s) {unknown}; allowed keys are {sorted(known)}")
    missing = [k for k in ("name", "optimizer", "lr") if k not in rule]
    if missing:
        raise ValueError(f"parameter rule {dict(rule)!r}: missing required key(s) {missing}")
    return ParamRule(**{k: rule[k] for k in rule})


def validate_rules(rules: Sequence[ParamRule]) -> None:
    """Rule names are unique, and no rule hides behind an earlier catch-all."""
    if not rules:
        raise ValueError(
            "no parameter rules given: add at least a catch-all rule, e.g. {name: rest, optimizer: adam, lr: 0.04}"
        )
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        if rule.name in seen:
            raise ValueError(f"parameter rule name {rule.name!r} is used twice; give each rule its own name")
        seen.add(rule.name)
        if rule.is_catch_all and i != len(rules) - 1:
            later = [r.name for r in rules[i + 1 :]]
            raise ValueError(
                f"parameter rule {rule.name!r} is a catch-all but rules {later} follow it "
                f"and could never match; move it last"
            )


def assign_params(
    named_params: Iterable[tuple[str, Tensor]], rules: Sequence[ParamRule | Mapping]
) -> dict[str, NamedParams]:
    """Map every rule name (in rule order) to the (name, param) pairs it takes; first match wins.

    Rules that take nothing map to an empty list (e.g. `head` with tied embeddings); see
    `assignment_summary`. A parameter no rule takes raises ValueError.
    """
    rules = [as_rule(r) for r in rules]
    validate_rules(rules)
    assigned: dict[str, NamedParams] = {rule.name: [] for rule in rules}
    for name, param in named_params:
        rule = next((r for r in rules if r.matches(name, param)), None)
        if rule is None:
            raise ValueError(
                f"parameter {name!r} (shape {tuple(param.shape)}) matches no parameter rule "
                f"{[r.name for r in rules]}; add a rule for it or a final catch-all rule "
                f"(one without pattern/ndim conditions, e.g. {{name: rest, optimizer: adam, lr: 0.04}})"
            )
        if rule.optimizer == "muon" and param.ndim < 2:
            raise ValueError(
                f"parameter {name!r} (shape {tuple(param.shape)}) matched Muon rule {rule.name!r}, "
                f"but Muon needs ndim >= 2; add ndim/min_ndim to that rule or an Adam rule before it"
            )
        assigned[rule.name].append((name, param))
    return assigned


def assignment_summary(rules: Sequence[ParamRule | Mapping], assigned: Mapping[str, NamedParams]) -> list[dict]:
    """One loggable row per rule: name, optimizer, lr, weight_decay, num_params, num_tensors."""
    rows = []
    for rule in (as_rule(r) for r in rules):
        members = assigned.get(rule.name, [])
        rows.append(
            dict(
                name=rule.name,
                optimizer=rule.optimizer,
                lr=rule.lr,
                weight_decay=rule.weight_decay,
                num_params=sum(p.numel() for _, p in members),
                num_tensors=len(members),
            )
        )
    return rows


def baseline_rules(tie_embeddings: bool = True) -> list[ParamRule]:
    """The official naive baseline's split (records/.../2026-03-17_NaiveBaseline).

    Tied: tok_emb on Adam lr 0.05. Untied: tok_emb on Adam lr 0.6 and lm_head on Adam lr 0.008.
    Control tensors and every other non-matrix on Adam lr 0.04; matrices on Muon lr 0.04.
    """
    embed = ParamRule("tied_embed", "adam", 0.05, pattern=r"^tok_emb\.") if tie_embeddings else ParamRule(
        "embed", "adam", 0.6, pattern=r"^tok_emb\."
    )
    return [
        embed,
        ParamRule("head", "adam", 0.008, pattern=r"^lm_head\."),
        ParamRule("scalars", "adam", 0.04, pattern=CONTROL_PATTERN),
        ParamRule("matrices", "muon", 0.04, ndim=2),
        ParamRule("scalars_rest", "adam", 0.04),
    ]


# The official default (TIE_EMBEDDINGS=1).
BASELINE_RULES: list[ParamRule] = baseline_rules(tie_embeddings=True)
