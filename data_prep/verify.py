"""``python -m data_prep verify DIR``: re-read every shard and check it against manifest.json.

Checks, per shard: the sha256, size, sample and token counts of the manifest; member names
(``<key>.<ext>``, keys unique and without dots, only the format's extensions); every token array
(dtype of the manifest, 1-D, at most seq_len, ids below vocab_size, [CLS] ... [SEP] with one [SEP]
per segment); NSP labels "0" or "1". Also the tokenizer dir's sha256 and equal train shard sizes.
Each problem is one line naming the shard; the exit status is 1 if there is any.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.manifest import (
    NSP_EXT,
    SPLITS,
    TOKENS_EXT,
    ManifestError,
    load_manifest,
    sha256_file,
    sha256_tree,
)
from data_prep.progress import Progress, bars_wanted
from data_prep.shards import iter_samples, load_tokens


def _check_tokens(data: bytes, manifest: dict[str, Any]) -> str | None:
    try:
        ids = load_tokens(data)
    except ValueError as err:
        return f"not a NumPy array without pickle ({err})"
    special = manifest["tokenizer"]["special_ids"]
    if ids.dtype != np.dtype(manifest["token_dtype"]) or ids.ndim != 1:
        return f"array of {ids.dtype} with shape {ids.shape}, expected 1-D {manifest['token_dtype']}"
    if not 3 <= len(ids) <= manifest["seq_len"]:
        return f"{len(ids)} tokens, expected 3..{manifest['seq_len']}"
    if int(ids.max()) >= manifest["tokenizer"]["vocab_size"]:
        return f"token id {int(ids.max())} is not below vocab_size {manifest['tokenizer']['vocab_size']}"
    separators = 2 if manifest["objective"] == "mlm+nsp" else 1
    if (
        ids[0] != special["cls"]
        or ids[-1] != special["sep"]
        or int((ids == special["sep"]).sum()) != separators
    ):
        return f"not [CLS] ... [SEP] with {separators} [SEP] (starts {ids[:3].tolist()}, ends {ids[-3:].tolist()})"
    return None


def verify_shard(
    data_dir: Path, entry: dict[str, Any], manifest: dict[str, Any]
) -> tuple[list[str], int, int]:
    """Problems found in one shard, and the samples and tokens read from it."""
    name = entry["path"]
    path = data_dir / name
    if not path.is_file():
        return [f"{name}: missing"], 0, 0
    problems = []
    if path.stat().st_size != entry["bytes"]:
        problems.append(f"{name}: {path.stat().st_size} bytes, manifest says {entry['bytes']}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        problems.append(
            f"{name}: sha256 {digest[:16]}... differs from the manifest's {entry['sha256'][:16]}... "
            "(corrupt or modified)"
        )
    wanted = {TOKENS_EXT, NSP_EXT} if manifest["objective"] == "mlm+nsp" else {TOKENS_EXT}
    samples = tokens = 0
    keys: set[str] = set()
    try:
        for key, members in iter_samples(path):
            samples += 1
            where = f"{name}: sample {key!r}"
            if not key or "." in key or key in keys:
                problems.append(f"{where}: key is empty, dotted or repeated")
            keys.add(key)
            if set(members) != wanted:
                problems.append(f"{where}: members {sorted(members)}, expected {sorted(wanted)}")
                continue
            problem = _check_tokens(members[TOKENS_EXT], manifest)
            if problem:
                problems.append(f"{where}: {problem}")
            else:
                tokens += len(load_tokens(members[TOKENS_EXT]))
            if NSP_EXT in wanted and members[NSP_EXT] not in (b"0", b"1"):
                problems.append(f"{where}: NSP label {members[NSP_EXT][:8]!r}, expected b'0' or b'1'")
    except Exception as err:  # a corrupt tar raises from deep inside tarfile: report, go on
        problems.append(f"{name}: unreadable after sample {samples} ({type(err).__name__}: {err})")
    if samples != entry["samples"]:
        problems.append(f"{name}: {samples} samples, manifest says {entry['samples']}")
    if not problems and tokens != entry["tokens"]:
        problems.append(f"{name}: {tokens} tokens, manifest says {entry['tokens']}")
    return problems, samples, tokens


def verify(data_dir: Path, show_progress: bool = False) -> tuple[list[str], list[str]]:
    """``(problems, summary lines)`` for a prepared data dir."""
    manifest = load_manifest(data_dir)
    problems, lines = [], []
    tokenizer = manifest["tokenizer"]
    tokenizer_dir = data_dir / tokenizer["path"]
    if not tokenizer_dir.is_dir() or sha256_tree(tokenizer_dir) != tokenizer["sha256"]:
        problems.append(f"{tokenizer['path']}/: missing or its sha256 differs from the manifest's")
    for split in SPLITS:
        info = manifest["splits"].get(split, {"shards": []})
        total = sum(entry["bytes"] for entry in info["shards"])
        progress = Progress(f"verify {split}", total, show_progress, item="shards")
        samples = tokens = 0
        for entry in info["shards"]:
            shard_problems, n, t = verify_shard(data_dir, entry, manifest)
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
    parser.add_argument("data_dir")
    args = parser.parse_args(argv)
    try:
        problems, lines = verify(Path(args.data_dir), bars_wanted(True, 0))
    except ManifestError as err:
        print(f"error: {err}")
        return 1
    print("\n".join(lines))
    for problem in problems:
        print(f"FAIL {problem}")
    print(f"verify: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0
