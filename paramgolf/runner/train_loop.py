"""The train loop: micro-batches → explicit gradient sync → optimizer step → hooks.

Time accounting follows the official script: `train_time_s` counts training steps only,
not the compile warm-up (whose steps are rolled back) nor periodic validation, nor writing
checkpoints. A run resumed from a checkpoint continues from its step and elapsed time.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from paramgolf.errors import UserError
from paramgolf.model.training import training_loss
from paramgolf.optim.schedules import training_fraction
from paramgolf.runner.distributed import DistEnv, all_reduce_gradients, all_reduce_scalar

if TYPE_CHECKING:
    from paramgolf.runner.checkpoint import Checkpointer, Resumed


@dataclass
class StepInfo:
    """What hooks see after each optimizer step."""

    step: int  # number of completed steps
    elapsed_s: float  # training time so far
    lr_scale: float
    muon_momentum: float
    loss: float | None  # mean training loss over all ranks; read only every log_every steps (no sync)
    tokens: int  # global tokens seen so far


class TrainHook(Protocol):
    """A hook with state (weight averaging, late QAT) also has `state_dict()` / `load_state_dict(state)`,
    which checkpoints save and restore; one that switches the model later (loop layers) may have
    `warm_up_phases()`: context managers the compile warm-up repeats its steps under."""

    def on_step_start(self, step: int, elapsed_s: float, lr_scale: float) -> None: ...
    def on_step_end(self, info: StepInfo) -> None: ...


@dataclass
class LoopSettings:
    iterations: int
    batch_tokens: int
    seq_len: int
    micro_batches: int
    warmup_steps: int
    max_wallclock_seconds: float | None
    val_every: int
    log_every: int
    lr_schedule: Callable[[int, float], float] = lambda step, elapsed_s: 1.0  # (step, elapsed s) -> LR scale
    softcapped_ce: Callable | None = None  # train.fused_ce: a CE that applies the softcap itself (training_loss)
    grouped_allreduce: bool = False  # train.grouped_allreduce (all_reduce_gradients)


@dataclass
class TrainSummary:
    steps: int
    train_time_s: float
    tokens_seen: int
    stopped_by: str  # "iterations" | "wallclock"
    last_loss: float
    losses: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_seen / max(self.train_time_s, 1e-9)


def micro_batch_plan(settings: LoopSettings, world_size: int) -> tuple[int, int]:
    """(micro-batches per rank, tokens per micro-batch per rank) for one optimizer step."""
    m, ws = settings.micro_batches, world_size
    if m % ws:
        raise UserError(f"train.micro_batches={m} must be divisible by the number of processes ({ws})")
    if settings.batch_tokens % (m * settings.seq_len):
        raise UserError(
            f"train.batch_tokens={settings.batch_tokens} must be divisible by "
            f"train.micro_batches × train.seq_len = {m} × {settings.seq_len}"
        )
    return m // ws, settings.batch_tokens // m


class Trainer:
    """Runs the optimizer steps of one training; all ranks execute it in lockstep.

    `checkpointer`: writes checkpoints when due and once training ends; `resumed`: a checkpoint
    to continue from (the loop restores it after the warm-up, then goes on from its step).
    """

    def __init__(
        self,
        model: nn.Module,
        train_model: nn.Module,
        optimizers,
        make_loader: Callable,
        settings: LoopSettings,
        env: DistEnv,
        autocast_dtype: torch.dtype | None = None,
        hooks: list[TrainHook] | None = None,
        checkpointer: Checkpointer | None = None,
        resumed: Resumed | None = None,
    ):
        self.model = model  # raw module: state dicts, hooks
        self.train_model = train_model  # maybe compiled; used for forward/backward
        self.opt = optimizers
        self.make_loader = make_loader
        self.s = settings
        self.env = env
        self.autocast_dtype = autocast_dtype
        self.hooks = hooks or []
        self.checkpointer = checkpointer
        self.resumed = resumed
        self.per_rank_micro, self.micro_tokens = micro_batch_plan(settings, env.world_size)
        # Gradients the runner averages; an optimizer that syncs some itself (Parallel Muon) keeps those.
        self.sync_params = optimizers.grad_sync_params()

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.env.device.type, dtype=self.autocast_dtype)

    def _step(self, loader, lr_scale: float, momentum: float, wd_scale: float = 1.0) -> torch.Tensor:
        """One optimizer step over the global batch; returns this rank's mean loss (a device tensor)."""
        self.opt.zero_grad()
        total = torch.zeros((), device=self.env.device, dtype=torch.float64)
        for _ in range(self.per_rank_micro):
            # A loader may add the model's keyword arguments (the packing loader: cu_seqlens, max_seqlen).
            x, y, *extra = loader.next_batch(self.micro_tokens, self.s.seq_len)
            x = x.to(self.env.device, non_blocking=True)
            y = y.to(self.env.device, non_blocking=True)
            model_kwargs = {
                k: v.to(self.env.device, non_blocking=True) if torch.is_tensor(v) else v
                for k, v in (extra[0] if extra else {}).items()
            }
            with self._autocast():
                loss = training_loss(
                    self.model, self.train_model, x, y, softcapped_ce=self.s.softcapped_ce, **model_kwargs
                )
            (loss / self.per_rank_micro).backward()
            total += loss.detach().double()
        begin = getattr(self.opt, "begin_step", None)
        if begin is not None:
            begin()  # shared-grad scaling; Parallel Muon launches its reduce-scatters here
        all_reduce_gradients(self.sync_params, self.env.world_size, self.s.grouped_allreduce)  # the explicit sync step
        self.opt.set_lr_scale(lr_scale)
        self.opt.set_muon_momentum(momentum)
        self.opt.set_muon_wd_scale(wd_scale)  # Muon weight-decay taper (1 without one)
        self.opt.clip_grad_norm()
        self.opt.step()
        return total / self.per_rank_micro

    def _global_loss(self, local: torch.Tensor) -> float:
        """Mean over ranks; a host sync, so only at log steps (every rank calls it at the same steps)."""
        return all_reduce_scalar(local.item(), self.env.device) / self.env.world_size

    def warm_up(self) -> None:
        """Compile/priming steps whose effect is rolled back (official WARMUP_STEPS)."""
        if self.s.warmup_steps <= 0:
            return
        model_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        opt_state = copy.deepcopy(self.opt.state_dict())
        loader = self.make_loader()
        # A hook may name model states that training switches to later (loop layers): prime those too.
        phases = [nullcontext()] + [p for h in self.hooks for p in getattr(h, "warm_up_phases", list)()]
        for phase in phases:
            with phase:
                for _ in range(self.s.warmup_steps):
                    self._step(loader, 1.0, self.opt.momentum_at(0))
        self.model.load_state_dict(model_state)
        self.opt.load_state_dict(opt_state)
        self.opt.zero_grad()

    def _sync(self) -> None:
        if self.env.device.type == "cuda":
            torch.cuda.synchronize(self.env.device)

    def train(
        self, validate: Callable[[int], None] | None = None, on_log: Callable[[StepInfo], None] | None = None
    ) -> TrainSummary:
        s = self.s
        loader = self.make_loader()
        cap = s.max_wallclock_seconds if s.max_wallclock_seconds and s.max_wallclock_seconds > 0 else None
        elapsed, step, losses, stopped_by = 0.0, 0, [], "iterations"
        global_tokens = s.batch_tokens
        last_loss = float("nan")
        if self.resumed is not None:
            loop = self.resumed.restore(self, loader)
            step, elapsed, last_loss = loop["step"], loop["elapsed_s"], loop["last_loss"]
            if loop["stopped_by"] is not None:  # the checkpoint written when training ended
                return TrainSummary(step, elapsed, step * global_tokens, loop["stopped_by"], last_loss, [])
        ckpt = self.checkpointer
        if ckpt is not None:
            ckpt.start(elapsed)
        self._sync()
        t0 = time.perf_counter()
        while step < s.iterations:
            now = elapsed + (time.perf_counter() - t0)
            lr_scale = s.lr_schedule(step, now)
            momentum = self.opt.momentum_at(step)
            frac = training_fraction(step, now, iterations=s.iterations, max_wallclock_s=cap)
            wd_scale = self.opt.muon_wd_scale_at(frac)
            for h in self.hooks:
                h.on_step_start(step, now, lr_scale)
            local_loss = self._step(loader, lr_scale, momentum, wd_scale)
            step += 1
            elapsed_now = elapsed + (time.perf_counter() - t0)  # no device sync, like the official loop
            # Every rank must agree on stopping, so the cap decision is reduced with MAX.
            reached = cap is not None and all_reduce_scalar(float(elapsed_now >= cap), self.env.device, "max") > 0
            loss = None
            if step % max(1, s.log_every) == 0 or step == 1 or step == s.iterations or reached:
                loss = last_loss = self._global_loss(local_loss)
                losses.append(loss)
            info = StepInfo(step, elapsed_now, lr_scale, momentum, loss, step * global_tokens)
            for h in self.hooks:
                h.on_step_end(info)
            if on_log is not None:
                on_log(info)
            if validate is not None and s.val_every > 0 and step % s.val_every == 0 and step < s.iterations:
                self._sync()
                elapsed = elapsed + (time.perf_counter() - t0)
                validate(step)  # not counted as training time
                self._sync()
                t0 = time.perf_counter()
            if reached:
                stopped_by = "wallclock"
                break
            if ckpt is not None and step < s.iterations and ckpt.due(step, elapsed_now):
                self._sync()
                elapsed = elapsed + (time.perf_counter() - t0)
                ckpt.save(self, loader, step, elapsed, last_loss, None)  # not counted as training time
                t0 = time.perf_counter()
        self._sync()
        elapsed = elapsed + (time.perf_counter() - t0)
        if ckpt is not None:
            ckpt.save(self, loader, step, elapsed, last_loss, stopped_by)  # where training ended
        return TrainSummary(step, elapsed, step * global_tokens, stopped_by, last_loss, losses)
