"""A DeepSpeed user's own JSON driving a pretraining run (``--deepspeed_config FILE``).

Precedence, key by key: command-line ``key=value`` > the DeepSpeed JSON > the YAML run config >
defaults. What the JSON says about batch geometry, precision, ZeRO, clipping and the optimizer is
translated into run-config keys, so the trainer, its checks, its resume fingerprint and
run_dir/config.yaml all see one resolved config. The JSON's ``scheduler`` block is handed to
DeepSpeed, which builds it with its own implementation (``deepspeed.runtime.lr_schedules``, or a
``torch.optim.lr_scheduler`` class by name), its step count and warm-up kept consistent with the
run's. Every other block is passed to DeepSpeed as written.

Refused in one line (``ConfigError``, exit 2): a block this DeepSpeed version removed, an optimizer
or scheduler type this trainer cannot run, a batch geometry that does not divide. A key that has no
effect in this trainer is one warning line naming it: nothing is silently ignored.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_prep.typed_config import ConfigError, build_config, deep_merge
from pretrain.config import COMMAND_LINE, DEFAULT, PretrainConfig, resolve_model_config_path
from pretrain.ds_config import read_user_deepspeed_config

JSON = "deepspeed_config"

# Blocks removed from DeepSpeed, with the reason; DeepSpeed's own table is read when it has one
# (deepspeed.runtime.config), so a newer version's list is used as it grows.
_REMOVED_FALLBACK = {
    "sparse_attention": "DeepSpeed Sparse Attention has been removed",
    "progressive_layer_drop": "Progressive Layer Dropping has been removed",
}
# A removed block that could not apply to this model even where DeepSpeed still had it.
_NOT_FOR_THIS_MODEL = {
    "sparse_attention": "it replaced DeepSpeed's own BERT kernels, not transformers' BertSelfAttention",
    "progressive_layer_drop": "it needed DeepSpeed's own BERT layers to skip",
}
# Blocks DeepSpeed understands that do nothing in this trainer, and why.
NO_EFFECT = {
    "steps_per_print": "this trainer logs itself every log_every steps (metrics.jsonl, TensorBoard)",
    "dataloader_drop_last": "DeepSpeed's data loader is not used; shards stream through pretrain/data.py",
    "data_efficiency": "DeepSpeed's data loader is not used; shards stream through pretrain/data.py",
    "activation_checkpointing": "DeepSpeed's checkpointing API is not called; set activation_checkpointing: true in the run config",
    "pipeline": "this trainer is data-parallel only",
}
# What DeepSpeed does when a JSON leaves these out; they replace this project's defaults.
DEEPSPEED_DEFAULTS = {"zero_stage": 0, "precision": "fp32", "grad_clip": 0.0}
OPTIMIZER_TYPES = {"adam": "adamw", "adamw": "adamw", "lamb": "lamb"}
_ONEBIT = ("onebitadam", "onebitlamb", "zerooneadam")
# DeepSpeed optimizer params -> run-config keys (optimizer.*)
_OPTIMIZER_PARAMS = {
    "lr": "optimizer.lr",
    "betas": "optimizer.betas",
    "eps": "optimizer.eps",
    "weight_decay": "optimizer.weight_decay",
}
_LAMB_PARAMS = {
    "bias_correction": "optimizer.bias_correction",
    "max_coeff": "optimizer.max_trust_ratio",
    "min_coeff": "optimizer.min_trust_ratio",
}
# ZeRO sizes the Hugging Face Trainer fills in for "auto" (its integrations/deepspeed.py), from the
# model's hidden size h: what its users' JSONs expect.
_MODEL_SIZED_AUTO = {
    "reduce_bucket_size": lambda h: h * h,
    "stage3_prefetch_bucket_size": lambda h: 0.9 * h * h,
    "stage3_param_persistence_threshold": lambda h: 10 * h,
}
_WARMUP_SCHEDULES = ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR")
_TOTAL_STEPS_SCHEDULES = ("WarmupDecayLR", "WarmupCosineLR")


@dataclass
class Resolved:
    """The run config after the JSON, what goes to DeepSpeed besides the derived keys, and where
    each setting came from."""

    cfg: PretrainConfig
    deepspeed: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # setting -> where its value came from
    warnings: list[str] = field(default_factory=list)

    def settings(self, world_size: int) -> dict[str, dict[str, Any]]:
        """Each derived setting with its value and source (the banner, run_dir/settings.json)."""
        cfg = self.cfg
        rows: dict[str, tuple[Any, str]] = {
            "micro_batch_size": (cfg.micro_batch_size, self.source("micro_batch_size")),
            "grad_accum": (cfg.grad_accum, self.source("grad_accum")),
            "global_batch": (
                cfg.micro_batch_size * cfg.grad_accum * world_size,
                self.sources.get("global_batch", f"micro_batch_size x grad_accum x {world_size} rank(s)"),
            ),
            "precision": (cfg.precision, self.source("precision")),
            "zero_stage": (cfg.zero_stage, self.source("zero_stage")),
            "offload": (cfg.offload, self.source("offload")),
            "grad_clip": (cfg.grad_clip, self.source("grad_clip")),
            "max_steps": (cfg.max_steps, self.source("max_steps")),
        }
        if cfg.precision == "fp16":
            fp16 = {key: value for key, value in self.deepspeed.get("fp16", {}).items() if key != "enabled"}
            rows["loss_scaling"] = (fp16 or "dynamic (defaults)", JSON if fp16 else DEFAULT)
        for key, value in cfg.optimizer.applicable().items():
            rows[f"optimizer.{key}"] = (value, self.source(f"optimizer.{key}"))
        scheduler = self.deepspeed.get("scheduler")
        if scheduler:
            rows["schedule.deepspeed"] = (scheduler, JSON)
        else:
            for key, value in cfg.schedule.model_dump().items():
                rows[f"schedule.{key}"] = (value, self.source(f"schedule.{key}"))
        return {key: {"value": value, "source": source} for key, (value, source) in rows.items()}

    def describe(self, world_size: int) -> str:
        """The settings for the banner: a line per group, each value with its source."""
        rows = self.settings(world_size)
        groups = {
            "batch": ("micro_batch_size", "grad_accum", "global_batch"),
            "numerics": ("precision", "loss_scaling", "zero_stage", "offload", "grad_clip", "max_steps"),
            "optimizer": tuple(key for key in rows if key.startswith("optimizer.")),
            "schedule": tuple(key for key in rows if key.startswith("schedule")),
        }
        lines = ["settings (value [where it came from]):"]
        for group, keys in groups.items():
            shown = [
                f"{key.split('.', 1)[-1]} {_show(rows[key]['value'])} [{rows[key]['source']}]"
                for key in keys
                if key in rows
            ]
            lines.append(f"  {group}: " + ", ".join(shown))
        return "\n".join(lines)

    def source(self, key: str) -> str:
        return self.sources.get(key) or self.cfg.levels().get(key, DEFAULT)


def resolve(cfg: PretrainConfig, world_size: int) -> Resolved:
    """Apply ``cfg.deepspeed_config`` (if any) under the precedence above, for ``world_size`` ranks."""
    if not cfg.deepspeed_config:
        return Resolved(cfg)
    name = cfg.deepspeed_config
    try:
        user = copy.deepcopy(read_user_deepspeed_config(name))
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from None
    _refuse_removed(user, name)
    adopter = _Adopter(cfg, user, name, world_size)
    adopter.batch()
    adopter.precision()
    adopter.zero()
    adopter.clipping()
    adopter.optimizer()
    adopter.scheduler()
    adopter.deepspeed_defaults()
    adopter.no_effect()
    adopter.refuse_auto(user)
    return adopter.result()


class _Adopter:
    """Moves what the JSON states into run-config keys, under the precedence, key by key."""

    def __init__(self, cfg: PretrainConfig, user: dict[str, Any], name: str, world_size: int):
        self.cfg, self.user, self.name, self.world = cfg, user, name, world_size
        self.adopted: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.warnings: list[str] = []
        self.deferred: set[str] = set()  # "auto" in the JSON: the run config decides

    # -- the precedence ---------------------------------------------------------------------------

    def on_command_line(self, key: str) -> bool:
        return self.cfg.levels().get(key) == COMMAND_LINE

    def current(self, key: str) -> Any:
        """The value a key has so far: adopted from the JSON, else the run config's."""
        if key in self.adopted:
            return self.adopted[key]
        value: Any = self.cfg
        for part in key.split("."):
            value = getattr(value, part)
        return value

    def adopt(self, key: str, value: Any, source: str = JSON) -> None:
        """The JSON's value for ``key``, unless the command line set it (then a note says so)."""
        if _is_auto(value):
            self.deferred.add(key)
            return
        if self.on_command_line(key):
            if value != self.current(key):
                self.warnings.append(
                    f"note: {key}={self.current(key)!r} from the command line overrides {source}'s {value!r}"
                )
            return
        self.adopted[key] = value
        self.sources[key] = source

    def fail(self, message: str) -> None:
        raise ConfigError(f"deepspeed_config {self.name!r}: {message}")

    # -- the blocks ---------------------------------------------------------------------------------

    def batch(self) -> None:
        """train_batch_size / train_micro_batch_size_per_gpu / gradient_accumulation_steps, any two
        of them (or one), resolved for the world size as DeepSpeed does; a missing one is derived."""
        user = self.user
        total = _stated(user.pop("train_batch_size", None))
        micro = _stated(user.pop("train_micro_batch_size_per_gpu", None))
        accum = _stated(user.pop("gradient_accumulation_steps", None))
        if micro is not None:
            self.adopt("micro_batch_size", micro)
        if accum is not None:
            self.adopt("grad_accum", accum)
        if total is None:
            return
        pinned_micro = self.on_command_line("micro_batch_size") or micro is not None
        pinned_accum = self.on_command_line("grad_accum") or accum is not None
        micro, accum = self.current("micro_batch_size"), self.current("grad_accum")
        if pinned_micro and pinned_accum:
            if micro * accum * self.world != total:
                if self.on_command_line("micro_batch_size") or self.on_command_line("grad_accum"):
                    self.warnings.append(
                        f"note: train_batch_size={total} from {JSON} is overridden by the command line: "
                        f"global batch {micro} x {accum} x {self.world} rank(s) = {micro * accum * self.world}"
                    )
                    return
                self.fail(
                    f"train_batch_size {total} is not train_micro_batch_size_per_gpu {micro} x "
                    f"gradient_accumulation_steps {accum} x {self.world} rank(s); give any two of the three"
                )
            self.sources["global_batch"] = JSON
            return
        # One of micro/accum follows from the total (with only the total, the micro batch is the
        # run config's, sized for memory, and the accumulation follows: DeepSpeed would instead put
        # the whole per-rank batch into one micro-batch).
        if pinned_accum:
            micro, rest = divmod(total, accum * self.world)
            derived, key, other = micro, "micro_batch_size", f"gradient_accumulation_steps {accum}"
        else:
            accum, rest = divmod(total, micro * self.world)
            derived, key, other = accum, "grad_accum", f"micro batch {micro}"
        if rest or derived < 1:
            self.fail(
                f"train_batch_size {total} is not a multiple of {other} x {self.world} rank(s); "
                f"choose a train_batch_size that divides, or launch another number of ranks"
            )
        self.adopted[key] = derived
        self.sources[key] = f"derived from {JSON}'s train_batch_size {total}"
        self.sources["global_batch"] = JSON

    def precision(self) -> None:
        fp16, bf16 = self.user.get("fp16"), self.user.get("bf16", self.user.get("bfloat16"))
        fp16_on = isinstance(fp16, dict) and fp16.get("enabled") is True
        bf16_on = isinstance(bf16, dict) and bf16.get("enabled") is True
        if fp16_on and bf16_on:
            self.fail("enables both fp16 and bf16; enable one")
        stated = any(isinstance(block, dict) and "enabled" in block for block in (fp16, bf16))
        if fp16_on:
            self.adopt("precision", "fp16")
        elif bf16_on:
            self.adopt("precision", "bf16")
        elif any(isinstance(block, dict) and _is_auto(block.get("enabled")) for block in (fp16, bf16)):
            self.adopt("precision", "auto")
        elif stated:
            self.adopt("precision", "fp32")
        for block in (fp16, bf16):  # the derived config states which is on
            if isinstance(block, dict):
                block.pop("enabled", None)
        if "bfloat16" in self.user:
            self.user["bf16"] = deep_merge(self.user.pop("bfloat16"), self.user.get("bf16", {}))

    def zero(self) -> None:
        zero = self.user.get("zero_optimization")
        if not isinstance(zero, dict):
            return
        if "stage" in zero:
            self.adopt("zero_stage", _stated(zero.pop("stage")))
        for key, per_hidden in _MODEL_SIZED_AUTO.items():
            if _is_auto(zero.get(key)):  # the Hugging Face Trainer's fill, from the model's width
                zero[key] = int(per_hidden(_hidden_size(self.cfg)))
                self.sources[f"zero_optimization.{key}"] = 'filled for "auto" from the model\'s hidden size'
        devices = {  # the device is the run config's offload; the block's other keys pass through
            part: zero[f"offload_{part}"].pop("device", "none")
            for part in ("optimizer", "param")
            if isinstance(zero.get(f"offload_{part}"), dict)
        }
        for part, device in devices.items():
            if device not in ("cpu", "none"):
                self.fail(
                    f"zero_optimization.offload_{part}.device={device!r}: this trainer offloads to the CPU "
                    'only; use "cpu" (or run config offload=optimizer / optimizer+params)'
                )
        if devices:
            offload = (
                "optimizer+params"
                if devices.get("param") == "cpu"
                else "optimizer"
                if devices.get("optimizer") == "cpu"
                else "none"
            )
            self.adopt("offload", offload)

    def clipping(self) -> None:
        if "gradient_clipping" in self.user:  # "auto" defers to the run config
            self.adopt("grad_clip", self.user.pop("gradient_clipping"))

    def optimizer(self) -> None:
        block = self.user.pop("optimizer", None)
        if not block:
            return
        kind = str(block.get("type", "")).lower()
        if kind in _ONEBIT:
            self.fail(
                f"optimizer type {block['type']!r} is not in this DeepSpeed version (its 1-bit "
                "optimizers were removed); use Adam, AdamW or Lamb"
            )
        if kind not in OPTIMIZER_TYPES:
            self.fail(
                f"optimizer type {block.get('type')!r} is not one this trainer runs; use Adam, AdamW or "
                "Lamb (pretrain/optim.py), or leave the optimizer block out and set optimizer.* in the run config"
            )
        params = dict(block.get("params") or {})
        if kind == "adam" and params.pop("adam_w_mode", True) is False:
            self.fail(
                "optimizer Adam with adam_w_mode false (L2 weight decay inside the gradient) is not offered; "
                "this trainer decouples weight decay (AdamW): remove adam_w_mode"
            )
        params.pop("adam_w_mode", None)
        self.adopt("optimizer.name", OPTIMIZER_TYPES[kind])
        mapped = dict(_OPTIMIZER_PARAMS, **(_LAMB_PARAMS if kind == "lamb" else {}))
        for key, value in params.items():
            if _is_auto(value):  # the run config's value stands
                continue
            if key in mapped:
                self.adopt(mapped[key], tuple(value) if key == "betas" else value)
            elif key == "bias_correction" and value is not False:
                continue  # AdamW always corrects the bias: true is what runs
            else:
                self.warnings.append(
                    f"warning: {JSON} optimizer.params.{key}={value!r} has no effect: this trainer's "
                    f"{OPTIMIZER_TYPES[kind]} does not take it (pretrain/optim.py)"
                )

    def scheduler(self) -> None:
        """Hand the JSON's scheduler to DeepSpeed, its length and warm-up consistent with the run:
        a step count given on the command line (max_steps, schedule.warmup_steps) is written into
        it; otherwise the scheduler's own total_num_steps becomes the run's max_steps."""
        block = self.user.get("scheduler")
        if not block:
            return
        import torch
        from deepspeed.runtime import lr_schedules

        kind = block.get("type")
        if not (
            isinstance(kind, str) and (hasattr(lr_schedules, kind) or hasattr(torch.optim.lr_scheduler, kind))
        ):
            valid = ", ".join(lr_schedules.VALID_LR_SCHEDULES)
            self.fail(
                f"scheduler type {kind!r} is unknown to DeepSpeed; use one of {valid} (or a torch.optim.lr_scheduler class)"
            )
        params = {key: value for key, value in (block.get("params") or {}).items() if not _is_auto(value)}
        if kind in _TOTAL_STEPS_SCHEDULES:
            total = _stated(params.get("total_num_steps"))
            if total is None or self.on_command_line("max_steps"):
                params["total_num_steps"] = self.current("max_steps")
            else:
                self.adopt("max_steps", total, f"{JSON} scheduler.params.total_num_steps")
        if kind in _WARMUP_SCHEDULES and (
            "warmup_num_steps" not in params or self.on_command_line("schedule.warmup_steps")
        ):
            params["warmup_num_steps"] = max(1, self.current("schedule.warmup_steps"))
        if kind in ("WarmupLR", "WarmupDecayLR") and (
            "warmup_max_lr" not in params or self.on_command_line("optimizer.lr")
        ):  # the peak is the optimizer's lr (DeepSpeed's WarmupDecayLR would default to 0.001)
            params["warmup_max_lr"] = self.current("optimizer.lr")
        ignored = ["schedule.decay", "schedule.power", "schedule.end_lr_ratio"]
        if kind not in _WARMUP_SCHEDULES:
            ignored.append("schedule.warmup_steps")
        if kind not in ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR"):
            ignored.append("optimizer.lr")
        for key in ignored:
            if self.on_command_line(key):
                self.warnings.append(
                    f"warning: {key} from the command line has no effect: {JSON}'s {kind} scheduler sets the lr"
                )
        self.user["scheduler"] = {"type": kind, "params": params}

    def deepspeed_defaults(self) -> None:
        """A setting that neither the JSON nor the run config states takes DeepSpeed's default, as
        DeepSpeed would run that JSON: no ZeRO, fp32, no clipping."""
        for key, value in DEEPSPEED_DEFAULTS.items():
            if key not in self.adopted and key not in self.deferred and key not in self.cfg.levels():
                self.adopted[key] = value
                self.sources[key] = "DeepSpeed's default (the JSON does not set it)"

    def no_effect(self) -> None:
        for key, why in NO_EFFECT.items():
            if key in self.user:
                self.user.pop(key)
                self.warnings.append(f"warning: {JSON} key {key!r} has no effect: {why}")

    def refuse_auto(self, tree: Any, path: str = "") -> None:
        """The Hugging Face Trainer's "auto" placeholders are filled above where this trainer owns
        the value; one left elsewhere has no value to take."""
        if isinstance(tree, dict):
            for key, value in tree.items():
                self.refuse_auto(value, f"{path}.{key}" if path else key)
        elif _is_auto(tree):
            self.fail(f'{path} is "auto" (the Hugging Face Trainer\'s placeholder); give it a value')

    def result(self) -> Resolved:
        try:
            cfg = build_config(PretrainConfig, deep_merge(self.cfg.model_dump(), _nested(self.adopted)))
        except ConfigError as err:
            raise ConfigError(f"deepspeed_config {self.name!r}: {err}") from None
        cfg.set_levels(self.cfg.levels())
        return Resolved(cfg, self.user, self.sources, self.warnings)


def check_with_deepspeed(config: dict[str, Any], name: str) -> list[str]:
    """Let DeepSpeed's own parser read ``config`` (what deepspeed.initialize will be given): a value
    it rejects (a misspelt key inside a block, a wrong type) is one line instead of a traceback from
    inside initialize; a top-level key it never reads (a misspelling, a block of another version)
    is a warning, since DeepSpeed itself would pass over it in silence."""
    import deepspeed
    from deepspeed.runtime.config import DeepSpeedConfig

    read: set[str] = set()

    class Recording(dict):
        """Notes the top-level keys DeepSpeed looks up."""

        def __getitem__(self, key):
            read.add(key)
            return super().__getitem__(key)

        def get(self, key, default=None):
            read.add(key)
            return super().get(key, default)

        def __contains__(self, key):
            read.add(key)
            return super().__contains__(key)

        def __copy__(self):  # DeepSpeed reads a shallow copy: keep recording
            return self

    try:
        DeepSpeedConfig(Recording(copy.deepcopy(config)))
    except ValueError as err:  # pydantic's ValidationError (a block's fields) and DeepSpeed's own checks
        errors = getattr(err, "errors", None)
        if callable(errors):
            problem = errors(include_url=False)[0]
            where = ".".join(str(part) for part in problem["loc"])
            raise ConfigError(
                f"deepspeed_config {name!r}: DeepSpeed's {getattr(err, 'title', 'config')} refuses {where!r} "
                f"({problem['msg']}); correct or remove it"
            ) from None
        raise ConfigError(f"deepspeed_config {name!r}: DeepSpeed refuses it: {_first_line(err)}") from None
    except (AssertionError, KeyError, TypeError) as err:
        raise ConfigError(f"deepspeed_config {name!r}: DeepSpeed refuses it: {_first_line(err)}") from None
    return [
        f"warning: deepspeed_config key {key!r} is not read by DeepSpeed {deepspeed.__version__} "
        f"(a misspelling?): it has no effect"
        for key in sorted(set(config) - read)
    ]


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _refuse_removed(user: dict[str, Any], name: str) -> None:
    try:
        from deepspeed.runtime.config import _REMOVED_TOP_LEVEL_CONFIG_KEYS as removed
    except ImportError:  # a DeepSpeed without the table: the blocks known to be gone
        removed = _REMOVED_FALLBACK
    for key in user:
        if key in removed or key in _REMOVED_FALLBACK:
            why = str(removed.get(key) or _REMOVED_FALLBACK[key]).split(". ")[0].rstrip(".")
            also = f", and {_NOT_FOR_THIS_MODEL[key]}" if key in _NOT_FOR_THIS_MODEL else ""
            raise ConfigError(
                f"deepspeed_config {name!r}: the {key!r} block cannot run: {why} in this DeepSpeed version"
                f"{also}; remove the block from the JSON"
            )


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_show(inner)}" for key, inner in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_show(inner) for inner in value) + ")"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _hidden_size(cfg: PretrainConfig) -> int:
    """The width of the model the run trains: init_from's config, else the preset's."""
    path = Path(cfg.init_from) / "config.json" if cfg.init_from else resolve_model_config_path(cfg.model)
    try:
        return int(json.loads(Path(path).read_text())["hidden_size"])
    except (OSError, KeyError, ValueError) as err:
        raise ConfigError(
            f'deepspeed_config {cfg.deepspeed_config!r}: an "auto" ZeRO bucket size needs the model\'s '
            f"hidden_size, unreadable from {str(path)!r} ({err}); give the sizes as numbers"
        ) from None


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.lower() == "auto"


def _stated(value: Any) -> Any:
    """A JSON number as the run config takes it (DeepSpeed JSONs write integers as 5e8 or 64.0
    too); None for "auto" (not stated)."""
    if _is_auto(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree
