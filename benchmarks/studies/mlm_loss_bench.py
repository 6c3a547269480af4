"""The MLM head's loss alone: torch's cross-entropy on an fp32 copy of the logits vs the blockwise one.

    python -m benchmarks.studies.mlm_loss_bench [--masked 570] [--vocab 30522] [--hidden 256] [--threads 2]

Times forward + backward of the tied vocabulary projection and the loss, on the [M, H] hidden
states of the masked positions in bf16 (M = 15% of a 32 x 128 batch by default), as in a mini
BERT step; "projection only" is the matmuls without any loss, the floor both variants share.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from pretrain.chunked_cross_entropy import chunked_cross_entropy


def _time(step: Callable[[], torch.Tensor], params: list[torch.Tensor], repeats: int) -> list[float]:
    for _ in range(3):
        step().backward()
    times = []
    for _ in range(repeats):
        for p in params:
            p.grad = None
        started = time.perf_counter()
        step().backward()
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.mlm_loss_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--masked", type=int, default=570, help="masked positions M (default %(default)s)")
    parser.add_argument("--vocab", type=int, default=30522, help="vocabulary V (default %(default)s)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size H (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=15, help="timed repetitions (default %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hidden = torch.randn(args.masked, args.hidden, dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(args.vocab, args.hidden) * 0.05).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, args.vocab, (args.masked,))
    variants = {
        "projection only": lambda: (hidden @ weight.t()).sum() * 0,
        "F.cross_entropy(logits.float())": lambda: F.cross_entropy((hidden @ weight.t()).float(), labels),
        "chunked_cross_entropy(logits)": lambda: chunked_cross_entropy(hidden @ weight.t(), labels),
    }
    print(
        f"M={args.masked} V={args.vocab} H={args.hidden}, bf16, {args.threads} thread(s); forward + backward, ms"
    )
    print(f"{'variant':34} {'median':>8} {'min':>8}")
    for name, step in variants.items():
        times = _time(step, [hidden, weight], args.repeats)
        print(f"{name:34} {statistics.median(times) * 1e3:8.1f} {min(times) * 1e3:8.1f}")


if __name__ == "__main__":
    main()
