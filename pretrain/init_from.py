"""Start a pretraining run from an existing BERT: ``init_from=PATH`` (continued / domain-adaptive pretraining).

``PATH`` is a local Hugging Face directory: this project's ``export/``, or any ``BertForPreTraining``,
``BertForMaskedLM`` or ``BertModel`` checkpoint with its tokenizer (nothing is downloaded). The run's
architecture is the source's ``config.json`` (the ``model`` key is then ignored); its weights are
loaded into the run's model before the DeepSpeed engine is built, so every ZeRO stage and precision
works. Weights the source lacks (an MLM head for a ``BertModel``, the NSP head and pooler for a
``BertForMaskedLM``) keep their fresh, seeded initialisation and are listed in the banner; source
weights the run has no use for (the NSP head in an ``mlm`` run) are listed too. A tensor whose shape
differs stops the launch with one line naming it.

The data must be tokenized with the source's tokenizer (``python -m data_prep ... tokenizer.path=PATH``):
vocabulary and special ids are compared token by token, and a mismatch is refused with one line that
says which and gives the prep command. Optimizer state, step and data position are not carried: a
continued run has its own warm-up and schedule (BERT's phase 2, Devlin et al. 2019; Gururangan et al.
2020 for domain-adaptive pretraining).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SPECIAL_NAMES = ("pad", "unk", "cls", "sep", "mask")
# Non-persistent buffers that old checkpoints saved; the model rebuilds them.
IGNORED_SOURCE_KEYS = re.compile(r"(^|\.)(position_ids|token_type_ids)$")
# Tied to the word embeddings / the prediction bias: never stored separately by save_pretrained.
TIED_KEYS = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
TOP_LEVEL = ("bert.", "cls.")


class InitFromError(ValueError):
    """A source model that cannot initialise this run; one line with the fix."""


@dataclass
class InitReport:
    source: Path
    loaded: int = 0
    initialised: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"init_from {self.source}: {self.loaded} tensors loaded"]
        parts.append(
            f"initialised (not in the source): {_group(self.initialised)}"
            if self.initialised
            else "nothing initialised"
        )
        if self.unused:
            parts.append(f"unused from the source: {_group(self.unused)}")
        return "; ".join(parts)


def _group(keys: list[str]) -> str:
    """``a.b.weight, a.b.bias`` -> ``a.b.{weight,bias}``: one short banner line per module."""
    modules: dict[str, list[str]] = {}
    for key in keys:
        module, _, leaf = key.rpartition(".")
        modules.setdefault(module, []).append(leaf)
    return ", ".join(
        f"{m}.{{{','.join(leaves)}}}" if len(leaves) > 1 else f"{m}.{leaves[0]}"
        for m, leaves in modules.items()
    )


def source_config(path: str | Path, seq_len: int, attn_implementation: str):
    """The source's BertConfig, checked to hold ``seq_len`` positions."""
    from transformers import BertConfig

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InitFromError(
            f"init_from {path}: no config.json there; give a local Hugging Face BERT dir (e.g. a run's export/)"
        )
    try:
        fields = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise InitFromError(f"init_from {config_file}: not valid JSON ({err})") from None
    if fields.get("model_type", "bert") != "bert":
        raise InitFromError(
            f"init_from {path}: model_type {fields.get('model_type')!r}; only BERT checkpoints (model_type bert) can start a run"
        )
    config = BertConfig.from_pretrained(str(path), local_files_only=True)
    if config.max_position_embeddings < seq_len:
        raise InitFromError(
            f"init_from {path}: max_position_embeddings={config.max_position_embeddings} < seq_len={seq_len}; "
            f"use data prepared at seq_len <= {config.max_position_embeddings}"
        )
    config._attn_implementation = attn_implementation
    return config


def _load_tokenizer(path: Path, what: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise InitFromError(
            f"{what} {path}: no loadable tokenizer there ({str(err).splitlines()[0]})"
        ) from None


def check_tokenizer(
    path: str | Path,
    data_dir: str | Path,
    data_tokenizer: str | Path,
    manifest: dict[str, Any],
    model_vocab: int,
) -> None:
    """The data dir's tokenizer (its files in ``data_tokenizer``, a local dir also for a remote data
    dir) must be the source model's: same vocabulary, same special ids."""
    path = Path(path)
    fix = (
        f"prepare the data with the model's tokenizer: python -m data_prep --config configs/prep/NAME.yaml "
        f"tokenizer.path={path} out_dir=NEW_DIR, then data_dir=NEW_DIR"
    )
    source = _load_tokenizer(path, "init_from")
    data_vocab = int(manifest["tokenizer"]["vocab_size"])
    data_special = {name: int(manifest["tokenizer"]["special_ids"][name]) for name in SPECIAL_NAMES}
    source_special = {name: getattr(source, f"{name}_token_id") for name in SPECIAL_NAMES}
    if len(source) != data_vocab:
        raise InitFromError(
            f"init_from {path}: its tokenizer has {len(source):,} tokens, data_dir {data_dir} was tokenized "
            f"with {data_vocab:,}; {fix}"
        )
    if source_special != data_special:
        differ = ", ".join(
            f"{n} {source_special[n]} vs {data_special[n]}"
            for n in SPECIAL_NAMES
            if source_special[n] != data_special[n]
        )
        raise InitFromError(
            f"init_from {path}: special token ids differ from data_dir {data_dir}'s (model vs data: {differ}); {fix}"
        )
    ours = _load_tokenizer(Path(data_tokenizer), "data_dir tokenizer").get_vocab()
    theirs = source.get_vocab()
    differing = sum(1 for token, index in theirs.items() if ours.get(token) != index)
    if differing:
        raise InitFromError(
            f"init_from {path}: same vocabulary size, but {differing:,} of {len(theirs):,} tokens have other ids "
            f"in data_dir {data_dir}'s tokenizer; {fix}"
        )
    if model_vocab < data_vocab:
        raise InitFromError(
            f"init_from {path}: config.json has vocab_size={model_vocab}, fewer rows than its tokenizer's {data_vocab} tokens"
        )


def read_source_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """model.safetensors (single or sharded) or pytorch_model.bin (loaded with weights_only=True)."""
    from safetensors.torch import load_file

    path = Path(path)
    if (path / "model.safetensors").is_file():
        return load_file(str(path / "model.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(path / shard)))
        return state
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise InitFromError(f"init_from {path}: no model.safetensors or pytorch_model.bin there")


def _target_key(key: str) -> str:
    """A source key in the run model's naming: BertModel keys gain ``bert.``; TF-era LayerNorm names."""
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    return key if key.startswith(TOP_LEVEL) else f"bert.{key}"


def load_source_weights(model: torch.nn.Module, path: str | Path) -> InitReport:
    """Copy the source's weights into ``model`` (a freshly initialised BertForPreTraining/ForMaskedLM)."""
    path = Path(path)
    source = {
        _target_key(key): value
        for key, value in read_source_weights(path).items()
        if not IGNORED_SOURCE_KEYS.search(key)
    }
    target = model.state_dict()
    report = InitReport(source=path)
    for key, value in source.items():
        if key not in target:
            report.unused.append(key)
        elif value.shape != target[key].shape:
            raise InitFromError(
                f"init_from {path}: tensor {key} has shape {tuple(value.shape)} in the source, "
                f"{tuple(target[key].shape)} in this run's model; its config.json does not describe its weights"
            )
    loadable = {key: value for key, value in source.items() if key in target}
    with torch.no_grad():
        model.load_state_dict(loadable, strict=False)
    model.tie_weights()
    report.loaded = len(loadable)
    report.initialised = [
        key
        for key in target
        if key not in loadable and key not in TIED_KEYS and not IGNORED_SOURCE_KEYS.search(key)
    ]
    return report
