"""``report.json`` and the summary table: what came in, what was kept, why the rest was dropped,
what came out, and how fast each stage ran.

The document counts balance by construction, and ``build_report`` checks it: every unit a reader
produced (a document, or a rejected file or JSON line) is either kept or dropped for one reason.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

# Counted, but the document is kept. terminal_escapes_removed counts escape sequences, not documents.
REPAIRS = ("repaired_invalid_utf8", "fixed_mojibake", "terminal_escapes_removed")


def _rate(nbytes: int, seconds: float) -> float:
    return round(nbytes / 1e6 / seconds, 3) if seconds > 0 else 0.0


def input_rows(
    entries: list[str],
    bytes_in: dict[int, int],
    read: dict[int, Counter],
    decided: dict[int, dict[str, int]],
    tokens: dict[int, int],
) -> list[dict[str, Any]]:
    """One row per entry of ``inputs`` (by position): its bytes, documents read, kept and dropped
    (cleaning's drops from ``read``, dedup's from ``decided``), and the tokens of its kept documents.
    Each row balances like the totals do: a corpus assembled from several sources says what each
    one gave and lost."""
    rows = []
    for position, entry in enumerate(entries):
        cleaning, decisions = read.get(position, Counter()), decided.get(position, {})
        dropped = Counter({reason: n for reason, n in cleaning.items() if reason != "in" and n})
        dropped.update(
            {reason: n for reason, n in decisions.items() if reason not in ("train", "valid") and n}
        )
        row = {
            "input": entry,
            "bytes": bytes_in.get(position, 0),
            "documents_in": cleaning.get("in", 0),
            "kept_train": decisions.get("train", 0),
            "kept_valid": decisions.get("valid", 0),
            "dropped": dict(sorted(dropped.items())),
            "tokens": tokens.get(position, 0),
        }
        if row["documents_in"] != row["kept_train"] + row["kept_valid"] + sum(dropped.values()):
            raise AssertionError(f"document counts of input {entry!r} do not balance: {row}")
        rows.append(row)
    return rows


def build_report(
    *,
    out_dir: str,
    docs_in: int,
    bytes_in: int,
    counts: Counter,
    kept: dict[str, int],
    inputs: list[dict[str, Any]],
    tokenizer: dict[str, Any],
    examples: dict[str, Any],
    tokens: dict[str, int],
    shards: dict[str, int],
    chunks: dict[str, int],
    stage_seconds: dict[str, float],
    stage_cpu: dict[str, float],
    total_seconds: float,
    ranks: int,
    workers: int,
) -> dict[str, Any]:
    dropped = {reason: n for reason, n in sorted(counts.items()) if reason not in REPAIRS and n}
    kept_total = kept["train"] + kept["valid"]
    if docs_in != kept_total + sum(dropped.values()):
        raise AssertionError(
            f"document counts do not balance: {docs_in} in, {kept_total} kept, {dropped} dropped"
        )
    processes = ranks * workers
    core = ("clean", "examples", "shards")  # the "clean+tokenize+shard"
    core_seconds = sum(stage_seconds.get(name, 0.0) for name in core)
    core_cpu = sum(stage_cpu.get(name, 0.0) for name in core)
    return {
        "out_dir": out_dir,
        "documents": {
            "in": docs_in,
            "kept": kept_total,
            "kept_train": kept["train"],
            "kept_valid": kept["valid"],
            "dropped_total": sum(dropped.values()),
            "dropped": dropped,
        },
        "bytes_in": bytes_in,
        "inputs": inputs,
        "repairs": {name: counts.get(name, 0) for name in REPAIRS},
        "duplicates": {"exact": counts.get("duplicate_exact", 0), "near": counts.get("duplicate_near", 0)},
        "tokenizer": tokenizer,
        "examples": examples,
        "tokens": tokens,
        "shards": shards,
        "chunks": chunks,
        "stages": {
            name: {
                "seconds": round(seconds, 3),
                "mb_per_s": _rate(bytes_in, seconds),
                "cpu_seconds": round(stage_cpu.get(name, 0.0), 3),
                "mb_per_cpu_second": _rate(bytes_in, stage_cpu.get(name, 0.0)),
            }
            for name, seconds in stage_seconds.items()
        },
        "throughput": {
            "seconds": round(total_seconds, 3),
            "mb_per_s": _rate(bytes_in, total_seconds),
            "ranks": ranks,
            "workers": workers,
            "processes": processes,
            "mb_per_s_per_process": _rate(bytes_in, total_seconds * processes),
            "clean_tokenize_shard_mb_per_s_per_process": _rate(bytes_in, core_seconds * processes),
            "clean_tokenize_shard_mb_per_cpu_second": _rate(bytes_in, core_cpu),
        },
        "rejects_log": "rejects.jsonl",
    }


def summary_table(report: dict[str, Any]) -> str:
    docs, ex, tok, thr = report["documents"], report["examples"], report["tokens"], report["throughput"]
    rows = [
        ("documents in", f"{docs['in']:,}", f"{report['bytes_in'] / 1e6:,.1f} MB"),
        ("kept", f"{docs['kept']:,}", f"train {docs['kept_train']:,} / valid {docs['kept_valid']:,}"),
    ]
    rows += [(f"dropped: {reason}", f"{n:,}", "") for reason, n in docs["dropped"].items()]
    rows += [(f"repaired: {name}", f"{n:,}", "kept") for name, n in report["repairs"].items() if n]
    rows += [
        (
            "examples train",
            f"{ex['train']:,}",
            f"{report['shards']['train']} shards x "
            f"{report['shards']['samples_per_shard']:,}, remainder dropped {ex['dropped_remainder']:,}",
        ),
        ("examples valid", f"{ex['valid']:,}", f"{report['shards']['valid']} shards"),
        ("tokens train / valid", f"{tok['train']:,}", f"{tok['valid']:,}"),
    ]
    if tok["truncated"] or tok["unpaired"]:
        rows.append(("tokens cut (pairs)", f"{tok['truncated']:,}", f"unpaired {tok['unpaired']:,}"))
    rows.append(("", "", ""))
    rows.append(("stage", "seconds", "MB/s    CPU s   MB/CPU s"))
    rows += [
        (
            name,
            f"{s['seconds']:.1f}",
            f"{s['mb_per_s']:<7.2f} {s['cpu_seconds']:>6.1f}   {s['mb_per_cpu_second']:.2f}",
        )
        for name, s in report["stages"].items()
    ]
    rows.append(("total", f"{thr['seconds']:.1f}", f"{thr['mb_per_s']:.2f}"))
    rows.append((f"per process ({thr['processes']})", "", f"{thr['mb_per_s_per_process']:.2f}"))
    rows.append(
        (
            "clean+tokenize+shard",
            "",
            f"{thr['clean_tokenize_shard_mb_per_s_per_process']:.2f} per process, "
            f"{thr['clean_tokenize_shard_mb_per_cpu_second']:.2f} per CPU second",
        )
    )
    if "mb_per_cpu_second" in thr:
        rows.append(
            (
                "all CPU, start-up included",
                f"{thr['cpu_seconds']:.1f}",
                f"{thr['mb_per_cpu_second']:.2f} per CPU second",
            )
        )
    width = max(len(r[0]) for r in rows)
    lines = [f"data_prep summary: {report['out_dir']}"]
    lines += [f"  {name:<{width}}  {value:>12}  {note}".rstrip() for name, value, note in rows]
    if len(report["inputs"]) > 1:  # the entry last: paths are long
        lines.append(f"  {'MB':>9}  {'documents':>10}  {'kept':>10}  {'dropped':>9}  {'tokens':>12}  input")
        for row in report["inputs"]:
            kept, dropped = row["kept_train"] + row["kept_valid"], sum(row["dropped"].values())
            lines.append(
                f"  {row['bytes'] / 1e6:>9,.1f}  {row['documents_in']:>10,}  {kept:>10,}  {dropped:>9,}  "
                f"{row['tokens']:>12,}  {row['input']}"
            )
    return "\n".join(lines)
