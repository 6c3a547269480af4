"""``python -m serve.predict MODEL_DIR INPUT [--out FILE] [--batch-size 64]``

The server's predictions (``serve.engine``, the same code) for every row of a
file, in batches of similar lengths, with a progress bar on stderr.

INPUT: ``.txt`` (one input per non-empty line; ``a<TAB>b`` for a pair model; for token
classification words split at spaces and Han/kana a character each, ``tokens.split_words``), or
``.tsv``/``.csv`` with a header row, or ``.jsonl``. In the last three the text is the first column
of the model's ``text_columns`` (finetune.json or the fine-tune config) present, else
``text``/``sentence``/``content``; a pair model's second text is its second text column, else
``text_pair``; for token classification a JSONL ``tokens`` list wins.

Output (``--out``, else stdout): JSONL, one object per input row in file order,
``{"line": N, "input": ..., <prediction>}``; with ``--out X.tsv`` a table: line, text, [text_pair],
then label and score, or value, or the per-word labels and the spans.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from data_prep.atomic import open_atomic
from finetune import InputError  # noqa: E402
from finetune.data import DELIMITED, JSON_LINES, delimited_rows, json_rows  # noqa: E402
from finetune.tokens import split_words  # noqa: E402
from serve.engine import Item, ModelInfo, Predictor  # noqa: E402

FALLBACK_TEXT_COLUMNS = ["text", "sentence", "content"]


def _columns(info: ModelInfo) -> tuple[list[str], str | None]:
    """Candidate text columns, and the pair column for a pair model."""
    text = [*info.text_columns[:1], *FALLBACK_TEXT_COLUMNS]
    if not info.pair:
        return text, None
    return text, info.text_columns[1] if len(info.text_columns) > 1 else "text_pair"


def read_inputs(path: Path, info: ModelInfo) -> tuple[list[int], list[Item]]:
    """(line numbers, inputs) of a .txt, .tsv, .csv or .jsonl file; one-line InputError otherwise."""
    source = f"input {str(path)!r}"
    if not path.is_file():
        raise InputError(f"{source} does not exist or is not a file")
    suffix = path.suffix.lower()
    lines: list[int] = []
    items: list[Item] = []
    ner = info.task == "token_classification"
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            if suffix == ".txt":
                for number, line in enumerate(handle, start=1):
                    line = line.rstrip("\r\n")
                    if not line.strip():
                        continue
                    if info.pair and "\t" in line:
                        first, second = line.split("\t", 1)
                        items.append((first, second))
                    else:
                        items.append(split_words(line) if ner else line)
                    lines.append(number)
            elif suffix in DELIMITED or suffix in JSON_LINES:
                if suffix in JSON_LINES:
                    rows = json_rows(handle, source)
                else:
                    rows = delimited_rows(handle, source, DELIMITED[suffix])[1]
                text_columns, pair_column = _columns(info)
                for number, row in rows:
                    if ner and isinstance(row.get("tokens"), list):
                        items.append([str(word) for word in row["tokens"]])
                    else:
                        column = next((name for name in text_columns if name in row), None)
                        if column is None:
                            raise InputError(
                                f"{source} line {number} has no text field "
                                f"{' or '.join(map(repr, dict.fromkeys(text_columns)))}; name the text column so"
                            )
                        text = str(row[column])
                        if ner:
                            items.append(split_words(text))
                        elif pair_column and pair_column in row:
                            items.append((text, str(row[pair_column])))
                        else:
                            items.append(text)
                    lines.append(number)
            else:
                raise InputError(f"{source}: unknown format {path.suffix!r}; use .txt, .tsv, .csv or .jsonl")
    except UnicodeDecodeError as err:
        raise InputError(f"{source} is not UTF-8 text ({err.reason}); re-encode it as UTF-8") from None
    except csv.Error as err:
        raise InputError(f"{source} is not valid {suffix[1:].upper()}: {err}") from None
    if not items:
        raise InputError(f"{source} has no inputs")
    return lines, items


def predict_all(
    predictor: Predictor, items: list[Item], batch_size: int, progress: bool = True
) -> list[dict]:
    """Predictions in input order; batches are formed from inputs of similar length (less padding)."""
    from tqdm import tqdm

    def length(item: Item) -> int:
        if isinstance(item, tuple):
            return len(item[0]) + len(item[1])
        return sum(map(len, item)) if isinstance(item, list) else len(item)

    order = sorted(range(len(items)), key=lambda index: length(items[index]))
    results: list[dict | None] = [None] * len(items)
    with tqdm(
        total=len(items), unit="row", desc="predict", disable=not progress or None, file=sys.stderr
    ) as bar:
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            for index, result in zip(chosen, predictor.predict([items[i] for i in chosen])):
                results[index] = result
            bar.update(len(chosen))
    return results


def _tsv_fields(info: ModelInfo, item: Item, result: dict) -> list[str]:
    text = [" ".join(item)] if isinstance(item, list) else list(item) if isinstance(item, tuple) else [item]
    if info.pair and len(text) == 1:
        text.append("")
    if info.task == "regression":
        return [*text, f"{result['value']:.6g}"]
    if info.task == "token_classification":
        spans = " ".join(f"{span['label']}:{span['start']}-{span['end']}" for span in result["spans"])
        return [*text, " ".join(result["labels"]), spans]
    return [*text, result["label"], f"{result['score']:.4f}"]


def write_results(
    handle, out_name: str, info: ModelInfo, lines: list[int], items: list[Item], results
) -> None:
    if out_name.lower().endswith(".tsv"):
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        text = ["text", *(["text_pair"] if info.pair else [])]
        predicted = {"regression": ["value"], "token_classification": ["labels", "spans"]}
        writer.writerow(["line", *text, *predicted.get(info.task, ["label", "score"])])
        for line, item, result in zip(lines, items, results):
            writer.writerow([line, *_tsv_fields(info, item, result)])
        return
    for line, item, result in zip(lines, items, results):
        handle.write(json.dumps({"line": line, "input": item, **result}, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m serve.predict",
        description="The server's predictions for every row of a .txt, .tsv, .csv or .jsonl file.",
    )
    parser.add_argument("model_dir", help="a fine-tuned model dir (<out_dir>/model)")
    parser.add_argument("input", type=Path, help=".txt, .tsv, .csv or .jsonl")
    parser.add_argument("--out", type=Path, help="output file (.jsonl, or .tsv for a table); default stdout")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    try:
        predictor = Predictor(args.model_dir, dtype=args.dtype, threads=args.threads)
        lines, items = read_inputs(args.input, predictor.info)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    results = predict_all(predictor, items, args.batch_size)
    if args.out is None:
        write_results(sys.stdout, "", predictor.info, lines, items, results)
        return
    with open_atomic(args.out, "w", encoding="utf-8", newline="") as handle:
        write_results(handle, args.out.name, predictor.info, lines, items, results)
    print(f"wrote {len(results):,} predictions to {args.out} ({predictor.dtype})", file=sys.stderr)


if __name__ == "__main__":
    main()
