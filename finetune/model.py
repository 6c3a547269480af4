"""The base checkpoint: checked, then loaded as tokenizer + sequence classifier from a local dir only.

A pretrain run's ``export/`` holds a ``BertForPreTraining``; loading it as
``BertForSequenceClassification`` keeps the encoder, drops the MLM/NSP heads and adds a freshly
initialised classifier. Hugging Face reports that as a multi-line table; ``load_classifier``
returns one line of its own instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from finetune import InputError

# A fast tokenizer needs tokenizer.json; a BERT WordPiece tokenizer can also be rebuilt from vocab.txt.
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_HINT = "point model= at a pretrain run's export/ dir or a local Hugging Face BERT dir"


def check_base_dir(path: str | Path, need_weights: bool) -> Path:
    """Fail with one line naming the dir and the missing piece, before any library gets to it."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"model dir {str(path)!r} does not exist; {_HINT}")
    if not (path / "config.json").is_file():
        raise InputError(f"model dir {str(path)!r} has no config.json; {_HINT}")
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"model dir {str(path)!r}: config.json cannot be read ({err})") from None
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise InputError(
            f"model dir {str(path)!r} has no tokenizer ({' or '.join(_TOKENIZER_FILES)} missing); "
            f"save the tokenizer there with tokenizer.save_pretrained(dir)"
        )
    if need_weights and not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise InputError(
            f"model dir {str(path)!r} has no weights ({_WEIGHT_FILES[0]} missing); "
            f"use init=random for a randomly initialised model of this config"
        )
    return path


def first_line(err: Exception) -> str:
    lines = str(err).splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    _quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:  # any library failure here means the files are unusable
        raise InputError(
            f"model dir {str(path)!r}: the tokenizer does not load ({first_line(err)})"
        ) from None
    if tokenizer.pad_token_id is None:
        raise InputError(
            f"model dir {str(path)!r}: the tokenizer has no pad token; add [PAD] and save it again"
        )
    return tokenizer


def check_compatible(path: Path, tokenizer, model, max_len: int) -> None:
    """Refuse a tokenizer/model pair that would fail mid-run with an index error."""
    config = model.config
    if len(tokenizer) > config.vocab_size:
        raise InputError(
            f"model dir {str(path)!r}: the tokenizer has {len(tokenizer)} tokens but the model's "
            f"vocab_size is {config.vocab_size}; save the tokenizer the model was pretrained with"
        )
    if max_len > config.max_position_embeddings:
        raise InputError(
            f"max_len={max_len} is longer than the model's max_position_embeddings "
            f"({config.max_position_embeddings}); set max_len={config.max_position_embeddings} or lower"
        )


def auto_class(task: str):
    """The transformers class for a task: a head on [CLS] (classes or one number) or on every token."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    return (
        AutoModelForTokenClassification
        if task == "token_classification"
        else AutoModelForSequenceClassification
    )


def head_options(task: str, class_names: Sequence[str]) -> dict:
    if task == "regression":
        return {"num_labels": 1, "problem_type": "regression"}  # MSE loss on one output
    return {
        "num_labels": len(class_names),
        "id2label": dict(enumerate(class_names)),
        "label2id": {name: index for index, name in enumerate(class_names)},
    }


def load_classifier(
    path: Path,
    init: str,
    class_names: Sequence[str],
    dropout: float | None,
    task: str = "sequence_classification",
) -> tuple[object, str, list[str]]:
    """The model with its new task head, a one-line summary of what was loaded and what is new, and
    the names of the new (randomly initialised) tensors: every tensor with ``init=random``.

    Seed torch before calling: the new head (and with ``init=random`` everything) is drawn from it.
    """
    import torch
    from transformers import AutoConfig

    _quiet_transformers()
    model_class = auto_class(task)
    options = head_options(task, class_names)
    if dropout is not None:
        options.update(
            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, classifier_dropout=dropout
        )
    try:
        if init == "random":
            config = AutoConfig.from_pretrained(path, local_files_only=True, **options)
            model = model_class.from_config(config)
            return (
                model,
                f"model: {model.num_parameters():,} parameters, randomly initialised from {path}/config.json",
                [name for name, _ in model.named_parameters()],
            )
        # fp32 whatever the checkpoint's dtype: DeepSpeed casts to bf16/fp16 itself when asked to.
        model, info = model_class.from_pretrained(
            path, local_files_only=True, output_loading_info=True, dtype=torch.float32, **options
        )
    except Exception as err:  # a corrupt or foreign checkpoint: one line, not a library traceback
        raise InputError(f"model dir {str(path)!r} does not load for {task} ({first_line(err)})") from None
    new = sorted(info["missing_keys"])
    unused = sorted(info["unexpected_keys"])
    summary = f"model: {model.num_parameters():,} parameters from {path}; new: {', '.join(new) or 'none'}"
    if unused:
        what = (
            "the MLM/NSP pretraining heads"
            if all(key.startswith("cls.") for key in unused)
            else f"{unused[0]}, ..."
        )
        summary += f"; unused: {len(unused)} checkpoint tensors ({what})"
    # An MLM-only export (BertForMaskedLM) has no pooler: the sequence head's pooler is new as well.
    encoder_missing = [key for key in new if not key.startswith(("classifier.", "bert.pooler."))]
    if encoder_missing:
        # More than the head is new: the checkpoint is not the encoder this config describes.
        summary += (
            f"; WARNING: {len(encoder_missing)} encoder tensors were not in the checkpoint and are random "
            f"(first: {encoder_missing[0]})"
        )
    return model, summary, new


def head_modules(task: str, new: Sequence[str]) -> list[str]:
    """The modules that train in full beside the low-rank updates and are saved with the adapter:
    the classifier, and the pooler ([CLS] dense + tanh, under the sequence heads) where the checkpoint
    has none. An MLM-only pretraining exports no pooler; left frozen it would be a fixed random layer
    between the encoder and the classifier, and one drawn afresh (differently) at every reload."""
    pooler_new = task != "token_classification" and any(name.startswith("bert.pooler.") for name in new)
    return ["classifier", *(["pooler"] if pooler_new else [])]


def apply_method(model, config, total_steps: int, new: Sequence[str] = ()) -> tuple[object, str]:
    """Wrap ``model`` for LoRA / AdaLoRA (peft): the base weights are frozen, the low-rank updates
    and the task head (``head_modules``; ``new``: the tensor names ``load_classifier`` found new)
    train. Returns the model and a one-line parameter count."""
    from peft import AdaLoraConfig, LoraConfig, TaskType, get_peft_model

    in_full = head_modules(config.task, new)
    task_type = TaskType.TOKEN_CLS if config.task == "token_classification" else TaskType.SEQ_CLS
    common = {
        "task_type": task_type,
        "lora_alpha": config.lora.alpha,
        "lora_dropout": config.lora.dropout,
        "target_modules": list(config.lora.target_modules),
        # the head is new: it trains in full and is saved with the adapter
        "modules_to_save": list(in_full),  # a copy: peft appends its own defaults to the list
    }
    if config.method == "lora":
        peft_config = LoraConfig(r=config.lora.r, **common)
    else:
        # AdaLoRA's budget schedule: full init_r for the first 10% of steps, pruned towards r until
        # 80%, then fixed (peft's tinit / tfinal are counted in steps).
        peft_config = AdaLoraConfig(
            init_r=config.lora.init_r,
            target_r=config.lora.r,
            total_step=total_steps,
            tinit=int(0.1 * total_steps),
            tfinal=int(0.2 * total_steps),
            deltaT=max(1, total_steps // 50),
            **common,
        )
    try:
        model = get_peft_model(model, peft_config)
    except ValueError as err:  # e.g. a target module that the model does not have
        raise InputError(f"method={config.method}: {first_line(err)}; check lora.target_modules") from None
    trainable, total = model.get_nb_trainable_parameters()
    return model, (
        f"{config.method}: {trainable:,} of {total:,} parameters train ({trainable / total:.2%}; "
        f"in full: {', '.join(in_full)})"
    )


def count_parameters(model) -> dict:
    """Trainable and total parameters and the trainable share, for eval.json."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    return {"trainable": int(trainable), "total": int(total), "trainable_share": trainable / total}


FINETUNE_JSON = "finetune.json"


def load_finetuned(model_dir: str | Path):
    """A fine-tune dir's model/ as (model, tokenizer, finetune.json contents), ready for inference.

    model/ holds either a plain model (full fine-tuning, or LoRA with merge=true) that the task's
    AutoModel class loads, or a peft adapter (adapter_config.json; LoRA with merge=false) that is
    applied to the base named by finetune.json's base_model, with the head shape it records.
    """
    model_dir = Path(model_dir)
    try:
        info = json.loads((model_dir / FINETUNE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"model dir {str(model_dir)!r} has no readable {FINETUNE_JSON} ({err})") from None
    _quiet_transformers()
    import torch

    model_class = auto_class(info["task"])
    if info["merged"]:
        model = model_class.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    else:
        from peft import PeftModel

        base = check_base_dir(info["base_model"], need_weights=True)
        model = model_class.from_pretrained(
            base, local_files_only=True, dtype=torch.float32, **head_options(info["task"], info["labels"])
        )
        model = PeftModel.from_pretrained(model, model_dir)
    tokenizer = load_tokenizer(model_dir)
    model.eval()
    return model, tokenizer, info
