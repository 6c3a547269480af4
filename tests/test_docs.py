"""README and docs/ keep their promises about commands and links: every relative link (and its
#anchor) resolves, and every command in a ```bash block names a module, script or make target that
exists, with its config and key=value overrides loading as the command gives them, or, for a
command without a config, its ``--help`` exiting 0. Inline ``python -m X`` mentions name modules
that exist. Runs in-process: no launch, seconds in all."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
from launching import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)
INLINE_MODULE = re.compile(r"`python -m ([\w.]+)")
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def _config_loader(module: str):
    """The config each ``--config`` entry point loads, by module."""
    from data_prep.config import load_prep_config
    from data_prep.typed_config import load_config
    from finetune.config import FinetuneConfig
    from pretrain.config import load_pretrain_config

    return {
        "data_prep": load_prep_config,
        "pretrain": load_pretrain_config,
        "finetune": lambda path, overrides: load_config(FinetuneConfig, path, overrides),
    }.get(module)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


def _commands(page: Path) -> list[str]:
    """Each command line of the page's bash blocks: continuations joined, comments dropped."""
    commands = []
    for block in FENCE.findall(page.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                commands.append(line)
    return commands


def _entry(words: list[str]) -> tuple[str, str, list[str]] | None:
    """(kind, name, args) of a command: ("module", M, args) for python -m / deepspeed --module /
    torchrun -m, ("script", path, args), ("make", target, []); None for other tools (curl, pip)."""
    while words and ASSIGNMENT.match(words[0]):
        words = words[1:]  # VAR=value prefixes
    if not words:
        return None
    if words[0] == "make":
        return ("make", words[1] if len(words) > 1 else "", [])
    if words[0].startswith(("launch/", "./")):
        return ("script", words[0], words[1:])
    for flag in ("-m", "--module"):
        if words[0] in ("python", "python3", "deepspeed", "torchrun", "mpirun") and flag in words:
            at = words.index(flag)
            return ("module", words[at + 1], words[at + 2 :])
    return None


def _without_optional(args: list[str]) -> list[str]:
    """Drop ``[--flag value]`` groups and ``...`` placeholders: the page's notation, not arguments
    (a bracket inside a word, as in ``inputs=[a.txt]``, is a value and stays)."""
    text = re.sub(r"(?<!\S)\[[^\]]*\]", " ", " ".join(args))
    return [word for word in text.split() if word != "..."]


def _help_exits_0(module: str, args: list[str]) -> None:
    subcommand = [args[0]] if args and re.fullmatch(r"[a-z]+", args[0]) else []  # data_prep verify
    argv, out = [module, *subcommand, "--help"], io.StringIO()
    saved = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved
    assert exit_.value.code in (0, None), f"python -m {' '.join(argv)} exited {exit_.value.code}"
    assert "usage" in out.getvalue().lower(), f"python -m {' '.join(argv)} printed no usage"


def _check_command(command: str, makefile_targets: set[str]) -> None:
    from data_prep.typed_config import ConfigError

    entry = _entry(shlex.split(command))
    if entry is None:
        return
    kind, name, args = entry
    if kind == "make":
        assert name in makefile_targets, f"{command!r}: no make target {name!r}"
        return
    if kind == "script":
        assert (REPO / name).is_file(), f"{command!r}: {name} does not exist"
        return
    assert importlib.util.find_spec(name) is not None, f"{command!r}: no module {name}"
    args = _without_optional(args)
    loader = _config_loader(name)
    config_at = args.index("--config") + 1 if "--config" in args else len(args)
    if loader is not None and config_at < len(args):
        path = args[config_at]
        overrides = [a for a in args if "=" in a and not a.startswith("-")]
        assert (REPO / path).is_file(), f"{command!r}: no config {path}"
        try:
            loader(REPO / path, overrides)  # raises ConfigError naming the key
        except ConfigError as error:  # an input the page's earlier commands create is fine absent
            if not any(f"'{o.split('=', 1)[1]}': no such" in str(error) for o in overrides):
                raise
    else:
        _help_exits_0(name, args)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not ours to check offline
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: link {target} -> {resolved} does not exist"
        if anchor and resolved.is_file():
            assert anchor in _anchors(resolved), f"{page.name}: no heading #{anchor} in {resolved.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_commands_name_what_exists_and_parse(page, monkeypatch):
    monkeypatch.chdir(REPO)
    targets = set(re.findall(r"(?m)^([\w-]+):", (REPO / "Makefile").read_text()))
    for command in _commands(page):
        _check_command(command, targets)
    for module in INLINE_MODULE.findall(page.read_text()):
        assert importlib.util.find_spec(module) is not None, (
            f"{page.name}: `python -m {module}` does not exist"
        )


def test_the_checker_catches_a_wrong_key_a_missing_module_and_a_dead_link(tmp_path):
    from data_prep.typed_config import ConfigError

    targets = {"test"}
    with pytest.raises(ConfigError, match="no_such_key"):
        _check_command("python -m pretrain --config configs/pretrain/demo.yaml no_such_key=1", targets)
    with pytest.raises(AssertionError, match="no module"):
        _check_command("deepspeed --num_gpus 2 --module pretrain.no_such_module", targets)
    with pytest.raises(AssertionError, match="no make target"):
        _check_command("make no-such-target", targets)
    page = tmp_path / "page.md"
    page.write_text("# Title\n[gone](missing.md) [here](#title)\n")
    with pytest.raises(AssertionError, match="missing.md"):
        test_relative_links_and_anchors_resolve(page)
