"""The peak FLOP/s that MFU and HFU are fractions of.

On a GPU the peak is the vendor's dense datasheet figure of that exact model for the dtype
(``pretrain.flops.GPU_PEAK_TFLOPS``: H100 SXM, PCIe and NVL differ by 30%), the convention of MFU in
the PaLM paper and in torchtitan; fp32 runs use TF32 tensor cores unless ``tf32: false``, and the
peak follows. A GPU missing from the table has its matmul peak measured, as a CPU does. A CPU has no
such agreed figure (it depends on the ISA the library picks: AVX512-BF16, AMX, plain FMA, and on
clocks under load), so it is measured: square matmuls of a few sizes in the run's dtype, on the
thread count one rank uses, best of several repeats. The best rate any size reaches is the peak:
it is what the machine's matmul library can do in this dtype, in this run, on these threads.

A dtype the CPU has no native instructions for (bf16 without AVX512-BF16 or AMX: emulated, ten
times slower than fp32) would make the largest size take minutes, so the probe stops growing the
size once the next one is predicted (8x the FLOPs) to take over ``MAX_SECONDS_PER_SIZE``: at that
speed the rate has long stopped depending on the size.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from pretrain.flops import gpu_peak_tflops, peak_column

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PROBE_SIZES = (512, 1024, 2048)
MIN_REPEATS = 5
MIN_SECONDS_PER_SIZE = 0.5  # more repeats for small sizes, so a short stall by another process rarely wins
MAX_SECONDS_PER_SIZE = 4.0  # a size whose repeats would take longer is not probed (emulated dtypes)


@dataclass(frozen=True)
class Peak:
    flops_per_s: float  # of one device: a GPU, or the cores of one CPU rank
    source: str  # how it was obtained, for the report
    per_size: dict[int, float] = field(default_factory=dict)  # measured FLOP/s per matmul size (probe only)


def matmul_flops_per_s(precision: str, threads: int, device: str = "cpu") -> dict[int, float]:
    """Best FLOP/s of an n x n x n matmul (2 n^3 FLOPs) for each probe size, on ``threads`` threads."""
    dtype = DTYPES[precision]
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rates = {}
        for n in PROBE_SIZES:
            if rates and MIN_REPEATS * 2 * n**3 / rates[max(rates)] > MAX_SECONDS_PER_SIZE:
                break  # this dtype is too slow here for a bigger size to change the answer
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            out = torch.mm(a, b)  # the first call selects the kernel and warms the caches
            best, repeats, spent = float("inf"), 0, 0.0
            while repeats < MIN_REPEATS or spent < MIN_SECONDS_PER_SIZE:
                synchronize()
                started = time.perf_counter()
                torch.mm(a, b, out=out)
                synchronize()
                seconds = time.perf_counter() - started
                best, repeats, spent = min(best, seconds), repeats + 1, spent + seconds
            rates[n] = 2 * n**3 / best
        return rates
    finally:
        torch.set_num_threads(previous)


def peak_flops(precision: str, *, threads_per_rank: int, tf32: bool = True) -> Peak:
    """The peak of one device: one GPU, or on a CPU the ``threads_per_rank`` cores one rank uses.

    CPU ranks share one machine, each with its threads on its own cores, so a run's peak is this
    per-rank probe times the ranks: the sum of what each rank's cores can do. (A single probe over
    all cores gives about the same on this kind of machine; probing the per-rank configuration
    measures exactly the resources each rank was given.)
    """
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        column = peak_column(precision, tf32)
        known = gpu_peak_tflops(name, precision, tf32)
        if known is not None:
            model, tflops = known
            return Peak(tflops * 1e12, f"datasheet dense {column} peak of {model} ({name}): {tflops} TFLOP/s")
        with _tf32(tf32):
            per_size = matmul_flops_per_s(precision, threads_per_rank, device="cuda")
        return Peak(
            max(per_size.values()),
            f"{name} is not in pretrain.flops.GPU_PEAK_TFLOPS: measured {column} matmul peak",
            per_size,
        )
    per_size = matmul_flops_per_s(precision, threads_per_rank)
    best = max(per_size.values())
    return Peak(
        best,
        f"measured {precision} matmul peak on {threads_per_rank} thread(s): {best / 1e9:.0f} GFLOP/s",
        per_size,
    )


@contextmanager
def _tf32(enabled: bool):
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
