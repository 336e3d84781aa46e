"""Optimizers (Muon, Parallel Muon, AdamW via parameter rules), LR/momentum schedules, weight averaging."""

from paramgolf.optim.averaging import EMA, EMASWA, SWA, NoAveraging, WeightAveraging
from paramgolf.optim.builder import OptimizerSet, build_optimizer
from paramgolf.optim.groups import ParamRule, assign_params
from paramgolf.optim.muon import Muon, zeropower_via_newtonschulz5
from paramgolf.optim.parallel_muon import ParallelMuon
from paramgolf.optim.schedules import CosineSchedule, LRSchedule, WarmdownSchedule, momentum_warmup, warmdown_lr_scale
from paramgolf.optim.simple import build_simple_optimizer

__all__ = [
    "EMA",
    "EMASWA",
    "SWA",
    "CosineSchedule",
    "LRSchedule",
    "Muon",
    "NoAveraging",
    "OptimizerSet",
    "ParallelMuon",
    "ParamRule",
    "WarmdownSchedule",
    "WeightAveraging",
    "assign_params",
    "build_optimizer",
    "build_simple_optimizer",
    "momentum_warmup",
    "warmdown_lr_scale",
    "zeropower_via_newtonschulz5",
]
