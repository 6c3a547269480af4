"""data_prep's cost as the corpus grows: wall time, CPU time and peak memory of whole prep runs on
generated corpora of several sizes with 1 and 2 worker processes, and the dedup index's memory
alone at corpus sizes too big to prepare here.

    python -m benchmarks.prep_scaling --sizes 10,50 --workers 1,2 [--dedup-docs 25000,100000,400000]

Each prep run is a fresh ``python -m data_prep`` process (``benchmarks.corpus`` text: log-normal
document lengths, 5% near and 2% exact duplicates); its memory is sampled with psutil every 0.1 s
over the whole process tree (the sum, and the largest single process), and ``ru_maxrss`` of the
children gives the exact peak of the largest one. CPU seconds come from report.json: on a shared
machine they are the measure of work, wall time also measures the neighbours. The dedup probe feeds
random MinHash signatures (one per document, chunks of 2,000) through ``DuplicateFilter`` in a fresh
process and reports its peak RSS: the index, alone, at up to 400,000 documents (~800 MB of text).

Results go to ``benchmarks/results/prep-scaling-<date>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PREP_SETTINGS = [
    "seq_len=128",
    "tokenizer.vocab_size=8000",
    "tokenizer.sample_sentences=100000",
    "samples_per_shard=1024",
    "chunk_mb=4",
    "valid_fraction=0.01",
    "clean.dedup_memory_mb=64",
    "progress=false",
]


def _tree_rss(root) -> tuple[int, int]:
    """(sum, max) of the resident memory of ``root`` and its descendants, in bytes."""
    import psutil

    sizes = []
    for process in [root, *root.children(recursive=True)]:
        try:
            sizes.append(process.memory_info().rss)
        except psutil.Error:
            pass
    return sum(sizes), max(sizes, default=0)


def measured(command: list[str], env: dict | None = None) -> dict:
    """Run ``command``; its wall time, peak tree RSS (sampled) and peak single-process RSS (exact)."""
    import psutil

    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(process.pid)
    peaks = [0, 0]
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    while process.poll() is None:
        total, largest = _tree_rss(root)
        peaks = [max(peaks[0], total), max(peaks[1], largest)]
        time.sleep(0.1)
    reader.join()
    if process.returncode:
        sys.exit(
            f"error: {' '.join(command[:4])} failed (exit {process.returncode}):\n{''.join(output[-20:])}"
        )
    return {
        "wall_s": round(time.perf_counter() - start, 2),
        "peak_tree_rss_mb": round(peaks[0] / 2**20, 1),
        "peak_process_rss_mb_sampled": round(peaks[1] / 2**20, 1),
        "output": "".join(output),
    }


def prep_point(corpus: Path, out: Path, workers: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    load = os.getloadavg()[0]  # what the wall time shared the machine with
    run = measured(
        [
            sys.executable,
            "-m",
            "data_prep",
            f"inputs=[{corpus}]",
            f"out_dir={out}",
            f"workers={workers}",
            *PREP_SETTINGS,
        ]
    )
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, max over all children so far
    report = json.loads((out / "report.json").read_text())
    return {
        "mb": round(report["bytes_in"] / 1e6, 1),
        "workers": workers,
        "documents": report["documents"]["in"],
        "near_duplicates": report["duplicates"]["near"],
        "exact_duplicates": report["duplicates"]["exact"],
        "wall_s": run["wall_s"],
        "load_1min": [round(load, 1), round(os.getloadavg()[0], 1)],  # at the start and the end
        "cpu_s": report["throughput"]["cpu_seconds"],
        "stage_cpu_s": {name: stage["cpu_seconds"] for name, stage in report["stages"].items()},
        "peak_tree_rss_mb": run["peak_tree_rss_mb"],
        "peak_process_rss_mb": round(largest / 1024, 1)
        if largest > before
        else run["peak_process_rss_mb_sampled"],
    }


def dedup_probe(documents: int) -> None:
    """(In a fresh process.) Peak RSS after ``documents`` random signatures through the filter."""
    import numpy as np

    from data_prep.config import NearDupConfig
    from data_prep.dedup import DuplicateFilter

    near = NearDupConfig()
    options = {}
    with tempfile.TemporaryDirectory() as scratch:
        if "path" in inspect.signature(DuplicateFilter).parameters:
            options = {"path": Path(scratch) / "dedup.sqlite", "memory_mb": 64}
        index = DuplicateFilter(True, near, **options)
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        cpu = time.process_time()
        for first in range(0, documents, 2000):
            n = min(2000, documents - first)
            signatures = rng.integers(0, 2**32, size=(n, near.num_perm), dtype=np.uint32)
            index.check_chunk([f"{first + j:032x}" for j in range(n)], signatures)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "documents": documents,
                "peak_rss_mb": round(peak, 1),
                "seconds": round(seconds, 2),
                "cpu_s": round(cpu, 2),
            }
        )
    )


def plot(points: list[dict], dedup: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4 if dedup else 3, figsize=(20 if dedup else 15, 4))
    for workers in sorted({p["workers"] for p in points}):
        mine = sorted((p for p in points if p["workers"] == workers), key=lambda p: p["mb"])
        sizes = [p["mb"] for p in mine]
        # points only: each was measured under whatever else the shared machine ran then
        axes[0].plot(sizes, [p["wall_s"] for p in mine], "o", label=f"{workers} worker(s)")
        axes[1].plot(sizes, [p["cpu_s"] for p in mine], "o-", label=f"all stages, {workers} worker(s)")
        rest = [p["cpu_s"] - p["stage_cpu_s"].get("tokenizer", 0.0) for p in mine]
        axes[1].plot(sizes, rest, "s--", label=f"without tokenizer training, {workers} w")
        axes[2].plot(sizes, [p["peak_tree_rss_mb"] for p in mine], "o-", label=f"all processes, {workers} w")
        axes[2].plot(
            sizes, [p["peak_process_rss_mb"] for p in mine], "s--", label=f"largest process, {workers} w"
        )
    axes[0].set(
        xlabel="corpus MB",
        ylabel="seconds",
        title="prep wall time (shared machine: not comparable)",
        ylim=(0, None),
    )
    axes[1].set(xlabel="corpus MB", ylabel="CPU seconds", title="prep CPU time", ylim=(0, None))
    axes[2].set(xlabel="corpus MB", ylabel="peak RSS MB", title="prep peak memory", ylim=(0, None))
    for axis in axes[:3]:
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    if dedup:
        for label in sorted({d["code"] for d in dedup}):
            rows = sorted((d for d in dedup if d["code"] == label), key=lambda d: d["documents"])
            axes[3].plot(
                [d["documents"] / 1000 for d in rows], [d["peak_rss_mb"] for d in rows], "o-", label=label
            )
        axes[3].set(
            xlabel="thousand documents", ylabel="peak RSS MB", title="dedup index alone", ylim=(0, None)
        )
        axes[3].legend(fontsize=7)
        axes[3].grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def table(points: list[dict], dedup: list[dict]) -> str:
    lines = [
        "| corpus MB | workers | documents | near dups | wall s | load start, end | CPU s | tokenizer CPU s "
        "| other CPU s per MB | peak RSS all MB | peak RSS largest MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted(points, key=lambda p: (p["workers"], p["mb"])):
        tokenizer = p["stage_cpu_s"].get("tokenizer", 0.0)
        load = ", ".join(map(str, p["load_1min"])) if "load_1min" in p else "not recorded"
        lines.append(
            f"| {p['mb']} | {p['workers']} | {p['documents']:,} | {p['near_duplicates']:,} | {p['wall_s']} | {load} | "
            f"{p['cpu_s']} | {tokenizer} | {(p['cpu_s'] - tokenizer) / p['mb']:.3f} | {p['peak_tree_rss_mb']} | "
            f"{p['peak_process_rss_mb']} |"
        )
    if dedup:
        lines += ["", "| dedup index | documents | peak RSS MB | wall s | CPU s |", "|---|---|---|---|---|"]
        lines += [
            f"| {d['code']} | {d['documents']:,} | {d['peak_rss_mb']} | {d['seconds']} | {d['cpu_s']} |"
            for d in sorted(dedup, key=lambda d: (d["code"], d["documents"]))
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,50", help="corpus sizes in MB")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--dedup-docs", default="", help="e.g. 25000,100000,400000")
    parser.add_argument(
        "--dedup-code", default="", help="a source tree to probe too (the old dedup), as LABEL=PATH"
    )
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "prep-scaling")
    parser.add_argument(
        "--replot", metavar="DATE", help="redraw results/prep-scaling-DATE.{md,png} from its json"
    )
    parser.add_argument("--probe", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        dedup_probe(args.probe)
        return
    if args.replot:
        stem = RESULTS / f"prep-scaling-{args.replot}"
        found = json.loads(stem.with_suffix(".json").read_text())
        stem.with_suffix(".md").write_text(table(found["prep"], found["dedup"]))
        plot(found["prep"], found["dedup"], stem.with_suffix(".png"))
        return
    from benchmarks.corpus import write_corpus

    points = []
    for size in [float(s) for s in args.sizes.split(",") if s]:
        corpus = args.scratch / f"corpus-{size:g}mb"
        if not corpus.is_dir():
            write_corpus(corpus, size)
        for workers in [int(w) for w in args.workers.split(",")]:
            out = args.scratch / f"out-{size:g}mb-{workers}w"
            point = prep_point(corpus, out, workers)
            print(json.dumps(point), flush=True)
            points.append(point)
            subprocess.run(["rm", "-rf", str(out)], check=True)
    dedup = []
    codes = {"this tree (dedup_memory_mb=64)": os.environ.get("PYTHONPATH", "")}
    if args.dedup_code:
        label, path = args.dedup_code.split("=", 1)
        codes[label] = path
    for label, path in codes.items():
        for documents in [int(d) for d in args.dedup_docs.split(",") if d]:
            env = {**os.environ, "PYTHONPATH": path}  # the probe imports only data_prep, from there
            command = [sys.executable, str(Path(__file__).resolve()), "--probe", str(documents)]
            result = json.loads(measured(command, env)["output"].strip().splitlines()[-1])
            dedup.append({"code": label, **result})
            print(json.dumps(dedup[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"prep-scaling-{datetime.date.today().isoformat()}"
    if stem.with_suffix(".json").is_file():  # today's earlier points, unless measured again now
        earlier = json.loads(stem.with_suffix(".json").read_text())
        again = {(p["mb"], p["workers"]) for p in points}
        points = [p for p in earlier["prep"] if (p["mb"], p["workers"]) not in again] + points
        again = {(d["code"], d["documents"]) for d in dedup}
        dedup = [d for d in earlier["dedup"] if (d["code"], d["documents"]) not in again] + dedup
    stem.with_suffix(".json").write_text(json.dumps({"prep": points, "dedup": dedup}, indent=1) + "\n")
    stem.with_suffix(".md").write_text(table(points, dedup))
    plot(points, dedup, stem.with_suffix(".png"))
    print(table(points, dedup))


if __name__ == "__main__":
    main()
