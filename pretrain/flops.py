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

from collections.abc import Iterable
from dataclasses import dataclass

TRAIN_MULTIPLIER = 3  # forward + backward (2x forward)

# Dense (no sparsity) peak TFLOP/s per GPU from the vendors' datasheets, by dtype.
DATASHEET_PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},  # fp32 through TF32 tensor cores
    "H100": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},  # SXM
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
    "V100": {"bf16": 0.0, "fp16": 125.0, "fp32": 15.7},
}


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


def forward_flops(shape: BertShape, lengths: Iterable[int], head_positions: int) -> float:
    """Forward FLOPs of a batch whose sequences have ``lengths`` tokens each."""
    h, f, layers = shape.hidden, shape.ffn, shape.layers
    lengths = list(lengths)
    tokens = sum(lengths)
    encoder = layers * tokens * (8 * h * h + 4 * h * f)
    attention = layers * 4 * h * sum(n * n for n in lengths)
    mlm_head = head_positions * (2 * h * h + 2 * h * shape.vocab)
    nsp_head = len(lengths) * (2 * h * h + 4 * h) if shape.nsp else 0
    return float(encoder + attention + mlm_head + nsp_head)


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


def datasheet_peak_flops(precision: str) -> float | None:
    """This process's GPU's dense datasheet peak FLOP/s in ``precision`` (for the MFU of the train
    log), or None where none applies: a CPU (the benchmarks measure its peak) or an unlisted GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name().upper()
    peak = next((peaks for model, peaks in DATASHEET_PEAK_TFLOPS.items() if model in name), {}).get(precision)
    return peak * 1e12 if peak else None
