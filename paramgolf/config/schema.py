"""Structured-config schemas: one dataclass per option of every config group.

Each YAML under conf/ names its schema first in its defaults list and `_self_` last, so a
misspelt key, a wrong type or an unknown option fails when Hydra composes the config.
Components are built by Hydra (`_target_`); a schema's fields mirror its target's
keyword arguments (tests/config checks that they agree).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# ---------------------------------------------------------------- arch (paramgolf.model)


@dataclass
class GQAAttentionConfig:
    _target_: str = "paramgolf.model.attention.CausalSelfAttention"
    _partial_: bool = True
    num_heads: int = 8
    num_kv_heads: int = 4
    rope_base: float = 10000.0
    qk_gain_init: float = 1.5
    rope_dims: Optional[int] = None  # partial RoPE: rotate only the first r dims of each head
    rope_train_seq_len: Optional[int] = None  # NTK-aware base scaling beyond this length
    xsa_layers: list[int] = field(default_factory=list)  # XSA on these layers…
    xsa_last_n: int = 0  # …and on the last n layers
    gated: bool = False  # per-head sigmoid output gate (bias init 4.0)
    value_residual: bool = False  # blend the first layer's values into later layers'


@dataclass
class LeakyReluSquaredMLPConfig:
    _target_: str = "paramgolf.model.mlp.LeakyReluSquaredMLP"
    _partial_: bool = True
    mult: float = 2.0
    negative_slope: float = 0.0  # 0: ReLU² (baseline); 0.5: LeakyReLU(0.5)²


@dataclass
class BigramHashConfig:
    _target_: str = "paramgolf.model.bigram_hash.BigramHash"
    _partial_: bool = True
    buckets: int = 2048
    dim: int = 128
    scale_init: float = 0.05


@dataclass
class ValueEmbeddingsConfig:
    _target_: str = "paramgolf.model.value_embedding.ValueEmbeddings"
    _partial_: bool = True
    dim: int = 128
    layers: Optional[list[int]] = None  # None: the last two layers
    scale_init: float = 0.1


@dataclass
class MTPHeadsConfig:
    _target_: str = "paramgolf.model.mtp.MTPHeads"
    _partial_: bool = True
    count: int = 2
    weight: float = 0.15


@dataclass
class SmearGateConfig:
    _target_: str = "paramgolf.model.smear_gate.SmearGate"
    _partial_: bool = True


@dataclass
class TokenEmbeddingConfig:
    _target_: str = "paramgolf.model.embedding.TokenEmbedding"
    _partial_: bool = True
    init_std: float = 0.005


@dataclass
class GPTConfig:
    _target_: str = "paramgolf.model.gpt.GPT"
    attention: Any = MISSING
    mlp: Any = MISSING
    embedding: Any = MISSING
    bigram: Any = None  # arch/bigram=hash
    smear: Any = None  # arch/smear=gate
    value_embedding: Any = None  # arch/value_embedding=ve128
    mtp: Any = None  # arch/mtp=two: training-only heads, dropped at export
    vocab_size: int = 1024
    num_layers: int = 9
    model_dim: int = 512
    tie_embeddings: bool = True
    logit_softcap: float = 30.0
    unet_skips: bool = True
    depth_scale: str = "none"  # 1/sqrt(layer+1) on branch inputs ("input", LN scale) or outputs ("output")
    orthogonal_init: bool = False
    recurrence: Optional[list[int]] = None  # depth recurrence: core index of each logical layer


# ---------------------------------------------------------------- optimizer (paramgolf.optim)


@dataclass
class ParamRuleConfig:
    name: str = MISSING
    optimizer: str = MISSING  # "muon" | "adam" | "none" (frozen: no optimizer)
    lr: float = MISSING
    pattern: Optional[str] = None
    ndim: Optional[int] = None
    min_ndim: Optional[int] = None
    max_ndim: Optional[int] = None
    weight_decay: float = 0.0


@dataclass
class MuonAdamConfig:
    _target_: str = "paramgolf.optim.builder.build_optimizer"
    _partial_: bool = True
    rules: list[ParamRuleConfig] = field(default_factory=list)
    muon_momentum: float = 0.95
    muon_backend_steps: int = 5
    muon_nesterov: bool = True
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 500
    muon_ns_dtype: str = "auto"  # bf16 on CUDA (official), fp32 on CPU
    muon_impl: str = "muon"  # muon (per matrix) | parallel (Parallel Muon: banks, reduce-scatter, all-gather)
    parallel_muon_comm: str = "auto"  # auto | reduce_scatter | all_reduce (fallback for backends without it)
    scale_shared_grads: bool = False  # depth recurrence: gradient of a core used n times × 1/n (#537)
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    adam_eps: float = 1e-8
    grad_clip_norm: float = 0.0


# ---------------------------------------------------------------- quant (paramgolf.quant)


@dataclass
class Int8PerRowConfig:
    _target_: str = "paramgolf.quant.int8.Int8PerRow"
    clip_quantile: float = 0.9999984
    keep_float_max_numel: int = 65536
    keep_fp32_patterns: list[str] = field(default_factory=lambda: [
        "attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes",
        "q_gain", "skip_weight", "skip_weights"])
    keep_float_dtype: str = "float16"
    scale_dtype: str = "float16"


@dataclass
class ZlibConfig:
    _target_: str = "paramgolf.quant.codecs.Zlib"
    level: int = 9


@dataclass
class ZstdConfig:
    _target_: str = "paramgolf.quant.codecs.Zstd"
    level: int = 22


@dataclass
class LzmaConfig:
    _target_: str = "paramgolf.quant.codecs.Lzma"
    preset: int = 9
    extreme: bool = True


@dataclass
class SevenZipConfig:
    _target_: str = "paramgolf.quant.codecs.SevenZip"
    method: str = "lzma2"  # lzma2 | lzma | ppmd | bzip2 | deflate
    preset: int = 9
    filter: Optional[str] = None  # null | bcj | delta
    delta_distance: int = 1
    ppmd_order: int = 6
    ppmd_mem: int = 28  # 2^28 bytes of model memory (smaller ones hit a pyppmd read-back bug)


@dataclass
class BrotliConfig:
    _target_: str = "paramgolf.quant.codecs.Brotli"
    quality: int = 11
    lgwin: int = 24


@dataclass
class QuantRuleConfig:
    name: str = MISSING
    scheme: str = MISSING  # fp32 | fp16 | bf16 | int
    pattern: Optional[str] = None  # regex searched in the tensor name
    min_numel: Optional[int] = None
    max_numel: Optional[int] = None
    ndim: Optional[int] = None
    bits: int = 8
    clip: str = "quantile"  # rowmax | quantile | search (GPTQ-lite) | gptq (full GPTQ)
    clip_quantile: float = 0.9999984
    clip_candidates: list[float] = field(default_factory=lambda: [0.999, 0.9995, 0.9999, 0.99999, 1.0])
    search_per_row: bool = False
    scale_floor: Optional[float] = None  # the records floor the scale at 1/qmax


@dataclass
class MixedQuantizerConfig:
    _target_: str = "paramgolf.quant.mixed.MixedQuantizer"
    table: list[QuantRuleConfig] = field(default_factory=list)
    prune_fraction: float = 0.0
    prune_scope: str = "per_tensor"  # per_tensor (#537) | global (#620)
    prune_min_numel: int = 65537
    prune_ndim: int = 2
    gptq_block_size: int = 128
    gptq_damp: float = 0.01
    gptq_act_order: bool = True


@dataclass
class QATConfig:
    enabled: bool = False
    start_lr_scale: Optional[float] = 0.15  # null: from the first step


@dataclass
class CalibrationConfig:
    source: str = "train"  # train | self_generated (validation data is refused)
    batches: int = 32
    batch_seqs: int = 8
    seq_len: Optional[int] = None  # null: train.seq_len
    temperature: float = 1.0  # self_generated sampling
    reserve_s: float = 10.0  # seconds of train.max_wallclock_seconds kept for calibration (it counts as training)


@dataclass
class QuantConfig:
    quantizer: Any = MISSING
    codec: Any = MISSING
    packing: str = "auto"  # auto (measure both, keep the smaller) | int8 (containers) | bits (packed)
    keep_float_max_numel: int = 65536  # tensors this small stay floats; quantizer configs interpolate it
    qat: QATConfig = field(default_factory=QATConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)


# ---------------------------------------------------------------- ttt / eval_cache / eval


@dataclass
class NoTTTConfig:
    """No test-time training: the artifact's weights score the validation set unchanged."""
    _target_: str = "paramgolf.evaluation.ttt.NoTTT"


@dataclass
class NoEvalCacheConfig:
    """No evaluation-time cache: the model's softmax is the scored distribution."""
    _target_: str = "paramgolf.evaluation.eval_cache.NoEvalCache"


class EvalMethod(Enum):
    non_overlapping = "non_overlapping"  # the official: seq_len chunks, the tail dropped
    sliding = "sliding"  # every token once, up to seq_len of context, windows every `stride`


class AutocastMode(Enum):
    auto = "auto"  # bf16 on CUDA, none on CPU
    bf16 = "bf16"
    none = "none"


class DeviceChoice(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class WandbMode(Enum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


@dataclass
class EvalConfig:
    method: EvalMethod = EvalMethod.non_overlapping
    seq_len: Optional[int] = None  # None: train.seq_len
    stride: int = 64  # sliding only
    batch_tokens: int = 524_288  # tokens per forward batch over all ranks (official VAL_BATCH_SIZE)
    pre_quant: bool = True  # also evaluate the averaged weights before quantization
    progress: bool = True


# ---------------------------------------------------------------- data (paramgolf.data)


@dataclass
class FineWebDataConfig:
    _target_: str = "paramgolf.data.dataset.FineWebData"
    data_dir: str = "data/datasets/fineweb10B_sp1024"
    tokenizer_path: str = "data/tokenizers/fineweb_1024_bpe.model"
    val_max_tokens: int = 0


@dataclass
class SyntheticDataConfig:
    _target_: str = "paramgolf.data.dataset.SyntheticData"
    seed: int = 0  # the data set's own seed (independent of the training seed)
    vocab_size: int = 512
    lexicon_size: int = 1000
    train_docs: int = 12000
    val_docs: int = 400
    zipf_exponent: float = 1.1
    num_successors: int = 4
    successor_weight: float = 0.7
    comma_prob: float = 0.08
    period_prob: float = 0.15
    min_sentence_words: int = 3
    end_prob: float = 0.2
    shard_tokens: int = 1_000_000
    tokenizer_train_docs: int = 2000
    val_max_tokens: int = 0
    cache_dir: str = "~/.cache/paramgolf/synthetic"


# ---------------------------------------------------------------- train (paramgolf.runner / optim)


@dataclass
class NoAveragingConfig:
    _target_: str = "paramgolf.optim.averaging.NoAveraging"


@dataclass
class EMAConfig:
    _target_: str = "paramgolf.optim.averaging.EMA"
    decay: float = 0.997
    every: int = 1
    start_step: int = 0


@dataclass
class SWAConfig:
    _target_: str = "paramgolf.optim.averaging.SWA"
    every: int = 50
    start_lr_scale: Optional[float] = 0.2  # snapshot once the LR scale is below this (null: use start_step)
    start_step: int = 0


@dataclass
class EMASWAConfig:
    _target_: str = "paramgolf.optim.averaging.EMASWA"
    ema: EMAConfig = field(default_factory=EMAConfig)
    swa: SWAConfig = field(default_factory=SWAConfig)
    select: str = "ema"  # ema | swa | swa_if_snapshots | best_on_validation (test-set selection: non-compliant)
    swa_source: str = "raw"  # raw | ema (what SWA snapshots)
    min_snapshots: int = 2  # swa_if_snapshots: SWA needs at least this many


@dataclass
class WarmdownScheduleConfig:
    _target_: str = "paramgolf.optim.schedules.WarmdownSchedule"
    _partial_: bool = True
    warmup_iters: int = 0  # linear LR warm-up (the baseline has none); not train.warmup_steps
    warmdown_iters: int = 1200
    warmdown_frac: Optional[float] = None  # instead: the last fraction of the wallclock cap (or iterations)
    min_scale: float = 0.0


@dataclass
class CosineScheduleConfig:  # the same keys as warmdown: only the shape of the decay differs
    _target_: str = "paramgolf.optim.schedules.CosineSchedule"
    _partial_: bool = True
    warmup_iters: int = 0
    warmdown_iters: int = 1200
    warmdown_frac: Optional[float] = 1.0  # 1.0: one cosine over the whole run
    min_scale: float = 0.0  # floor: min_lr = base lr × min_scale


@dataclass
class TrainConfig:
    averaging: Any = MISSING
    schedule: Any = MISSING
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


# ---------------------------------------------------------------- logger (paramgolf.tracking)


@dataclass
class NullLoggerConfig:
    _target_: str = "paramgolf.tracking.base.NullLogger"


@dataclass
class WandbLoggerConfig:
    _target_: str = "paramgolf.tracking.wandb_logger.WandbLogger"
    project: str = "paramgolf"
    entity: Optional[str] = None
    mode: WandbMode = WandbMode.offline
    init_timeout_s: float = 15.0
    log_artifact: bool = True
    tags: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- root


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
    seed: int = 1337
    budget_bytes: int = 16_000_000
    name: str = "run"  # candidate name: W&B group, run-name prefix


SCHEMAS: dict[str, list[tuple[str, type]]] = {
    "": [("config_schema", Config)],
    "arch": [("gpt_schema", GPTConfig)],
    "arch/attention": [("gqa_schema", GQAAttentionConfig)],
    "arch/mlp": [("leaky_relu2_schema", LeakyReluSquaredMLPConfig)],
    "arch/bigram": [("hash_schema", BigramHashConfig)],
    "arch/smear": [("gate_schema", SmearGateConfig)],
    "arch/value_embedding": [("ve_schema", ValueEmbeddingsConfig)],
    "arch/mtp": [("mtp_schema", MTPHeadsConfig)],
    "arch/embedding": [("token_schema", TokenEmbeddingConfig)],
    "optimizer": [("muon_adam_schema", MuonAdamConfig)],
    "quant": [("quant_schema", QuantConfig)],
    "quant/quantizer": [("mixed_schema", MixedQuantizerConfig), ("int8_row_schema", Int8PerRowConfig)],
    "quant/codec": [("zlib_schema", ZlibConfig), ("zstd_schema", ZstdConfig), ("lzma_schema", LzmaConfig),
                    ("sevenzip_schema", SevenZipConfig), ("brotli_schema", BrotliConfig)],
    "ttt": [("none_schema", NoTTTConfig)],
    "eval_cache": [("none_schema", NoEvalCacheConfig)],
    "eval": [("eval_schema", EvalConfig)],
    "data": [("fineweb_schema", FineWebDataConfig), ("synthetic_schema", SyntheticDataConfig)],
    "train": [("train_schema", TrainConfig)],
    "train/averaging": [("none_schema", NoAveragingConfig), ("ema_schema", EMAConfig), ("swa_schema", SWAConfig),
                        ("ema_swa_schema", EMASWAConfig)],
    "train/schedule": [("warmdown_schema", WarmdownScheduleConfig), ("cosine_schema", CosineScheduleConfig)],
    "logger": [("none_schema", NullLoggerConfig), ("wandb_schema", WandbLoggerConfig)],
}


def register_schemas(extra: dict[str, list[tuple[str, type]]] | None = None) -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    for group, entries in {**SCHEMAS, **(extra or {})}.items():
        for name, node in entries:
            cs.store(group=group or None, name=name, node=node)
