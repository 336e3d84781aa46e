"""Structured-config schemas, generated from the components' own signatures.

Every default is written once: in the constructor (or factory) a `_target_` names. `component()`
turns that signature into a dataclass (hydra-zen's `builds(..., populate_full_signature=True)`),
so a misspelt key, a wrong type or an unknown option fails when Hydra composes the config. The
settings groups that configure the runner rather than a component (`train`, `quant`, the root)
are dataclasses here. Each YAML under conf/ names its schema first in its defaults list and
`_self_` last, and holds only the values that differ from these defaults.

`python -m paramgolf.config.describe [GROUP]` prints every field with its type, default and doc.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional, Union

from hydra.core.config_store import ConfigStore
from hydra_zen import BuildsFn
from omegaconf import MISSING

from paramgolf.data.dataset import FineWebData, SyntheticData
from paramgolf.data.loader import DistributedTokenLoader
from paramgolf.data.packing import DocumentPackingLoader
from paramgolf.evaluation.eval_cache import NoEvalCache
from paramgolf.evaluation.lora_doc import LoRADocPublished, LoRADocTTT
from paramgolf.evaluation.ngram import NGramCache, NGramTargetHashed
from paramgolf.evaluation.score_first import ScoreFirstTTT
from paramgolf.evaluation.slot import SlotCausal, SlotPublished
from paramgolf.evaluation.ttt import NoTTT
from paramgolf.evaluation.windows import NonOverlapping, Sliding
from paramgolf.model.attention import CausalSelfAttention
from paramgolf.model.attn_gate import AttnOutputGate
from paramgolf.model.bigram_hash import BigramHash
from paramgolf.model.embedding import TokenEmbedding
from paramgolf.model.gpt import GPT
from paramgolf.model.kernels.fused_ce import softcapped_cross_entropy
from paramgolf.model.kernels.fused_mlp import FusedLeakyReluSquaredMLP
from paramgolf.model.loop import LoopLayers
from paramgolf.model.mlp import LeakyReluSquaredMLP
from paramgolf.model.mtp import MTPHeads
from paramgolf.model.parallel import TwoLaneResidual
from paramgolf.model.smear_gate import InputSmearGate, SmearGate
from paramgolf.model.value_embedding import ValueEmbeddings
from paramgolf.optim.averaging import EMA, EMASWA, SWA, NoAveraging
from paramgolf.optim.builder import build_optimizer
from paramgolf.optim.groups import ParamRule
from paramgolf.optim.muon import Muon
from paramgolf.optim.parallel_muon import ParallelMuon
from paramgolf.optim.schedules import CosineSchedule, WarmdownSchedule
from paramgolf.quant.calibration import Calibration
from paramgolf.quant.codecs import Brotli, Lzma, SevenZip, Zlib, Zstd
from paramgolf.quant.mixed import MixedQuantizer, QuantRule
from paramgolf.quant.pergroup import PerGroup
from paramgolf.tracking.base import NullLogger
from paramgolf.tracking.wandb_logger import WandbLogger


class _Builds(BuildsFn):
    """hydra-zen's builds, reading `X | None` as Optional[X] and sequences as lists (what OmegaConf checks)."""

    _choices: dict[tuple[str, ...], type[Enum]] = {}

    @classmethod
    def _sanitized_type(cls, type_: Any, **kw: Any) -> Any:
        if typing.get_origin(type_) is typing.Literal and all(isinstance(a, str) for a in typing.get_args(type_)):
            return cls.choices(typing.get_args(type_))
        if isinstance(type_, types.UnionType):
            type_ = Union[typing.get_args(type_)]
        origin = typing.get_origin(type_)
        if origin is Union:
            args = [cls._listify(a) for a in typing.get_args(type_)]
            type_ = Union[tuple(args)]
        else:
            type_ = cls._listify(type_)
        return super()._sanitized_type(type_, **kw)

    @classmethod
    def choices(cls, values: tuple[str, ...]) -> type[Enum]:
        """Literal["a", "b"] as an Enum OmegaConf checks at compose time (components still get the string)."""
        if values not in cls._choices:
            name = "Choice_" + "_".join(values)
            cls._choices[values] = globals()[name] = Enum(
                name, {v: v for v in values}, module=__name__, qualname=name, type=str
            )
        return cls._choices[values]

    @staticmethod
    def _listify(type_: Any) -> Any:
        if typing.get_origin(type_) is collections.abc.Sequence:
            (arg,) = typing.get_args(type_) or (Any,)
            return list[arg]
        return type_


def component(target: Any, *, partial: bool = False, runtime: Sequence[str] = (), **defaults: Any) -> type:
    """The schema of `target`: its keyword arguments with their types and defaults.

    `partial`: the runner completes the call (`_partial_: true`); `runtime`: arguments the runner
    (or the enclosing module) passes, left out of the config; `defaults`: nested component defaults.
    """
    return _Builds.builds(
        target, populate_full_signature=True, zen_partial=partial or None, zen_exclude=tuple(runtime), **defaults
    )


def with_fields(base: type, **typed: tuple[Any, Any]) -> type:
    """`base` with some fields (re)typed: name=(type, field(...)), e.g. a list of checked table rows."""
    return dataclasses.make_dataclass(base.__name__, [(k, t, f) for k, (t, f) in typed.items()], bases=(base,))


def fields_of(dc: type, name: str) -> type:
    """A plain schema with the fields of dataclass `dc` (table rows: no `_target_`, checked keys and types)."""
    hints = typing.get_type_hints(dc)
    specs = []
    for f in dataclasses.fields(dc):
        default = f.default if f.default is not dataclasses.MISSING else MISSING
        if isinstance(default, tuple):
            specs.append(
                (f.name, _Builds._sanitized_type(hints[f.name]), field(default_factory=lambda d=default: list(d)))
            )
        else:
            specs.append((f.name, _Builds._sanitized_type(hints[f.name]), field(default=default)))
    return dataclasses.make_dataclass(name, specs)


# ---------------------------------------------------------------- arch (paramgolf.model)
GQAAttentionConfig = component(CausalSelfAttention, partial=True, runtime=("layer", "num_layers"))
LeakyReluSquaredMLPConfig = component(LeakyReluSquaredMLP, partial=True)
FusedLeakyReluSquaredMLPConfig = component(FusedLeakyReluSquaredMLP, partial=True)
BigramHashConfig = component(BigramHash, partial=True)
ValueEmbeddingsConfig = component(ValueEmbeddings, partial=True)
MTPHeadsConfig = component(MTPHeads, partial=True)
SmearGateConfig = component(SmearGate, partial=True)
InputSmearGateConfig = component(InputSmearGate, partial=True)
AttnOutputGateConfig = component(AttnOutputGate, partial=True)
LoopLayersConfig = component(LoopLayers, partial=True)
TwoLaneResidualConfig = component(TwoLaneResidual, partial=True)
TokenEmbeddingConfig = component(TokenEmbedding, partial=True)
GPTConfig = component(GPT)

# ---------------------------------------------------------------- optimizer (paramgolf.optim)
ParamRuleConfig = fields_of(ParamRule, "ParamRuleConfig")
MuonAdamConfig = with_fields(
    component(build_optimizer, partial=True, runtime=("param_uses", "param_roles", "muon")),
    rules=(list[ParamRuleConfig], field(default_factory=list)),
    muon=(Any, field(default=MISSING)),
)  # group optimizer/muon
_MUON_RUNTIME = ("params", "lr", "momentum", "backend_steps", "nesterov", "weight_decay", "ns_dtype")  # from the rules
PerMatrixMuonConfig = component(Muon, partial=True, runtime=_MUON_RUNTIME)
ParallelMuonConfig = component(ParallelMuon, partial=True, runtime=_MUON_RUNTIME)

# ---------------------------------------------------------------- quant (paramgolf.quant)
QuantRuleConfig = fields_of(QuantRule, "QuantRuleConfig")
MixedQuantizerConfig = with_fields(
    component(MixedQuantizer), table=(list[QuantRuleConfig], field(default_factory=list))
)
ZlibConfig, ZstdConfig, LzmaConfig, SevenZipConfig, BrotliConfig = (
    component(c) for c in (Zlib, Zstd, Lzma, SevenZip, Brotli)
)
PerGroupConfig = component(PerGroup)
CalibrationConfig = component(Calibration)


@dataclass
class QATConfig:
    enabled: bool = False
    start_lr_scale: Optional[float] = 0.15  # fake quantization once the LR scale is below this (null: from step 0)


@dataclass
class QuantConfig:
    quantizer: Any = MISSING
    codec: Any = MISSING
    packing: str = "auto"  # auto (measure both, keep the smaller) | int8 (containers) | bits (packed)
    keep_float_max_numel: int = 65536  # tensors this small stay floats; quantizer tables interpolate it
    qat: QATConfig = field(default_factory=QATConfig)
    calibration: Any = field(default_factory=CalibrationConfig)


# ---------------------------------------------------------------- ttt / eval_cache / eval (paramgolf.evaluation)
NoTTTConfig = component(NoTTT)
ScoreFirstTTTConfig = component(ScoreFirstTTT)
SlotCausalConfig = component(SlotCausal)
LoRADocTTTConfig = component(LoRADocTTT)
LoRADocPublishedConfig = component(LoRADocPublished)
SlotPublishedConfig = component(SlotPublished)
NoEvalCacheConfig = component(NoEvalCache)
NGramCacheConfig = component(NGramCache)
NGramTargetHashedConfig = component(NGramTargetHashed)
NonOverlappingEvalConfig = component(NonOverlapping)
SlidingEvalConfig = component(Sliding)

# ---------------------------------------------------------------- data (paramgolf.data)
FineWebDataConfig = component(FineWebData)
SyntheticDataConfig = component(SyntheticData)
_LOADER_RUNTIME = ("files", "rank", "world_size", "seed")  # the runner passes these
StreamLoaderConfig = component(DistributedTokenLoader, partial=True, runtime=_LOADER_RUNTIME)
PackedLoaderConfig = component(DocumentPackingLoader, partial=True, runtime=_LOADER_RUNTIME)

# ---------------------------------------------------------------- train (paramgolf.runner, paramgolf.optim)
NoAveragingConfig = component(NoAveraging)
EMAConfig = component(EMA)
SWAConfig = component(SWA)
EMASWAConfig = component(EMASWA, ema=EMAConfig(), swa=SWAConfig())
WarmdownScheduleConfig = component(WarmdownSchedule, partial=True)
CosineScheduleConfig = component(CosineSchedule, partial=True)


class AutocastMode(Enum):
    auto = "auto"  # bf16 on CUDA, none on CPU
    bf16 = "bf16"
    none = "none"


class DeviceChoice(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


SoftcappedCEConfig = component(softcapped_cross_entropy, partial=True, runtime=("logits", "targets", "softcap"))


@dataclass
class TrainConfig:
    averaging: Any = MISSING
    schedule: Any = MISSING
    loader: Any = MISSING  # train/loader: stream (the official loader) | packed (documents + cu_seqlens)
    iterations: int = 20_000
    batch_tokens: int = 524_288  # global tokens per optimizer step
    seq_len: int = 1024
    micro_batches: int = 8  # global micro-batches per step; each rank runs micro_batches / world_size
    warmup_steps: int = 20  # compile warm-up steps, rolled back afterwards (not an LR warm-up)
    max_wallclock_seconds: Optional[float] = 600.0  # None: stop by iterations only
    expected_steps: Optional[int] = None  # steps paramgolf-budget assumes (null: iterations); set it for capped runs
    val_every: int = 0  # periodic validation (0: only at the end)
    log_every: int = 50
    loader_seed: int = 0  # 0: the official shard order; other values permute shards (see data.loader)
    nproc_per_node: int = 1  # >1: this process starts N workers with torch's elastic launcher
    device: DeviceChoice = DeviceChoice.auto
    compile: str = "auto"  # auto (CUDA only) | "true" | "false"
    autocast: AutocastMode = AutocastMode.auto
    bf16_embeddings: bool = True  # official: the embedding table itself is bf16 under autocast
    collective_timeout_s: float = 300.0
    progress: bool = True
    # Checkpoints for train.resume (README "Resume"); writing one is not counted as training time.
    checkpoint_every_steps: int = 0  # after every N-th step (0: off)
    checkpoint_every_s: Optional[float] = 120.0  # after N s of training time since the last one (null: off)
    checkpoint_keep: int = 2  # newest kept, so a damaged newest one falls back to the one before
    resume: Optional[str] = None  # a killed run's directory: continue from its newest usable checkpoint
    fused_ce: Any = None  # train/fused_ce=triton: the fused softcapped CE kernel in training (null: eager)
    grouped_allreduce: bool = False  # small gradients share one all-reduce, large ones go alone (#1530)


# ---------------------------------------------------------------- logger (paramgolf.tracking)
NullLoggerConfig = component(NullLogger)
WandbLoggerConfig = component(WandbLogger)


# ---------------------------------------------------------------- root
class BudgetCheck(str, Enum):
    refuse = "refuse"
    warn = "warn"
    off = "off"


@dataclass
class Config:
    arch: Any = MISSING
    optimizer: Any = MISSING
    quant: Any = MISSING
    ttt: Any = MISSING
    eval_cache: Any = MISSING
    eval: Any = MISSING
    data: Any = MISSING
    train: Any = MISSING
    logger: Any = MISSING
    seed: int = 1337  # training seed (the data set has its own: data.seed)
    budget_bytes: int = 16_000_000  # decimal bytes: code + compressed model
    name: str = "default"  # candidate name: W&B group, run-name prefix; presets set their own
    # Before training, the artifact-size estimate (`paramgolf-budget`) against budget_bytes:
    # refuse = stop when it does not fit, warn = say so and train, off = skip the estimate.
    budget_check: BudgetCheck = BudgetCheck.refuse


SCHEMAS: dict[str, list[tuple[str, type]]] = {
    "": [("config_schema", Config)],
    "arch": [("gpt_schema", GPTConfig)],
    "arch/attention": [("gqa_schema", GQAAttentionConfig)],
    "arch/attention/output_gate": [("output_gate_schema", AttnOutputGateConfig)],
    "arch/mlp": [
        ("leaky_relu2_schema", LeakyReluSquaredMLPConfig),
        ("leaky_relu2_fused_schema", FusedLeakyReluSquaredMLPConfig),
    ],
    "arch/bigram": [("hash_schema", BigramHashConfig)],
    "arch/smear": [("gate_schema", SmearGateConfig), ("input_gate_schema", InputSmearGateConfig)],
    "arch/loop": [("loop_schema", LoopLayersConfig)],
    "arch/parallel": [("two_lane_schema", TwoLaneResidualConfig)],
    "arch/value_embedding": [("ve_schema", ValueEmbeddingsConfig)],
    "arch/mtp": [("mtp_schema", MTPHeadsConfig)],
    "arch/embedding": [("token_schema", TokenEmbeddingConfig)],
    "optimizer": [("muon_adam_schema", MuonAdamConfig)],
    "optimizer/muon": [("per_matrix_schema", PerMatrixMuonConfig), ("parallel_schema", ParallelMuonConfig)],
    "quant": [("quant_schema", QuantConfig)],
    "quant/quantizer": [("mixed_schema", MixedQuantizerConfig)],
    "quant/codec": [
        ("zlib_schema", ZlibConfig),
        ("zstd_schema", ZstdConfig),
        ("lzma_schema", LzmaConfig),
        ("sevenzip_schema", SevenZipConfig),
        ("brotli_schema", BrotliConfig),
        ("pergroup_schema", PerGroupConfig),
    ],
    "ttt": [
        ("none_schema", NoTTTConfig),
        ("score_first_schema", ScoreFirstTTTConfig),
        ("slot_causal_schema", SlotCausalConfig),
        ("slot_published_schema", SlotPublishedConfig),
        ("lora_doc_schema", LoRADocTTTConfig),
        ("lora_doc_published_schema", LoRADocPublishedConfig),
    ],
    "eval_cache": [
        ("none_schema", NoEvalCacheConfig),
        ("ngram_schema", NGramCacheConfig),
        ("ngram_target_hashed_schema", NGramTargetHashedConfig),
    ],
    "eval": [("non_overlapping_schema", NonOverlappingEvalConfig), ("sliding_schema", SlidingEvalConfig)],
    "data": [("fineweb_schema", FineWebDataConfig), ("synthetic_schema", SyntheticDataConfig)],
    "train": [("train_schema", TrainConfig)],
    "train/fused_ce": [("triton_schema", SoftcappedCEConfig)],
    "train/averaging": [
        ("none_schema", NoAveragingConfig),
        ("ema_schema", EMAConfig),
        ("swa_schema", SWAConfig),
        ("ema_swa_schema", EMASWAConfig),
    ],
    "train/schedule": [("warmdown_schema", WarmdownScheduleConfig), ("cosine_schema", CosineScheduleConfig)],
    "train/loader": [("stream_schema", StreamLoaderConfig), ("packed_schema", PackedLoaderConfig)],
    "logger": [("none_schema", NullLoggerConfig), ("wandb_schema", WandbLoggerConfig)],
}


def _name_schemas() -> None:
    """Give each generated schema its module-level name, so configs that hold them pickle (submitit)."""
    for name, obj in list(globals().items()):
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and name.endswith("Config"):
            obj.__module__, obj.__qualname__, obj.__name__ = __name__, name, name


_name_schemas()


def register_schemas(extra: dict[str, list[tuple[str, type]]] | None = None) -> None:
    """Store every schema in Hydra's ConfigStore (idempotent).

    A group's schemas live under `schema/<group>` (YAMLs name them `/schema/<group>/<name>@_here_`),
    so they are not options of the group itself; the root schema is `config_schema`.
    """
    cs = ConfigStore.instance()
    for group, entries in {**SCHEMAS, **(extra or {})}.items():
        for name, node in entries:
            cs.store(group=f"schema/{group}" if group else None, name=name, node=node)
