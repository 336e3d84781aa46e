"""Tracking: console progress, `metrics.jsonl`, and logger plugins (W&B)."""

from paramgolf.tracking.base import Logger, LoggerWarning, NullLogger
from paramgolf.tracking.jsonl import MetricsJSONL, read_metrics
from paramgolf.tracking.progress import TrainProgress, format_summary
from paramgolf.tracking.wandb_logger import WandbLogger

__all__ = [
    "Logger",
    "LoggerWarning",
    "MetricsJSONL",
    "NullLogger",
    "TrainProgress",
    "WandbLogger",
    "format_summary",
    "read_metrics",
]
