"""The fine-tuning stage's typed config; ``configs/finetune/*.yaml`` mirror it, key for key.

Key names shared with the rest of the project are fixed by docs/contracts.md ("Config keys other
tools rely on"): model, train_file, valid_file, test_file, text_column, label_column, out_dir, epochs,
lr, batch_size, max_len, seed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from data_prep.typed_config import Section, StrList
from pretrain.tracking import check_report_to


class SplitConfig(Section):
    """Seeded split of ``train_file`` for the splits that have no file of their own."""

    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Fraction of train_file held out for validation when valid_file is not set."""
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Fraction of train_file held out for testing when test_file is not set (0: no test split)."""


# Selection metric per task when `metric` is unset, and the metrics each task reports.
DEFAULT_METRIC = {
    "sequence_classification": "accuracy",
    "regression": "pearson",
    "token_classification": "f1",
}
TASK_METRICS = {
    "sequence_classification": ("accuracy", "macro_f1"),
    "regression": ("pearson", "spearman"),
    "token_classification": ("f1", "accuracy"),
}


class TokenFilesConfig(Section):
    """Where the words and tags are in token_classification files."""

    word_column: int = 0
    """CoNLL column files (any suffix but .jsonl): 0-based column of the word (whitespace-separated columns)."""
    tag_column: int = -1
    """CoNLL column files: column of the tag; negative counts from the end (-1: the last column)."""
    tokens_field: str = "tokens"
    """JSONL token files: the field holding the list of words."""
    tags_field: str = "tags"
    """JSONL token files: the field holding the list of tags, one per word."""
    tag_scheme: Literal["auto", "bio", "iobes", "bmes", "bilou"] = "auto"
    """How the tags mark entity spans (finetune/tag_schemes.py): bio (B-/I-), iobes (B-/I-/E-/S-),
    bmes (B-/M-/E-/S-) or bilou (B-/I-/L-/U-); auto: found from the training tags. Entity F1 is
    scored, and served spans read, with the scheme's own rules."""


class LoraConfig(Section):
    """LoRA / AdaLoRA settings (peft), used when method is lora or adalora."""

    r: int = Field(8, ge=1)
    """Rank of the update matrices (AdaLoRA: the average rank it prunes down to)."""
    init_r: int = Field(12, ge=1)
    """AdaLoRA only: the rank every matrix starts with before the budget is reallocated."""
    alpha: float = Field(16.0, gt=0)
    """Scaling: the update is multiplied by alpha / r."""
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Dropout on the LoRA input."""
    target_modules: StrList = ["query", "value"]
    """Module names (suffixes) that get LoRA matrices; BERT's are query, key, value, dense."""


class AugmentConfig(Section):
    """Training-set augmentation: extra copies of the training rows, made once before training."""

    methods: list[Literal["mlm_fill", "swap", "delete"]] = []
    """mlm_fill: refill a share of the words with the base MLM's samples; swap: swap random word
    pairs; delete: drop random words. Each method adds `copies` altered copies of every training row."""
    copies: int = Field(1, ge=1)
    """Altered copies per training row and method."""
    share: float = Field(0.15, gt=0.0, lt=1.0)
    """Share of a row's words that a method touches (at least one word)."""
    temperature: float = Field(1.0, gt=0.0)
    """mlm_fill: sampling temperature for the MLM's word choices."""


class FinetuneConfig(Section):
    """One fine-tuning run: a base checkpoint, a labelled data set, and the training recipe."""

    model: str
    """Base checkpoint dir: a pretrain run's export/ or any local Hugging Face BERT dir (config.json + tokenizer)."""
    init: Literal["pretrained", "random"] = "pretrained"
    """pretrained: load the encoder weights; random: same config and tokenizer, fresh weights (the contrast run)."""

    task: Literal["sequence_classification", "regression", "token_classification"] = "sequence_classification"
    """sequence_classification (one class per text or text pair), regression (one float label), or
    token_classification (one tag per word: CoNLL column files or JSONL tokens/tags)."""
    method: Literal["full", "lora", "adalora"] = "full"
    """full: train every weight; lora / adalora: train low-rank updates (peft) plus the new head."""
    lora: LoraConfig = LoraConfig()
    merge: bool = False
    """lora/adalora: save model/ as a plain merged model (adapter in model/adapter/); false: model/ is the adapter."""

    train_file: str
    """Labelled training data: .tsv, .csv (both with a header row) or .jsonl (one object per line);
    token_classification: a CoNLL column file (any other suffix) or .jsonl."""
    valid_file: str | None = None
    """Validation data for early stopping and model selection; unset: split.valid_fraction of train_file."""
    test_file: str | None = None
    """Test data, evaluated once with the selected model; unset: split.test_fraction of train_file."""
    text_column: StrList = ["text"]
    """Column holding the text, or a list of candidates of which the first present in each file wins."""
    text_pair_column: str | None = None
    """Optional second text column for sentence-pair tasks (encoded as [CLS] text [SEP] pair [SEP])."""
    label_column: str = "label"
    """Column holding the label: integers or strings, mapped to class ids in sorted order."""
    tokens: TokenFilesConfig = TokenFilesConfig()
    label_names: dict[str, str] = {}
    """Optional display names for label values, e.g. {0: negative, 1: positive}; saved as the model's id2label."""
    drop_empty: bool = False
    """Drop rows whose text is empty (counted and reported) instead of refusing the file."""
    split: SplitConfig = SplitConfig()
    augment: AugmentConfig = AugmentConfig()
    max_train_samples: int | None = Field(None, ge=1)
    """Train on a seeded random subset of this many training rows (quick runs); unset: all."""

    out_dir: str
    """Output dir: model/ (model + tokenizer), metrics.jsonl, predictions.tsv, config.yaml, eval.json (last)."""
    epochs: float = Field(3.0, gt=0)
    """Passes over the training data; fractions allowed (0.5 = half an epoch)."""
    lr: float = Field(2e-5, gt=0)
    """Peak learning rate (AdamW); 2e-5..5e-5 for base-size models (BERT paper, appendix A.3), higher for tiny ones."""
    batch_size: int = Field(32, ge=1)
    """Global batch size: split evenly across ranks, so results do not depend on the rank count."""
    eval_batch_size: int = Field(128, ge=1)
    """Per-rank batch size for evaluation (no gradients, so larger than batch_size is fine)."""
    max_len: int = Field(128, ge=8)
    """Longest input in tokens, [CLS] and [SEP] included; longer texts are truncated (a pair: the
    longer side first); longer token_classification sentences are split into windows at word boundaries."""
    seed: int = 42
    """Seeds the splits, the subset, the data order, the classifier initialisation and dropout."""
    seeds: list[int] = []
    """Run the whole fine-tuning once per seed (out_dir/seed-N/) and report mean and std of every
    metric in eval.json; model/ is the seed with the best validation metric. Empty: one run with seed."""

    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0)
    """Fraction of the training steps spent warming the learning rate up linearly; it then decays linearly to 0."""
    weight_decay: float = Field(0.01, ge=0.0)
    """Decoupled weight decay (AdamW) on weight matrices; none on biases and LayerNorm."""
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    """Override the base model's dropout (hidden, attention and classifier); unset: keep the base config's."""
    grad_clip: float = Field(1.0, ge=0.0)
    """Clip the global gradient norm to this value (0: no clipping)."""
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    """Training and evaluation precision; fp16 needs an accelerator that DeepSpeed supports it on (not CPU)."""
    zero_stage: int = Field(0, ge=0, le=3)
    """DeepSpeed ZeRO stage; 0 is right for models that fit a device, 1-3 shard optimizer state/grads/weights."""

    metric: Literal["accuracy", "macro_f1", "f1", "pearson", "spearman"] | None = None
    """Validation metric for model selection and early stopping; unset: accuracy (classification),
    pearson (regression), f1 (entity micro F1, token_classification)."""
    eval_every: int = Field(0, ge=0)
    """Evaluate on the validation split every this many optimizer steps; 0: at the end of every epoch."""
    patience: int = Field(0, ge=0)
    """Stop after this many evaluations without improvement of the metric; 0: never stop early."""
    log_every: int = Field(50, ge=1)
    """Write a training row (loss, lr, throughput) to metrics.jsonl every this many steps."""
    threads: int | None = Field(None, ge=1)
    """CPU threads per rank; unset: torch's default, divided among the ranks sharing this host."""
    report_to: StrList = []
    """Experiment trackers (rank 0): any of tensorboard (out_dir/tb), wandb (out_dir/wandb; offline
    without a key or network), csv (out_dir/csv); pretrain/tracking.py."""

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, value: list[str]) -> list[str]:
        return check_report_to(value)

    @property
    def selection_metric(self) -> str:
        return self.metric or DEFAULT_METRIC[self.task]

    @field_validator("text_column")
    @classmethod
    def _at_least_one_name(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one column name")
        return value

    @model_validator(mode="after")
    def _fits_the_task(self) -> FinetuneConfig:
        if self.metric is not None and self.metric not in TASK_METRICS[self.task]:
            raise ValueError(
                f"metric={self.metric} does not apply to task={self.task}; "
                f"use one of {', '.join(TASK_METRICS[self.task])}"
            )
        if self.augment.methods and self.task == "token_classification":
            raise ValueError(
                "augment applies to sequence tasks only; set augment.methods=[] for token_classification"
            )
        if self.method != "full" and self.init == "random" and not self.merge:
            raise ValueError(
                f"method={self.method} with init=random needs merge=true: the random base is saved nowhere else"
            )
        if len(set(self.seeds)) < len(self.seeds):
            raise ValueError(f"seeds {self.seeds} repeat a seed")
        return self
