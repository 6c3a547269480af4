"""The peak FLOP/s that MFU and HFU are fractions of.

On a GPU the peak is the vendor's dense datasheet figure for the dtype (``pretrain.flops.
DATASHEET_PEAK_TFLOPS``), the convention of MFU in the PaLM paper and in torchtitan. A CPU has no
such agreed figure (it depends on the ISA the library picks: AVX512-BF16, AMX, plain FMA, and on
clocks under load), so it is measured: square matmuls of a few sizes in the run's dtype, on the
thread count one rank uses, best of several repeats. The best rate any size reaches is the peak:
it is what the machine's matmul library can do in this dtype, in this run, on these threads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from pretrain.flops import DATASHEET_PEAK_TFLOPS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PROBE_SIZES = (512, 1024, 2048)
MIN_REPEATS = 5
MIN_SECONDS_PER_SIZE = 0.5  # more repeats for small sizes, so a short stall by another process rarely wins


@dataclass(frozen=True)
class Peak:
    flops_per_s: float  # of the whole run: all ranks
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


def datasheet_tflops(device_name: str, precision: str) -> float | None:
    """The datasheet dense peak of a GPU whose name contains a known model (``NVIDIA H100 80GB HBM3``)."""
    for model, peaks in DATASHEET_PEAK_TFLOPS.items():
        if model in device_name.upper() and peaks.get(precision):
            return peaks[precision]
    return None


def peak_flops(precision: str, *, threads_per_rank: int, ranks: int) -> Peak:
    """The peak of a run of ``ranks`` processes on this machine (one GPU each, or sharing the CPU).

    CPU ranks share one machine, each with ``threads_per_rank`` threads on its own cores, so the
    run's peak is the per-rank probe times the ranks: the sum of what each rank's cores can do.
    (A single probe over all cores gives about the same on this kind of machine; probing the
    per-rank configuration measures exactly the resources each rank was given.)
    """
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        tflops = datasheet_tflops(name, precision)
        if tflops is not None:
            return Peak(
                tflops * 1e12 * ranks,
                f"datasheet dense {precision} peak of {name}: {tflops} TFLOP/s x {ranks} GPU(s)",
            )
        per_size = matmul_flops_per_s(precision, threads_per_rank, device="cuda")
        return Peak(
            max(per_size.values()) * ranks,
            f"{name} is not in the datasheet table: measured {precision} matmul peak x {ranks} GPU(s)",
            per_size,
        )
    per_size = matmul_flops_per_s(precision, threads_per_rank)
    best = max(per_size.values())
    return Peak(
        best * ranks,
        f"measured {precision} matmul peak on {threads_per_rank} thread(s): "
        f"{best / 1e9:.0f} GFLOP/s x {ranks} rank(s)",
        per_size,
    )
