"""The one place where a run config becomes a DeepSpeed config dict.

Everything DeepSpeed needs to know (batch geometry, precision, ZeRO stage, clipping) is derived
here from the stage's own typed config; what is left of a user's JSON once pretrain/deepspeed_json.py
has moved its settings into the run config (bucket sizes, overlap, prefetch, a scheduler, ...) is
merged on top. Key names follow https://www.deepspeed.ai/docs/config-json/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_prep.typed_config import deep_merge

PRECISIONS = ("fp32", "fp16", "bf16")


def read_user_deepspeed_config(path: str | Path | None) -> dict[str, Any]:
    """Read a DeepSpeed JSON (comments allowed, as DeepSpeed itself reads it with hjson)."""
    if not path:
        return {}
    import hjson

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"deepspeed_config file {str(path)!r} does not exist (see configs/deepspeed/)"
        )
    try:
        return dict(hjson.loads(path.read_text(encoding="utf-8")))
    except (hjson.HjsonDecodeError, TypeError, ValueError) as err:
        raise ValueError(
            f"deepspeed_config {str(path)!r} is not a JSON object ({err}); see configs/deepspeed/"
        ) from None


def build_deepspeed_config(
    *,
    micro_batch_size: int,
    grad_accum: int,
    precision: str,
    zero_stage: int,
    grad_clip: float,
    offload: str = "none",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """DeepSpeed config for one run; ``extra`` (a user's JSON) wins over the derived values."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage, **_offload(offload)},
        "bf16": {"enabled": precision == "bf16"},
        # Dynamic loss scaling (loss_scale 0): start at 2^16, halve on overflow (the step is
        # skipped), double after 1000 clean steps; hysteresis 2 tolerates one isolated overflow.
        "fp16": {
            "enabled": precision == "fp16",
            "loss_scale": 0,
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        # This project logs itself (metrics.jsonl, TensorBoard); keep DeepSpeed's own printing quiet.
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    extra = extra or {}
    for path in DERIVED_KEYS:
        theirs, ours = _get(extra, path), _get(config, path)
        if theirs is not None and theirs != ours:
            raise ValueError(
                f"deepspeed_config sets {'.'.join(path)}={theirs!r} but the run config gives {ours!r}; "
                f"set it in the run config (micro_batch_size, grad_accum, grad_clip, zero_stage, precision, offload) instead"
            )
    return deep_merge(config, extra)


OFFLOADS = ("none", "optimizer", "optimizer+params")


def _offload(offload: str) -> dict[str, Any]:
    """ZeRO-Offload to the CPU, in pinned memory (faster host-device copies)."""
    if offload not in OFFLOADS:
        raise ValueError(f"offload must be one of {OFFLOADS}, got {offload!r}")
    fields: dict[str, Any] = {}
    if offload != "none":
        fields["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload == "optimizer+params":
        fields["offload_param"] = {"device": "cpu", "pin_memory": True}
    return fields


# Settings the run config owns: a user JSON may repeat them but not contradict them.
DERIVED_KEYS = (
    ("train_micro_batch_size_per_gpu",),
    ("gradient_accumulation_steps",),
    ("gradient_clipping",),
    ("zero_optimization", "stage"),
    ("zero_optimization", "offload_optimizer", "device"),
    ("zero_optimization", "offload_param", "device"),
    ("bf16", "enabled"),
    ("fp16", "enabled"),
)


def _get(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree
