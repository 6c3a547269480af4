"""The pretraining run config: one typed model, loaded from ``configs/pretrain/*.yaml`` + overrides.

``configs/pretrain/demo.yaml`` mirrors these fields with comments. A user's DeepSpeed JSON is first
folded into it (``deepspeed_json.resolve``); DeepSpeed's config is then derived from it in
``ds_config.build_deepspeed_config``; nothing else builds DeepSpeed settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from data_prep.typed_config import Section, StrList, build_config, deep_merge, parse_overrides, read_yaml
from pretrain.tracking import check_report_to

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_PRESETS_DIR = REPO_ROOT / "configs" / "model"


class OptimizerConfig(Section):
    name: Literal["adamw", "lamb"] = "adamw"
    """adamw (torch's fused kernel; DeepSpeedCPUAdam with offload) or lamb (You et al. 2019; DeepSpeed's
    fused kernel on CUDA; only with zero_stage 0). README: which optimizer with which ZeRO stage."""
    lr: float = Field(1e-4, gt=0)
    """Peak learning rate, reached at the end of warm-up."""
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    weight_decay: float = Field(0.01, ge=0)
    """Decoupled weight decay on weight matrices; biases and LayerNorm are never decayed."""
    bias_correction: bool = True
    """lamb only: divide Adam's moments by (1 - beta^step); DeepSpeed's BERT LAMB recipe sets false."""
    max_trust_ratio: float = Field(10.0, gt=0)
    """lamb only: upper clamp of the trust ratio ||w|| / ||update|| (DeepSpeed's max_coeff)."""
    min_trust_ratio: float = Field(0.0, ge=0)
    """lamb only: lower clamp of the trust ratio (DeepSpeed's min_coeff)."""

    LAMB_ONLY: ClassVar[tuple[str, ...]] = ("bias_correction", "max_trust_ratio", "min_trust_ratio")

    def applicable(self) -> dict[str, Any]:
        """The settings that mean something for this optimizer (the lamb-only ones only for lamb)."""
        values = self.model_dump()
        return values if self.name == "lamb" else {k: v for k, v in values.items() if k not in self.LAMB_ONLY}

    @model_validator(mode="after")
    def _lamb_only(self) -> OptimizerConfig:
        defaults = {name: type(self).model_fields[name].default for name in self.LAMB_ONLY}
        if self.name != "lamb" and any(getattr(self, name) != default for name, default in defaults.items()):
            raise ValueError(
                "optimizer.bias_correction, max_trust_ratio and min_trust_ratio apply to lamb only; "
                "remove them or set optimizer.name=lamb"
            )
        if self.min_trust_ratio > self.max_trust_ratio:
            raise ValueError("optimizer.min_trust_ratio must not exceed optimizer.max_trust_ratio")
        return self


class ScheduleConfig(Section):
    warmup_steps: int = Field(100, ge=0)
    """Linear warm-up from 0 to optimizer.lr over this many optimizer steps."""
    decay: Literal["linear", "polynomial", "cosine", "constant"] = "linear"
    """Shape of the decay from the peak to end_lr_ratio * lr at max_steps."""
    power: float = 1.0
    """Exponent of the polynomial decay (1.0 = linear)."""
    end_lr_ratio: float = Field(0.0, ge=0, le=1)


class LoaderConfig(Section):
    workers: int = Field(1, ge=0)
    """DataLoader worker processes per rank reading shards and masking (0 = in the training process)."""
    prefetch_batches: int = Field(4, ge=1)
    """Batches each worker prepares ahead of the trainer."""
    cache_dir: str | None = None
    """A remote data_dir's shards are kept here (local disk) after the first fetch; unset: no cache."""
    cache_gb: float | None = Field(None, gt=0)
    """Bound on cache_dir's size; least recently used shards are evicted first. Unset: unbounded."""
    retries: int = Field(5, ge=0)
    """Retries of a transient fetch failure (HTTP 5xx, reset, timeout, cut-short body) of a remote data_dir."""
    retry_backoff_s: float = Field(0.5, ge=0)
    """Wait before the first retry; doubled for each next one."""
    timeout_s: float = Field(60.0, gt=0)
    """Bound on one fetch of a remote file (HTTP); a slower one counts as a transient failure."""
    lanes: int | None = Field(None, ge=1)
    """Reading lanes the training stream's sample order is cut into (pretrain/data.py); default 4 per
    rank. Fixed when a run starts and kept on resume. Ranks and workers read disjoint shards when
    the lanes are a multiple of ranks x workers."""


class PretrainConfig(Section):
    data_dir: str
    """A data dir written by data_prep (manifest.json, tokenizer/, shards/): a path, or a URL
    (https://, s3:// or gs:// with the cloud extra) read without a shared filesystem."""
    run_dir: str
    """Where checkpoints, metrics, TensorBoard events and the export go; relaunching resumes from it."""
    model: str = "tiny"
    """A preset in configs/model (tiny, mini, small, base, large) or a path to a BertConfig JSON."""
    init_from: str | None = None
    """A local Hugging Face BERT dir (a run's export/, or a BertForPreTraining / BertForMaskedLM /
    BertModel with its tokenizer) whose weights and architecture start this run (``model`` is then
    ignored). The data must be prepared with its tokenizer (data_prep ``tokenizer.path=PATH``).
    pretrain/init_from.py."""
    seq_len: int = Field(128, ge=8)
    """Must equal the data dir's seq_len."""
    micro_batch_size: int = Field(32, ge=1)
    """Sequences per rank per forward pass."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step; global batch = micro_batch_size * grad_accum * ranks."""
    max_steps: int = Field(1000, ge=1)
    """Optimizer steps of the whole run (a resumed run continues to this number)."""
    precision: Literal["fp32", "fp16", "bf16"] = "bf16"
    zero_stage: int = Field(1, ge=0, le=3)
    """DeepSpeed ZeRO stage: 0 off, 1 optimizer states, 2 + gradients, 3 + parameters partitioned."""
    optimizer: OptimizerConfig = OptimizerConfig()
    offload: Literal["none", "optimizer", "optimizer+params"] = "none"
    """ZeRO-Offload: optimizer states and step on the CPU (DeepSpeedCPUAdam; zero_stage 1-3), and with
    optimizer+params also the parameters (zero_stage 3). Saves accelerator memory, costs speed."""
    schedule: ScheduleConfig = ScheduleConfig()
    grad_clip: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this (0 = off)."""
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    """Fraction of non-special tokens selected for MLM; of those 80% [MASK], 10% random, 10% kept."""
    masking: Literal["token", "whole_word"] = "token"
    """``whole_word`` chooses all pieces of a word together (BERT-wwm), the same count per sequence;
    words from the tokenizer's pieces; a CJK piece is a word of its own (pretrain/masking.py)."""
    save_every: int = Field(500, ge=1)
    """Checkpoint every this many optimizer steps (and always at the end)."""
    keep_last: int = Field(3, ge=1)
    """Checkpoints kept on disk; older ones are deleted once a newer one is complete."""
    eval_every: int = Field(500, ge=1)
    """Evaluate on the valid split every this many steps (and at the end)."""
    eval_samples: int = Field(2048, ge=1)
    """Valid samples per evaluation (the first ones of the split, the same every time)."""
    log_every: int = Field(10, ge=1)
    seed: int = 1234
    loader: LoaderConfig = LoaderConfig()
    deepspeed_config: str | None = None
    """A DeepSpeed JSON (also ``--deepspeed_config FILE``): its batch geometry, precision, ZeRO,
    clipping and optimizer become these keys (the command line still wins; the YAML loses), its
    scheduler is built by DeepSpeed, its other blocks go to DeepSpeed as written
    (pretrain/deepspeed_json.py; README, "Using your DeepSpeed config")."""
    threads: int | None = Field(None, ge=1)
    """torch intra-op threads per rank (default: the cores of this machine divided among its ranks)."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    sparse_mlm_head: bool = True
    """Run the MLM head on the masked positions only (same loss as the stock head, ~15% of its
    work); false runs transformers' head over every position, the unoptimised reference."""
    cpu_dropout: bool = True
    """On CPUs, draw dropout masks 4 elements per random number (pretrain/cpu_dropout.py)."""
    mlm_loss_kernel: Literal["auto", "blockwise", "dense"] = "auto"
    """MLM cross-entropy: dense (one F.cross_entropy in fp32 over the masked rows), blockwise (fp32 on
    cache-sized blocks, no fp32 copy of the logits), auto = dense on CUDA, blockwise on CPUs."""
    tf32: bool = True
    """fp32 matmuls on TF32 tensor cores on GPUs (what the datasheet fp32 peak assumes); false = true fp32."""
    compile: bool = False
    """torch.compile each encoder layer, fusing the element-wise work around the matmuls. Off by
    default: on the 2-core CPU it was measured on, -5.5% (1 rank) / +1.9% (2 ranks) (README, Speed).
    Costs seconds at start-up; needs a C++ compiler on CPUs; not applied with zero_stage 3."""
    activation_checkpointing: bool = False
    """Recompute each encoder layer's activations in the backward pass instead of keeping them
    (transformers' gradient checkpointing, non-reentrant): less memory for large models and long
    sequences, for about a third more compute (README, Speed)."""
    skip_bad_samples: int = Field(0, ge=0)
    """Budget of corrupt samples to skip (counted and logged); 0 = stop at the first one."""
    max_nonfinite_steps: int = Field(5, ge=1)
    """Stop the run after this many consecutive micro-steps with a NaN/inf loss (each is skipped)."""
    dist_timeout_s: float = Field(300.0, gt=0)
    """Bound on every collective: when a rank dies the others fail after this, instead of hanging."""
    log_samples: bool = False
    """Write the sample keys of every step to run_dir/samples/rank*.jsonl (to audit exact resume)."""
    export: bool = True
    """Write run_dir/export (Hugging Face model + tokenizer) at the end of the run."""
    report_to: StrList = ["tensorboard"]
    """Experiment trackers (rank 0): any of tensorboard (run_dir/tb), wandb (run_dir/wandb; offline
    without a key or network), csv (run_dir/csv); [] for none. pretrain/tracking.py."""

    # Where each explicitly set key came from (COMMAND_LINE or CONFIG_FILE), by dotted name; keys
    # left out are defaults. Filled by load_pretrain_config, read by pretrain/deepspeed_json.py.
    _levels: dict[str, str] = PrivateAttr(default_factory=dict)

    def levels(self) -> dict[str, str]:
        return self._levels

    def set_levels(self, levels: dict[str, str]) -> None:
        self._levels = dict(levels)

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, value: list[str]) -> list[str]:
        return check_report_to(value)

    @model_validator(mode="after")
    def _check_combinations(self) -> PretrainConfig:
        if self.optimizer.name == "lamb" and self.zero_stage > 0:
            raise ValueError(
                "optimizer.name=lamb needs zero_stage=0: LAMB's per-tensor trust ratio needs whole "
                "parameters, which ZeRO partitions"
            )
        if self.offload != "none" and self.optimizer.name != "adamw":
            raise ValueError(f"offload={self.offload} needs optimizer.name=adamw (DeepSpeedCPUAdam)")
        if self.offload == "optimizer" and self.zero_stage == 0:
            raise ValueError(
                "offload=optimizer needs zero_stage 1, 2 or 3: ZeRO-Offload moves ZeRO's optimizer partition"
            )
        if self.offload == "optimizer+params" and self.zero_stage != 3:
            raise ValueError(
                "offload=optimizer+params needs zero_stage=3: only stage 3 partitions the parameters"
            )
        return self


def resolve_model_config_path(model: str) -> Path:
    """A preset name (``mini``) or a path to a BertConfig JSON."""
    path = Path(model)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"model config {model!r} does not exist")
        return path
    preset = MODEL_PRESETS_DIR / f"{model}.json"
    if not preset.is_file():
        names = ", ".join(sorted(p.stem for p in MODEL_PRESETS_DIR.glob("*.json")))
        raise FileNotFoundError(
            f"model preset {model!r} not found; use one of: {names}, or a path to a BertConfig JSON"
        )
    return preset


COMMAND_LINE, CONFIG_FILE, DEFAULT = "command line", "config file", "default"


def load_pretrain_config(path: str | None, overrides: list[str]) -> PretrainConfig:
    """The YAML at ``path`` (optional) with the ``key=value`` overrides, remembering which keys
    each of them set (the precedence against a DeepSpeed JSON, pretrain/deepspeed_json.py)."""
    from_file = read_yaml(path) if path is not None else {}
    from_command_line = parse_overrides(overrides)
    cfg = build_config(PretrainConfig, deep_merge(from_file, from_command_line))
    cfg.set_levels(
        {
            **dict.fromkeys(_dotted_keys(from_file), CONFIG_FILE),
            **dict.fromkeys(_dotted_keys(from_command_line), COMMAND_LINE),
        }
    )
    return cfg


def _dotted_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        keys += _dotted_keys(value, f"{name}.") if isinstance(value, dict) else [name]
    return keys
