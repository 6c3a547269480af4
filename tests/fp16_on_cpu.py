"""Run ``python -m pretrain`` with DeepSpeed's fp16 allowed on a CPU that lacks native fp16 math.

DeepSpeed refuses fp16 on CPUs without AVX512-FP16/AMX-FP16 (``is_fp16_supported``), although
torch computes fp16 there, only slowly. The loss scaler under test (skip the step on overflow,
halve the scale, count it) does not depend on the device, so the fp16 tests lift that refusal.
"""

import runpy
import sys

from deepspeed.accelerator import cpu_accelerator

cpu_accelerator.CPU_Accelerator.is_fp16_supported = lambda self: True
sys.argv[0] = "pretrain"
runpy.run_module("pretrain", run_name="__main__", alter_sys=True)
