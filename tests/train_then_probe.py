"""``python -m pretrain``'s run, then a look inside the trained engine, for the export tests.

After training (and its export), the engine is rebuilt from the final checkpoint by the trainer's
own set-up, and rank 0 writes ``RUN_DIR/probe.safetensors``: the engine's parameters as trained
(``param.<name>``, bf16 under bf16), its fp32 master weights where the optimizer keeps them
(``master.<name>``, gathered from every rank's partition), and its logits on a fixed batch
(``logits.*``). Every rank takes part: under ZeRO-3 each forward and each gather is collective.
Launched like ``pretrain`` (``deepspeed --num_gpus N tests/train_then_probe.py key=value ...``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

PROBE = "probe.safetensors"


def fixed_batch(vocab_size: int) -> torch.Tensor:
    return torch.randint(5, vocab_size, (3, 20), generator=torch.Generator().manual_seed(0))


def main() -> None:
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param
    from safetensors.torch import save_file

    from pretrain.config import load_pretrain_config
    from pretrain.distributed import shutdown
    from pretrain.train import prepare_run, train

    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int)  # added by the deepspeed launcher
    parser.add_argument("overrides", nargs="*")
    cfg = load_pretrain_config(None, parser.parse_args().overrides)
    train(cfg)

    run = prepare_run(cfg)  # resumes from the checkpoint the export was made from
    model = run.engine.module.model.eval()
    params = list(model.parameters())
    tensors = {}
    gathered = (
        deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        if run.cfg.zero_stage == 3
        else contextlib.nullcontext()
    )
    with gathered:
        for name, param in model.named_parameters():
            tensors[f"param.{name}"] = param.detach().clone()
    for name, param in model.named_parameters():
        master = safe_get_full_fp32_param(param)
        if master is not None:
            tensors[f"master.{name}"] = master.detach().clone().float()
    with torch.no_grad():
        out = model(input_ids=fixed_batch(model.config.vocab_size).to(run.engine.device))
    for key in ("prediction_logits", "logits", "seq_relationship_logits"):
        if getattr(out, key, None) is not None:
            tensors[f"logits.{key}"] = getattr(out, key).detach().float().cpu()
    if run.dist.is_main:
        save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(Path(cfg.run_dir) / PROBE))
    run.log.close()
    shutdown()  # a barrier, then the groups in order
    sys.stdout.flush()


if __name__ == "__main__":
    main()
