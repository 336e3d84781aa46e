"""Readable rules that send each parameter to an optimizer group (first match wins).

A rule matches a parameter when every condition it sets holds: `role` (the role the module that
owns the parameter declared: embedding, matrix, control, head; see paramgolf.model.layers),
`pattern` (a regex searched in the parameter's name), `ndim`, `min_ndim`, `max_ndim`. A rule that
sets none is a catch-all. Rules see names, shapes and roles, never the model class, so a new
module whose control parameters are declared lands in the right group with no new rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields

from torch import Tensor

from paramgolf.errors import UserError

# "none" freezes: the parameters get gradients but no optimizer (PR #620's BigramHash/SmearGate).
OPTIMIZERS = ("muon", "adam", "none")

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
    role: str | None = None  # the parameter's declared role (control, embedding, matrix, head)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UserError(
                f"parameter rule {self.name!r}: optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"
            )
        if self.lr < 0:
            raise UserError(f"parameter rule {self.name!r}: lr must be >= 0, got {self.lr}")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as err:
                raise UserError(f"parameter rule {self.name!r}: bad regex pattern {self.pattern!r}: {err}") from None

    @property
    def is_catch_all(self) -> bool:
        return (
            self.pattern is None
            and self.ndim is None
            and self.min_ndim is None
            and self.max_ndim is None
            and self.role is None
        )

    def matches(self, name: str, param: Tensor, role: str | None = None) -> bool:
        """True when every condition this rule sets holds for (name, param, its role)."""
        if self.role is not None and role != self.role:
            return False
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
        raise UserError(f"parameter rule must be a mapping with keys name/optimizer/lr/..., got {rule!r}")
    known = {f.name for f in fields(ParamRule)}
    unknown = sorted(set(rule) - known)
    if unknown:
        raise UserError(f"parameter rule {dict(rule)!r}: unknown key(s) {unknown}; allowed keys are {sorted(known)}")
    missing = [k for k in ("name", "optimizer", "lr") if k not in rule]
    if missing:
        raise UserError(f"parameter rule {dict(rule)!r}: missing required key(s) {missing}")
    return ParamRule(**{k: rule[k] for k in rule})


def validate_rules(rules: Sequence[ParamRule]) -> None:
    """Rule names are unique, and no rule hides behind an earlier catch-all."""
    if not rules:
        raise UserError(
            "no parameter rules given: add at least a catch-all rule, e.g. {name: rest, optimizer: adam, lr: 0.04}"
        )
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        if rule.name in seen:
            raise UserError(f"parameter rule name {rule.name!r} is used twice; give each rule its own name")
        seen.add(rule.name)
        if rule.is_catch_all and i != len(rules) - 1:
            later = [r.name for r in rules[i + 1 :]]
            raise UserError(
                f"parameter rule {rule.name!r} is a catch-all but rules {later} follow it "
                f"and could never match; move it last"
            )


def assign_params(
    named_params: Iterable[tuple[str, Tensor]],
    rules: Sequence[ParamRule | Mapping],
    roles: Mapping[str, str] | None = None,
) -> dict[str, NamedParams]:
    """Map every rule name (in rule order) to the (name, param) pairs it takes; first match wins.

    `roles`: parameter name → declared role (`GPT.parameter_roles()`), needed by rules with `role`.
    Rules that take nothing map to an empty list (e.g. `head` with tied embeddings); see
    `assignment_summary`. A parameter no rule takes raises ValueError.
    """
    rules = [as_rule(r) for r in rules]
    validate_rules(rules)
    if roles is None and any(r.role is not None for r in rules):
        raise UserError(
            f"parameter rules {[r.name for r in rules if r.role]} match by role, but the model "
            f"declares no parameter roles"
        )
    assigned: dict[str, NamedParams] = {rule.name: [] for rule in rules}
    for name, param in named_params:
        role = roles.get(name) if roles is not None else None
        rule = next((r for r in rules if r.matches(name, param, role)), None)
        if rule is None:
            raise UserError(
                f"parameter {name!r} (shape {tuple(param.shape)}) matches no parameter rule "
                f"{[r.name for r in rules]}; add a rule for it or a final catch-all rule "
                f"(one without pattern/ndim conditions, e.g. {{name: rest, optimizer: adam, lr: 0.04}})"
            )
        if rule.optimizer == "muon" and param.ndim < 2:
            raise UserError(
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
