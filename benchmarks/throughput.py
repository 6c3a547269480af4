"""Throughput sweep over micro-batch sizes: tokens/s, MFU and HFU of the real pretraining step,
side by side with a plain transformers loop.

    python -m benchmarks.throughput --model mini --seq-len 128 --batch-sizes 8,16,32 --precision bf16 \\
        --zero-stage 0 --ranks 1 [--data-dir D] [--baseline] --out benchmarks/results

Each point is its own launch (``benchmarks.step_worker``, under the deepspeed launcher for
``--ranks`` > 1), so every point starts from a fresh process and an out-of-memory point fails alone;
the sweep ends at the first failed point. With ``--baseline`` the same point is then run by the
plain loop in ``benchmarks.baseline``. Without ``--data-dir`` the shards are generated with BERT's
length distribution (``benchmarks.synthetic_shards``).

The files, one job each: this one is the command line; ``benchmarks.sweep`` measures (the rates and
MFU are defined there); ``benchmarks.launching`` starts and times out the launches;
``benchmarks.reports`` writes the Markdown, JSON and plot; ``benchmarks.machine`` names the device;
``benchmarks.gemm_probe`` gives the peak; ``pretrain.flops`` counts the FLOPs.

A shared machine makes every rate lower and noisier, so the CPU time other processes took is
measured for the sweep and for each point (``benchmarks.contention``) and shown beside the rates.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmarks.sweep import run_sweep
from benchmarks.synthetic_shards import BERT_VOCAB_SIZE
from data_prep.manifest import ManifestError, load_manifest
from data_prep.typed_config import ConfigError
from pretrain.config import load_pretrain_config, resolve_model_config_path
from pretrain.distributed import precision_problem


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0]
    )
    _add_model_arguments(parser.add_argument_group("what is measured"))
    _add_layout_arguments(parser.add_argument_group("ranks and data"))
    _add_timing_arguments(parser.add_argument_group("each point"))
    _add_output_arguments(parser.add_argument_group("reports"))
    args = parser.parse_args(argv)
    args.batch_sizes = _batch_sizes(parser, args)
    if args.ranks < 1 or args.steps < 1 or args.warmup_steps < 0:
        parser.error("batch sizes, --ranks and --steps must be >= 1 and --warmup-steps >= 0")
    trainer = _refuse_user_errors(parser, args)
    args.tf32 = trainer.tf32  # the peak of an fp32 run: TF32 tensor cores, or true fp32
    args.cores = len(os.sched_getaffinity(0))
    args.threads = args.threads or max(1, args.cores // args.ranks)
    return args


def _add_model_arguments(group) -> None:
    group.add_argument(
        "--model",
        default="mini",
        help="model preset (configs/model) or BertConfig JSON (default %(default)s)",
    )
    group.add_argument("--seq-len", type=int, default=128, help="default %(default)s")
    group.add_argument(
        "--batch-sizes",
        help="comma-separated micro-batch sizes per rank (default: powers of two from 1 to --max-batch-size)",
    )
    group.add_argument(
        "--max-batch-size", type=int, default=64, help="cap of the default sweep (default %(default)s)"
    )
    group.add_argument(
        "--precision", choices=("fp32", "fp16", "bf16"), default="bf16", help="default %(default)s"
    )
    group.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=0, help="default %(default)s")
    group.add_argument(
        "--baseline", action="store_true", help="also run the plain transformers loop at each point"
    )
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a pretrain config override for our trainer, e.g. --set sparse_mlm_head=false (repeatable)",
    )


def _add_layout_arguments(group) -> None:
    group.add_argument(
        "--ranks",
        type=int,
        default=1,
        help="processes on this machine: GPUs, or CPU ranks sharing the cores (default %(default)s)",
    )
    group.add_argument("--threads", type=int, help="torch threads per rank (default: cores // ranks)")
    group.add_argument("--data-dir", type=Path, help="a prepared data dir (default: generated shards)")
    group.add_argument(
        "--vocab-size",
        type=int,
        default=BERT_VOCAB_SIZE,
        help="vocabulary of generated shards (default %(default)s)",
    )
    group.add_argument(
        "--loader-workers",
        type=int,
        default=1,
        help="DataLoader workers per rank, loader.workers (default %(default)s)",
    )


def _add_timing_arguments(group) -> None:
    group.add_argument(
        "--warmup-steps", type=int, default=3, help="untimed steps per point (default %(default)s)"
    )
    group.add_argument("--steps", type=int, default=10, help="timed steps per point (default %(default)s)")
    group.add_argument(
        "--seed", type=int, default=1234, help="data order, masks and initial weights (default %(default)s)"
    )
    group.add_argument(
        "--point-timeout-s",
        type=float,
        default=1800.0,
        help="a point running longer fails as 'timeout' (default %(default)s)",
    )


def _add_output_arguments(group) -> None:
    group.add_argument(
        "--out", type=Path, default=Path("benchmarks/results"), help="report directory (default %(default)s)"
    )
    group.add_argument("--tag", default="", help="suffix of the report file names, to keep variants apart")


def _batch_sizes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[int]:
    """--batch-sizes as integers, or the powers of two up to --max-batch-size."""
    if args.batch_sizes:
        try:
            sizes = [int(size) for size in args.batch_sizes.split(",")]
        except ValueError:
            parser.error(f"--batch-sizes {args.batch_sizes!r}: give comma-separated integers, e.g. 8,16,32")
    else:
        sizes = [2**k for k in range(args.max_batch_size.bit_length()) if 2**k <= args.max_batch_size]
    if not sizes or min(sizes) < 1:
        parser.error("batch sizes, --ranks and --steps must be >= 1 and --warmup-steps >= 0")
    return sizes


def _refuse_user_errors(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """Problems a user can cause, refused here before minutes of probing and launching; returns the
    trainer's config with the --set overrides."""
    try:
        resolve_model_config_path(args.model)
        if args.data_dir is not None:
            prepared_len = load_manifest(args.data_dir)["seq_len"]
            if prepared_len != args.seq_len:
                parser.error(
                    f"--data-dir {args.data_dir} was prepared for seq_len {prepared_len}; pass --seq-len {prepared_len}"
                )
        trainer = load_pretrain_config(
            None, ["data_dir=.", "run_dir=.", *args.set]
        )  # a typo in --set fails here
    except (FileNotFoundError, ManifestError, ConfigError) as err:
        parser.error(str(err))
    problem = precision_problem(args.precision)  # the trainer's own test
    if problem:
        parser.error(problem)
    return trainer


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.argv = argv
    result, _ = run_sweep(args)
    if not any(point["status"] == "ok" for point in result["points"]):
        raise SystemExit(f"error: no point completed: {result['points'][0]['error']}")


if __name__ == "__main__":
    main()
