"""The export's README.md: a Hugging Face model card (YAML front matter + sections) built from the run's records.

Everything in it is read from files the run wrote: ``config.json`` (architecture), the data dir's
``manifest.json`` and ``report.json`` (tokenizer, documents, tokens, sources; the data dir named in
the run's ``config.yaml``), ``run_state`` and ``training_summary.json`` (steps, tokens, time,
hardware), and ``metrics.jsonl`` (the last evaluation at or before the exported step). A number
that is not on record is written as "not recorded", never guessed.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import yaml

CARD = "README.md"
NOT_RECORDED = "not recorded"


def describe_hardware() -> str:
    """This process's device, e.g. ``NVIDIA H100 80GB HBM3`` or ``CPU: AMD EPYC 7B13 (2 cores)``."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {model} ({os.cpu_count()} cores)"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _last_eval(run_dir: Path, step: int) -> dict[str, Any] | None:
    from pretrain.run_log import read_metrics

    try:
        rows = [r for r in read_metrics(run_dir) if r.get("kind") == "eval" and r.get("step", 0) <= step]
    except (OSError, json.JSONDecodeError):
        return None
    return rows[-1] if rows else None


def _fmt(value: Any, spec: str = ",") -> str:
    return NOT_RECORDED if value is None else format(value, spec)


def build_model_card(out: Path, run_dir: Path, record: dict[str, Any], parameters: int) -> str:
    config = json.loads((out / "config.json").read_text())
    try:
        run_cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        run_cfg = {}
    data_dir = Path(run_cfg["data_dir"]) if run_cfg.get("data_dir") else None
    manifest = (_read_json(data_dir / "manifest.json") if data_dir else None) or {}
    report = (_read_json(data_dir / "report.json") if data_dir else None) or {}
    run = record.get("run") or _read_json(run_dir / "summary.json") or {}
    nsp = record["objective"] == "mlm+nsp"
    auto = "AutoModelForPreTraining" if nsp else "AutoModelForMaskedLM"
    lines = [
        *_front_matter(nsp),
        *_introduction(config, record["objective"], run_cfg),
        *_architecture(config, parameters),
        *_tokenizer(manifest),
        *_data(manifest, report, run_cfg),
        *_training(record, run, run_cfg),
        "## Evaluation (held-out split of the pretraining data)",
        "",
        *_evaluation(_last_eval(run_dir, record["step"]), run_cfg),
        "",
        *_usage(auto),
    ]
    return "\n".join(lines)


def _front_matter(nsp: bool) -> list[str]:
    front = {
        "library_name": "transformers",
        "pipeline_tag": "fill-mask",
        "tags": ["bert", "pretraining", "masked-language-modeling"]
        + (["next-sentence-prediction"] if nsp else []),
    }
    return ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", ""]


def _introduction(config: dict[str, Any], objective: str, run_cfg: dict[str, Any]) -> list[str]:
    architecture = config.get("architectures", ["BertForPreTraining"])[0]
    start = (
        f"continuing from `{run_cfg['init_from']}`"
        if run_cfg.get("init_from")
        else "from random initialisation"
    )
    return [
        f"# BERT encoder ({config['num_hidden_layers']} layers, hidden {config['hidden_size']})",
        "",
        f"A `{architecture}` pretrained ({objective}) with this project's trainer, {start}. "
        "It is a base checkpoint to fine-tune, not a task model.",
        "",
    ]


def _architecture(config: dict[str, Any], parameters: int) -> list[str]:
    return [
        "## Architecture",
        "",
        f"- {config['num_hidden_layers']} layers, hidden size {config['hidden_size']}, "
        f"{config['num_attention_heads']} attention heads, feed-forward {config['intermediate_size']}, "
        f"{parameters / 1e6:.1f}M parameters",
        f"- vocabulary {config['vocab_size']:,}, {config['max_position_embeddings']} positions, "
        f"{config.get('hidden_act', 'gelu')}, dropout {config.get('hidden_dropout_prob')}",
        "",
    ]


def _tokenizer(manifest: dict[str, Any]) -> list[str]:
    tokenizer = manifest.get("tokenizer", {})
    prep = manifest.get("prep_config", {})
    tok_prep = prep.get("tokenizer", {}) if isinstance(prep.get("tokenizer"), dict) else {}
    if tok_prep.get("path"):
        kind = f"reused from `{tok_prep['path']}`"
    elif tok_prep:
        kind = f"SentencePiece {tok_prep.get('model_type', 'unigram')}, trained on the corpus"
    else:
        kind = NOT_RECORDED
    special = ", ".join(f"{k} {v}" for k, v in tokenizer.get("special_ids", {}).items()) or NOT_RECORDED
    return [
        "## Tokenizer",
        "",
        f"- {kind}; {_fmt(tokenizer.get('vocab_size'))} tokens; special ids {special}",
        "- saved beside the weights: `AutoTokenizer.from_pretrained(this_dir)` loads it offline",
        "",
    ]


def _data(manifest: dict[str, Any], report: dict[str, Any], run_cfg: dict[str, Any]) -> list[str]:
    inputs = manifest.get("prep_config", {}).get("inputs") or []
    sources = ", ".join(f"`{i}`" for i in ([inputs] if isinstance(inputs, str) else inputs)) or NOT_RECORDED
    train_split = manifest.get("splits", {}).get("train", {})
    documents = report.get("documents", {}) if isinstance(report.get("documents"), dict) else {}
    return [
        "## Data",
        "",
        f"- sources: {sources}",
        f"- documents: {_fmt(documents.get('in'))} read, {_fmt(documents.get('kept'))} kept after cleaning and deduplication",
        f"- training examples: {_fmt(train_split.get('samples'))}, {_fmt(train_split.get('tokens'))} tokens, "
        f"sequences of up to {_fmt(manifest.get('seq_len'), '')} tokens",
        f"- masking: {run_cfg.get('masking', 'token')} ({run_cfg.get('mlm_probability', 0.15):.0%} of tokens, 80/10/10)",
        "",
    ]


def training_time(run: dict[str, Any]) -> tuple[float | None, str]:
    """The pretraining's wall seconds from a run summary and what they cover: every launch
    (``run_wall_time_s``), or, in summaries written before it existed, the last launch only."""
    if "run_wall_time_s" in run:
        return run["run_wall_time_s"], "all launches"
    return run.get("wall_time_s"), "the last launch"


def _training(record: dict[str, Any], run: dict[str, Any], run_cfg: dict[str, Any]) -> list[str]:
    optimizer, schedule = run_cfg.get("optimizer", {}), run_cfg.get("schedule", {})
    wall, covers = training_time(run)
    return [
        "## Training",
        "",
        f"- {record['step']:,} optimizer steps, {_fmt(record.get('tokens'))} tokens seen",
        f"- global batch {run_cfg.get('micro_batch_size', '?')} x {run_cfg.get('grad_accum', '?')} x "
        f"{run.get('world_size', '?')} ranks; {optimizer.get('name', '?')} at peak LR "
        f"{optimizer.get('lr', '?')}, {schedule.get('warmup_steps', '?')} warm-up steps, "
        f"{schedule.get('decay', '?')} decay",
        f"- precision {run.get('precision', run_cfg.get('precision', '?'))}, ZeRO stage {run.get('zero_stage', run_cfg.get('zero_stage', '?'))}",
        f"- hardware: {run.get('world_size', '?')} x {run.get('hardware', NOT_RECORDED)}",
        f"- time: {f'{wall / 60:.1f} minutes' if wall is not None else NOT_RECORDED} ({covers})",
        "",
    ]


def _evaluation(evaluation: dict[str, Any] | None, run_cfg: dict[str, Any]) -> list[str]:
    if not evaluation:
        return [f"- {NOT_RECORDED}"]
    lines = [
        f"- MLM accuracy {evaluation['mlm_acc']:.4f}, loss {evaluation['mlm_loss']:.4f}, "
        f"perplexity {evaluation['ppl']:.1f}"
    ]
    if "nsp_acc" in evaluation:
        lines.append(f"- NSP accuracy {evaluation['nsp_acc']:.4f}, loss {evaluation['nsp_loss']:.4f}")
    lines.append(
        f"- on the first {run_cfg.get('eval_samples', '?')} samples of the valid split, step {evaluation['step']}"
    )
    return lines


def _usage(auto: str) -> list[str]:
    return [
        "## Intended use",
        "",
        "A starting point for fine-tuning (classification, token classification, pairs) or for continued",
        "pretraining on a domain (`init_from`). It knows only its pretraining text above: check that the",
        "domain and language match yours, and measure against a random-init baseline of the same shape.",
        "It is not trained to follow instructions or to generate text.",
        "",
        "## How to load",
        "",
        "```python",
        f"from transformers import AutoModel, {auto}, AutoTokenizer",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/dir")',
        'encoder = AutoModel.from_pretrained("path/to/this/dir")          # the encoder, for features',
        f'model = {auto}.from_pretrained("path/to/this/dir")   # with the pretraining heads',
        "```",
        "",
        "Fine-tune: `python -m finetune --config configs/finetune/sst2.yaml model=path/to/this/dir`.",
        "",
    ]


def write_model_card(out: Path, run_dir: Path, record: dict[str, Any], parameters: int) -> Path:
    path = out / CARD
    path.write_text(build_model_card(out, run_dir, record, parameters))
    return path
