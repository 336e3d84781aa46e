"""Tracking: console progress, `metrics.jsonl`, and logger plugins (W&B)."""
from paramgolf.tracking.base import Logger, LoggerWarning, NullLogger
from paramgolf.tracking.jsonl import MetricsJSONL, read_metrics
from paramgolf.tracking.progress import TrainProgress, format_summary
from paramgolf.tracking.wandb_logger import WandbLogger
from paramgolf.tracking.wandb_reader import OfflineRun, read_offline_run

__all__ = [
    "Logger",
    "LoggerWarning",
    "MetricsJSONL",
    "NullLogger",
    "OfflineRun",
    "TrainProgress",
    "WandbLogger",
    "format_summary",
    "read_metrics",
    "read_offline_run",
]
