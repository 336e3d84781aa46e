"""Weights & Biases logger plugin (`logger=wandb`), offline by default.

Every call into wandb is guarded: an exception (no network, bad key, a broken
install, a bug inside wandb) becomes a `LoggerWarning` and the logger turns
itself off, so the run finishes and writes its results regardless.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from paramgolf.errors import UserError
from paramgolf.fsio import to_jsonable
from paramgolf.tracking.base import Logger, LoggerWarning

MODES = ("online", "offline", "disabled")


def _plain_config(config: Any) -> dict[str, Any]:
    """A resolved plain dict from a dict or an OmegaConf container."""
    if isinstance(config, dict):
        return config
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    raise TypeError(f"config must be a dict or DictConfig, got {type(config).__name__}")


def _plain_value(value: Any) -> Any:
    """Scalars from tensors/numpy, so wandb stores numbers rather than objects."""
    return value.item() if hasattr(value, "item") else value


def _metadata_value(value: Any) -> Any:
    """`json.dumps` default for artifact metadata: JSON values where possible, else the text of the object."""
    try:
        return to_jsonable(value)
    except TypeError:
        return str(value)


def artifact_name(name: str) -> str:
    """W&B artifact names allow only letters, digits, `-`, `_` and `.`."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")
    if not cleaned:
        raise UserError(f"artifact name {name!r} has no usable characters; use letters, digits, - _ .")
    return cleaned


class WandbLogger(Logger):
    """Logs config, metrics, summary and the model artifact to a W&B run stored under the run dir.

    `mode="online"` falls back to an offline run (synced later with `wandb sync`)
    when the server cannot be reached within `init_timeout_s` or the key is refused.
    """

    def __init__(
        self,
        project: str = "paramgolf",
        entity: str | None = None,
        mode: Literal["offline", "online", "disabled"] = "offline",
        init_timeout_s: float = 15.0,
        log_artifact: bool = True,
        tags: Sequence[str] = (),
    ) -> None:
        if mode not in MODES:
            raise UserError(f"logger.mode={mode!r} is not one of {MODES}; set logger.mode to one of them")
        if init_timeout_s <= 0:
            raise UserError(f"logger.init_timeout_s={init_timeout_s} must be > 0 seconds")
        self.project = project
        self.entity = entity
        self.mode = mode
        self.init_timeout_s = float(init_timeout_s)
        self.upload_artifacts = log_artifact
        self.tags = [str(t) for t in tags]
        self.run: Any = None  # the wandb Run while active, else None
        self.active_mode: str | None = None  # mode the run actually got ("offline" after a fallback)

    @property
    def active(self) -> bool:
        return self.run is not None

    def _warn(self, what: str, err: BaseException) -> None:
        warnings.warn(
            f"W&B logger: {what} failed ({type(err).__name__}: {err}); continuing without W&B",
            LoggerWarning,
            stacklevel=3,
        )

    def _guarded(self, what: str, fn: Callable[[], Any]) -> None:
        """Run `fn` against the active run; on any exception warn and turn the logger off."""
        if self.run is None:
            return
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - a tracker must never end a run
            self._warn(what, err)
            self.run = None

    def start(
        self,
        run_dir: Path,
        config: dict[str, Any],
        run_name: str,
        group: str | None,
        job_type: str,
        tags: list[str],
    ) -> None:
        """Create the W&B run in `run_dir/wandb/`; on failure warn and stay off."""
        if self.run is not None:
            raise RuntimeError("WandbLogger.start() called twice; create one logger per run")
        try:
            import wandb

            run_dir = Path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            init_kwargs = dict(
                project=self.project,
                entity=self.entity,
                dir=str(run_dir),
                config=_plain_config(config),
                name=run_name,
                group=group,
                job_type=job_type,
                tags=list(dict.fromkeys([*self.tags, *tags])),  # merged, order kept, no duplicates
                # A fresh run even if an earlier run in this process (a multirun job) was left open.
                reinit="create_new",
            )
        except Exception as err:  # noqa: BLE001 - e.g. wandb not installed or broken
            self._warn("import/setup", err)
            return

        wandb_dir = run_dir / "wandb"
        before = set(wandb_dir.glob("run-*"))
        try:
            settings = wandb.Settings(init_timeout=self.init_timeout_s)
            self.run = wandb.init(mode=self.mode, settings=settings, **init_kwargs)
            self.active_mode = self.mode
            return
        except Exception as err:  # noqa: BLE001
            if self.mode != "online":
                self._warn(f"wandb.init(mode={self.mode!r})", err)
                return
            warnings.warn(
                f"W&B logger: online init failed ({type(err).__name__}: {err}); "
                f"falling back to offline, sync later with `wandb sync {wandb_dir}`",
                LoggerWarning,
                stacklevel=2,
            )
        # The failed attempt leaves a service that prints at exit (after our summary) and a run
        # directory with nothing to sync: stop the one now, remove the other.
        with contextlib.suppress(Exception):
            wandb.teardown()
        for failed in set(wandb_dir.glob("run-*")) - before:
            shutil.rmtree(failed, ignore_errors=True)
        try:
            # No explicit id: the failed online attempt may have reserved one.
            self.run = wandb.init(mode="offline", **init_kwargs)
            self.active_mode = "offline"
        except Exception as err:  # noqa: BLE001
            self._warn("offline fallback wandb.init", err)

    def log(self, metrics: dict[str, float | int], step: int) -> None:
        self._guarded("log", lambda: self.run.log({k: _plain_value(v) for k, v in metrics.items()}, step=int(step)))

    def summary(self, values: dict[str, Any]) -> None:
        self._guarded("summary", lambda: self.run.summary.update({k: _plain_value(v) for k, v in values.items()}))

    def log_artifact(self, path: Path, name: str, type: str = "model", metadata: dict[str, Any] | None = None) -> None:
        """Store the file or directory at `path` as a versioned artifact (skipped when log_artifact=False)."""
        if not self.upload_artifacts:
            return

        def _log() -> None:
            import wandb

            src = Path(path)
            # JSON round trip: Paths and numpy scalars in metadata become strings/numbers wandb accepts.
            as_json = json.dumps(metadata or {}, default=_metadata_value)
            meta = json.loads(as_json)
            artifact = wandb.Artifact(artifact_name(name), type=type, metadata=meta)
            if src.is_dir():
                artifact.add_dir(str(src), policy="immutable", skip_cache=True)  # no staging copy outside the run dir
            elif src.is_file():
                artifact.add_file(str(src), policy="immutable", skip_cache=True)
            else:
                raise FileNotFoundError(f"artifact path {src} does not exist")
            self.run.log_artifact(artifact)

        self._guarded("log_artifact", _log)

    def finish(self, exit_code: int = 0) -> None:
        self._guarded("finish", lambda: self.run.finish(exit_code=int(exit_code)))
        self.run = None
