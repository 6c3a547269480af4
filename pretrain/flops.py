"""FLOPs of BERT pretraining, and model / hardware FLOP utilisation (MFU, HFU).

Only matrix products are counted (a multiply-accumulate is 2 FLOPs): they are >97% of BERT's
arithmetic, and what a device's peak figure measures. For one sequence of ``n`` tokens, with
hidden size ``h``, FFN size ``f``, ``l`` layers, vocabulary ``V`` and ``m`` positions through the
MLM head, the forward pass costs

    encoder projections   l * n * (8 h^2 + 4 h f)   Q, K, V, output (4 x 2h^2); FFN in + out (2 x 2hf)
    attention             l * 4 n^2 h               Q K^T and attention x V (2 n^2 h each)
    MLM head              m * (2 h^2 + 2 h V)       transform dense + tied vocabulary decoder
    NSP head              2 h^2 + 4 h               pooler dense on [CLS] + 2-way classifier

and training costs 3x the forward (the backward computes gradients for inputs and weights, 2x).
This is the accounting of Megatron-LM / PaLM's MFU (Chowdhery et al. 2022, appendix B), which
also counts attention.

* Model FLOPs (MFU) count what the objective needs: each sequence at its real length (no padding),
  the MLM head on the masked positions only.
* Hardware FLOPs (HFU) count what was executed: every sequence at the padded length, and the MLM
  head on the positions it actually ran on (the masked ones for this trainer, every position for
  a stock ``BertForPreTraining`` loop, whose full-vocabulary head therefore counts only here).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

TRAIN_MULTIPLIER = 3  # forward + backward (2x forward)

# Dense (no 2:4 sparsity) peak TFLOP/s of one GPU from the vendor's datasheet, by exact model:
# torch.cuda.get_device_name() is matched against each pattern in order, the first match wins (so
# "H100 PCIe" and "H100 NVL" come before the SXM part, whose name is "NVIDIA H100 80GB HBM3").
# Columns: bf16 and fp16 tensor cores; tf32 tensor cores (fp32 weights with TF32 matmuls, what an
# fp32 run gets with ``tf32: true``); true fp32 (CUDA cores, ``tf32: false``). None: no such unit.
GPU_PEAK_TFLOPS: tuple[tuple[str, str, dict[str, float | None]], ...] = (
    (r"H100.*PCIe", "H100 PCIe", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    (r"H100 NVL", "H100 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H100", "H100 SXM", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"H200 NVL", "H200 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H200", "H200 SXM", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"GH200", "GH200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"H800.*PCIe", "H800 PCIe", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    (r"H800", "H800 SXM", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    # A100 and A800: the same compute for SXM and PCIe, 40 and 80 GB.
    (r"A[18]00", "A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"L40S", "L40S", {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    (r"L40\b", "L40", {"bf16": 181.05, "fp16": 181.05, "tf32": 90.5, "fp32": 90.5}),
    (r"L4\b", "L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (r"A10\b", "A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (r"A30\b", "A30", {"bf16": 165.0, "fp16": 165.0, "tf32": 82.0, "fp32": 10.3}),
    (r"A40\b", "A40", {"bf16": 149.7, "fp16": 149.7, "tf32": 74.8, "fp32": 37.4}),
    (r"V100S", "V100S PCIe", {"bf16": None, "fp16": 130.0, "tf32": None, "fp32": 16.4}),
    (r"V100.*PCIE", "V100 PCIe", {"bf16": None, "fp16": 112.0, "tf32": None, "fp32": 14.0}),
    (r"V100", "V100 SXM2", {"bf16": None, "fp16": 125.0, "tf32": None, "fp32": 15.7}),
    (r"T4\b", "T4", {"bf16": None, "fp16": 65.0, "tf32": None, "fp32": 8.1}),
)


def peak_column(precision: str, tf32: bool) -> str:
    """The datasheet column a run's matmuls use: bf16 / fp16, and for fp32 TF32 or true fp32."""
    return ("tf32" if tf32 else "fp32") if precision == "fp32" else precision


def gpu_peak_tflops(device_name: str, precision: str, tf32: bool = True) -> tuple[str, float] | None:
    """(model, dense peak TFLOP/s) of the GPU called ``device_name`` for this precision; None when the
    model is not in the table or has no unit for it (then measure the peak instead)."""
    for pattern, model, peaks in GPU_PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            # Without TF32 units (V100, T4) the TF32 setting has no effect: fp32 runs in fp32.
            tflops = peaks[peak_column(precision, tf32)] or (peaks["fp32"] if precision == "fp32" else None)
            return (model, tflops) if tflops else None
    return None


@dataclass(frozen=True)
class BertShape:
    hidden: int
    ffn: int
    layers: int
    vocab: int
    nsp: bool

    @classmethod
    def from_config(cls, config, nsp: bool) -> BertShape:
        return cls(
            hidden=config.hidden_size,
            ffn=config.intermediate_size,
            layers=config.num_hidden_layers,
            vocab=config.vocab_size,
            nsp=nsp,
        )


def forward_flops_by_component(
    shape: BertShape, lengths: Iterable[int], head_positions: int
) -> dict[str, float]:
    """Forward FLOPs of a batch whose sequences have ``lengths`` tokens, per component of the formula."""
    h, f, layers = shape.hidden, shape.ffn, shape.layers
    lengths = list(lengths)
    tokens = sum(lengths)
    return {
        "encoder_projections": float(layers * tokens * (8 * h * h + 4 * h * f)),
        "attention": float(layers * 4 * h * sum(n * n for n in lengths)),
        "mlm_transform": float(head_positions * 2 * h * h),
        "mlm_decoder": float(head_positions * 2 * h * shape.vocab),
        "nsp_head": float(len(lengths) * (2 * h * h + 4 * h)) if shape.nsp else 0.0,
    }


def forward_flops(shape: BertShape, lengths: Iterable[int], head_positions: int) -> float:
    """Forward FLOPs of a batch whose sequences have ``lengths`` tokens each."""
    return sum(forward_flops_by_component(shape, lengths, head_positions).values())


def model_flops(shape: BertShape, lengths: Iterable[int], masked_positions: int) -> float:
    """Training FLOPs the objective needs (for MFU): real lengths, MLM head on masked positions."""
    return TRAIN_MULTIPLIER * forward_flops(shape, lengths, masked_positions)


def hardware_flops(shape: BertShape, batch_size: int, padded_length: int, head_positions: int) -> float:
    """Training FLOPs executed (for HFU): padded lengths, MLM head where it ran."""
    return TRAIN_MULTIPLIER * forward_flops(shape, [padded_length] * batch_size, head_positions)


def utilisation(flops: float, seconds: float, peak_flops_per_s: float) -> float:
    """Achieved FLOP/s as a fraction of the peak (MFU with model FLOPs, HFU with hardware FLOPs)."""
    if seconds <= 0 or peak_flops_per_s <= 0:
        return 0.0
    return flops / seconds / peak_flops_per_s


def datasheet_peak_flops(precision: str, tf32: bool = True) -> float | None:
    """This process's GPU's dense datasheet peak FLOP/s in ``precision`` (for the MFU of the train
    log), or None where none applies: a CPU (the benchmarks measure its peak) or an unlisted GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    found = gpu_peak_tflops(torch.cuda.get_device_name(), precision, tf32)
    return found[1] * 1e12 if found else None
