"""The MLM cross-entropy over a large vocabulary, in fp32: two kernels, chosen by ``mlm_loss_kernel``.

* ``dense``: ``F.cross_entropy(logits.float(), labels)`` on the gathered masked rows, a handful of
  kernels per step whatever their number. On a GPU that is the plan: the [M, V] fp32 temporaries
  (M ~ 15% of B x L) are a few hundred MB in HBM, read at TB/s, and a loop over blocks would cost
  ~150 blocks x ~8 launches at V = 30k.
* ``blockwise`` (below): the CPU plan, where memory traffic, not launches, is the cost.
* ``auto`` (the default): ``dense`` on CUDA, ``blockwise`` elsewhere.

Blockwise, one cache-sized block of rows at a time:

``F.cross_entropy(logits.float(), labels)`` on the MLM head's [M, V] 16-bit logits makes about ten
passes over M x V values in memory: the fp32 copy, log-softmax, the one-hot fill of NLL's backward,
log-softmax's backward, the cast of the gradient back to 16 bits. With V = 30522 that is ~10% of a
mini BERT step on a CPU. Here the forward reads the logits once, keeping only each row's
log-sum-exp, and the backward reads them once more and writes the gradient once; the fp32 work on
each block of rows stays in cache. The arithmetic is the same as ``F.cross_entropy``'s in fp32
(softmax minus one-hot, times the upstream gradient over M), so results agree to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BLOCK_ELEMENTS = 1 << 19  # fp32 values per block: 2 MB, an L2/L3-resident working set
LOSS_KERNELS = ("auto", "blockwise", "dense")


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rows = max(1, BLOCK_ELEMENTS // logits.shape[1])
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for start in range(0, logits.shape[0], rows):
            lse[start : start + rows] = torch.logsumexp(logits[start : start + rows].float(), dim=1)
        target = logits.gather(1, labels.unsqueeze(1)).squeeze(1).float()
        ctx.save_for_backward(logits, labels, lse)
        return (lse - target).mean()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, labels, lse = ctx.saved_tensors
        rows = max(1, BLOCK_ELEMENTS // logits.shape[1])
        scale = grad_output.float() / logits.shape[0]
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[0], rows):
            stop = min(start + rows, logits.shape[0])
            block = logits[start:stop].float().sub_(lse[start:stop, None]).exp_()  # softmax
            block[torch.arange(stop - start, device=block.device), labels[start:stop]] -= 1.0
            grad[start:stop] = block.mul_(scale)
        return grad, None


def chunked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` [M, V] (any float dtype) against ``labels`` [M] (no ignored
    entries), computed in fp32; the gradient comes back in ``logits``' dtype."""
    return _ChunkedCrossEntropy.apply(logits, labels)


def resolve_loss_kernel(kernel: str, device_type: str) -> str:
    """``auto`` -> ``dense`` on CUDA, ``blockwise`` elsewhere; an explicit choice is kept."""
    if kernel not in LOSS_KERNELS:
        raise ValueError(f"mlm_loss_kernel must be one of {LOSS_KERNELS}, got {kernel!r}")
    if kernel == "auto":
        return "dense" if device_type == "cuda" else "blockwise"
    return kernel


def mlm_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, kernel: str = "auto") -> torch.Tensor:
    """Mean fp32 cross-entropy of the masked rows ``logits`` [M, V] with ``kernel`` (see the module doc)."""
    if resolve_loss_kernel(kernel, logits.device.type) == "dense":
        return F.cross_entropy(logits.float(), labels)
    return chunked_cross_entropy(logits, labels)
