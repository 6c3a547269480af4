"""The input pipeline alone: samples/s that one rank's ``TrainStream`` + ``train_loader`` deliver.

The same stream and DataLoader the trainer uses (shard reads with sha256 checks, collate, dynamic
masking in ``loader.workers`` worker processes), drained as fast as possible with no model. The
first batch is not timed (worker start-up and the first shard read). Comparing the rate with the
samples/s one trainer rank consumes says whether the loader could ever be the bottleneck: it
must deliver comfortably more than the trainer takes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from data_prep.manifest import load_manifest, shard_specs
from pretrain.config import PretrainConfig
from pretrain.data import TokenLayout, TrainStream, train_loader

MIN_BATCHES = 30
MIN_SECONDS = 2.0


def loader_samples_per_s(cfg: PretrainConfig, world_size: int) -> float:
    """Samples/s of rank 0's loader among ``world_size`` ranks, with ``cfg``'s batch size and loader settings."""
    manifest = load_manifest(cfg.data_dir)
    stream = TrainStream(
        shard_specs(cfg.data_dir, manifest, "train"),
        TokenLayout.from_manifest(manifest),
        rank=0,
        world_size=world_size,
        seed=cfg.seed,
        micro_batch_size=cfg.micro_batch_size,
        mlm_probability=cfg.mlm_probability,
    )
    batches = iter(train_loader(stream, cfg.loader.workers, cfg.loader.prefetch_batches))
    next(batches)
    started, count, samples = time.perf_counter(), 0, 0
    while count < MIN_BATCHES or time.perf_counter() - started < MIN_SECONDS:
        samples += next(batches)["input_ids"].shape[0]
        count += 1
    return samples / (time.perf_counter() - started)


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of processes (Linux /proc), e.g. a DataLoader's workers."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def probe(data_dir: str, seq_len: int, micro_batch_size: int, workers: int, ranks: int) -> dict[str, float]:
    """Rank 0's loader drained for ``MIN_BATCHES`` / ``MIN_SECONDS``: samples/s, and the CPU seconds
    per 1,000 samples of the main process and the loader workers together (the work done, which
    a busy shared machine slows but does not change). Uses only ``TrainStream`` arguments every
    version of the loader has, so it times older checkouts too."""
    manifest = load_manifest(data_dir)
    stream = TrainStream(
        shard_specs(data_dir, manifest, "train"),
        TokenLayout.from_manifest(manifest),
        rank=0,
        world_size=ranks,
        seed=1234,
        micro_batch_size=micro_batch_size,
        mlm_probability=0.15,
    )
    batches = iter(train_loader(stream, workers, 2))
    next(batches)
    pids = [worker.pid for worker in getattr(batches, "_workers", [])]
    started, cpu = time.perf_counter(), time.process_time() + _cpu_seconds(pids)
    count = samples = 0
    while count < MIN_BATCHES or time.perf_counter() - started < MIN_SECONDS:
        samples += next(batches)["input_ids"].shape[0]
        count += 1
    elapsed = time.perf_counter() - started
    cpu = time.process_time() + _cpu_seconds(pids) - cpu
    return {"samples_per_s": samples / elapsed, "cpu_s_per_1k_samples": 1000 * cpu / samples}


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.loader_bench``: loader samples/s per rank for several worker counts.

    Each measurement runs in a fresh process whose ``PYTHONPATH`` is one of ``--code`` (a checkout of
    this repo), so the same data and settings can be timed on two versions of the loader.
    """
    import argparse

    from benchmarks.synthetic_shards import write_synthetic_data_dir

    parser = argparse.ArgumentParser(prog="python -m benchmarks.loader_bench", description=main.__doc__)
    parser.add_argument("--data-dir", help="a prepared data dir (default: a generated one under --out)")
    parser.add_argument("--shards", type=int, default=16, help="generated train shards")
    parser.add_argument("--samples-per-shard", type=int, default=1024)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--micro-batch-size", type=int, default=32)
    parser.add_argument("--workers", default="1,2,4", help="loader.workers values, comma-separated")
    parser.add_argument("--ranks", type=int, default=1, help="world size (rank 0's loader is timed)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (median reported)")
    parser.add_argument("--code", default=".", help="repo checkouts to time, comma-separated (label=path)")
    parser.add_argument("--out", required=True, help="results path without extension (.json and .md)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = None if args.data_dir else tempfile.TemporaryDirectory(prefix="loader-bench-")
    data_dir = Path(args.data_dir or scratch.name)
    if scratch is not None:
        write_synthetic_data_dir(
            data_dir, seq_len=args.seq_len, train_shards=args.shards, samples_per_shard=args.samples_per_shard
        )
    codes = [item.split("=", 1) if "=" in item else (item, item) for item in args.code.split(",")]
    rows = []
    for label, code in codes:
        for workers in [int(w) for w in args.workers.split(",")]:
            runs = []
            for _ in range(args.repeats):
                command = [sys.executable, __file__, "--probe", str(data_dir), str(args.seq_len)]
                command += [str(args.micro_batch_size), str(workers), str(args.ranks)]
                env = {**os.environ, "PYTHONPATH": str(Path(code).resolve())}
                done = subprocess.run(command, env=env, capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"{label} workers={workers} failed:\n{done.stderr[-3000:]}")
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            rates = sorted(run["samples_per_s"] for run in runs)
            cpu = sorted(run["cpu_s_per_1k_samples"] for run in runs)
            row = {"code": label, "workers": workers, "samples_per_s": rates[len(rates) // 2]}
            row.update(cpu_s_per_1k_samples=cpu[len(cpu) // 2], runs=runs)
            rows.append(row)
            print(
                f"{label:>10} workers={workers}: {row['samples_per_s']:8.0f} samples/s, "
                f"{row['cpu_s_per_1k_samples']:.3f} CPU s per 1k samples"
            )
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "code")}
    settings.update(
        data_dir=args.data_dir or "generated", cpu_count=os.cpu_count(), load_average=os.getloadavg()
    )
    out.with_suffix(".json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    base = {(r["code"], 1): r["samples_per_s"] for r in rows if r["workers"] == 1}
    lines = [
        f"# Loader samples/s per rank ({args.ranks} rank(s), micro batch {args.micro_batch_size}, "
        f"seq_len {args.seq_len}, {os.cpu_count()} CPU cores)",
        "",
        f"Load average at the end: {os.getloadavg()[0]:.1f} (a shared machine: compare CPU s per 1k samples, "
        "the work done, more than samples/s).",
        "",
        "| code | workers | samples/s (median) | vs 1 worker | CPU s per 1k samples | samples/s of each run |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        ratio = r["samples_per_s"] / base[(r["code"], 1)] if (r["code"], 1) in base else float("nan")
        runs = ", ".join(f"{run['samples_per_s']:.0f}" for run in r["runs"])
        lines.append(
            f"| {r['code']} | {r['workers']} | {r['samples_per_s']:,.0f} | {ratio:.2f}x | "
            f"{r['cpu_s_per_1k_samples']:.3f} | {runs} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    if scratch is not None:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        data, seq_len, micro, workers, ranks = sys.argv[2:7]
        print(json.dumps(probe(data, int(seq_len), int(micro), int(workers), int(ranks))))
    else:
        raise SystemExit(main())
