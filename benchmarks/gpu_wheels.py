"""The packages the GPU check needs beyond torch, found from what our code imports.

    python -m benchmarks.gpu_wheels            # name==version lines: what `make gpu-wheels` downloads
    python -m benchmarks.gpu_wheels --names    # names only: what the GPU machine installs (keeping its own versions)

Every ``import`` in the modules the GPU check runs (followed through this repo's own imports, the
ones inside functions included) is mapped to its installed distribution, then to everything those
require (their metadata, extras ignored); what torch itself requires is left out, since the GPU
machine has torch. Versions are the ones installed here, the set the tests ran with.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
OWN_PACKAGES = ("benchmarks", "pretrain", "data_prep", "tests")
# What the GPU check runs: its stages' entry points and the tests it selects (benchmarks.gpu_check.CUDA_TESTS).
ENTRY_FILES = (
    "benchmarks/gpu_check.py",
    "benchmarks/train_check.py",
    "benchmarks/step_worker.py",
    "benchmarks/baseline.py",
    "benchmarks/throughput.py",
    "pretrain/__main__.py",
    "pretrain/export.py",
    "tests/test_gpu_path.py",
)
PROVIDED = "torch"  # the GPU machine has it, and what it requires
# Imported under another package's name: torch.utils.tensorboard needs the tensorboard
# distribution (pretrain.run_log); pytest runs the tests without being imported by a module.
ALSO_NEEDED = ("tensorboard", "pytest")


def _module_file(module: str) -> Path | None:
    parts = module.split(".")
    for candidate in (REPO.joinpath(*parts).with_suffix(".py"), REPO.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports, anywhere in the file (relative imports resolved)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def external_imports() -> set[str]:
    """Top-level names of the third-party modules reachable from ``ENTRY_FILES``."""
    seen: set[Path] = set()
    pending = [REPO / entry for entry in ENTRY_FILES]
    external: set[str] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            top = name.split(".")[0]
            if top in OWN_PACKAGES:
                found = _module_file(name)
                if found is not None:
                    pending.append(found)
            elif top not in sys.stdlib_module_names and top != "__future__":
                external.add(top)
    return external


@cache
def _requires(name: str) -> tuple[str, ...]:
    """Distributions ``name`` requires on this platform (no extras)."""
    environment = {**default_environment(), "extra": ""}
    required = []
    for line in distribution(name).requires or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            required.append(canonicalize_name(requirement.name))
    return tuple(required)


def _closure(names: set[str]) -> tuple[set[str], set[str]]:
    """(installed distributions ``names`` need, transitively; the ones not installed)."""
    found, missing, pending = set(), set(), list(names)
    while pending:
        name = canonicalize_name(pending.pop())
        if name in found or name in missing:
            continue
        try:
            pending.extend(_requires(name))
            found.add(name)
        except PackageNotFoundError:
            missing.add(name)
    return found, missing


def required_distributions() -> tuple[dict[str, str], list[str]]:
    """({distribution: installed version} to carry to a machine that has torch; what is missing here:
    imports that no installed distribution provides, and required distributions not installed)."""
    providers = packages_distributions()
    wanted, unknown = set(ALSO_NEEDED), []
    for module in sorted(external_imports()):
        if module in providers:
            wanted.update(providers[module])
        else:
            unknown.append(module)
    needed, missing = _closure(wanted)
    provided, _ = _closure({PROVIDED})
    carry = {name: distribution(name).version for name in sorted(needed - provided)}
    return carry, sorted(set(unknown) | missing)


def missing_distributions() -> list[str]:
    return required_distributions()[1]


def main(argv: list[str] | None = None) -> None:
    names_only = "--names" in (sys.argv[1:] if argv is None else argv)
    carry, missing = required_distributions()
    if missing:
        raise SystemExit(f"error: not installed here, so their versions are unknown: {', '.join(missing)}")
    for name, version in carry.items():
        # Unpinned for the install: a package the GPU machine already has (numpy with its torch) is kept.
        print(name if names_only else f"{name}=={version}")


if __name__ == "__main__":
    main()
