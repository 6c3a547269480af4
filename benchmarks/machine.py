"""What the benchmark ran on: the device's name for file names and reports, the CPU's ISA, the code
and library versions. Peaks (what MFU is a fraction of) are ``benchmarks.gemm_probe``'s."""

from __future__ import annotations

import platform
import re
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CPU_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_info() -> tuple[str, list[str]]:
    """The CPU model name and the matmul-relevant ISA extensions it has (Linux /proc/cpuinfo)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine(), []
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    return fields.get("model name", platform.machine()), [flag for flag in CPU_ISA_FLAGS if flag in flags]


def device_description() -> str:
    """``NVIDIA H100 80GB HBM3`` on a GPU (torch's name for it), the CPU model otherwise."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_info()[0]


def device_name(cores: int) -> str:
    """``nvidia-h100-80gb-hbm3`` for a GPU, ``cpu-<model>-<cores>c`` for a CPU: the reports' file prefix."""
    if torch.cuda.is_available():
        return slug(torch.cuda.get_device_name())
    return f"cpu-{slug(cpu_info()[0])}-{cores}c"


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def package_version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "deepspeed": package_version("deepspeed"),
        "transformers": package_version("transformers"),
        "python": platform.python_version(),
    }
