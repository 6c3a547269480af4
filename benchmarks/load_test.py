"""Load test of the model server (``serve``): requests/s and p50/p99 latency at
several client concurrencies, with dynamic batching on and off.

    python -m benchmarks.load_test [--model-dir DIR] [--concurrency 1,8,32] [--requests 400]
        [--seconds 20] [--threads 1] [--out benchmarks/results]

For each batching mode the real server is started as a subprocess on a free 127.0.0.1 port; for each
concurrency C, C client threads (one keep-alive HTTP/1.1 connection each, stdlib ``http.client``)
send single-text ``POST /predict`` requests back to back until ``--requests`` are answered or
``--seconds`` have passed, whichever comes first, after a short warm-up. Reported per point:
requests/s = answered / wall time, p50/p99 of the per-request latency, non-200 answers, and the
mean number of requests that shared a forward pass (from the server's /metadata counters).

Without ``--model-dir`` a sequence classifier with random weights is built (``make_model_dir``: the
``--size`` preset, a WordPiece vocabulary of 8,000 entries); speed does not depend on the weights.
The client runs on the same machine as the server, so on a small CPU it takes cores from it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

from benchmarks.contention import OtherProcessesMeter
from benchmarks.synthetic_shards import local_bert_tokenizer
from pretrain.distributed import free_port

REPO = Path(__file__).resolve().parents[1]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def words(count: int) -> list[str]:
    return [f"w{i}" for i in range(count)]


def make_model_dir(
    path: Path,
    task: str = "sequence_classification",
    labels: list[str] | None = None,
    size: str = "tiny",
    vocabulary: list[str] | None = None,
    max_len: int = 64,
    finetune_json: dict | None = None,
    seed: int = 0,
) -> Path:
    """A fine-tune-style model dir (config.json, model.safetensors, tokenizer) with random weights.

    ``finetune_json``: written as ``finetune.json`` when given (the fine-tuning stage's contract);
    without it the server infers what the model is, as for model dirs written before that file.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

    vocabulary = SPECIAL + (vocabulary or words(8000 - len(SPECIAL)))
    labels = [] if task == "regression" else (labels or ["negative", "positive"])
    preset = json.loads((REPO / "configs" / "model" / f"{size}.json").read_text())
    preset = {key: value for key, value in preset.items() if not key.startswith("_")}
    preset.update(vocab_size=len(vocabulary), architectures=None)
    if task == "regression":
        preset.update(num_labels=1, problem_type="regression")
    else:
        preset.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: index for index, name in enumerate(labels)},
        )
    torch.manual_seed(seed)
    model_class = (
        BertForTokenClassification if task == "token_classification" else BertForSequenceClassification
    )
    model = model_class(BertConfig(**preset)).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    local_bert_tokenizer(vocabulary, max_len, wordpiece=True).save_pretrained(path)
    if finetune_json is not None:
        (path / "finetune.json").write_text(json.dumps(finetune_json, indent=2))
    return path


def start_server(model_dir: Path, port: int, *args: str, env: dict | None = None) -> subprocess.Popen:
    """The real server in a subprocess; returns once /health answers (or raises with its output)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "serve", str(model_dir), "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}: {process.stdout.read()}")
        try:
            status, _ = request("127.0.0.1", port, "GET", "/health")
            if status == 200:
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not answer /health within 120 s: {process.stdout.read()}")


def request(host: str, port: int, method: str, path: str, body: bytes | None = None, timeout: float = 30):
    """(status, parsed JSON body) of one request on a fresh connection."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        connection.close()


def sentences(count: int, seed: int = 0) -> list[str]:
    """SST-2-like inputs: 5-40 words (mean ~20) drawn from the vocabulary."""
    import random

    rng = random.Random(seed)
    vocabulary = words(8000 - len(SPECIAL))
    return [" ".join(rng.choices(vocabulary, k=rng.randint(5, 40))) for _ in range(count)]


def process_cpu_seconds(pid: int) -> float:
    """CPU time of a running process (/proc/<pid>/stat utime + stime); 0 where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_point(
    port: int, concurrency: int, max_requests: int, seconds: float, texts: list[str], server_pid: int = 0
) -> dict:
    latencies: list[float] = []
    failures: dict[int, int] = {}
    lock = threading.Lock()
    counter = iter(range(max_requests))
    deadline = time.perf_counter() + seconds

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}
        while time.perf_counter() < deadline:
            with lock:
                number = next(counter, None)
            if number is None:
                break
            body = json.dumps({"texts": [texts[number % len(texts)]]}).encode()
            started = time.perf_counter()
            connection.request("POST", "/predict", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            with lock:
                if response.status == 200:
                    latencies.append(elapsed)
                else:
                    failures[response.status] = failures.get(response.status, 0) + 1
        connection.close()

    before = request("127.0.0.1", port, "GET", "/metadata")[1]["batching"]
    meter, server_cpu = OtherProcessesMeter(), process_cpu_seconds(server_pid)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    server_cores = (process_cpu_seconds(server_pid) - server_cpu) / wall
    others = meter.cores()
    after = request("127.0.0.1", port, "GET", "/metadata")[1]["batching"]
    forwards = after["forwards"] - before["forwards"]
    latencies.sort()

    def percentile(q: float) -> float:
        return latencies[min(len(latencies) - 1, round(q * (len(latencies) - 1)))] * 1000

    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "failures": failures,
        "seconds": round(wall, 3),  # ms: a short point lasts well under a second
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(0.5), 1),
        "p99_ms": round(percentile(0.99), 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1),
        "requests_per_forward": round((after["requests"] - before["requests"]) / max(1, forwards), 2),
        "server_cores": round(server_cores, 2),
        # busy cores of the machine minus this client's and the server's: other processes' share
        "other_cores": None if others is None else round(max(0.0, others - server_cores), 2),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| batching | concurrency | requests | requests/s | p50 ms | p99 ms | requests per forward | non-200 "
        "| server cores | other processes' cores |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['batching']} | {row['concurrency']} | {row['requests']} | {row['requests_per_s']:.1f} | "
            f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['requests_per_forward']:.2f} | "
            f"{sum(row['failures'].values())} | {row['server_cores']:.2f} | {row['other_cores']} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    for mode, style in (("on", "o-"), ("off", "s--")):
        points = [row for row in rows if row["batching"] == mode]
        xs = [row["concurrency"] for row in points]
        left.plot(xs, [row["requests_per_s"] for row in points], style, label=f"batching {mode}")
        right.plot(xs, [row["p50_ms"] for row in points], style, label=f"p50, batching {mode}")
        right.plot(xs, [row["p99_ms"] for row in points], style, alpha=0.5, label=f"p99, batching {mode}")
    for axis, label in ((left, "requests/s"), (right, "latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(
            sorted({row["concurrency"] for row in rows}),
            [str(x) for x in sorted({row["concurrency"] for row in rows})],
        )
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    right.set_yscale("log")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load_test", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model-dir", type=Path, help="a fine-tuned model dir; default: a random-weight one")
    parser.add_argument(
        "--size", default="mini", help="model preset for the random-weight model (default mini)"
    )
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=400, help="requests per point (at most)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time per point (at most)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    levels = [int(value) for value in args.concurrency.split(",")]

    import tempfile

    work = Path(tempfile.mkdtemp(prefix="load_test_"))
    model_dir = args.model_dir or make_model_dir(work / "model", size=args.size, max_len=128)
    texts = sentences(1000)
    rows = []
    for mode in ("on", "off"):
        port = free_port()
        extra = [
            "--threads",
            str(args.threads),
            "--max-batch-size",
            str(args.max_batch_size),
            "--max-wait-ms",
            str(args.max_wait_ms),
            "--max-queue",
            "1024",
        ]
        server = start_server(model_dir, port, *extra, *([] if mode == "on" else ["--no-batching"]))
        try:
            run_point(port, 4, args.warmup, 30, texts)
            for level in levels:
                row = {
                    "batching": mode,
                    **run_point(port, level, args.requests, args.seconds, texts, server.pid),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
            metadata = request("127.0.0.1", port, "GET", "/metadata")[1]
        finally:
            server.terminate()
            server.wait(60)

    cores = os.cpu_count()
    name = f"serve-cpu-{cores}c-{date.today().isoformat()}-{args.size if not args.model_dir else 'model'}"
    args.out.mkdir(parents=True, exist_ok=True)
    title = (
        f"{args.model_dir or args.size + ' (random weights)'}, {metadata['dtype']}, server {args.threads} "
        f"thread(s), {cores} cores, {platform.machine()}"
    )
    setup = {
        "model": str(args.model_dir or f"{args.size}, random weights, vocabulary 8000"),
        "dtype": metadata["dtype"],
        "server_threads": args.threads,
        "max_batch_size": args.max_batch_size,
        "max_wait_ms": args.max_wait_ms,
        "requests_per_point": args.requests,
        "seconds_per_point": args.seconds,
        "cores": cores,
        "input": "one text of 5-40 words per request",
    }
    (args.out / f"{name}.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=2) + "\n")
    markdown = f"# Load test: {title}\n\n{table(rows)}\n\nSetup: {json.dumps(setup)}\n"
    (args.out / f"{name}.md").write_text(markdown)
    plot(rows, args.out / f"{name}.png", title)
    print(markdown)
    print(f"wrote {args.out / name}.{{json,md,png}}")


if __name__ == "__main__":
    main()
