"""Optimizers and learning-rate schedules for pretraining and fine-tuning.

BERT's recipe (Devlin et al. 2019, and the reference ``optimization.py``): AdamW with weight decay
on every weight matrix but none on biases and LayerNorm parameters, linear warm-up then linear
decay. LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning") is the large-batch
alternative that DeepSpeed and NVIDIA used for their record BERT runs.

Which implementation runs (``build_optimizer``):

    optimizer  offload    device  implementation                     ZeRO stages
    adamw      none       any     torch.optim.AdamW(fused=True)      0, 1, 2, 3
    adamw      optimizer  any     deepspeed.ops.adam.DeepSpeedCPUAdam 1, 2, 3 (+params: 3)
    lamb       none       CUDA    deepspeed.ops.lamb.FusedLamb       0
    lamb       none       CPU     Lamb below (a loop over tensors)   0

LAMB's trust ratio is per whole tensor, which ZeRO's flat partitions split, so it runs without
ZeRO; ZeRO-Offload runs the optimizer step on the CPU, which only DeepSpeed's CPU Adam does fast.
DeepSpeed's ops are compiled on first use (ninja and a C++ compiler; nvcc for FusedLamb).
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable, Iterable

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weight matrices, and biases / LayerNorm / 1-D parameters without decay."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:  # tied weights appear once
            continue
        seen.add(id(param))
        if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class Lamb(torch.optim.Optimizer):
    """LAMB: Adam's update rescaled per parameter by the trust ratio ||w|| / ||update||.

    Algorithm 2 of You et al. 2019, with decoupled weight decay inside the update and bias
    correction, as in NVIDIA's and DeepSpeed's fused implementations. Needs whole parameters
    (the norms are per tensor), so it is not combined with ZeRO partitioning.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        max_trust_ratio: float = 10.0,
        min_trust_ratio: float = 0.0,
        bias_correction: bool = True,
    ):
        super().__init__(
            params,
            dict(
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                max_trust_ratio=max_trust_ratio,
                min_trust_ratio=min_trust_ratio,
                bias_correction=bias_correction,
            ),
        )

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad.float()
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.float32)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if group["bias_correction"]:
                    m_hat = exp_avg / (1 - beta1 ** state["step"])
                    v_hat = exp_avg_sq / (1 - beta2 ** state["step"])
                else:
                    m_hat, v_hat = exp_avg, exp_avg_sq
                update = m_hat / (v_hat.sqrt() + group["eps"])
                weights = param.float()
                if group["weight_decay"]:
                    update.add_(weights, alpha=group["weight_decay"])
                w_norm, u_norm = weights.norm(), update.norm()
                ratio = (w_norm / u_norm).clamp(group["min_trust_ratio"], group["max_trust_ratio"])
                trust = torch.where((w_norm > 0) & (u_norm > 0), ratio, torch.ones_like(w_norm))
                param.add_((update * trust).to(param.dtype), alpha=-group["lr"])
        return loss


def build_optimizer(
    name: str,
    groups: list[dict],
    lr: float,
    betas: tuple[float, float],
    eps: float,
    device_type: str,
    offload: bool = False,
    *,
    bias_correction: bool = True,
    max_trust_ratio: float = 10.0,
    min_trust_ratio: float = 0.0,
) -> torch.optim.Optimizer:
    """``adamw`` or ``lamb``, in the implementation the device and offload call for (table above);
    the last three are LAMB's (DeepSpeed's bias_correction, max_coeff, min_coeff)."""
    if name == "adamw" and offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        # Decoupled weight decay per group (adamw_mode), as torch's AdamW.
        return DeepSpeedCPUAdam(groups, lr=lr, betas=betas, eps=eps, adamw_mode=True)
    if name == "adamw":
        # The fused AdamW kernel exists for CPU and CUDA in torch >= 2.4: one pass over all
        # parameters instead of a chain of element-wise ops per tensor.
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=device_type in ("cpu", "cuda"))
    if name == "lamb" and offload:
        raise ValueError("optimizer.name=lamb cannot be offloaded; use adamw with offload")
    if name == "lamb" and device_type == "cuda":
        try:
            from deepspeed.ops.lamb import FusedLamb

            # The same algorithm as Lamb below: decoupled decay inside the update, trust ratio clamped
            # to [min, max] (default [0, 10]: DeepSpeed's default 0.01 floor is not in the paper).
            return FusedLamb(
                groups,
                lr=lr,
                betas=betas,
                eps=eps,
                bias_correction=bias_correction,
                max_coeff=max_trust_ratio,
                min_coeff=min_trust_ratio,
            )
        except (ImportError, RuntimeError, OSError, subprocess.CalledProcessError) as err:
            # The op is compiled on first use; without nvcc/ninja the loop still trains, only slower.
            reason = (str(err).strip().splitlines() or [type(err).__name__])[-1]
            print(
                f"warning: DeepSpeed's fused LAMB could not be built ({reason}); using the PyTorch loop",
                flush=True,
            )
    if name == "lamb":
        return Lamb(
            groups,
            lr=lr,
            betas=betas,
            eps=eps,
            bias_correction=bias_correction,
            max_trust_ratio=max_trust_ratio,
            min_trust_ratio=min_trust_ratio,
        )
    raise ValueError(f"unknown optimizer {name!r}; use adamw or lamb")


def warmup_decay_schedule(
    warmup_steps: int, total_steps: int, decay: str = "linear", power: float = 1.0, end_ratio: float = 0.0
) -> Callable[[int], float]:
    """LR multiplier per step: linear warm-up to 1, then ``linear``, ``polynomial`` (power) or
    ``cosine`` decay to ``end_ratio`` at ``total_steps``, or ``constant``."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay == "constant" or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if decay == "linear":
            shape = 1.0 - progress
        elif decay == "polynomial":
            shape = (1.0 - progress) ** power
        elif decay == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            raise ValueError(f"unknown decay {decay!r}; use linear, polynomial, cosine or constant")
        return end_ratio + (1.0 - end_ratio) * shape

    return factor
