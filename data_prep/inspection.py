"""``python -m data_prep inspect DIR [--n 5]``: a few decoded examples and the length histogram."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data_prep.manifest import BadSample, ManifestError, SampleRules, load_manifest, parse_shard, shard_paths
from data_prep.tokenizer import decoder_for

NSP_MEANING = {"0": "B follows A", "1": "B is random"}


def _describe(ids: np.ndarray, nsp: str | None, decode, sep_id: int) -> str:
    ids = ids.tolist()
    separators = [i for i, token in enumerate(ids) if token == sep_id]
    if nsp is not None and len(separators) == 2:
        a, b = decode(ids[1 : separators[0]]), decode(ids[separators[0] + 1 : -1])
        return (
            f"[CLS] {a} [SEP] {b} [SEP]\n    NSP label {nsp} ({NSP_MEANING.get(nsp, '?')}), {len(ids)} tokens"
        )
    return f"[CLS] {decode(ids[1:-1])} [SEP]\n    {len(ids)} tokens"


def histogram(lengths: np.ndarray, seq_len: int, bins: int = 16, width: int = 50) -> list[str]:
    edges = np.linspace(0, seq_len, bins + 1).round().astype(int)
    counts, _ = np.histogram(lengths, bins=edges)
    scale = width / max(int(counts.max()), 1)
    rows = zip(edges[:-1], edges[1:], counts)
    return [f"  {lo + 1:>6}-{hi:<6} {n:>9,} {'#' * int(round(n * scale))}" for lo, hi, n in rows]


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep inspect", description=__doc__)
    parser.add_argument("data_dir")
    parser.add_argument("--n", type=int, default=5, help="examples to show")
    parser.add_argument("--split", default="train", choices=["train", "valid"])
    parser.add_argument("--max-samples", type=int, default=200_000, help="samples read for the histogram")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir)
    try:
        manifest = load_manifest(data_dir)
    except ManifestError as err:
        print(f"error: {err}")
        return 1
    tokenizer = decoder_for(data_dir / manifest["tokenizer"]["path"])
    sep_id = manifest["tokenizer"]["special_ids"]["sep"]
    rules = SampleRules.from_manifest(manifest)
    lengths, shown, nsp_ones = [], 0, 0
    for path in shard_paths(data_dir, manifest, args.split):
        for sample in parse_shard(path.read_bytes(), path.name, rules):
            if isinstance(sample, BadSample):
                print(f"bad sample: {sample.describe()}")
                continue
            nsp = None if sample.nsp_label is None else str(sample.nsp_label)
            nsp_ones += nsp == "1"
            lengths.append(len(sample.tokens))
            if shown < args.n:
                print(f"{path.name} {sample.key}: {_describe(sample.tokens, nsp, tokenizer.decode, sep_id)}")
                shown += 1
            if len(lengths) >= args.max_samples:
                break
        if len(lengths) >= args.max_samples:
            break
    if not lengths:
        print(f"the {args.split} split has no samples")
        return 0
    lengths = np.array(lengths)
    nsp_note = f", NSP label 1 in {nsp_ones / len(lengths):.1%}" if manifest["objective"] == "mlm+nsp" else ""
    print(
        f"\nlengths of {len(lengths):,} {args.split} samples (mean {lengths.mean():.1f}, "
        f"max {lengths.max()} of seq_len {manifest['seq_len']}{nsp_note}):"
    )
    print("\n".join(histogram(lengths, manifest["seq_len"])))
    return 0
