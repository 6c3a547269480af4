"""Load a fine-tuned model dir and predict batches of inputs: the one home of inference code.

What the model is comes from ``finetune.json`` (written by the fine-tuning stage beside
config.json); for dirs without it, it is inferred: the task from the architecture and
``problem_type``/``num_labels``, labels from ``id2label``, and max_len, columns, base model and
summary from the fine-tune dir around it (``../config.yaml``, ``../eval.json``) when present.

An input is a text (``str``), a sentence pair (``(str, str)``) or a pre-split word list
(``list[str]``, token classification: a text there is split by ``tokens.split_words``). Results
are plain JSON-ready dicts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from finetune import InputError
from finetune.model import check_base_dir, first_line, load_tokenizer
from finetune.tag_schemes import entity_spans, scheme_of
from finetune.tokens import join_words, split_words

TASKS = ("sequence_classification", "regression", "token_classification")
Item = str | tuple[str, str] | list[str]


@dataclass
class ModelInfo:
    """What a client needs to know about the served model (GET /metadata)."""

    task: str
    labels: list[str]  # class names in id order; [] for regression
    max_len: int
    pair: bool | None = None  # trained on sentence pairs; None when unknown
    text_columns: list[str] = field(default_factory=list)
    base_model: str | None = None
    method: str | None = None  # full | lora | adalora
    merged: bool | None = None
    summary: dict = field(default_factory=dict)
    tag_scheme: str | None = None  # token_classification: how labels mark spans; None: found from labels
    source: str = "finetune.json"  # or "inferred": how the fields above were found

    def as_dict(self) -> dict:
        return asdict(self)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{str(path)!r} cannot be read as JSON ({err})") from None


def _labels_from_config(config: dict) -> list[str]:
    id2label = config.get("id2label") or {}
    return [str(id2label[key]) for key in sorted(id2label, key=int)]


def infer_model_info(model_dir: Path, config: dict, tokenizer_max: int | None) -> ModelInfo:
    """ModelInfo for a model dir without finetune.json (fine-tune runs older than that file)."""
    architectures = config.get("architectures") or []
    if any(name.endswith("ForTokenClassification") for name in architectures):
        task = "token_classification"
    elif config.get("problem_type") == "regression" or config.get("num_labels", 2) == 1:
        task = "regression"
    else:
        task = "sequence_classification"
    positions = int(config.get("max_position_embeddings", 512))
    run = {}
    run_config = model_dir.parent / "config.yaml"  # the fine-tune run's resolved config, when present
    if run_config.is_file():
        import yaml

        try:
            run = yaml.safe_load(run_config.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            run = {}
    max_len = run.get("max_len") or (
        tokenizer_max if tokenizer_max and tokenizer_max < 1_000_000 else positions
    )
    columns = run.get("text_column") or []
    summary = {}  # as finetune.json's: per split, its headline numbers
    eval_path = model_dir.parent / "eval.json"
    if eval_path.is_file():
        summary = {
            name: {key: value for key, value in split.items() if isinstance(value, (int, float))}
            for name, split in (_read_json(eval_path).get("splits") or {}).items()
        }
    return ModelInfo(
        task=task,
        labels=[] if task == "regression" else _labels_from_config(config),
        max_len=min(int(max_len), positions),
        pair=bool(run["text_pair_column"]) if "text_pair_column" in run else None,
        text_columns=[columns] if isinstance(columns, str) else list(columns),
        base_model=run.get("model"),
        method="full" if run else None,
        merged=None,
        summary=summary,
        source="inferred",
    )


def read_model_info(model_dir: Path, config: dict, tokenizer_max: int | None) -> ModelInfo:
    path = model_dir / "finetune.json"
    if not path.is_file():
        return infer_model_info(model_dir, config, tokenizer_max)
    data = _read_json(path)
    known = {name for name in ModelInfo.__dataclass_fields__ if name != "source"}
    missing = [key for key in ("task", "labels", "max_len") if key not in data]
    if missing:
        raise InputError(
            f"{str(path)!r} lacks {', '.join(missing)}; write it again with the fine-tuning stage"
        )
    info = ModelInfo(**{key: value for key, value in data.items() if key in known})
    if info.task not in TASKS:
        raise InputError(f"{str(path)!r}: task {info.task!r} is not one of {', '.join(TASKS)}")
    return info


def cpu_supports_bf16() -> bool:
    """bf16 matmuls run natively (AVX512-BF16 / AMX) rather than emulated in fp32 (slower than fp32)."""
    import torch

    cpu = torch.cpu
    return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())


def _model_class(task: str):
    import transformers

    return {
        "sequence_classification": transformers.AutoModelForSequenceClassification,
        "regression": transformers.AutoModelForSequenceClassification,
        "token_classification": transformers.AutoModelForTokenClassification,
    }[task]


def _is_adapter_dir(model_dir: Path) -> bool:
    return (model_dir / "adapter_config.json").is_file() and not (model_dir / "config.json").is_file()


def _load_model(model_dir: Path, info: ModelInfo, dtype):
    """The model in eval mode; a LoRA dir whose adapter was not merged is merged here (peft)."""
    import torch

    model_class = _model_class(info.task)
    if _is_adapter_dir(model_dir):
        from peft import PeftModel

        base = _read_json(model_dir / "adapter_config.json").get("base_model_name_or_path")
        if not base or not Path(base).is_dir():
            raise InputError(
                f"model dir {str(model_dir)!r} holds a LoRA adapter whose base model {base!r} is not a "
                f"local dir; fine-tune with merged output or put the base model at that path"
            )
        options = {"num_labels": max(1, len(info.labels))}
        if info.labels:
            options["id2label"] = dict(enumerate(info.labels))
            options["label2id"] = {name: index for index, name in enumerate(info.labels)}
        model = model_class.from_pretrained(base, local_files_only=True, dtype=torch.float32, **options)
        model = PeftModel.from_pretrained(model, model_dir).merge_and_unload()
    else:
        model = model_class.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    return model.to(dtype).eval()


class Predictor:
    """A fine-tuned model ready for inference: ``predict(items)`` -> one result dict per item."""

    def __init__(self, model_dir: str | Path, dtype: str = "auto", threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        if not Path(model_dir).is_dir():
            raise InputError(
                f"model dir {str(model_dir)!r} does not exist; give a fine-tuned model dir (<out_dir>/model)"
            )
        self.model_dir = Path(model_dir)
        if _is_adapter_dir(self.model_dir):
            # A LoRA adapter saved unmerged: what the model is can only come from finetune.json.
            if not (self.model_dir / "finetune.json").is_file():
                raise InputError(
                    f"model dir {str(model_dir)!r} holds a LoRA adapter without finetune.json, which "
                    f"says its task and labels; serve the merged model dir instead"
                )
            config = {}
        else:
            check_base_dir(self.model_dir, need_weights=False)
            config = _read_json(self.model_dir / "config.json")
        self.tokenizer = load_tokenizer(self.model_dir)
        if not self.tokenizer.is_fast:
            raise InputError(f"model dir {str(model_dir)!r}: a fast tokenizer (tokenizer.json) is needed")
        self.info = read_model_info(self.model_dir, config, self.tokenizer.model_max_length)
        if dtype == "auto":
            dtype = "bf16" if cpu_supports_bf16() or torch.cuda.is_available() else "fp32"
        self.dtype = dtype
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            model = _load_model(
                self.model_dir, self.info, {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
            )
        except InputError:
            raise
        except Exception as err:  # a corrupt or foreign checkpoint: one line, not a library traceback
            raise InputError(
                f"model dir {str(model_dir)!r} does not load as a {self.info.task} model ({first_line(err)})"
            ) from None
        self.model = model.to(self.device)
        if self.info.labels and model.config.num_labels != len(self.info.labels):
            raise InputError(
                f"model dir {str(model_dir)!r}: finetune.json has {len(self.info.labels)} labels but the "
                f"model has {model.config.num_labels} outputs"
            )
        if not self.info.labels and self.info.task != "regression":
            self.info.labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
        if self.info.task == "token_classification" and self.info.tag_scheme is None:
            # Fine-tunes older than finetune.json's tag_scheme: their labels are the training tags.
            # Labels of no scheme (LABEL_0...: a tagger from elsewhere) are served without spans.
            self.info.tag_scheme = scheme_of(self.info.labels)

    def metadata(self) -> dict:
        return {
            **self.info.as_dict(),
            "model_dir": str(self.model_dir),
            "dtype": self.dtype,
            "device": str(self.device),
            "threads": self.threads,
        }

    def _encode(self, items: Sequence[Item]):
        """Tokenize in groups of one kind (texts, pairs, word lists), then pad all rows together."""
        kinds = [
            "pair" if isinstance(item, tuple) else "words" if isinstance(item, list) else "text"
            for item in items
        ]
        rows: list[dict | None] = [None] * len(items)
        word_ids: list[list[int | None] | None] = [None] * len(items)
        options = {"truncation": True, "max_length": self.info.max_len}
        for kind in ("text", "pair", "words"):
            chosen = [i for i, k in enumerate(kinds) if k == kind]
            if not chosen:
                continue
            if kind == "pair":
                encoded = self.tokenizer(
                    [items[i][0] for i in chosen], [items[i][1] for i in chosen], **options
                )
            else:
                encoded = self.tokenizer(
                    [items[i] for i in chosen], is_split_into_words=kind == "words", **options
                )
            for position, index in enumerate(chosen):
                rows[index] = {key: values[position] for key, values in encoded.items()}
                if kind == "words":
                    word_ids[index] = encoded.word_ids(position)
        batch = self.tokenizer.pad(rows, return_tensors="pt")
        return batch, word_ids

    def predict(self, items: Sequence[Item]) -> list[dict]:
        """One forward pass over ``items`` (callers bound the batch size)."""
        import torch

        if not items:
            return []
        if self.info.task == "token_classification":
            items = [split_words(item) if isinstance(item, str) else item for item in items]
        batch, word_ids = self._encode(items)
        with torch.inference_mode():
            logits = self.model(**{key: value.to(self.device) for key, value in batch.items()}).logits
            logits = logits.float().cpu()
        if self.info.task == "regression":
            return [{"value": float(value)} for value in logits[:, 0]]
        probabilities = torch.softmax(logits, dim=-1).numpy()
        if self.info.task == "sequence_classification":
            return [self._classification(row) for row in probabilities]
        return [self._tagging(items[i], word_ids[i], probabilities[i]) for i in range(len(items))]

    def _classification(self, row) -> dict:
        best = int(row.argmax())
        return {
            "label": self.info.labels[best],
            "score": float(row[best]),
            "probabilities": {name: float(p) for name, p in zip(self.info.labels, row)},
        }

    def _tagging(self, words: list[str], word_ids: list[int | None], rows) -> dict:
        """Each word gets the label of its first sub-token; words cut off by max_len get "O"."""
        labels, scores = ["O"] * len(words), [None] * len(words)
        seen = set()
        for position, word in enumerate(word_ids):
            if word is None or word in seen:
                continue
            seen.add(word)
            best = int(rows[position].argmax())
            labels[word], scores[word] = self.info.labels[best], float(rows[position][best])
        scheme = self.info.tag_scheme
        spans = [
            {"label": kind, "start": start, "end": end, "text": join_words(words[start:end])}
            for kind, start, end in (entity_spans(labels, scheme) if scheme else [])
        ]
        return {
            "tokens": words,
            "labels": labels,
            "scores": scores,
            "spans": spans,
            "truncated_words": len(words) - len(seen),
        }
