"""Run a module with DeepSpeed's fp16 capability check answering as told, whatever this CPU has.

``python tests/fp16_capability.py yes|no MODULE [ARG ...]`` (``MODULE``: e.g. ``pretrain``).

- ``yes``: DeepSpeed refuses fp16 on CPUs without AVX512-FP16/AMX-FP16 (``is_fp16_supported``),
  although torch computes fp16 there, only slowly. The logic under test (the dynamic loss scaler,
  fp16 checkpoints, resume, export) does not depend on the device, so the test lifts that refusal.
  On a CPU with native fp16 the check already answers yes: there the same test runs natively.
- ``no``: a CPU with native fp16 refuses it as one without, so the refusal path is tested on every
  machine, not only on those that lack fp16.
"""

import runpy
import sys

from deepspeed.accelerator import get_accelerator

answer, module, *rest = sys.argv[1:]
if answer not in ("yes", "no"):
    raise SystemExit(f"usage: python {sys.argv[0]} yes|no MODULE [ARG ...] (got {answer!r})")
type(get_accelerator()).is_fp16_supported = lambda self: answer == "yes"
sys.argv = [module, *rest]
runpy.run_module(module, run_name="__main__", alter_sys=True)
