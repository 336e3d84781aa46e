"""Optimizers (Muon + AdamW via parameter rules), LR/momentum schedules and weight averaging."""
from paramgolf.optim.averaging import EMA, NoAveraging, WeightAveraging
from paramgolf.optim.builder import OptimizerSet, build_optimizer
from paramgolf.optim.groups import BASELINE_RULES, ParamRule, assign_params, baseline_rules
from paramgolf.optim.muon import Muon, zeropower_via_newtonschulz5
from paramgolf.optim.schedules import momentum_warmup, warmdown_lr_scale

__all__ = [
    "BASELINE_RULES",
    "EMA",
    "Muon",
    "NoAveraging",
    "OptimizerSet",
    "ParamRule",
    "WeightAveraging",
    "assign_params",
    "baseline_rules",
    "build_optimizer",
    "momentum_warmup",
    "warmdown_lr_scale",
    "zeropower_via_newtonschulz5",
]
