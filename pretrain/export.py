"""Export a checkpoint as a Hugging Face model that downstream teams load offline.

``python -m pretrain.export RUN_DIR [--checkpoint TAG] [--out DIR]``

ZeRO partitions are consolidated into fp32 weights with DeepSpeed's own
``get_fp32_state_dict_from_zero_checkpoint`` (the fp32 master copy, not the bf16/fp16 working
weights); without ZeRO (stage 0) the module weights of the checkpoint are used. The result is a
stock ``BertForPreTraining`` (``BertForMaskedLM`` for the ``mlm`` objective) saved with
``save_pretrained`` (safetensors; the decoder stays tied to the word embeddings), the run's
tokenizer, ``training_summary.json`` and a model card (``README.md``, pretrain/model_card.py). It loads with ``AutoModelForPreTraining`` (or
``AutoModelForMaskedLM``) and ``AutoModel``. The directory is written under a temporary name and
renamed when complete.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from pretrain.distributed import prepare_entry

prepare_entry()  # also a command: python -m pretrain.export

import torch  # noqa: E402

from data_prep.atomic import atomic_path  # noqa: E402
from pretrain.checkpoint import CheckpointError, latest_tag, read_run_state  # noqa: E402
from pretrain.model_card import write_model_card  # noqa: E402

MODEL_PREFIX = "model."  # PretrainingObjective holds the HF model as `.model`
TIED_KEYS = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
RUN_MODEL_CONFIG = "model_config.json"
RUN_TOKENIZER = "tokenizer"
SUMMARY = "training_summary.json"


def consolidated_state_dict(ckpt_dir: Path, tag: str, zero_stage: int) -> dict[str, torch.Tensor]:
    """fp32 weights of the whole model, with the wrapper's prefix removed."""
    if zero_stage >= 1:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with (
            open(os.devnull, "w") as quiet,
            contextlib.redirect_stdout(quiet),
            contextlib.redirect_stderr(quiet),
        ):
            state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    else:
        states = torch.load(
            ckpt_dir / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True
        )
        state = states["module"]
    return {key.removeprefix(MODEL_PREFIX): value.float() for key, value in state.items()}


def export_checkpoint(
    run_dir: str | Path,
    tag: str | None = None,
    out: str | Path | None = None,
    summary: dict[str, Any] | None = None,
) -> Path:
    """Write the HF export of ``tag`` (default: the latest complete checkpoint); returns its path."""
    from transformers import BertConfig
    from transformers.utils import logging as hf_logging

    from pretrain.model import build_hf_model

    hf_logging.disable_progress_bar()

    run_dir = Path(run_dir)
    out = Path(out).resolve() if out else run_dir.resolve() / "export"
    if out.exists() and not (out / SUMMARY).is_file():
        raise CheckpointError(
            f"--out {out} exists and is not an earlier export (no {SUMMARY}); "
            f"name a new directory, or remove it yourself"
        )
    ckpt_dir = run_dir / "checkpoints"
    tag = tag or latest_tag(ckpt_dir)
    if tag is None:
        raise CheckpointError(f"{run_dir} holds no complete checkpoint to export (is it a pretrain run_dir?)")
    if not (ckpt_dir / tag).is_dir():
        raise CheckpointError(f"checkpoint {tag!r} not found in {ckpt_dir}")
    run_state = read_run_state(ckpt_dir, tag)
    config = BertConfig.from_json_file(str(run_dir / RUN_MODEL_CONFIG))
    model = build_hf_model(config, nsp=run_state["objective"] == "mlm+nsp")
    state = consolidated_state_dict(ckpt_dir, tag, run_state["zero_stage"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - TIED_KEYS or unexpected:
        raise CheckpointError(
            f"checkpoint {tag} does not match the model config: missing {sorted(set(missing) - TIED_KEYS)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    model.tie_weights()

    record = {
        "checkpoint": tag,
        "step": run_state["step"],
        "tokens": run_state.get("tokens"),
        "objective": run_state["objective"],
        **(summary or {}),
    }
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.copytree(run_dir / RUN_TOKENIZER, tmp, dirs_exist_ok=True)
        (tmp / SUMMARY).write_text(json.dumps(record, indent=2) + "\n")
        write_model_card(tmp, run_dir, record, sum(p.numel() for p in model.parameters()))  # README.md
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pretrain.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a pretrain run dir (holds checkpoints/ and model_config.json)")
    parser.add_argument("--checkpoint", help="tag to export (default: the one `latest` names)")
    parser.add_argument("--out", help="output dir (default: RUN_DIR/export)")
    args = parser.parse_args(argv)
    try:
        path = export_checkpoint(args.run_dir, args.checkpoint, args.out)
    except (CheckpointError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"exported {path}")


if __name__ == "__main__":
    main()
