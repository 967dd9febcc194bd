"""Config base for every msc model and job: frozen pydantic v2 models.

Every config is immutable (`frozen=True`) and refuses unknown fields
(`extra="forbid"`), so a typo in a YAML or `config.json` is an error that names the
field instead of a silently ignored setting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config could not be built; the message names each offending field."""


def describe_validation_error(err: ValidationError, where: str) -> str:
    """`invalid WHERE: field.path: message (got value)`: one line for one problem, else a
    heading and one indented line per problem."""
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown field {loc!r} (not a field of {where})"
        got = e.get("input")
        shown = "" if isinstance(got, (dict, list)) or e["type"] == "value_error" else f" (got {got!r})"
        problems.append(f"{loc}: {msg}{shown}")
    if len(problems) == 1:
        return f"invalid {where}: {problems[0]}"
    return "\n".join([f"invalid {where}:", *(f"  {p}" for p in problems)])


class Config(BaseModel):
    """Base of all msc configs: frozen, strict about unknown fields, JSON round trip."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(describe_validation_error(err, cls.__name__)) from None

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"invalid {cls.__name__} JSON: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__} JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        return cls.from_json(path.read_text())

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def replace(self: C, **changes: Any) -> C:
        """A validated copy with some fields changed (configs are immutable)."""
        return type(self).from_dict({**self.model_dump(), **changes})
