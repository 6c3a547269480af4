"""Labelled text sets: reading TSV/CSV/JSONL with one-line errors, splits, label ids, batches.

Everything here is plain Python and NumPy except ``collate``, which builds the torch tensors.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

import numpy as np

from finetune import InputError

DELIMITED = {".tsv": "\t", ".csv": ","}
JSON_LINES = (".jsonl", ".ndjson")
_SHOWN_LINES = 5  # how many offending line numbers an error message lists


@dataclass(frozen=True)
class Table:
    """The rows of one labelled file (or a split of one), in file order."""

    source: str  # "train_file 'data/train.tsv'": how messages name the file
    text_column: str
    texts: list[str]
    pairs: list[str] | None  # the text_pair_column, when configured
    labels: list[str]  # raw label values as strings ("0", "positive")
    lines: list[int]  # 1-based line of each row in its file, for messages and predictions
    dropped_empty: int = 0

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> Table:
        def pick(values: list) -> list:
            return [values[i] for i in indices]

        return replace(
            self,
            texts=pick(self.texts),
            pairs=pick(self.pairs) if self.pairs else None,
            labels=pick(self.labels),
            lines=pick(self.lines),
        )


def json_rows(handle: TextIO, source: str) -> Iterator[tuple[int, dict[str, object]]]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{source} line {number} is not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise InputError(
                f"{source} line {number} is not a JSON object (one object per line, with named fields)"
            )
        yield number, row


def delimited_rows(
    handle: TextIO, source: str, delimiter: str
) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    # GLUE's TSV files are unquoted: a '"' is part of the text, so TSV is read without quoting;
    # CSV follows RFC 4180 quoting.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
    header = [name.strip() for name in next(reader, [])]

    def rows() -> Iterator[tuple[int, dict]]:
        for fields in reader:
            if not fields:
                continue
            if len(fields) != len(header):
                sep = "tab" if delimiter == "\t" else "comma"
                raise InputError(
                    f"{source} line {reader.line_num} has {len(fields)} fields but the header has "
                    f"{len(header)} (a {sep} inside the text?); fix that line"
                )
            yield reader.line_num, dict(zip(header, fields))

    return header, rows()


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _first_lines(lines: list[int]) -> str:
    """ "line 7", "lines 3, 5", "lines 1, 2, 3, 4, 5 and 9 more"."""
    shown = ", ".join(str(n) for n in lines[:_SHOWN_LINES])
    more = f" and {len(lines) - _SHOWN_LINES} more" if len(lines) > _SHOWN_LINES else ""
    return f"{'line' if len(lines) == 1 else 'lines'} {shown}{more}"


def _choose_text_column(
    source: str, columns: list[str], text_columns: Sequence[str], required: dict[str, str | None]
) -> str:
    """The first of ``text_columns`` present; ``required`` maps config keys to columns that must be."""
    shown = ", ".join(map(str, columns)) or "none"
    present = [name for name in text_columns if name in columns]
    if not present:
        raise InputError(
            f"{source} has no text column {' or '.join(map(repr, text_columns))} "
            f"(its columns: {shown}); set text_column="
        )
    for key, name in required.items():
        if name is not None and name not in columns:
            raise InputError(f"{source} has no column {name!r} (its columns: {shown}); set {key}=")
    return present[0]


def read_table(
    path: str | Path,
    role: str,
    text_columns: Sequence[str],
    label_column: str,
    pair_column: str | None = None,
    drop_empty: bool = False,
) -> Table:
    """Read a labelled file; ``role`` ("train_file", ...) names it in messages as the config key does.

    The text column is the first of ``text_columns`` that the file has, so one config serves files
    that name it differently (SST-2: ``sentence`` in train.tsv, ``content`` in dev.tsv). The
    columns of a JSONL file are the fields of its first object.
    """
    path = Path(path)
    source = f"{role} {str(path)!r}"
    suffix = path.suffix.lower()
    if not path.exists():
        raise InputError(
            f"{source} does not exist; check the path (relative paths start at the current directory)"
        )
    if not path.is_file():
        raise InputError(f"{source} is not a file")
    if suffix not in (*DELIMITED, *JSON_LINES):
        raise InputError(
            f"{source}: unknown format {path.suffix!r}; use .tsv or .csv (with a header row) or .jsonl"
        )

    texts: list[str] = []
    pairs: list[str] = []
    labels: list[str] = []
    lines: list[int] = []
    empty_text: list[int] = []
    empty_label: list[int] = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:  # -sig: tolerate a byte-order mark
            if suffix in JSON_LINES:
                rows = json_rows(handle, source)
                first = next(rows, None)
                columns = list(first[1]) if first else []
                rows = itertools.chain([first] if first else [], rows)
            else:
                columns, rows = delimited_rows(handle, source, DELIMITED[suffix])
            if not columns:
                raise InputError(f"{source} is empty")
            text_column = _choose_text_column(
                source, columns, text_columns, {"label_column": label_column, "text_pair_column": pair_column}
            )
            for number, row in rows:
                missing = [
                    name for name in (text_column, label_column, pair_column) if name and name not in row
                ]
                if missing:
                    raise InputError(
                        f"{source} line {number} has no field {missing[0]!r}; every row needs it"
                    )
                text = _as_text(row[text_column], source, number, text_column)
                pair = _as_text(row[pair_column], source, number, pair_column) if pair_column else ""
                label = "" if row[label_column] is None else str(row[label_column]).strip()
                if not text.strip() or (pair_column and not pair.strip()):
                    empty_text.append(number)
                elif not label:
                    empty_label.append(number)
                else:
                    texts.append(text)
                    pairs.append(pair)
                    labels.append(label)
                    lines.append(number)
    except UnicodeDecodeError as err:
        raise InputError(f"{source} is not UTF-8 text ({err.reason}); re-encode it as UTF-8") from None
    except OSError as err:
        raise InputError(f"{source} cannot be read: {err.strerror or err}") from None
    except csv.Error as err:
        raise InputError(f"{source} is not valid {suffix[1:].upper()}: {err}") from None

    if empty_label:
        raise InputError(
            f"{source} has {_rows(len(empty_label))} with an empty {label_column!r} "
            f"({_first_lines(empty_label)}); give every row a label"
        )
    if empty_text and not drop_empty:
        raise InputError(
            f"{source} has {_rows(len(empty_text))} with empty text in {text_column!r} "
            f"({_first_lines(empty_text)}); fix them or set drop_empty=true"
        )
    if not texts:
        raise InputError(f"{source} has no data rows")
    return Table(
        source=source,
        text_column=text_column,
        texts=texts,
        pairs=pairs if pair_column else None,
        labels=labels,
        lines=lines,
        dropped_empty=len(empty_text),
    )


def _as_text(value: object, source: str, line: int, column: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{source} line {line}: {column!r} is {type(value).__name__}, not text")
    return value


def label_vocabulary(train: Table) -> list[str]:
    """The class list, index = class id: integers in numeric order (so SST-2's 0/1 keep their ids),
    anything else in string order."""
    values = set(train.labels)
    if len(values) < 2:
        raise InputError(
            f"{train.source} has only the label {next(iter(values))!r}; a classifier needs at least 2"
        )
    if all(_is_int(value) for value in values):
        return sorted(values, key=int)
    return sorted(values)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def check_known_labels(table: Table, vocabulary: Sequence[str]) -> None:
    """Refuse labels the classifier cannot predict: they would be silently counted wrong."""
    known = set(vocabulary)
    unseen = sorted({label for label in table.labels if label not in known})
    if unseen:
        count = sum(label in set(unseen) for label in table.labels)
        raise InputError(
            f"{table.source} has labels that the training data never has: "
            f"{', '.join(map(repr, unseen))} ({_rows(count)}); training labels are "
            f"{', '.join(map(repr, vocabulary))}; fix the labels or add examples to train_file"
        )


def seeded_split(table: Table, fractions: Sequence[float], seed: int, names: Sequence[str]) -> list[Table]:
    """Cut ``table`` into the rest plus one part per fraction, by a permutation seeded with ``seed``."""
    order = np.random.default_rng(seed).permutation(len(table))
    sizes = [max(1, round(fraction * len(table))) for fraction in fractions]
    if sum(sizes) >= len(table):
        raise InputError(
            f"{table.source} has {len(table)} rows, too few to hold out {', '.join(names)}; "
            f"give them their own files or lower split.*_fraction"
        )
    parts, start = [], 0
    for size, name in zip(sizes, names):
        part = table.subset(sorted(order[start : start + size]))
        parts.append(replace(part, source=f"{table.source} ({name} part)"))
        start += size
    return [table.subset(sorted(order[start:]))] + parts


def float_labels(table: Table) -> np.ndarray:
    """Regression targets; a label that is not a finite number stops with its file and line."""
    values = np.empty(len(table), dtype=np.float32)
    for row, label in enumerate(table.labels):
        try:
            values[row] = float(label)
        except ValueError:
            values[row] = np.nan
        if not np.isfinite(values[row]):
            raise InputError(
                f"{table.source} line {table.lines[row]}: label {label!r} is not a number; "
                f"task=regression needs one number per row"
            )
    return values


@dataclass(frozen=True)
class Encoded:
    """A tokenized split: unpadded token ids per row and its labels; batches are padded on demand.

    ``labels`` is int64 [rows] (classes), float32 [rows] (regression) or, for token classification,
    one list per row of a tag id per token (-100: not scored: specials and non-first subwords).
    ``words`` (token classification): per row, the word index each token starts, else -1;
    ``origin``: per row (window), the sentence it comes from.
    """

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: np.ndarray | list[list[int]]
    words: list[list[int]] | None = None
    origin: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(table: Table, tokenizer, labels: np.ndarray, max_len: int) -> Encoded:
    """Tokenize once up front ([CLS] text [SEP] (pair [SEP])), truncated to ``max_len`` tokens;
    a pair loses tokens from its longer side first (longest_first)."""
    encoded = tokenizer(
        table.texts,
        table.pairs,
        truncation="longest_first",
        max_length=max_len,
        return_token_type_ids=True,
        return_attention_mask=False,
    )
    return Encoded(input_ids=encoded["input_ids"], token_type_ids=encoded["token_type_ids"], labels=labels)


def class_ids(table: Table, vocabulary: Sequence[str]) -> np.ndarray:
    ids = {label: index for index, label in enumerate(vocabulary)}
    return np.array([ids[label] for label in table.labels], dtype=np.int64)


def collate(data: Encoded, indices: Sequence[int], pad_id: int) -> dict:
    """Rows ``indices`` as a model batch, padded to the longest row in it (not to max_len)."""
    import torch

    width = max(len(data.input_ids[i]) for i in indices)
    input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(indices), width), dtype=torch.long)
    attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
    per_token = isinstance(data.labels, list)
    labels = torch.full((len(indices), width), -100, dtype=torch.long) if per_token else None
    for row, index in enumerate(indices):
        length = len(data.input_ids[index])
        input_ids[row, :length] = torch.tensor(data.input_ids[index])
        token_type_ids[row, :length] = torch.tensor(data.token_type_ids[index])
        attention_mask[row, :length] = 1
        if per_token:
            labels[row, :length] = torch.tensor(data.labels[index])
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        "labels": labels if per_token else torch.from_numpy(data.labels[list(indices)]),
    }
