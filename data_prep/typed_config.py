"""The project's one config mechanism, shared by every stage.

A stage's config is a tree of typed ``Section`` models (pydantic, documented by attribute
docstrings), loaded from a commented YAML file and overridden by ``key=value`` arguments with
dotted keys for nesting (``optimizer.lr=3e-4``). An unknown key or a value of the wrong type is a
``ConfigError`` whose message names the key; the command-line entry points print it on one line
and exit 2.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

EXIT_CONFIG_ERROR = 2


def _one_is_a_list(value: object) -> object:
    return [value] if isinstance(value, str) else value


StrList = Annotated[list[str], BeforeValidator(_one_is_a_list)]
"""A list of strings that also takes a single string: ``inputs=corpus/`` as well as ``inputs=[a, b]``."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        use_attribute_docstrings=True,
        coerce_numbers_to_str=True,
    )


class ConfigError(ValueError):
    """A user-caused config problem; the message is one line that names the key and the fix."""


C = TypeVar("C", bound=Section)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[x, y]"]`` into the nested dict ``{"a": {"b": "1"}, "c": ["x", "y"]}``.

    Scalars stay strings so that pydantic coerces them to the field's type (``"3e-4"`` -> float,
    which YAML 1.1 would leave a string); lists, mappings and ``null`` are parsed as YAML.
    """
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (example: optimizer.lr=3e-4)")
        try:
            parsed = yaml.safe_load(raw)
        except yaml.YAMLError:
            parsed = raw
        value = parsed if isinstance(parsed, (list, dict)) or parsed is None else raw
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r} sets a key inside {part!r}, which is a value")
            node = child
        node[parts[-1]] = value
    return tree


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, nested mappings merged key by key rather than replaced."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning a missing file or a syntax error into a ``ConfigError``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (see configs/ for examples)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {str(path)!r}{where} is not valid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return data


def _describe(cls: type[Section], error: dict[str, Any]) -> str:
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        section: Any = cls
        for part in loc[:-1]:
            field = section.model_fields.get(part) if isinstance(section, type) else None
            section = field.annotation if field is not None else None
        valid = (
            ", ".join(section.model_fields)
            if isinstance(section, type) and issubclass(section, BaseModel)
            else ""
        )
        hint = f" (valid keys here: {valid})" if valid else ""
        return f"unknown config key {key!r}{hint}"
    if not key:  # a check across several keys: its message names them
        return str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    return f"config key {key!r}{shown}: {error['msg']}"


def build_config(cls: type[C], data: dict[str, Any]) -> C:
    """Validate a plain mapping against ``cls``; the first problem becomes a one-line ``ConfigError``."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        problems = err.errors(include_url=False)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(_describe(cls, problems[0]) + more) from None


def load_config(cls: type[C], path: str | Path | None = None, overrides: Iterable[str] = ()) -> C:
    """Load ``cls`` from the YAML file at ``path`` (optional) with ``key=value`` overrides applied."""
    data = read_yaml(path) if path is not None else {}
    return build_config(cls, deep_merge(data, parse_overrides(overrides)))


def to_yaml(config: Section) -> str:
    """The resolved config as YAML, loadable again by ``load_config``."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def exit_on_config_error(error: ConfigError) -> None:
    """Print the one-line message and exit with the config-error status (2)."""
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG_ERROR)
