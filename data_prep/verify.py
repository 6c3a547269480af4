"""``python -m data_prep verify DIR|URL``: re-read every shard and check it against manifest.json.

Checks, per shard: the sha256, size, sample and token counts of the manifest, and every sample
against the data contract's one rule set (``data_prep.manifest.check_sample``, the same the
trainer's reader applies): member names ``<key>.<ext>`` with plain keys, only the objective's
members, token arrays of the manifest's dtype laid out as ``[CLS] A [SEP] (B [SEP])`` within
seq_len and the vocabulary, NSP labels "0" or "1". Also the tokenizer dir's sha256 and equal train
shard sizes. Each problem is one line naming the shard; the exit status is 1 if there is any.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_prep.manifest import (
    SPLITS,
    BadSample,
    ManifestError,
    SampleRules,
    ShardError,
    ShardSpec,
    load_manifest,
    parse_shard,
    sha256_mismatch,
    tokenizer_files,
)
from data_prep.progress import Progress, bars_wanted
from data_prep.storage import DataSource, FetchError


def verify_shard(source: DataSource, entry: dict[str, Any], rules: SampleRules) -> tuple[list[str], int, int]:
    """Problems found in one shard, and the samples and tokens read from it."""
    name = entry["path"]
    try:
        data = source.read_bytes(name)
    except (OSError, FetchError) as err:
        return [f"{name}: missing or unreadable ({err})"], 0, 0
    problems = []
    if len(data) != entry["bytes"]:
        problems.append(f"{name}: {len(data)} bytes, manifest says {entry['bytes']}")
    mismatch = sha256_mismatch(ShardSpec(name, entry["sha256"], entry["samples"]), data)
    if mismatch:
        problems.append(f"{mismatch.removeprefix('shard ')} (corrupt or modified)")
    try:
        samples = parse_shard(data, name, rules)
    except ShardError as err:
        return [*problems, str(err).removeprefix("shard ")], 0, 0
    tokens = 0
    for sample in samples:
        if isinstance(sample, BadSample):
            problems.append(f"{name}: sample {sample.key!r}: {sample.reason}")
        else:
            tokens += sample.tokens.size
    if len(samples) != entry["samples"]:
        problems.append(f"{name}: {len(samples)} samples, manifest says {entry['samples']}")
    if not problems and tokens != entry["tokens"]:
        problems.append(f"{name}: {tokens} tokens, manifest says {entry['tokens']}")
    return problems, len(samples), tokens


def verify(data_dir: str | Path, show_progress: bool = False) -> tuple[list[str], list[str]]:
    """``(problems, summary lines)`` for a prepared data dir, local or remote (a URL)."""
    source = DataSource(data_dir)
    manifest = load_manifest(data_dir, source)
    problems, lines = [], []
    rules = SampleRules.from_manifest(manifest)
    tokenizer = manifest["tokenizer"]
    try:
        tokenizer_files(source, manifest)
    except ManifestError:
        problems.append(f"{tokenizer['path']}/: missing or its sha256 differs from the manifest's")
    for split in SPLITS:
        info = manifest["splits"].get(split, {"shards": []})
        total = sum(entry["bytes"] for entry in info["shards"])
        progress = Progress(f"verify {split}", total, show_progress, item="shards")
        samples = tokens = 0
        for entry in info["shards"]:
            shard_problems, n, t = verify_shard(source, entry, rules)
            problems += shard_problems
            samples, tokens = samples + n, tokens + t
            progress.update(entry["bytes"], 1)
        progress.close()
        wanted = info.get("samples_per_shard")
        uneven = sorted({entry["samples"] for entry in info["shards"]} - {wanted})
        if split == "train" and uneven:
            problems.append(f"train shards hold {uneven} samples, not all samples_per_shard={wanted}")
        listed = sum(entry["samples"] for entry in info["shards"])
        if info["shards"] and listed != info.get("samples"):
            problems.append(
                f"{split}: the manifest's shards hold {listed} samples, its total {info.get('samples')}"
            )
        lines.append(
            f"  {split:5s} {len(info['shards']):4d} shards  {samples:>10,} samples  "
            f"{tokens:>13,} tokens  {total / 1e6:9.1f} MB"
        )
    head = (
        f"{data_dir}: format {manifest['format']}, objective {manifest['objective']}, "
        f"seq_len {manifest['seq_len']}, vocab {tokenizer['vocab_size']}, {manifest['token_dtype']}"
    )
    return problems, [head, *lines]


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep verify", description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", help="a prepared data dir: a path or a URL (https://, s3://, gs://)")
    args = parser.parse_args(argv)
    try:
        problems, lines = verify(args.data_dir, bars_wanted(True, 0))
    except ManifestError as err:
        print(f"error: {err}")
        return 1
    print("\n".join(lines))
    for problem in problems:
        print(f"FAIL {problem}")
    print(f"verify: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0
