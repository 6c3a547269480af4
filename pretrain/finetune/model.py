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

from pretrain.finetune import InputError

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


def _first_line(err: Exception) -> str:
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
            f"model dir {str(path)!r}: the tokenizer does not load ({_first_line(err)})"
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


def load_classifier(
    path: Path, init: str, class_names: Sequence[str], dropout: float | None
) -> tuple[object, str]:
    """The classifier and a one-line summary of what was loaded and what is new.

    Seed torch before calling: the new head (and with ``init=random`` everything) is drawn from it.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    _quiet_transformers()
    options = {
        "num_labels": len(class_names),
        "id2label": dict(enumerate(class_names)),
        "label2id": {name: index for index, name in enumerate(class_names)},
    }
    if dropout is not None:
        options.update(
            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, classifier_dropout=dropout
        )
    try:
        if init == "random":
            config = AutoConfig.from_pretrained(path, local_files_only=True, **options)
            model = AutoModelForSequenceClassification.from_config(config)
            return (
                model,
                f"model: {model.num_parameters():,} parameters, randomly initialised from {path}/config.json",
            )
        # fp32 whatever the checkpoint's dtype: DeepSpeed casts to bf16/fp16 itself when asked to.
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, local_files_only=True, output_loading_info=True, dtype=torch.float32, **options
        )
    except Exception as err:  # a corrupt or foreign checkpoint: one line, not a library traceback
        raise InputError(
            f"model dir {str(path)!r} does not load as a sequence classifier ({_first_line(err)})"
        ) from None
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
    encoder_missing = [key for key in new if not key.startswith("classifier.")]
    if encoder_missing:
        # More than the head is new: the checkpoint is not the encoder this config describes.
        summary += (
            f"; WARNING: {len(encoder_missing)} encoder tensors were not in the checkpoint and are random "
            f"(first: {encoder_missing[0]})"
        )
    return model, summary
